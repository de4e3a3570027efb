"""``stateroom play``: the interactive terminal client (being written)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", required=True, help="cluster.json written by stateroom up")
    parser.add_argument("--room", required=True, help="room name")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("stateroom play is not available yet")
