"""Property test of what each session receives from a Room's publish path (issue 8).

A real ``server.room.Room`` is driven without sockets or Redis: a ``RoomEngine`` of a
test game whose private parts and private events are strings that name who may see them
(``tests.games.Vault``: ``secret-<owners>-<n>``), non-durable settings, a store that
fails if anything touches it, and fake sessions that record every frame. The test does
what ``Room._tick`` does minus the I/O (``engine.step()``, ``event_log.record``, the
tick's events kept as the store would keep them, ``_publish``), and calls the real
``attach`` / ``detach`` / ``leave`` / ``on_input`` for joins, resumes and inputs.

Hypothesis draws the game (schemaless or with a schema), each player's encoding (v2
msgpack/JSON, some v1) and a script of joins, inputs (public and private changes,
events to one player, to a pair, to all but one, to everyone), disconnects (the client
may not have applied its last frames yet), reconnects that replace a live connection,
sync requests, leaves, ticks, and takeovers: a new Room, with a new lease epoch, built
from ``RoomEngine.restore`` of the msgpack'd snapshot and the event log loaded from what
was recorded, on which every connected player resumes with ``since`` = the last tick its
client applied (as the SDK sends it).

Checked for every frame of every session, at every tick:

- no frame contains a secret of another player (raw bytes, msgpack and JSON);
- v2: the shared payloads decode (one ``DeltaDecoder`` per stream and connection) to
  exactly the quantized public state of that tick, the private ones to exactly
  ``engine.view(player)``; the first state after a welcome or a sync carries keyframes;
  states arrive for consecutive ticks, each with the player's ack;
- v2: every event addressed to a player arrives exactly once and in order across its
  connections, resumes and takeovers, and none addressed to anyone else;
- v1: full states equal to the public state, never a private part or events.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.engine import RoomEngine, RoomFull, TickOutcome
from server.eventlog import packed
from server.game import Emitted, Game
from server.metrics import ServerMetrics
from server.protocol import JSON, JSON_V2, MSGPACK, MSGPACK_V2, PROTOCOL_V2, Codec, InputMessage
from server.protocol.delta import DeltaDecoder, DeltaEncoder, quantize_view
from server.protocol.messages import error_message
from server.room import Room, RoomState
from server.session import Session, SessionState
from server.settings import ServerSettings
from server.store import Lease, RoomStore
from tests.games import SchemaVault, Vault

EXAMPLES = int(os.environ.get("STATEROOM_VIEWS_EXAMPLES", 1500))
PLAYERS = [f"p{i}" for i in range(4)]
SECRET = re.compile(rb"secret-([a-z0-9+]+)-(\d{6})")
V2_FIELDS = {"t", "tick", "shared", "ack", "private", "events"}
ROOM = "vault-room"

# A resumed seat whose client applied no state yet sends since=0 (client/sdk.py sends its
# last delivered tick, 0 before any), and the server then sends only the current tick's
# events (server/room.py, Room._frame_for: ``0 < session.since``): the events of the
# ticks between the seat's join and that first state are lost. See
# test_resume_before_any_state_gets_the_join_tick_events. While this holds, the property
# test excuses exactly those events (and checks everything else); set it False with the fix.
KNOWN_SINCE_ZERO_LOSS = False


class _NoStore:
    """The publish path must not touch the store (durable=False, no ``_tick``)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the room used its store ({name}) outside _tick")


