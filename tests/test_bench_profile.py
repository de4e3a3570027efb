"""bench/profile.py's parts on a synthetic py-spy raw profile: a parked executor thread
and the loop's epoll wait are idle, not busy CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile import shares

pytestmark = pytest.mark.timeout(10)

LOOP = "Runner.run (asyncio/runners.py:118);uv_run (core.c:452)"
PARKED = (
    "_bootstrap (threading.py:995);_worker (concurrent/futures/thread.py:81);"
    "_queue_SimpleQueue_get (_queuemodule.c.h:177);PyThread_acquire_lock_timed (libpython3.11.so)"
)


def test_a_parked_executor_thread_is_idle(tmp_path: Path) -> None:
    profile = tmp_path / "profile.txt"
    profile.write_text(
        "\n".join(
            [
                f"{LOOP};epoll_wait (libc.so.6) 40",
                f"{PARKED} 500",
                f"{LOOP};parse_input (server/protocol/messages.py:230) 30",
                f"{LOOP};Arena.tick (server/games/arena.py:180) 10",
            ]
        )
        + "\n"
    )
    result = shares(profile)
    assert result["busy_samples"] == 40 and result["idle_samples"] == 540
    assert result["shares_percent"] == {
        "engine_and_game": 25.0,
        "redis_client": 0.0,
        "sending_states": 0.0,
        "receiving_inputs": 75.0,
        "transport_library_python": 0.0,
        "tick_bookkeeping": 0.0,
        "watcher_heartbeat_directory_quotas": 0.0,
        "no_python_frame": 0.0,
    }
