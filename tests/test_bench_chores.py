"""Smoke run of bench/chores.py: both chores on both paths against its own Valkey, and
its one JSON object with a figure for each (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_bench

pytestmark = pytest.mark.timeout(60)


def test_chores_bench_prints_both_paths(tmp_path: Path) -> None:
    result = run_bench("chores.py", ["--players", "40", "--rounds", "2"], tmp_path, timeout=45)
    assert result["bench"] == "chores" and result["players"] == 40
    for chore in ("revocation_check", "quota_refresh"):
        figures = result["chores"][chore]
        for path in ("redis_py", "lean"):
            assert figures[path]["cpu_ms"] > 0 and figures[path]["wall_ms"] > 0
        assert figures["lean_over_redis_py_cpu"] > 0