class FakeSession:
    """What ``Room.attach`` / ``_publish`` / ``_frame_for`` use of a Session."""

    def __init__(self, codec: Codec, player_id: str, since: int) -> None:
        self.codec = codec
        self.player_id = player_id
        self.name = f"name-{player_id}"
        self.since = since
        self.welcome_tick = -1
        self.needs_keyframe = True
        self.resumed = False
        self.private_stream: DeltaEncoder | None = None
        self.token_exp = 2**31
        self.state = SessionState.AUTHENTICATING
        self.frames: list[bytes] = []
        self.close_code: int | None = None

    def transition(self, new: SessionState) -> None:
        assert self.state is SessionState.AUTHENTICATING and new is SessionState.JOINED
        self.state = new

    def send_frame(self, frame: bytes) -> bool:
        if self.close_code is not None:  # a closed connection writes nothing more
            return False
        self.frames.append(frame)
        return True

    def send_in_place(self, buffer: bytearray, offset: int) -> bool:
        return self.send_frame(bytes(buffer[offset:]))

    def send(self, message: dict[str, Any]) -> bool:
        return self.send_frame(self.codec.encode(message))

    def send_error(
        self, code: Any, message: str, seq: int | None = None, expected: int | None = None
    ) -> None:
        self.send(error_message(code, message, seq, expected))

    def report_gap(self, seq: int, expected: int) -> None:
        raise AssertionError(f"{self.player_id}: input {seq} out of order (expected {expected})")

    def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = int(code)
            self.state = SessionState.CLOSING


def as_session(fake: FakeSession) -> Session:
    return cast(Session, fake)


@dataclass
class Lifetime:
    """One seat of a player, from the welcome that created it (its join applies at
    ``start + 1``) to its leave: the events its clients applied, and the last tick."""

    start: int
    last: int
    delivered: list[Any] = field(default_factory=list)
    excused: set[int] = field(default_factory=set)  # event ids (KNOWN_SINCE_ZERO_LOSS)


@dataclass
class Client:
    """One player's client, as the SDK behaves: new decoders per connection, ``since`` =
    the last tick whose state it applied."""

    player_id: str
    codec: Codec
    last_tick: int = 0
    session: FakeSession | None = None
    read: int = 0
    states: list[tuple[int, list[Any]]] = field(default_factory=list)  # this connection's
    shared: DeltaDecoder = field(default_factory=DeltaDecoder)
    private: DeltaDecoder = field(default_factory=DeltaDecoder)
    next_tick: int = 0
    keyframe_due: bool = True
    resumed_since_zero: bool = False
    lifetimes: list[Lifetime] = field(default_factory=list)
    own_secrets: int = 0


