"""The ``stateroom`` console script: one sub-command per component or tool.

Each sub-command lives in the module that owns it; that module exposes
``add_arguments(parser)`` and ``run(args) -> int``, and keeps its heavy imports
inside ``run`` so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

DISTRIBUTION = "stateroom"

# sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("server.launcher", "run Redis, the login service and N room servers on this machine"),
    "auth": ("auth.cli", "run the login service alone"),
    "keys": ("auth.keys_cli", "generate or rotate the login service's signing keys"),
    "server": ("server.app", "run one room server alone"),
    "play": ("client.play", "interactive terminal client"),
    "bots": ("client.bots", "headless players for load and correctness checks"),
    "kill-room": ("server.killroom", "SIGKILL a room's owner and report the recovery"),
    "status": ("server.status", "servers, rooms, owners, epochs, ticks and players"),
}


def version() -> str:
    """The installed distribution's version; from a source tree, pyproject.toml's."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def add_log_format(parser: argparse.ArgumentParser) -> None:
    """The global ``--log-format``, accepted before or after the sub-command."""
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=argparse.SUPPRESS,  # absent unless given: the environment decides
        help="log lines as text (default) or one JSON object per line; sets "
        "STATEROOM_LOG_FORMAT, which the processes `stateroom up` starts inherit",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stateroom",
        description="Stateroom: real-time game rooms that outlive the process that runs them.",
    )
    parser.add_argument(
        "--version", action="version", version=f"stateroom {version()}", help="print the version"
    )
    add_log_format(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        add_log_format(sub)  # also after the sub-command
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from infra.logs import FORMAT_ENV, LogConfigError, check_environment

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "log_format", None):
        os.environ[FORMAT_ENV] = args.log_format  # children (stateroom up's) inherit it
    try:
        check_environment()
    except LogConfigError as exc:
        parser.error(str(exc))
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
