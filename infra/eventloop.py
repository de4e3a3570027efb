"""Run a coroutine on uvloop where it is available (Linux), else the default loop."""

from __future__ import annotations

import asyncio
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
