"""The SDK on protocol v2, against fake room servers on loopback.

``V2FakeRoomServer`` extends the v1 fake of ``tests.test_sdk_fakes``: on a
``stateroom.v2.*`` connection it plays a room the way the contract says (one world
ticking on its own, whoever is connected; per connection a ``DeltaEncoder`` for the
shared stream and one for the player's private stream; a keyframe for both after every
``welcome`` and after a ``sync``; the events of each tick with its state, and on the
first state after a welcome also those of the ticks after the join's ``since``). Its
knobs lose frames (``skip``), answer a ``sync`` late or never, replay a stale tick on a
resume and refuse room options. On a v1 connection it is the v1 fake.
``V1OnlyFakeRoomServer`` offers only the v1 subprotocols: an old server.

What the tests prove: v2 is negotiated by default and v1 is the fallback; applying the
keyframe and deltas gives exactly the fake's full views (generic and with the arena's
schema); a refused delta costs exactly one ``sync`` and the states up to the keyframe,
and no event; every event reaches the application exactly once across reconnects, stale
replays and a slow reader; private parts surface in ``State.private``, each player's own;
room options are sent, echoed, and refused with their error code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from client import sdk
from client.sdk import RoomClient, RoomError, State
from server.protocol import (
    PROTOCOL_V2,
    CloseCode,
    ErrorCode,
    StateFrameV2,
    error_message,
    pong_message,
    welcome_message,
)
from server.protocol.codes import (
    JSON_SUBPROTOCOL,
    JSON_V2_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    MSGPACK_V2_SUBPROTOCOL,
)
from server.protocol.delta import DeltaEncoder, Schema, quantize_view
from server.protocol.schemas import ARENA_SCHEMA
from tests.test_sdk_fakes import FakeRoomServer, Session, make_token

# -- the fakes ---------------------------------------------------------------------------------


@dataclass
class World:
    """One room's world, ticking on its own: what every player may see at every tick."""

    schema: Schema | None = None
    tick: int = 0
    seated: set[str] = field(default_factory=set)
    acks: dict[str, int] = field(default_factory=dict)
    options: dict[str, Any] | None = None
    views: dict[int, Any] = field(default_factory=dict)
    privates: dict[tuple[str, int], Any] = field(default_factory=dict)
    events: dict[int, dict[str, list[Any]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # events so far, per player

    def advance(self) -> int:
        self.tick = t = self.tick + 1
        players = {
            p: {
                "name": p,
                "x": round((t * 0.37 + i) % 40, 2),
                "y": round((t * 0.11 + 2 * i) % 20, 2),
                "score": t // 10,
                "inputs": self.acks.get(p, 0),
            }
            for i, p in enumerate(sorted(self.seated))
        }
        pickups = [[round((t * 0.13) % 40, 2), 3.5]] if t % 3 else []
        self.views[t] = {"w": 40, "h": 20, "players": players, "pickups": pickups}
        per: dict[str, list[Any]] = {}
        for p in sorted(self.seated):
            self.privates[(p, t)] = {"secret": f"{p}:{t // 4}", "hand": list(range(t % 5))}
            if t % 3 != 1:  # some ticks have no event
                self.counts[p] = self.counts.get(p, 0) + 1
                per[p] = [{"n": self.counts[p], "tick": t, "to": p}]
        self.events[t] = per
        return t

    def events_for(self, player: str, after: int, upto: int) -> list[Any]:
        """The player's events of the ticks ``after < t <= upto``."""
        return [
            e for t in range(after + 1, upto + 1) for e in self.events.get(t, {}).get(player, [])
        ]


@dataclass
class Peer:
    """A v2 connection's streams on the fake server."""

    session: Session
    since: int
    shared: DeltaEncoder
    private: DeltaEncoder
    keyframe: bool = True  # the next state carries keyframes
    resume: bool = True  # ... and the events after ``since`` (first state after welcome)
    sync_wait: int = 0  # ticks to wait before answering a sync


class V2FakeRoomServer(FakeRoomServer):
    def __init__(self, *args: Any, world: World | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.world = world or World()
        self.peers: dict[str, Peer] = {}
        self.state_interval = 0.02
        self.skip: set[int] = set()  # ticks whose state is never sent (a lost frame)
        self.sync_delay = 0  # ticks between a sync and the keyframes that answer it
        self.answer_sync = True
        self.replay_stale = False  # resend the tick ``since`` first on a resume
        self.blackout = 0  # ticks to send to nobody (the frames a dying connection lost)
        self.syncs = 0
        self.sync_ticks: list[int] = []  # the world's tick when each sync arrived
        self.keyframes = 0
        self.deltas = 0
        self.frames: list[tuple[str, int]] = []  # (player, tick) of every state sent
        self._loop: asyncio.Task[None] | None = None

    async def __aenter__(self) -> V2FakeRoomServer:
        await super().__aenter__()
        self._loop = asyncio.get_running_loop().create_task(self._ticks())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await super().__aexit__(*exc)

    async def kick(self, player: str, code: int = int(CloseCode.RECONNECT)) -> None:
        """Close the player's connection with a retryable code: it reconnects and resumes."""
        peer = self.peers.get(player)
        if peer is not None:
            await peer.session.ws.close(code, "room moving")

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(self.state_interval)
            if self.frozen:
                continue
            tick = self.world.advance()
            lost = self.blackout > 0
            self.blackout -= lost
            for peer in list(self.peers.values()):
                with contextlib.suppress(ConnectionClosed):
                    await self._send_state(peer, tick, lost or tick in self.skip)

    async def _send_state(self, peer: Peer, tick: int, lost: bool) -> None:
        world, session = self.world, peer.session
        player = session.player
        if player not in world.seated:
            return  # it left; its connection is closing
        shared = peer.shared.delta(tick, world.views[tick])
        private = peer.private.delta(tick, world.privates[(player, tick)])
        if lost:
            return
        keyframe = peer.keyframe and peer.sync_wait == 0
        if peer.keyframe and peer.sync_wait > 0:
            peer.sync_wait -= 1
        if keyframe and peer.resume:
            if self.replay_stale and peer.since > 0:
                await self._send_stale(peer)
            events = world.events_for(player, peer.since, tick)
        else:
            events = world.events_for(player, tick - 1, tick)
        frame = StateFrameV2(tick, shared, peer.shared.current_keyframe)
        data = frame.encode_for(
            session.codec,
            world.acks.get(player, 0),
            keyframe=keyframe,
            private=peer.private.current_keyframe() if keyframe else private,
            events=events or None,
        )
        if keyframe:
            self.keyframes += 1
            peer.keyframe = peer.resume = False
        else:
            self.deltas += 1
        peer.since = tick
        self.frames.append((player, tick))
        await session.ws.send(data)

    async def _send_stale(self, peer: Peer) -> None:
        """The state of a tick the client has already applied, events included."""
        world, session, old = self.world, peer.session, peer.since
        keyframe = {"tick": old, "view": world.views[old]}
        frame = StateFrameV2(old, keyframe, lambda: keyframe)
        events = world.events_for(session.player, old - 1, old)
        ack = world.acks.get(session.player, 0)
        await session.ws.send(
            frame.encode_for(session.codec, ack, keyframe=True, events=events or None)
        )

    async def play(self, session: Session) -> None:
        if session.codec.version < PROTOCOL_V2:
            await super().play(session)  # the v1 fake
            return
        join, world, player = session.join, self.world, session.player
        assert join["v"] == PROTOCOL_V2, join
        if world.options is None:
            options = join.get("options") or {}
            if "bad" in options:
                await session.close_with(
                    ErrorCode.INVALID_OPTIONS, int(CloseCode.INVALID_ROOM), "invalid_options"
                )
                return
            world.options = {"max_players": 8, **options}
        resumed = player in world.seated
        world.seated.add(player)
        world.acks.setdefault(player, 0)
        await session.send(
            welcome_message(
                room=str(join["room"]),
                game="arena",
                player_id=player,
                server=self.name,
                epoch=self.epoch,
                tick=world.tick,
                tick_rate=20,
                ack=world.acks[player],
                resumed=resumed,
                token_exp=int(session.token.split(":")[2]),
                version=PROTOCOL_V2,
                options=world.options,
            )
        )
        peer = Peer(
            session,
            since=int(join.get("since", 0)),
            shared=DeltaEncoder(world.schema, stream=self.epoch),
            private=DeltaEncoder(stream=self.epoch),
        )
        self.peers[player] = peer
        try:
            async for raw in session.ws:
                message = session.codec.decode(raw)
                kind = message.get("t")
                if kind == "input":
                    seq = int(message["seq"])
                    self.inputs.append(seq)
                    if seq == world.acks[player] + 1:
                        world.acks[player] = seq
                elif kind == "sync":
                    self.syncs += 1
                    self.sync_ticks.append(world.tick)
                    if self.answer_sync:
                        peer.keyframe = True
                        peer.sync_wait = self.sync_delay
                elif kind == "ping":
                    await session.send(pong_message(int(message["id"]), world.tick))
                elif kind == "leave":
                    world.seated.discard(player)
                    await session.ws.close(1000, "left the room")
                else:
                    await session.send(error_message(ErrorCode.UNKNOWN_TYPE, str(kind)))
        finally:
            if self.peers.get(player) is peer:
                del self.peers[player]


class V1OnlyFakeRoomServer(FakeRoomServer):
    """A server from before protocol v2: it offers only the v1 subprotocols."""

    async def __aenter__(self) -> V1OnlyFakeRoomServer:
        self._server = await serve(
            self._handler,
            self.host,
            0,
            subprotocols=[Subprotocol(MSGPACK_SUBPROTOCOL), Subprotocol(JSON_SUBPROTOCOL)],
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self


# -- helpers -----------------------------------------------------------------------------------


async def collect(
    client: RoomClient, until: Callable[[State], bool], within: float = 10
) -> list[State]:
    """Read states until one satisfies ``until`` (included)."""
    got: list[State] = []
    async with asyncio.timeout(within):
        while True:
            state = await client.next_state()
            got.append(state)
            if until(state):
                return got


def check_views(world: World, player: str, states: list[State]) -> None:
    """Every state is exactly the fake's full views at its tick, in tick order."""
    ticks = [s.tick for s in states]
    assert ticks == sorted(set(ticks)), ticks
    for state in states:
        assert state.state == quantize_view(world.schema, world.views[state.tick]), state.tick
        assert state.private == world.privates[(player, state.tick)], state.tick


def delivered_events(states: list[State]) -> list[Any]:
    return [e for s in states for e in s.events]


def assert_exactly_once(world: World, player: str, states: list[State]) -> None:
    """The events delivered are the player's events of every tick up to the last state
    delivered, each once and in order (``n`` counts them per player)."""
    got = delivered_events(states)
    assert [e["n"] for e in got] == list(range(1, len(got) + 1)), [e["n"] for e in got]
    assert got == world.events_for(player, 0, states[-1].tick)
    for state in states:
        assert all(e["tick"] <= state.tick for e in state.events)  # never ahead of its state


# -- negotiation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
async def test_v2_is_negotiated_by_default_and_deltas_give_the_full_views(encoding: str) -> None:
    async with (
        V2FakeRoomServer() as server,
        RoomClient([server.url], "lobby", make_token("ann"), encoding=encoding) as c,
    ):
        states = await collect(c, lambda s: len(server.frames) >= 30)
        assert c.version == 2
        sub = MSGPACK_V2_SUBPROTOCOL if encoding == "msgpack" else JSON_V2_SUBPROTOCOL
        assert c.codec.subprotocol == sub
    join = server.joins[0]
    assert (join["v"], join["since"], "options" in join) == (2, 0, False)
    assert server.keyframes == 1 and server.deltas >= 25  # one keyframe, then deltas only
    check_views(server.world, "ann", states)
    assert all(s.decoded for s in states)
    assert c.stats.resyncs == 0 and c.stats.rollbacks == 0


async def test_the_arena_schema_stream_gives_the_quantized_views() -> None:
    async with (
        V2FakeRoomServer(world=World(schema=ARENA_SCHEMA)) as server,
        RoomClient([server.url], "lobby", make_token("ann")) as c,
    ):
        states = await collect(c, lambda s: len(server.frames) >= 25)
    assert server.keyframes == 1
    check_views(server.world, "ann", states)
    assert isinstance(states[-1].state["players"]["ann"]["x"], float)


async def test_an_old_server_gets_v1_and_the_sdk_speaks_v1() -> None:
    async with (
        V1OnlyFakeRoomServer() as server,
        RoomClient([server.url], "lobby", make_token("ann")) as c,
    ):
        state = await c.next_state(timeout=5)
        assert c.version == 1 and c.codec.subprotocol == MSGPACK_SUBPROTOCOL
        assert c.options is None
    assert server.joins[0] == {"t": "join", "v": 1, "room": "lobby"}
    assert state.state["players"]["ann"]["inputs"] == 0
    assert (state.private, state.events) == (None, [])


async def test_protocol_1_offers_only_v1_even_to_a_v2_server() -> None:
    async with (
        V2FakeRoomServer() as server,
        RoomClient([server.url], "lobby", make_token("ann"), protocol=1) as c,
    ):
        state = await c.next_state(timeout=5)
        assert c.version == 1
    assert server.joins[0]["v"] == 1 and "since" not in server.joins[0]
    assert not state.decoded  # v1's lazy path, unchanged
    assert state.state["players"]["ann"]["inputs"] == 0 and state.private is None


async def test_a_welcome_of_another_version_than_negotiated_is_a_protocol_error() -> None:
    # The v1 fake offers the v2 subprotocols but answers a v1 welcome: not a v2 server.
    async with FakeRoomServer() as server:
        client = RoomClient([server.url], "lobby", make_token("ann"))
        with pytest.raises(RoomError) as refusal:
            await client.connect(timeout=5)
        await client.close()
    assert refusal.value.code == int(CloseCode.PROTOCOL_ERROR)
    assert "negotiated stateroom.v2.msgpack" in refusal.value.reason


# -- resync -------------------------------------------------------------------------------


async def test_a_missing_delta_costs_exactly_one_sync_and_no_event() -> None:
    async with V2FakeRoomServer() as server:
        server.sync_delay = 2  # two more deltas come before the keyframe: both dropped
        async with RoomClient([server.url], "lobby", make_token("ann")) as c:
            states = [await c.next_state(timeout=5)]
            lost = states[0].tick + 3
            server.skip = {lost}
            states += await collect(c, lambda s: s.tick >= lost + 15)
    # The delta of lost + 1 is refused: one sync; the keyframe comes sync_delay deltas
    # after the sync arrived, and every state before it is dropped.
    assert server.syncs == 1 and c.stats.resyncs == 1 and server.keyframes == 2
    keyframe = server.sync_ticks[0] + 1 + server.sync_delay
    assert c.stats.dropped_states == keyframe - (lost + 1)
    ticks = [s.tick for s in states]
    assert not set(range(lost, keyframe)) & set(ticks) and keyframe in ticks
    check_views(server.world, "ann", states)
    # The lost state was never sent, so its events are gone (a real server never drops a
    # frame on an open connection); those of the dropped states come with the keyframe.
    world = server.world
    gone = world.events_for("ann", lost - 1, lost)
    assert delivered_events(states) == [
        e for e in world.events_for("ann", 0, states[-1].tick) if e not in gone
    ]
    assert next(s for s in states if s.tick == keyframe).events == world.events_for(
        "ann", lost, keyframe
    )


async def test_no_keyframe_after_a_sync_ends_in_a_reconnect(monkeypatch: Any) -> None:
    monkeypatch.setattr(sdk, "RESYNC_TIMEOUT", 0.3)
    async with V2FakeRoomServer() as server:
        server.answer_sync = False
        async with RoomClient([server.url], "lobby", make_token("ann")) as c:
            states = [await c.next_state(timeout=5)]
            lost = states[0].tick + 3
            server.skip = {lost}
            states += await collect(c, lambda s: s.tick > lost)
    assert server.syncs == 1 and server.connections == 2
    assert server.joins[1]["since"] == lost - 1
    assert_exactly_once(server.world, "ann", states)  # the resume's since covered the rest
    check_views(server.world, "ann", states)


# -- events exactly once ----------------------------------------------------------------------


async def test_events_arrive_exactly_once_across_reconnects_and_stale_replays() -> None:
    async with V2FakeRoomServer() as server:
        server.replay_stale = True
        async with RoomClient([server.url], "lobby", make_token("ann")) as c:
            states: list[State] = [await c.next_state(timeout=5)]
            for round_ in range(4):
                target = states[-1].tick + 6
                states += await collect(c, lambda s, t=target: s.tick > t)
                server.blackout = 3  # the frames of three ticks die with the connection
                await asyncio.sleep(server.state_interval * 4)
                kicked = server.world.tick
                await server.kick("ann")
                states += await collect(c, lambda s, t=kicked: s.tick > t)  # the resumed stream
                assert server.connections == round_ + 2
            target = states[-1].tick + 5
            states += await collect(c, lambda s: s.tick > target)
    assert [j["since"] for j in server.joins[1:]] != [0, 0, 0, 0]
    assert c.stats.reconnects == 4 and c.stats.rollbacks == 4  # each stale replay dropped
    assert_exactly_once(server.world, "ann", states)
    check_views(server.world, "ann", states)


async def test_a_slow_reader_loses_no_event() -> None:
    async with (
        V2FakeRoomServer() as server,
        RoomClient([server.url], "lobby", make_token("ann"), queue_size=2) as c,
    ):
        first = await c.next_state(timeout=5)
        await asyncio.sleep(server.state_interval * 15)  # the mailbox overflows
        states = [first] + await collect(c, lambda s: s.tick > first.tick + 20)
    assert c.stats.conflated_states > 5
    assert len({s.tick for s in states}) < states[-1].tick - first.tick + 1  # some skipped
    assert_exactly_once(server.world, "ann", states)
    assert c.stats.events == len(delivered_events(states))


# -- private parts and options -------------------------------------------------------------------


async def test_each_player_gets_its_own_private_part() -> None:
    async with (
        V2FakeRoomServer() as server,
        RoomClient([server.url], "lobby", make_token("ann")) as ann,
        RoomClient([server.url], "lobby", make_token("bob"), encoding="json") as bob,
    ):
        ann_states = await collect(ann, lambda s: "bob" in s.state["players"])
        ann_states += await collect(ann, lambda s: s.tick > ann_states[-1].tick + 5)
        bob_states = await collect(bob, lambda s: s.tick > ann_states[-1].tick)
    check_views(server.world, "ann", ann_states)
    check_views(server.world, "bob", bob_states)
    assert all(s.private["secret"].startswith("ann:") for s in ann_states)
    assert all(s.private["secret"].startswith("bob:") for s in bob_states)
    assert all(e["to"] == "bob" for e in delivered_events(bob_states))


async def test_room_options_are_sent_and_the_rooms_options_echoed() -> None:
    async with V2FakeRoomServer() as server:
        token = make_token("ann")
        async with RoomClient([server.url], "r", token, options={"mode": "fast"}) as ann:
            assert ann.options == {"max_players": 8, "mode": "fast"}
            async with RoomClient([server.url], "r", make_token("bob")) as bob:
                assert bob.options == ann.options  # the room's, not what bob asked (nothing)
            await server.kick("ann")
            await collect(ann, lambda s: server.connections == 3)
    assert server.joins[0]["options"] == {"mode": "fast"} and "options" not in server.joins[1]
    assert server.joins[2]["options"] == {"mode": "fast"}  # every join: the server decides


async def test_refused_options_are_a_room_error_with_their_code() -> None:
    async with V2FakeRoomServer() as server:
        client = RoomClient([server.url], "r", make_token("ann"), options={"bad": True})
        with pytest.raises(RoomError) as refusal:
            await client.connect(timeout=5)
        await client.close()
    assert (refusal.value.code, refusal.value.error_code) == (4006, "invalid_options")
    assert server.connections == 1  # final: not retried


async def test_options_are_not_dropped_silently_by_a_v1_server() -> None:
    async with V1OnlyFakeRoomServer() as server:
        client = RoomClient([server.url], "r", make_token("ann"), options={"mode": "fast"})
        with pytest.raises(RoomError) as refusal:
            await client.connect(timeout=5)
        await client.close()
    assert (refusal.value.code, refusal.value.error_code) == (4004, "unsupported_version")
    assert server.joins == []  # the room was not created without its options


def test_bad_protocol_or_encoding_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="protocol"):
        RoomClient(["ws://127.0.0.1:1"], "r", "t", protocol=3)
    with pytest.raises(ValueError, match="encoding"):
        RoomClient(["ws://127.0.0.1:1"], "r", "t", encoding="cbor")
