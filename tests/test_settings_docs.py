"""Every room-server setting is documented, with its default, in docs/operations.md; and
settings reject values that make no sense with a message naming the flag."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from server import settings as settings_module
from server.errors import ConfigError
from server.settings import SETTINGS_HELP, ServerSettings

OPERATIONS = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()


@pytest.mark.parametrize("name", [f.name for f in fields(ServerSettings)])
def test_every_setting_has_help_and_a_row_in_operations_md(name: str) -> None:
    assert SETTINGS_HELP.get(name), name
    flag = "--" + name.replace("_", "-")
    rows = [
        line
        for line in OPERATIONS.splitlines()
        if line.startswith((f"| `{flag}` |", f"| `{flag}` / "))
    ]
    assert rows, f"{flag} is missing from the settings table of docs/operations.md"
    assert f"`STATEROOM_{name.upper()}`" in rows[0]


def _parse(*argv: str) -> ServerSettings:
    parser = argparse.ArgumentParser()
    settings_module.add_arguments(parser)
    return settings_module.from_args(parser.parse_args(list(argv)))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("--rooms-per-player", "0"), "--rooms-per-player"),
        (("--pending-per-address", "-1"), "--pending-per-address"),
        (("--player-byte-rate", "10"), "--player-byte-rate"),
        (("--token-leeway-s", "-1"), "--token-leeway-s"),
        (("--admin-port", "70000"), "--admin-port"),
        (("--max-rooms", "x"), "--max-rooms"),
    ],
)
def test_bad_values_are_refused_naming_the_flag(argv: tuple[str, ...], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        _parse(*argv)


def test_defaults_parse() -> None:
    settings = _parse()
    assert (settings.rooms_per_player, settings.sessions_per_player) == (3, 4)
    assert settings.admin_port == 0 and settings.admin_host == "127.0.0.1"
