"""docs/delta-format.md says exactly what the code does: its worked examples (JSON and
annotated msgpack hex) are rebuilt here from the views they describe."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import orjson

from server.protocol.delta import DeltaDecoder, DeltaEncoder
from server.protocol.schemas import ARENA_SCHEMA

DOC = (Path(__file__).resolve().parent.parent / "docs" / "delta-format.md").read_text()
HEX = re.compile(r"^[0-9a-f]{2}$")


def hex_blocks() -> list[bytes]:
    """The bytes of every fenced block that follows a line saying 'in msgpack (N bytes)'."""
    out = []
    for match in re.finditer(r"in msgpack \((\d+) bytes\):\n\n```\n(.*?)```", DOC, re.S):
        data = []
        for line in match.group(2).splitlines():
            for token in line.split():
                if not HEX.match(token):
                    break
                data.append(token)
        blob = bytes.fromhex("".join(data))
        assert len(blob) == int(match.group(1)), match.group(0)[:80]
        out.append(blob)
    return out


def json_of(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload).decode()


def test_the_generic_example() -> None:
    encoder = DeltaEncoder()
    v7 = {"w": 64, "players": {"p1": {"x": 1.5, "hp": 3}, "p2": {"x": 0.0, "hp": 3}}, "log": ["hi"]}
    v8 = {
        "w": 64,
        "players": {"p1": {"x": 2.0, "hp": 3}, "p3": {"x": 5.0, "hp": 3}},
        "log": ["hi", "yo"],
    }
    payloads = [encoder.keyframe(7, v7), encoder.delta(8, v8), encoder.delta(9, v8)]
    for payload in payloads:
        assert json_of(payload) in DOC
    assert msgpack.packb(payloads[1]) in hex_blocks()
    assert msgpack.packb(payloads[2]).hex(" ") in DOC


def test_the_arena_example() -> None:
    encoder, decoder = DeltaEncoder(ARENA_SCHEMA, stream=2), DeltaDecoder()
    ann = {"name": "Ann", "x": 10.6, "y": 5.0, "score": 0, "inputs": 41}
    cy = {"name": "Cy", "x": 3.0, "y": 4.5, "score": 0, "inputs": 0}
    ticks = [
        {"g_ann": ann, "g_bob": {"name": "Bob", "x": 60.01, "y": 30.0, "score": 2, "inputs": 7}},
        {"g_ann": {**ann, "x": 11.2, "inputs": 42}, "g_cy": cy},
        {"g_ann": {**ann, "x": 10.78, "y": 4.58, "score": 1, "inputs": 43}, "g_cy": cy},
    ]
    pickups = [[[1.5, 2.25]], [[40.0, 2.25]], [[40.0, 2.25]]]
    payloads = []
    for tick, (players, spots) in enumerate(zip(ticks, pickups, strict=True), start=3):
        view = {"w": 64, "h": 32, "players": players, "pickups": spots}
        payloads.append(encoder.delta(tick, view))
        assert decoder.apply(msgpack.unpackb(msgpack.packb(payloads[-1]))) == view
    keyframe = payloads[0]
    schema_bytes = len(msgpack.packb(keyframe["schema"]))
    assert f"431 bytes in msgpack, of which the schema list is {schema_bytes}" in DOC
    assert len(msgpack.packb(keyframe)) == 431
    assert '"players":[0,"g_ann","Ann",1060,500,0,41, 1,"g_bob","Bob",6001,3000,2,7]' in DOC
    assert keyframe["view"]["players"] == [
        0,
        "g_ann",
        "Ann",
        1060,
        500,
        0,
        41,
        1,
        "g_bob",
        "Bob",
        6001,
        3000,
        2,
        7,
    ]
    assert json_of(ARENA_SCHEMA.to_wire()) == "".join(
        line.strip()
        for line in DOC.split("The arena's schema (`ARENA_SCHEMA`):\n\n```json\n")[1]
        .split("```")[0]
        .splitlines()
    )
    blocks = hex_blocks()
    assert msgpack.packb(payloads[1]) in blocks
    assert msgpack.packb(payloads[2]) in blocks
    assert json_of(payloads[2]) in DOC
    assert (
        json_of(payloads[1])
        .replace('"patch":{', '"patch":{\n  ')
        .replace(',"pickups"', ',\n  "pickups"')
        in DOC
    )
