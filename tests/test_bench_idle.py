"""Smoke run of bench/idle_rooms.py: a real room server holding a few idle rooms (half
waiting out a grace period, half empty after play) pauses them all: no tick runs in the
window, the rooms are still there, and the bench prints its one JSON object."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_bench

pytestmark = pytest.mark.timeout(120)


def test_idle_rooms_pause_in_a_real_server(tmp_path: Path) -> None:
    args = ["--rooms", "6", "--players", "3", "--settle", "2", "--seconds", "1.5"]
    result = run_bench("idle_rooms.py", args, tmp_path, timeout=90)
    (point,) = result["points"]
    assert point["rooms_running"] == 6 and point["rooms_paused"] == 6
    assert point["ticks_per_s"] == 0
    assert point["server_cpu_cores"] > 0 and "met" in result
