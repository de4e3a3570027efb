"""``stateroom keys``: generate, rotate, retire and list the signing keys.

Rotation procedure (see docs/api.md): ``rotate`` appends a new key; running
services notice the changed file within a second, sign with the new key and keep
publishing the old one so tokens it signed still verify. After the access-token
lifetime plus the verifiers' JWKS refetch interval has passed, ``retire --keep 1``
drops the old keys.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["generate", "rotate", "retire", "list"],
        help="generate: create the file if missing; rotate: add a new signing key; "
        "retire: keep only the --keep newest keys; list: print kids, newest last",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("STATEROOM_AUTH_KEY_FILE"),
        help="PEM key file (env STATEROOM_AUTH_KEY_FILE)",
    )
    parser.add_argument("--keep", type=int, default=1, help="for retire: keys to keep (1)")


def run(args: argparse.Namespace) -> int:
    from auth.errors import KeyFileError
    from auth.keys import Keyring, ensure_key_file, retire_keys, rotate_key_file

    if not args.key:
        print("stateroom keys: --key FILE is required", file=sys.stderr)
        return 2
    path = Path(args.key)
    try:
        if args.action == "generate":
            existed = path.exists()
            ensure_key_file(path)
            ring = Keyring(path)
            print(f"{'kept existing' if existed else 'created'} {path}: kid {ring.current.kid}")
        elif args.action == "rotate":
            key = rotate_key_file(path)
            print(f"added signing key to {path}: kid {key.kid}")
        elif args.action == "retire":
            retired = retire_keys(path, args.keep)
            print(f"retired {len(retired)} key(s): {' '.join(retired) or '-'}")
        else:
            for key in Keyring(path).keys:
                print(key.kid)
    except (KeyFileError, OSError) as exc:
        print(f"stateroom keys: {exc}", file=sys.stderr)
        return 1
    return 0
