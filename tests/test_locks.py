"""The lock files are the whole dependency set, and make/Docker install exactly them.

Why: the installs run ``pip install --no-deps --require-hashes -r LOCK`` (Makefile,
deploy/Dockerfile). Resolving again once let pip reach past a pin: picows asks for
``python-socks[asyncio]``, and when python-socks 3.2.2 came out pip picked it over the
locked 3.2.1 and --require-hashes refused it, so ``make test`` failed on a fresh machine.
With --no-deps nothing is resolved, so the lock must hold every package that the
project's requirements reach, extras included: checked here from the installed
packages' own metadata, on this platform's markers.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parent.parent


def _pins(lock: Path) -> dict[str, Requirement]:
    """The lock's entries that apply on this platform, by canonical name."""
    logical = re.sub(r"\\\n\s*", " ", lock.read_text()).splitlines()
    pins: dict[str, Requirement] = {}
    for line in logical:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, _, hashes = line.partition(" --hash=")
        requirement = Requirement(spec)
        assert hashes, f"{lock.name}: {requirement.name} has no hash"
        assert str(requirement.specifier).startswith("=="), f"{lock.name}: {spec} is not exact"
        if requirement.marker is None or requirement.marker.evaluate():
            pins[canonicalize_name(requirement.name)] = requirement
    return pins


def _roots(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        roots += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return roots


def _unlocked(roots: list[Requirement], pins: dict[str, Requirement]) -> list[str]:
    """What the roots reach (their extras' requirements too) that the pins do not cover."""
    missing: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, "pyproject.toml") for root in roots]
    while todo:
        requirement, wanted_by = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        pin = pins.get(name)
        if pin is None:
            missing.append(f"{requirement} (wanted by {wanted_by}) is not in the lock")
            continue
        version = str(pin.specifier).removeprefix("==")
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{requirement} (wanted by {wanted_by}) excludes the pin {version}")
        # Each dependency once: unconditional, or for no extra or one that was asked for.
        extras = ("", *sorted(requirement.extras))
        for dependency in metadata.requires(name) or []:
            needed = Requirement(dependency)
            marker = needed.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras):
                todo.append((needed, str(requirement)))
    return missing


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("requirements.lock", ()), ("requirements-dev.lock", ("test",))],
)
def test_the_lock_holds_everything_the_project_needs(lock: str, extras: tuple[str, ...]) -> None:
    pins = _pins(REPO / lock)
    assert "python-socks" in pins  # the extra that broke the resolving install
    assert _unlocked(_roots(extras), pins) == []


def test_make_installs_the_lock_without_resolving_and_checks_it() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet --no-deps --require-hashes -r $(DEV_LOCK)" in makefile
    assert "$(BIN)/python -m pip check" in makefile
