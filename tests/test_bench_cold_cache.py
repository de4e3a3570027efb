"""bench/cold_cache.py times a step and an input after each condition and prints ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
CONDITIONS = ("back_to_back", "idle_50us", "idle_500us", "spin_500us", "evict_16mb")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bench/cold_cache.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=50,
    )


def test_the_cold_cache_bench_prints_a_median_and_ratio_per_condition() -> None:
    done = _run("--rounds", "2", "--rooms", "5")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["rooms"], result["players_per_room"]) == (5, 4)
    for op in ("step", "input"):
        for name in CONDITIONS:
            assert 0 < result[op][f"{name}_us"] < 100_000
            assert result[op][f"{name}_ratio"] > 0
        assert result[op]["back_to_back_ratio"] == 1.0


def test_the_cold_cache_bench_refuses_an_empty_run() -> None:
    done = _run("--rounds", "0")
    assert done.returncode == 2
    assert "--rounds and --rooms must be at least 1" in done.stderr
