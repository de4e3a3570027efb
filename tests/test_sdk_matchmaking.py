"""The SDK's matchmaking calls (``AuthClient.list_rooms``, ``quick_join``,
``create_private``, ``private_room``) against a real cluster: Valkey, the login service
and two room servers that publish their rooms to the directory every second.

Rooms are of the built-in Duel game (options ``hand`` and ``target``); every test uses
room names and option values of its own, so they do not see each other's rooms.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from client.sdk import (
    AuthClient,
    LoginError,
    PrivateRoom,
    QuickJoinResult,
    RoomClient,
    RoomListing,
    Tokens,
)
from tests.cluster import LocalCluster, cluster_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

T = TypeVar("T")


@pytest.fixture(scope="module")
def mm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with cluster_for(tmp_path_factory.mktemp("sdk-matchmaking")) as local:
        yield local


@pytest.fixture
async def auth(mm: LocalCluster) -> AsyncIterator[AuthClient]:
    client = AuthClient(mm.auth_url, timeout=5.0)
    try:
        yield client
    finally:
        await client.aclose()


async def until(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], within: float = 8.0
) -> T:
    """Call ``probe`` until ``check`` holds of its answer (polling, with a deadline)."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if check(value):
            return value
        assert time.monotonic() < deadline, f"timed out; last answer: {value!r}"
        await asyncio.sleep(0.1)


def named(rooms: list[RoomListing], room: str) -> RoomListing | None:
    return next((r for r in rooms if r.room == room), None)


async def play(mm: LocalCluster, tokens: Tokens, room: str, **kwargs: Any) -> RoomClient:
    client = RoomClient(mm.info.ws_urls, room, tokens.access_token, game="duel", **kwargs)
    await client.connect(timeout=10.0)
    await client.next_state(timeout=5.0)
    return client


async def test_a_room_is_listed_once_a_client_plays_in_it(
    mm: LocalCluster, auth: AuthClient
) -> None:
    ann = await auth.guest("ann")
    room = f"sdk-list-{uuid.uuid4().hex[:8]}"
    assert named(await auth.list_rooms(ann, "duel"), room) is None
    client = await play(mm, ann, room, options={"hand": 3, "target": 7})
    try:
        assert client.options is not None and client.options["hand"] == 3
        rooms = await until(
            lambda: auth.list_rooms(ann, "duel"),
            lambda rs: (found := named(rs, room)) is not None and found.players == 1,
        )
        entry = named(rooms, room)
        assert entry is not None
        assert entry.game == "duel" and entry.joinable and entry.max_players == 8
        assert entry.options["hand"] == 3 and entry.options["target"] == 7
        assert entry.metadata == {"round": 1, "match": 1}  # what Duel publishes
        # Option filters, by keyword (compared as the query writes them).
        assert named(await auth.list_rooms(ann, "duel", hand=3, target=7), room) == entry
        assert named(await auth.list_rooms(ann, "duel", hand=4), room) is None
        assert len(await auth.list_rooms(ann, "duel", limit=1)) == 1
        # A token source works as well as a Tokens pair or a plain string.
        source = auth.token_source(ann)
        assert named(await auth.list_rooms(source, "duel"), room) is not None
        assert named(await auth.list_rooms(ann.access_token, "duel"), room) is not None
    finally:
        await client.leave()
        await client.close()
    await until(lambda: auth.list_rooms(ann, "duel"), lambda rs: named(rs, room) is None)


async def test_quick_join_names_a_room_that_the_clients_join_creates(
    mm: LocalCluster, auth: AuthClient
) -> None:
    bea, cid = await auth.guest("bea"), await auth.guest("cid")
    target = 2  # no other test's room has target 2
    first = await auth.quick_join(bea, "duel", {"target": target, "hand": 4})
    assert isinstance(first, QuickJoinResult)
    assert first.created and not first.running and first.ws_url is None
    assert first.game == "duel" and first.options == {"target": target, "hand": 4}
    assert first.reserved_until > time.time()
    # A second player who quick-joins right after is sent to the same (not yet created) room.
    second = await auth.quick_join(cid, "duel", {"target": target, "hand": 4})
    assert second.room == first.room and not second.created

    host = await play(mm, bea, first.room, options=first.options)
    try:
        assert host.options is not None
        assert host.options["target"] == target and host.options["hand"] == 4
        state = await host.next_state(timeout=5.0)
        assert state.state["target"] == target
        assert len(state.private["hand"]) == 4  # the room was created with hand=4
        # Once the owner has published it, quick-join says it runs and where.
        again = await until(
            lambda: auth.quick_join(cid, "duel", {"target": target}),
            lambda r: r.running,
        )
        assert again.room == first.room and not again.created
        assert again.ws_url in mm.info.ws_urls and again.players >= 1
        guest = await play(mm, cid, again.room, options=again.options)
        try:
            assert guest.options == host.options
            rooms = await until(
                lambda: auth.list_rooms(bea, "duel", target=target),
                lambda rs: (found := named(rs, first.room)) is not None and found.players == 2,
            )
            assert [r.room for r in rooms] == [first.room]
        finally:
            await guest.close()
    finally:
        await host.close()


