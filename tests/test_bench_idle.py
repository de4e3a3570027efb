"""Smoke run of bench/idle_rooms.py: a real room server holding a few idle rooms (half
waiting out a grace period, half empty after play) pauses them all: no tick runs in the
window, the rooms are still there, and the bench prints its one JSON object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from infra.embedded_redis import die_with_parent

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def test_idle_rooms_pause_in_a_real_server(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    args = ["--rooms", "6", "--players", "3", "--settle", "2", "--seconds", "1.5"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "idle_rooms.py"), *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=die_with_parent,
    )
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # it stops the stack it started
        out, err = proc.communicate(timeout=15)
        pytest.fail(f"idle_rooms.py did not finish: {err.decode()[-600:]}")
    assert proc.returncode == 0, err.decode()[-600:]
    result = json.loads(out)
    (point,) = result["points"]
    assert point["rooms_running"] == 6 and point["rooms_paused"] == 6
    assert point["ticks_per_s"] == 0
    assert point["server_cpu_cores"] > 0 and "met" in result
