"""bench/send_floor.py measures a positive CPU cost per send and leaves no reader behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent


def test_the_send_floor_prints_a_cost_per_point() -> None:
    done = subprocess.run(
        [sys.executable, "bench/send_floor.py", "--sends", "400", "--points", "100x4,2000x8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(p["bytes"], p["connections"]) for p in result["points"]] == [(100, 4), (2000, 8)]
    assert all(0 < p["cpu_us_per_send"] < 10_000 for p in result["points"])
