"""``stateroom status``: servers, rooms, owners, epochs, ticks, players, checkpoint age.

The read itself is ``infra.cluster_view.collect`` (the dashboard of the login service
shows the same view); this module is the command line and its table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from infra import cluster_view
from infra.cluster_file import DEFAULT_CLUSTER_FILE, load_cluster
from infra.errors import InfraError
from infra.redis_url import connect as connect_redis


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        type=Path,
        default=DEFAULT_CLUSTER_FILE,
        help=f"cluster.json written by stateroom up (default {DEFAULT_CLUSTER_FILE})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


async def collect(redis_url: str) -> dict[str, Any]:
    redis = connect_redis(redis_url)
    try:
        return await cluster_view.collect(redis)
    finally:
        await redis.aclose()


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    path = Path(args.cluster)
    if not path.exists():
        default = " (the default)" if path == DEFAULT_CLUSTER_FILE else ""
        print(
            f"status: no cluster file at {path}{default}: start the cluster with "
            "`stateroom up` (or `make run`) in this folder, or pass --cluster FILE",
            file=sys.stderr,
        )
        return 1
    cluster = load_cluster(path)
    try:
        report = asyncio.run(collect(cluster.redis_url))
    except (RedisError, OSError, InfraError) as exc:
        # The URL carries the password: show it redacted, and scrub the error too.
        print(
            f"status: cannot read the cluster from Redis at {cluster.redis_url_redacted}: "
            f"{cluster.scrub(str(exc)) or type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{'SERVER':<16} {'LIVE':<5} {'PID':>7} {'ROOMS':>5} {'PLAYERS':>7} {'LOAD':>5}  URL")
    for s in report["servers"]:
        live = "yes" if s["live"] else "NO"
        print(
            f"{s['id']:<16} {live:<5} {s['pid']!s:>7} {s['rooms']:>5} {s['players']:>7} "
            f"{_cell(s['load']):>5}  {s['ws_url']}"
        )
    print()
    header = ("ROOM", "GAME", "OWNER", "EPOCH", "TICK", "PLAYERS", "CKPT AGE", "TICK MS")
    print("{:<20} {:<8} {:<16} {:>5} {:>8} {:>7} {:>8} {:>7}".format(*header))
    for r in report["rooms"]:
        tick_ms = f"{r['tick_ms']:.2f}" if r["tick_ms"] is not None else "-"
        print(
            f"{r['room']:<20} {r['game'] or '-':<8} {r['owner'] or '(none)':<16} "
            f"{_cell(r['epoch']):>5} {r['tick']:>8} {_cell(r['players']):>7} "
            f"{_cell(r['checkpoint_age_s']):>8} {tick_ms:>7}"
        )
    return 0