class World:
    """The room (and its successors), the ground truth of every tick, and the clients."""

    def __init__(self, game_class: type[Game], codecs: list[Codec]) -> None:
        self.game_class = game_class
        self.schema = game_class.state_schema
        self.settings = ServerSettings(durable=False)
        self.metrics = ServerMetrics()
        self.epoch = 1
        self.room = self._room(RoomEngine(game_class.create(7)))
        self.clients = {p: Client(p, c) for p, c in zip(PLAYERS, codecs, strict=True)}
        # Ground truth, by tick (ticks go on across takeovers).
        self.public: dict[int, Any] = {}
        self.quantized: dict[int, Any] = {}
        self.views: dict[int, dict[str, Any]] = {}
        self.acks: dict[int, dict[str, int]] = {}
        self.emitted: dict[int, list[Emitted]] = {}
        self.by_id: dict[int, Emitted] = {}
        # What RoomStore.append keeps in the events stream: packed events by tick.
        self.recorded: dict[int, bytes] = {}

    def _room(self, engine: RoomEngine) -> Room:
        room = Room(
            ROOM,
            self.game_class,
            engine,
            Lease(ROOM, self.epoch, f"server-{self.epoch}"),
            cast(RoomStore, _NoStore()),
            self.settings,
            self.metrics,
            f"server-{self.epoch}",
            lambda room: None,
        )
        room.transition(RoomState.RUNNING)  # as start() does, without the task
        return room

    # -- the tick, as Room._tick does it minus the journal and the lease ---------------

    def tick(self) -> None:
        room = self.room
        outcome: TickOutcome = room.engine.step()
        tick = outcome.tick
        self.public[tick] = copy.deepcopy(dict(outcome.state))
        self.quantized[tick] = quantize_view(self.schema, outcome.state)
        self.views[tick] = {p: copy.deepcopy(room.engine.view(p)) for p in room.engine.seats}
        self.acks[tick] = {p: seat.ack for p, seat in room.engine.seats.items()}
        self.emitted[tick] = list(outcome.emitted)
        for event in outcome.emitted:
            self.by_id[event.data["id"]] = event
        if outcome.emitted:
            self.recorded[tick] = msgpack.packb(packed(outcome.emitted), use_bin_type=True)
        keep = room.event_log.keep_ticks
        for old in [t for t in self.recorded if t < tick - keep]:  # XTRIM MINID tick-keep
            del self.recorded[old]
        room.event_log.record(tick, outcome.emitted)
        room._publish(outcome)
        for client in self.clients.values():
            self.consume(client)

    # -- what a client reads -----------------------------------------------------------------

    def consume(self, client: Client) -> None:
        session = client.session
        if session is None:
            return
        for frame in session.frames[client.read :]:
            self.check_frame(client, session, frame)
        client.read = len(session.frames)

    def check_frame(self, client: Client, session: FakeSession, frame: bytes) -> None:
        me = client.player_id
        for owners, number in SECRET.findall(frame):
            allowed = owners.decode().split("+")
            assert me in allowed, (
                f"{me} received secret {owners.decode()}-{number.decode()} of {allowed}"
            )
            client.own_secrets += 1
        if client.codec.text:
            message = orjson.loads(frame)
        else:
            message = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        kind = message["t"]
        if kind == "welcome":
            assert message["tick"] == session.welcome_tick
            assert message["v"] == client.codec.version
            client.next_tick = session.welcome_tick + 1
            return
        assert kind == "state", message
        tick = message["tick"]
        assert tick == client.next_tick, f"{me}: state of tick {tick}, expected {client.next_tick}"
        client.next_tick = tick + 1
        assert message["ack"] == self.acks[tick][me]
        if client.codec.version < PROTOCOL_V2:
            assert set(message) == {"t", "tick", "state", "ack"}, message
            assert message["state"] == self.public[tick]
            return
        assert set(message) <= V2_FIELDS, message
        keyframe_due, client.keyframe_due = client.keyframe_due, False
        shared, private = message["shared"], message["private"]
        if keyframe_due:
            assert "base" not in shared and "base" not in private, (
                f"{me}: tick {tick} should carry keyframes"
            )
        assert client.shared.apply(shared) == self.quantized[tick], f"{me}: shared at {tick}"
        assert client.private.apply(private) == self.views[tick][me], f"{me}: private at {tick}"
        events = message.get("events", [])
        assert events or "events" not in message  # never an empty list
        for event in events:
            assert self.by_id[event["id"]].for_player(me), f"{me} got {event}"
        if client.resumed_since_zero:
            client.resumed_since_zero = False
            if KNOWN_SINCE_ZERO_LOSS:
                lifetime = client.lifetimes[-1]
                lifetime.excused.update(
                    e.data["id"]
                    for t in range(lifetime.last + 1, tick)
                    for e in self.emitted[t]
                    if e.for_player(me)
                )
        client.states.append((tick, events))

    # -- connections ---------------------------------------------------------------------------

    def end_connection(self, client: Client, unapplied: int) -> None:
        """The client is done with its connection; it applied all but its last
        ``unapplied`` states (they were in flight, or not processed yet)."""
        session = client.session
        assert session is not None
        self.consume(client)
        applied = client.states[: max(0, len(client.states) - unapplied)]
        lifetime = client.lifetimes[-1]
        for tick, events in applied:
            lifetime.delivered.extend(events)
            lifetime.last = tick
            client.last_tick = tick
        client.session = None
        client.states = []
        client.read = 0

    def connect(self, client: Client) -> None:
        session = FakeSession(client.codec, client.player_id, since=client.last_tick)
        seated = client.player_id in self.room.engine.seats
        try:
            resumed = self.room.attach(as_session(session))
        except RoomFull:  # its seat is still leaving: join again in a moment
            assert self.room.engine.seats[client.player_id].leaving
            return
        assert resumed == seated
        assert session.state is SessionState.JOINED
        assert session.welcome_tick == self.room.engine.tick
        client.session = session
        client.shared, client.private = DeltaDecoder(), DeltaDecoder()
        client.keyframe_due = True
        client.next_tick = -1  # set by the welcome
        if not resumed:
            client.lifetimes.append(Lifetime(start=session.welcome_tick, last=session.welcome_tick))
        client.resumed_since_zero = resumed and session.since == 0
        self.consume(client)  # the welcome

    def disconnect(self, client: Client, unapplied: int) -> None:
        session = client.session
        if session is None:
            return
        self.end_connection(client, unapplied)
        self.room.detach(as_session(session))
        session.close(1000, "connection ended")

    def reconnect(self, client: Client, unapplied: int) -> None:
        """A new connection while the server still holds the old one (it gets replaced)."""
        old = client.session
        if old is None:
            return
        self.end_connection(client, unapplied)
        self.connect(client)
        if client.session is not None:
            assert old.close_code is not None, "the replaced connection was not closed"
        self.room.detach(as_session(old))  # its handler ends later: a no-op now

    def leave(self, client: Client) -> None:
        session = client.session
        if session is None:
            return
        self.room.leave(as_session(session))
        session.close(1000, "left the room")
        self.end_connection(client, 0)
        self.room.detach(as_session(session))
        # The client keeps the last tick it applied: if the leave never took effect (a
        # takeover lost it while it was queued), its next join resumes the seat, and
        # since=0 would ask for every event since the join again.

    def send_input(self, client: Client, action: Any) -> None:
        session = client.session
        seat = self.room.engine.seats.get(client.player_id)
        if session is None or seat is None or seat.leaving:
            return
        if seat.pending >= self.room.engine.max_pending_per_player:
            return  # the client would wait (queue_full is not what this test is about)
        if isinstance(action, tuple):
            kind, arg = action
            data: Any = ["move", arg] if kind == "move" else ["whisper", PLAYERS[arg]]
        else:
            data = action
        self.room.on_input(as_session(session), InputMessage(seat.accepted + 1, data))

    def sync(self, client: Client) -> None:
        session = client.session
        if session is not None and client.codec.version >= PROTOCOL_V2:
            session.needs_keyframe = True  # what the endpoint does on a sync message
            client.keyframe_due = True

    def takeover(self, unapplied: int) -> None:
        """The owner dies; another server rebuilds the room from its snapshot (packed
        like a checkpoint) and the events the store kept; connected players resume."""
        old = self.room
        snapshot = msgpack.unpackb(
            msgpack.packb(old.engine.snapshot(), use_bin_type=True),
            raw=False,
            strict_map_key=False,
        )
        old.fence("taken over by the test")
        self.epoch += 1
        self.room = self._room(RoomEngine.restore(self.game_class, snapshot))
        self.room.event_log.load(
            (t, msgpack.unpackb(v, raw=False, strict_map_key=False))
            for t, v in sorted(self.recorded.items())
        )
        for client in self.clients.values():
            if client.session is not None:
                assert client.session.close_code is not None, "fence left a session open"
                self.end_connection(client, unapplied)
                self.connect(client)

    # -- the end -----------------------------------------------------------------------------

    def finish(self) -> None:
        for client in self.clients.values():
            if client.session is not None:
                self.end_connection(client, 0)
        for client in self.clients.values():
            if client.codec.version < PROTOCOL_V2:
                continue
            me = client.player_id
            for lifetime in client.lifetimes:
                expected = [
                    e.data
                    for t in range(lifetime.start + 1, lifetime.last + 1)
                    for e in self.emitted[t]
                    if e.for_player(me) and e.data["id"] not in lifetime.excused
                ]
                got = [e for e in lifetime.delivered if e["id"] not in lifetime.excused]
                assert [e["id"] for e in got] == [e["id"] for e in expected], (
                    f"{me}: events of ticks {lifetime.start + 1}..{lifetime.last}"
                )
                assert got == expected