async def test_a_private_room_is_created_and_resolved_by_its_code(
    mm: LocalCluster, auth: AuthClient
) -> None:
    host, friend = await auth.guest("host"), await auth.guest("friend")
    made = await auth.create_private(host, "duel", {"hand": 6})
    assert isinstance(made, PrivateRoom)
    assert len(made.code) == 6 and made.room.startswith("duel.p.")
    assert made.options == {"hand": 6} and made.max_players == 8
    assert made.expires_in is not None and made.expires_in > 0
    assert not made.running

    # The code resolves before the room runs (in any case, with spaces around it)...
    pending = await auth.private_room(friend, f" {made.code.lower()} ")
    assert pending.room == made.room and pending.code == made.code and not pending.running
    assert pending.joinable

    creator = await play(mm, host, made.room, options=made.options)
    try:
        assert creator.options is not None and creator.options.get("private") is True
        # ... and once it runs, says where and how full it is.
        found = await until(
            lambda: auth.private_room(friend, made.code),
            lambda r: r.running and r.players == 1,
        )
        assert found.ws_url in mm.info.ws_urls and found.metadata == {"round": 1, "match": 1}
        joiner = await play(mm, friend, found.room, options=found.options)
        try:
            assert joiner.player_id != creator.player_id
            state = await joiner.next_state(timeout=5.0)
            assert len(state.private["hand"]) == 6
        finally:
            await joiner.close()
        # Private rooms are never listed.
        assert named(await auth.list_rooms(friend, "duel"), made.room) is None
    finally:
        await creator.close()


async def refused(call: Awaitable[Any]) -> LoginError:
    with pytest.raises(LoginError) as info:
        await call
    return info.value


async def test_each_documented_error_is_a_login_error_with_its_code(
    mm: LocalCluster, auth: AuthClient
) -> None:
    dee = await auth.guest("dee")
    for call in (
        auth.list_rooms(dee, "chess"),
        auth.quick_join(dee, "chess"),
        auth.create_private(dee, "chess"),
    ):
        error = await refused(call)
        assert (error.status, error.code) == (404, "unknown_game"), error
        assert "duel" in str(error)  # the message names the games that exist

    for call in (
        auth.list_rooms(dee, "duel", colour="red"),  # not an option of duel
        auth.quick_join(dee, "duel", {"hand": [3]}),  # ill-typed
        auth.quick_join(dee, "duel", {"max_players": 99}),  # over the seat limit
        auth.create_private(dee, "duel", {"private": False}),  # reserved
        auth.create_private(dee, "duel", {"k": "x" * 65}),  # too long
    ):
        error = await refused(call)
        assert (error.status, error.code) == (422, "invalid_options"), error

    error = await refused(auth.list_rooms(dee, "duel", limit=0))
    assert (error.status, error.code) == (422, "validation_failed")

    for code in ("ZZZZZZ", "not-a-code", ""):
        error = await refused(auth.private_room(dee, code))
        assert (error.status, error.code) == (404, "unknown_code"), (code, error)

    for token in ("", "garbage"):
        error = await refused(auth.quick_join(token, "duel"))
        assert error.status == 401 and error.code in ("unauthorized", "token_malformed")

    await auth.logout(dee)
    error = await refused(auth.list_rooms(dee, "duel"))
    assert (error.status, error.code) == (401, "session_revoked")

    with pytest.raises(TypeError):
        await auth.list_rooms(await auth.guest("eve"), "duel", hand=[3])
