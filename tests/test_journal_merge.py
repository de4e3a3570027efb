"""A turn's journal appends, merged into ``_APPEND_MANY`` calls (infra/redis_scripts.Merge),
answer and write exactly what one ``_APPEND`` call per room does, against a real Valkey:
the same replies, the same errors in the same places (a fenced room, an XADD refused, a
room whose events stream is of the wrong type) while the other rooms' appends land, the
same journal and events streams; on both client paths, in RESP2 and RESP3, and in
chunks past the merge's size."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from infra.redis_scripts import Merge
from infra.room_keys import room_keys
from server.errors import OwnershipLost
from server.store import Lease, RoomStore, ScriptBatcher, fenced_error

pytestmark = pytest.mark.timeout(30)


def outcome(result: Any) -> Any:
    """A result as comparable across stores: an error by its type and message (a script
    that raised names itself after the message, " script: <sha>, on @user_script:N.";
    a pcall'd error in an array does not; callers match the message, never the tail)."""
    if isinstance(result, BaseException):
        return (type(result).__name__, str(result).split(" script: ")[0])
    return result


async def streams(client: aioredis.Redis, room: str) -> tuple[Any, Any]:
    keys = room_keys(room)
    journal = await client.xrange(keys["journal"])
    events = (
        await client.xrange(keys["events"])
        if await client.type(keys["events"])
        in (
            b"stream",
            "stream",
        )
        else None
    )
    return journal, events


async def one_turn(store: RoomStore, client: aioredis.Redis, prefix: str) -> list[Any]:
    """Five rooms, one append each in the same turn: plain, with game events, fenced, a
    tick already journaled (XADD refuses it), an events key of the wrong type."""
    leases: list[Lease] = []
    for name in ("plain", "events", "fenced", "again", "wrongtype"):
        claim = await store.claim(f"{prefix}-{name}", "s1", "ws://x", "arena")
        assert claim.won
        leases.append(claim.lease)
    plain, events, fenced, again, wrongtype = leases
    await store.append(again, 5, [["i", "p1", 1, [0.5, 0.5]]])
    await client.set(room_keys(fenced.room)["lease"], "99|s9")
    await client.set(room_keys(wrongtype.room)["events"], "not a stream")
    tick_events = [[{"kind": "hit"}, None]]
    return await asyncio.gather(
        store.append_soon(plain, 5, [["i", "p1", 1, [1.0, 0.0]]]),
        store.append_soon(events, 5, [], tick_events, keep_ticks=10),
        store.append_soon(fenced, 5, []),
        store.append_soon(again, 5, []),
        store.append_soon(wrongtype, 5, [], tick_events, keep_ticks=10),
        return_exceptions=True,
    )


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("fast", [True, False])
async def test_merged_appends_answer_as_one_call_per_room(
    redis_url: str, protocol: int, fast: bool
) -> None:
    client = aioredis.Redis.from_url(redis_url, protocol=protocol)
    try:
        merged, single = RoomStore(client, fast_scripts=fast), RoomStore(client, fast_scripts=fast)
        single._batcher.merge = None
        assert isinstance(merged._batcher.merge, Merge)
        sent: list[int] = []
        original = ScriptBatcher._send

        async def counting(self: ScriptBatcher, calls: Any) -> Any:
            if self is merged._batcher and self.merge is not None:
                sent.append(len(self.merge.merged(calls)[0]))
            return await original(self, calls)

        ScriptBatcher._send = counting  # type: ignore[method-assign]
        try:
            got_merged = await one_turn(merged, client, f"m{protocol}{fast}-a")
            got_single = await one_turn(single, client, f"m{protocol}{fast}-b")
        finally:
            ScriptBatcher._send = original  # type: ignore[method-assign]
        assert sent[-1] == 1  # the five appends of the turn went as one call
        assert [outcome(r) for r in got_merged] == [outcome(r) for r in got_single]
        plain, events, fenced, again, wrongtype = got_merged
        assert isinstance(plain, bytes | str) and isinstance(events, bytes | str)
        assert "FENCED" in str(fenced)
        assert isinstance(fenced_error(Lease("r", 1, "s1"), fenced), OwnershipLost)
        assert "equal or smaller" in str(again)
        assert "WRONGTYPE" in str(wrongtype)
        for name in ("plain", "events", "fenced", "again", "wrongtype"):
            assert await streams(client, f"m{protocol}{fast}-a-{name}") == await streams(
                client, f"m{protocol}{fast}-b-{name}"
            ), name
        # The leases the appends renewed: renewed on both (not the fenced one's).
        for prefix in ("a", "b"):
            ttl = await client.pttl(room_keys(f"m{protocol}{fast}-{prefix}-plain")["lease"])
            assert 0 < ttl <= 3000
    finally:
        await client.aclose()


async def test_a_turn_past_the_chunk_size_goes_in_chunks(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RoomStore(client)
        assert store._batcher.merge is not None and store._batcher.merge.chunk == 100
        leases = [
            (await store.claim(f"chunk-{i}", "s1", "ws://x", "arena")).lease for i in range(250)
        ]
        calls = [(store._append, [str(i)], []) for i in range(250)]
        sent, answers = store._batcher.merge.merged(calls)  # type: ignore[arg-type]
        assert [len(a) for a in answers] == [100, 100, 50]
        assert [len(call[1]) for call in sent] == [100, 100, 50]
        results = await asyncio.gather(
            *(store.append_soon(lease, 1, [["i", "p", 1, 0]]) for lease in leases)
        )
        assert all(isinstance(r, bytes) for r in results)
        for lease in leases[::50]:
            entries = await client.xrange(room_keys(lease.room)["journal"])
            assert [e[0] for e in entries] == [f"1-{lease.epoch}".encode()]
    finally:
        await client.aclose()


def test_the_merge_keeps_the_other_calls_in_place() -> None:
    """Calls of other scripts keep their order; a merged call sits where its first member
    was; a lone member of a chunk goes as it is; results split back in order."""
    single, many, other = object(), object(), object()
    merge = Merge(single, many, keys=1, args=1, chunk=2)  # type: ignore[arg-type]
    calls = [
        (other, ["o1"], []),
        (single, ["a"], [1]),
        (single, ["b"], [2]),
        (other, ["o2"], []),
        (single, ["c"], [3]),
    ]
    sent, answers = merge.merged(calls)  # type: ignore[arg-type]
    assert [(s[0], s[1], s[2]) for s in sent] == [
        (other, ["o1"], []),
        (many, ["a", "b"], [1, 2]),
        (other, ["o2"], []),
        (single, ["c"], [3]),
    ]
    assert answers == [[0], [1, 2], [3], [4]]
    error = RuntimeError("down")
    assert Merge.split(["r0", ["ra", "rb"], "r3", "rc"], answers, 5) == [
        "r0",
        "ra",
        "rb",
        "r3",
        "rc",
    ]
    assert Merge.split(["r0", error, "r3", "rc"], answers, 5) == ["r0", error, error, "r3", "rc"]
    lone = [(single, ["a"], [1])]
    assert merge.merged(lone) == (lone, [[0]])  # type: ignore[arg-type]
