"""Run a coroutine on uvloop where it is available (Linux), else the default loop."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any


def run_loop(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` to completion on a fresh loop (uvloop where available)."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - non-Linux
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


def tune_gc_for_serving() -> None:
    """Make full collections of a long-running server cheap.

    ``gc.freeze()`` moves everything alive after start (modules, classes, functions: most
    of the heap) out of the collector's generations, so a full collection no longer walks
    it. The young thresholds stay CPython's: a first generation of 10,000 gave no clear CPU
    gain in a same-run A/B (bench/arena.py) and a worse p99.
    """
    gc.collect()
    gc.freeze()
