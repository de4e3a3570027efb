"""The pure RFC 6455 helpers of server/transport/frames.py, and the transport factory."""

from __future__ import annotations

import argparse

import pytest

from server import settings as settings_module
from server.errors import ConfigError
from server.transport import Connection, TransportOptions, listen
from server.transport.frames import close_reason_bytes, frame_header, valid_close_code


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_frame_header_uses_the_shortest_length_encoding(length: int, header: bytes) -> None:
    assert frame_header(length, text=False) == header
    assert frame_header(length, text=True)[0] == 0x81
    assert frame_header(length, text=True)[1:] == header[1:]


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1011, 1014, 3000, 4009, 4999])
def test_valid_close_codes(code: int) -> None:
    assert valid_close_code(code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_invalid_close_codes(code: int) -> None:
    assert not valid_close_code(code)


def test_close_reason_fits_a_control_frame_on_a_character_boundary() -> None:
    assert close_reason_bytes("room full") == b"room full"
    long = "é" * 100  # 200 bytes of UTF-8
    cut = close_reason_bytes(long)
    assert len(cut) <= 123
    assert cut.decode() == "é" * 61


async def test_unknown_transport_is_refused_with_the_valid_names() -> None:
    async def handler(conn: Connection) -> None:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="websockets, picows"):
        await listen("uwebsockets", handler, TransportOptions())


def test_transport_setting_names_the_valid_transports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATEROOM_TRANSPORT", raising=False)
    parser = argparse.ArgumentParser()
    settings_module.add_arguments(parser)
    assert settings_module.from_args(parser.parse_args([])).transport == "picows"
    chosen = settings_module.from_args(parser.parse_args(["--transport", "websockets"]))
    assert chosen.transport == "websockets"
    with pytest.raises(ConfigError, match="--transport must be one of: websockets, picows"):
        settings_module.from_args(parser.parse_args(["--transport", "uvicorn"]))
