"""``python -m auth {serve,keys} ...``: the login service's two commands without the
rest of the ``stateroom`` script (a slimmer container entry point; same flags as
``stateroom auth`` and ``stateroom keys``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from auth import cli, keys_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auth")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_arguments(sub.add_parser("auth", help="run the login service"))
    keys_cli.add_arguments(sub.add_parser("keys", help="generate or rotate signing keys"))
    args = parser.parse_args(argv)
    try:
        return cli.run(args) if args.command == "auth" else keys_cli.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
