"""bench/cpu_split.py: every part it times exists in this tree (a rename would drop it
from the split silently), a wrapped method's CPU time is counted, and a split is the
difference of two snapshots."""

from __future__ import annotations

import importlib
import time

import pytest

from bench import cpu_split

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("part", cpu_split.PARTS, ids=[p[3] for p in cpu_split.PARTS])
def test_every_timed_part_exists_in_this_tree(part: tuple[str, str, str, str]) -> None:
    module_name, class_name, method, _ = part
    owner = getattr(importlib.import_module(module_name), class_name)
    assert callable(getattr(owner, method))


def test_a_wrapped_method_counts_its_cpu_time_and_keeps_its_result() -> None:
    class Busy:
        def spin(self, seconds: float) -> str:
            end = time.thread_time() + seconds
            while time.thread_time() < end:
                pass
            return "done"

    cpu_split._wrap(Busy, "spin", "test_spin")
    try:
        before = cpu_split.snapshot()
        assert Busy().spin(0.05) == "done"
        assert Busy().spin(0.05) == "done"
        result = cpu_split.split(before, cpu_split.snapshot())
    finally:
        cpu_split.seconds.pop("test_spin", None)
        cpu_split.calls.pop("test_spin", None)
    part = result["parts"]["test_spin"]
    assert part["calls"] == 2
    assert 45_000 <= part["us_per_call"] <= 80_000
    assert result["cpu_s"] >= 0.1
    assert 50 <= part["share_percent"] <= 100