# -- scripts ------------------------------------------------------------------------------------

player = st.integers(0, len(PLAYERS) - 1)
unapplied = st.integers(0, 2)
action = st.one_of(
    st.sampled_from(["draw", "draw", "discard", "note", "group"]),
    st.tuples(st.just("move"), st.floats(-5, 5, allow_nan=False, allow_infinity=False)),
    st.tuples(st.just("whisper"), player),
)
ticks = st.tuples(st.just("tick"), st.integers(1, 3))
inputs = st.tuples(st.just("input"), player, action)
step = st.one_of(
    ticks,
    ticks,
    inputs,
    inputs,
    inputs,
    st.tuples(st.just("connect"), player),
    st.tuples(st.just("disconnect"), player, unapplied),
    st.tuples(st.just("reconnect"), player, unapplied),
    st.tuples(st.just("sync"), player),
    st.tuples(st.just("leave"), player),
    st.tuples(st.just("takeover"), unapplied),
)
codec = st.sampled_from([MSGPACK_V2, MSGPACK_V2, JSON_V2, JSON_V2, MSGPACK, JSON])
FAST = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def run(game_class: type[Game], codecs: list[Codec], first: list[int], script: list[Any]) -> World:
    world = World(game_class, codecs)
    for index in first:
        world.connect(world.clients[PLAYERS[index]])
    for op in script:
        kind = op[0]
        if kind == "tick":
            for _ in range(op[1]):
                world.tick()
        elif kind == "takeover":
            world.takeover(op[1])
        else:
            client = world.clients[PLAYERS[op[1]]]
            if kind == "connect":
                if client.session is None:
                    world.connect(client)
            elif kind == "disconnect":
                world.disconnect(client, op[2])
            elif kind == "reconnect":
                world.reconnect(client, op[2])
            elif kind == "input":
                world.send_input(client, op[2])
            elif kind == "sync":
                world.sync(client)
            elif kind == "leave":
                world.leave(client)
    world.tick()
    world.tick()
    world.finish()
    return world


