"""The walls of the house (DESIGN.md): auth imports nothing from server/ or client/;
server/ imports nothing from client/; the client imports only the shared wire protocol
(server.protocol) and infra/; infra/ imports none of the three; and the wire protocol
imports no I/O. Checked on the source, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
IO_MODULES = {"asyncio", "websockets", "redis", "httpx", "socket"}


def imports_of(package: str) -> list[tuple[str, str]]:
    """(file, imported module) for every import statement under ``package``."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(str(path.relative_to(ROOT)), alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((str(path.relative_to(ROOT)), node.module))
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("auth", {"server", "client"}),
        ("server", {"client"}),
        ("infra", {"auth", "server", "client"}),
    ],
)
def test_package_imports_none_of(package: str, forbidden: set[str]) -> None:
    bad = [(f, m) for f, m in imports_of(package) if _top(m) in forbidden]
    assert not bad, bad


def test_the_client_imports_only_the_protocol_from_server() -> None:
    bad = [
        (f, m)
        for f, m in imports_of("client")
        if _top(m) in {"server", "auth"} and not m.startswith("server.protocol")
    ]
    assert not bad, bad


def test_the_wire_protocol_imports_no_io() -> None:
    bad = [(f, m) for f, m in imports_of("server/protocol") if _top(m) in IO_MODULES]
    assert not bad, bad
