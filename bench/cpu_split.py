"""Run a room server with its CPU time split by part, measured by the thread's CPU clock.

    python bench/cpu_split.py OUT.json server ARGS...     (from the tree to measure)
    bench/arena.py --cpu-split                             (the same, inside each point)

A sampling profiler's wall-clock samples overstate the input path of a busy room
server (py-spy put 45 % of it under ``on_ws_frame`` at N=200 in one room, where making
that path cheaper measured 1.00x): this wraps the methods below in ``time.thread_time``
and writes, every second, the CPU seconds spent inside each (nested parts are inside
their parents: ``publish`` is part of ``journaled``) with the process's CPU time. Each
wrapped call costs ~2 us more (two clock reads, a system call each here), so shares are
of a slightly slower server; methods a tree lacks are left out.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import resource
import sys
import threading
import time
from typing import Any

# (module, class, method, label): the input path, the tick, the publish, the journal.
PARTS = [
    ("server.transport.picows_transport", "PicowsConnection", "on_ws_frame", "input_frames"),
    ("server.endpoint", "Endpoint", "_on_frame", "input_handling"),
    ("server.ticker", "Ticker", "_fire", "clock"),
    ("server.room", "Room", "on_clock", "tick_start"),
    ("server.engine", "RoomEngine", "step", "engine_step"),
    ("server.store", "RoomStore", "append_soon", "journal_append"),
    ("server.room", "Room", "_journaled", "journaled"),
    ("server.room", "Room", "_publish", "publish"),
    ("server.session", "Session", "send_in_place", "state_sends"),
]

seconds: dict[str, float] = {}
calls: dict[str, int] = {}


def _wrap(owner: Any, name: str, label: str) -> None:
    inner = getattr(owner, name)
    clock = time.thread_time

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds[label] = seconds.get(label, 0.0) + clock() - started
            calls[label] = calls.get(label, 0) + 1

    setattr(owner, name, timed)


def install() -> None:
    """Wrap every part this tree has."""
    for module_name, class_name, method, label in PARTS:
        try:
            owner = getattr(importlib.import_module(module_name), class_name)
            getattr(owner, method)
        except (ImportError, AttributeError):
            continue
        _wrap(owner, method, label)


def snapshot() -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "seconds": dict(seconds),
        "calls": dict(calls),
    }


def split(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Each part's share of the process's CPU between two snapshots, and its cost per call."""
    cpu = after["cpu_s"] - before["cpu_s"]
    parts = {}
    for label, total in after["seconds"].items():
        spent = total - before["seconds"].get(label, 0.0)
        n = after["calls"][label] - before["calls"].get(label, 0)
        parts[label] = {
            "share_percent": round(100 * spent / cpu, 1) if cpu > 0 else None,
            "us_per_call": round(1e6 * spent / n, 1) if n else None,
            "calls": n,
        }
    return {"cpu_s": round(cpu, 3), "parts": parts}


def _dump_every_second(path: str) -> None:
    while True:
        time.sleep(1.0)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            json.dump(snapshot(), out)
        os.replace(tmp, path)


def main() -> int:
    out, args = sys.argv[1], sys.argv[2:]
    # The tree being measured first, as `python -m` would put it, in place of this
    # script's folder (whose profile.py would shadow the standard library's).
    sys.path[0] = os.getcwd()
    install()
    threading.Thread(target=_dump_every_second, args=(out,), daemon=True).start()
    from server.cli import main as server_main

    return server_main(args)


if __name__ == "__main__":
    sys.exit(main())
