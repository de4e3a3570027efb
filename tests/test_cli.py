"""`stateroom --version`: the console script and `python -m server.cli` print the version."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from server import cli

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _console_script() -> str:
    # The script installed next to this interpreter (.venv/bin/stateroom), else on PATH.
    candidate = Path(sys.executable).parent / "stateroom"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("stateroom")
    if found is None:
        pytest.fail("the stateroom console script is not installed: run `make test`")
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_installed_version_matches_pyproject() -> None:
    assert importlib.metadata.version("stateroom") == _pyproject_version()


def test_console_script_version() -> None:
    result = _run(_console_script(), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"stateroom {_pyproject_version()}\n"
    assert result.stderr == ""


def test_module_version() -> None:
    result = _run(sys.executable, "-m", "server.cli", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"stateroom {_pyproject_version()}\n"


def test_version_falls_back_to_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cli.version() == _pyproject_version()


def test_version_flag_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"stateroom {_pyproject_version()}\n"
