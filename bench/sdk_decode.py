"""Client-side cost of one ``state`` frame: full msgpack decode vs the SDK's lazy parse.

Prints one JSON object. The frame is the real one: an ``Arena`` with N joined players
(ids and names shaped like the login service's), ticked with every player moving, encoded
by ``StateFrame.encode_for(MSGPACK, ack)`` as the room server does.

    .venv/bin/python bench/sdk_decode.py [--n 200] [--frames 4000]

- ``full_us``: ``msgpack.unpackb`` of the whole frame (what the SDK did before);
- ``lazy_us``: ``_decode_server_frame`` + ``_make_state``, the state left undecoded
  (what a bot pays on a state it does not look at);
- ``lazy_then_state_us``: the same plus reading ``State.state`` (a reader that looks at
  every state pays about the full decode, plus the parse).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from client.sdk import _decode_server_frame, _make_state
from server.games.arena import Arena
from server.protocol import MSGPACK, StateFrame


def arena_frame(players: int, tick: int = 1234, ack: int = 567) -> bytes:
    arena = Arena.create(1)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(players)]
    for index, player_id in enumerate(ids):
        arena.join(player_id, f"bot-{index}")
    arena.tick([(player_id, [0.6, -0.8]) for player_id in ids])
    state = arena.tick([])
    return StateFrame(tick, state).encode_for(MSGPACK, ack)


def per_frame_us(work: Callable[[], object], frames: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(frames):
            work()
        best = min(best, time.perf_counter() - start)
    return best / frames * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--frames", type=int, default=4000)
    args = parser.parse_args()
    frame = arena_frame(args.n)
    full = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    lazy = _make_state(_decode_server_frame(frame, False), "s", 1)
    assert (lazy.tick, lazy.ack, lazy.state) == (full["tick"], full["ack"], full["state"])

    def do_full() -> object:
        return msgpack.unpackb(frame, raw=False, strict_map_key=False)

    def do_lazy() -> object:
        return _make_state(_decode_server_frame(frame, False), "s", 1)

    def do_lazy_then_state() -> object:
        return _make_state(_decode_server_frame(frame, False), "s", 1).state

    full_us = per_frame_us(do_full, args.frames)
    lazy_us = per_frame_us(do_lazy, args.frames)
    both_us = per_frame_us(do_lazy_then_state, args.frames)
    print(
        json.dumps(
            {
                "players": args.n,
                "frame_bytes": len(frame),
                "full_us": round(full_us, 2),
                "lazy_us": round(lazy_us, 2),
                "lazy_then_state_us": round(both_us, 2),
                "full_over_lazy": round(full_us / lazy_us, 1),
                "python": sys.version.split()[0],
                "msgpack": ".".join(map(str, msgpack.version)),
            }
        )
    )


if __name__ == "__main__":
    main()
