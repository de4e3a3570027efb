"""Where a room server's CPU goes: shares of a py-spy profile, by part of the work.

Record the room server during a ``bench/arena.py`` window with py-spy (from a venv of
its own: ``pip install py-spy``), in its raw format, then read it here::

    py-spy record --native -r 200 -d 15 -p SERVER_PID --format raw -o profile.txt
    .venv/bin/python bench/profile.py profile.txt

Each sample's stack is put in one part: scanned from the leaf up, the first frame that
a rule below recognises decides (root frames such as the event loop's ``run`` are
skipped; stacks of the background loops go to their own part, whatever is under them).
Samples in ``epoll_wait``, and of executor threads parked on their queue, are idle;
samples whose leaf is a write to Valkey's socket are counted apart
(``waiting_on_valkey``): py-spy samples wall time, and a server that shares its core
with Valkey is preempted there while Valkey runs, which is not its CPU.
Prints one JSON object: the shares (percent of the remaining busy samples) and counts.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("engine_and_game", ("server/engine.py", "games/arena.py", "worldgame.py")),
    (
        "redis_client",
        ("redis/", "hiredis", "server/store.py", "durability.py", "redis_scripts", "cluster_"),
    ),
    (
        "sending_states",
        ("_publish", "send_frame", "send_in_place", "encode_for", "_frame_for", "StateFrame"),
    ),
    (
        "receiving_inputs",
        ("server/endpoint.py", "budgets.py", "Room.on_input", "parse_input", "codec.py"),
    ),
    (
        "transport_library_python",
        ("websockets/", "picows_transport.py", "websockets_transport.py", "fastpath.py"),
    ),
    ("tick_bookkeeping", ("room.py", "ticker.py", "metrics.py", "prometheus", "asyncio/")),
]
BACKGROUND = ("FailoverWatcher", "RoomListing", "_heartbeat_loop", "quota_refresh", "revocation")
ROOTS = ("runners.py", "cli.py", "eventloop.py", "runpy", "(server/app.py:5")
NATIVE = "no_python_frame"


# A worker thread of the default executor (DNS lookups, file reads) parked on its queue:
# py-spy --native reports its stack like any other, and it was ~36 % of a busy run's
# samples before it was counted as idle.
PARKED = ("_queue_SimpleQueue_get", "PyThread_acquire_lock")


def part_of(stack: str) -> str:
    frames = stack.split(";")
    leaf = frames[-1]
    if "epoll_pwait" in leaf or "epoll_wait" in leaf:
        return "idle"
    if "concurrent/futures/thread.py" in stack and any(name in stack for name in PARKED):
        return "idle"
    if "redis/asyncio/connection.py" in stack and ("writev (libc" in leaf or "write (libc" in leaf):
        return "waiting_on_valkey"
    if any(name in stack for name in BACKGROUND):
        return "watcher_heartbeat_directory_quotas"
    for frame in reversed(frames):
        if ".py:" not in frame or any(root in frame for root in ROOTS):
            continue
        for name, keys in PARTS:
            if any(key in frame for key in keys):
                return name
    return NATIVE


def shares(path: Path) -> dict[str, object]:
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if stack:
            counts[part_of(stack)] += int(samples)
    busy = sum(n for name, n in counts.items() if name not in ("idle", "waiting_on_valkey"))
    names = [name for name, _ in PARTS] + ["watcher_heartbeat_directory_quotas", NATIVE]
    return {
        "profile": str(path),
        "busy_samples": busy,
        "idle_samples": counts["idle"],
        "waiting_on_valkey_samples": counts["waiting_on_valkey"],
        "shares_percent": {
            name: round(100 * counts[name] / busy, 1) if busy else 0.0 for name in names
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="a py-spy profile in raw format")
    args = parser.parse_args()
    if not args.profile.is_file():
        parser.error(f"{args.profile}: no such file")
    print(json.dumps(shares(args.profile)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