@pytest.mark.parametrize("game_class", [Vault, SchemaVault], ids=["generic", "schema"])
@FAST
@given(
    codecs=st.lists(codec, min_size=len(PLAYERS), max_size=len(PLAYERS)),
    first=st.lists(player, min_size=1, max_size=len(PLAYERS), unique=True),
    script=st.lists(step, min_size=4, max_size=40),
)
def test_sessions_receive_exactly_their_views_and_events(
    game_class: type[Game], codecs: list[Codec], first: list[int], script: list[Any]
) -> None:
    run(game_class, codecs, first, script)


def test_secrets_are_scanned_and_found() -> None:
    """The leak scan is not vacuous: own secrets are found, in both encodings."""
    script: list[Any] = [
        ("tick", 1),
        ("input", 0, "draw"),
        ("input", 1, "note"),
        ("input", 2, ("whisper", 0)),
        ("input", 3, "group"),
        ("tick", 2),
        ("disconnect", 0, 1),
        ("tick", 1),
        ("connect", 0),
        ("takeover", 0),
        ("tick", 1),
    ]
    world = run(Vault, [MSGPACK_V2, JSON_V2, MSGPACK_V2, JSON_V2], [0, 1, 2, 3], script)
    assert all(c.own_secrets > 0 for c in world.clients.values())
    assert all(len(c.lifetimes) == 1 and c.lifetimes[0].delivered for c in world.clients.values())


def test_resume_before_any_state_gets_the_join_tick_events() -> None:
    """Join, lose the connection before the first state, tick (the join applies and emits
    a private hello), resume: the SDK sends since=0 (no state applied), and the hello must
    still arrive."""
    world = World(Vault, [MSGPACK_V2, MSGPACK_V2, MSGPACK_V2, MSGPACK_V2])
    client = world.clients["p0"]
    world.connect(client)
    world.disconnect(client, 0)
    world.tick()  # the join applies: {"joined": "p0"} and {"hello": secret} for p0
    world.connect(client)  # resumed, since=0
    world.tick()
    world.end_connection(client, 0)
    delivered = client.lifetimes[0].delivered
    assert [e for e in delivered if "hello" in e], delivered
