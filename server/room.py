"""A running room: drives the engine at the tick rate, makes each tick durable, publishes it.

Per tick: expire grace periods, ``engine.step()``, append the tick's events to
the journal in Redis (fenced by the lease epoch, which also renews the
lease), and only then send the state, with each player's ack, to every
player. Publishing only durable ticks is what lets another server rebuild
the room without any client seeing time go backwards or an acked input
disappear. Checkpoints are packed on the tick but written in the background.

Implied ticks: a tick with no event (no input, join or leave) that emits nothing is
durable already, since the game is deterministic: the journaled tick before it
implies it. Up to ``implied_ticks`` of them follow a journaled tick without an entry
of their own, published at once; each entry stores that allowance, and whoever
rebuilds the room replays the missing ticks and runs the allowance's ticks after the
last entry (``RoomEngine.catch_up``), so it never publishes a tick number this owner
may have published already. A quiet room writes every ``implied_ticks + 1`` ticks.

Rooms do not own a task: the event loop's ``Ticker`` for their tick rate
(``server.ticker``) calls ``on_clock`` of every room at each multiple of the
period, and a healthy tick runs without awaiting anything (its journal write is
a future whose callback publishes). Retries, renewals and closing run as a task.

Lifecycle: CREATING → RUNNING → DRAINING → CLOSED (or RUNNING → CLOSED when
fenced or empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import Any

import msgpack
from redis.exceptions import ResponseError

from server.engine import RoomEngine, RoomFull, TickOutcome, Verdict
from server.errors import IllegalInput, OwnershipLost
from server.eventlog import EventLog, packed
from server.game import Game
from server.lease_keeper import LeaseKeeper, keeper_for
from server.metrics import ServerMetrics
from server.overload import LoadGauge, load_gauge
from server.protocol import (
    PROTOCOL_V2,
    CloseCode,
    ErrorCode,
    InputMessage,
    StateFrame,
    StateFrameV2,
    redirect_message,
    welcome_message,
)
from server.protocol.delta import DeltaEncoder
from server.redis_errors import REDIS_DOWN
from server.session import Session, SessionState
from server.settings import ServerSettings
from server.store import Lease, RoomStore, fenced_error
from server.takeover import TakeoverTimeline
from server.ticker import Ticker, ticker_for
from server.transport.frames import HEADER_ROOM

log = logging.getLogger("stateroom.room")


class RoomState(Enum):
    CREATING = "creating"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"


_TRANSITIONS = {
    RoomState.CREATING: {RoomState.RUNNING, RoomState.CLOSED},
    RoomState.RUNNING: {RoomState.DRAINING, RoomState.CLOSED},
    RoomState.DRAINING: {RoomState.CLOSED},
    RoomState.CLOSED: set(),
}

# Transient: retried while the lease allows (a cluster shard's CLUSTERDOWN/TRYAGAIN too).
_REDIS_TRANSIENT = (*REDIS_DOWN, asyncio.TimeoutError)

# A room nobody has been connected to for this long pauses (see "idle rooms" below).
PAUSE_AFTER_S = 1.0


def _no_fallback() -> str:
    return ""


class Room:
    """One room owned by this process under one lease."""

    def __init__(
        self,
        name: str,
        game_class: type[Game],
        engine: RoomEngine,
        lease: Lease,
        store: RoomStore,
        settings: ServerSettings,
        metrics: ServerMetrics,
        server_id: str,
        on_closed: Callable[[Room], None],
    ) -> None:
        self.name = name
        self.game_class = game_class
        self.engine = engine
        self.lease = lease
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.server_id = server_id
        self.on_closed = on_closed
        self.state = RoomState.CREATING
        self.sessions: dict[str, Session] = {}
        self.disconnected_at: dict[str, float] = {}
        self.empty_since: float | None = None
        # Joins placed here and not seated yet (their quota slot is being taken): a room
        # nobody played in closes as soon as it is empty, but not under its creator.
        self.joining = 0
        # Where this room goes if this server dies (set by the server: its successor's
        # URL among the live peers, "" when none): the welcome's ``fallback``.
        self.fallback_url: Callable[[], str] = _no_fallback
        self.creator = ""  # the player charged for this room's creation (quotas)
        self.join_code = ""  # a private room's code in the directory (from its meta)
        self.deleted = False  # closed for good and its keys deleted (not a move)
        # Whether any input was ever applied here (a rebuilt room: by a seat's ack).
        self.played = any(seat.accepted > 0 for seat in engine.seats.values())
        # Game events of one grace period of ticks, for players who resume after missing
        # some (filled from Redis by whoever rebuilds the room: see load_events).
        self.event_log = EventLog(keep_ticks=int(settings.grace_s * game_class.tick_rate) + 1)
        # Protocol v2: the shared public state's delta stream (one per room), and whether
        # the game has private parts at all (then each v2 session has its own stream).
        self.shared_stream: DeltaEncoder | None = None
        self.has_views = game_class.view is not Game.view
        self.lease_renewed_at = time.monotonic()
        self.last_checkpoint_tick = engine.tick
        self.last_checkpoint_at = time.monotonic()
        self._checkpoint_task: asyncio.Task[None] | None = None
        # The tick loop: the common clock of this tick rate, a tick in flight (journal
        # write pending or on the slow path), a slot missed meanwhile, the slow path.
        self._ticker: Ticker | None = None
        self._in_tick = False
        self._missed = False
        self._journal_pending: asyncio.Future[Any] | None = None
        # The tick whose journal write is in flight (one at a time: ``_in_tick``), read
        # by ``_journaled``, so the write's callback is a bound method, not a partial.
        self._pending_outcome: TickOutcome | None = None
        self._pending_started = 0.0
        self._pending_sent_at = 0.0
        # Implied ticks (module docstring): the last tick this owner may publish without
        # a journal entry (none before its first journaled tick), and the allowance.
        self._implied_until = -1
        self._claim_tick = -1  # journaled by this owner's claim (RoomEngine.catch_up)
        self._implied_ticks = settings.implied_ticks
        # A rebuilt room's first tick from its catch-up (RoomEngine.catch_up): one that
        # emitted, journaled first; or the claim tick, published as it is.
        self.caught_up: TickOutcome | None = None
        self._task: asyncio.Task[None] | None = None
        # Settings the tick reads every time, as plain attributes.
        self._durable = settings.durable
        self._lease_span_s = (settings.lease_ms - settings.lease_margin_ms) / 1000
        self._renew_every_s = settings.lease_ms / 3000
        self._checkpoint_every_s = settings.checkpoint_every_s
        # The first checkpoint comes after a random half to whole interval: the rooms a
        # survivor rebuilt in one turn (or a crowd created at once) would otherwise all
        # checkpoint in the same tick, every interval (500 packs and writes in one turn).
        self._checkpoint_due = self.last_checkpoint_at + settings.checkpoint_every_s * (
            0.5 + random.random() / 2
        )
        self._load: LoadGauge | None = None  # the event loop's (set by start)
        # Idle rooms: since when nobody is connected (None: someone is), whether the room
        # is paused, its timer for its next tick, the keeper of its lease while paused.
        self.unwatched_since: float | None = time.monotonic()
        self.paused = False
        self._wake_timer: asyncio.TimerHandle | None = None
        self._keeper: LeaseKeeper | None = None
        # A room taken over from a previous owner stamps its takeover record (set by the
        # server that rebuilt it); None for a room created here.
        self.timeline: TakeoverTimeline | None = None
        # Counters for the registry's room_stats, sampled at each heartbeat (no per-tick
        # allocation): ticks timed, their seconds, accepted inputs, last checkpoint size.
        self.ticks_timed = 0
        self.tick_seconds_total = 0.0
        self.inputs_total = 0
        self.state_bytes = 0
        self._sample = (0, 0.0, 0, time.monotonic())
        self.tick_ms = 0.0
        self.inputs_per_s = 0.0
        now = time.monotonic()
        # After a takeover nobody is connected yet: every seat starts its grace period.
        for player_id in engine.seats:
            self.disconnected_at[player_id] = now

    # -- lifecycle ----------------------------------------------------------------

    def transition(self, new: RoomState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"room {self.name} cannot go from {self.state.value} to {new.value}")
        # A room starting is logged by its claim ("claimed room=..."); one line less per
        # room when a survivor rebuilds hundreds at once.
        level = logging.DEBUG if new is RoomState.RUNNING else logging.INFO
        log.log(
            level,
            "room=%s state %s -> %s epoch=%d",
            self.name,
            self.state.value,
            new.value,
            self.lease.epoch,
        )
        self.state = new

    def start(self) -> None:
        """Run on the common clock. A room taken over ticks once at once: its players are
        on their way back and its first tick (journaled, so the lease is renewed) need
        not wait for the next slot; the rooms rebuilt in the same turn journal it in one
        pipeline."""
        self.transition(RoomState.RUNNING)
        self._load = load_gauge(self.settings.overload_lag_ms / 1000)
        self._ticker = ticker_for(self.tick_rate, self.settings.tick_phases)
        self._ticker.add(self)
        if self.timeline is not None:
            self._begin_tick()

    def claimed(self, tick: int, allowance: int) -> None:
        """This owner's claim journaled ``tick`` (the rebuild's last, ``caught_up``) with
        ``allowance`` implied ticks after it: it is published with no write of its own
        (one for its game events, if any), and so are the eventless ticks after it."""
        self._claim_tick = tick
        self._implied_until = tick + allowance

    @property
    def running(self) -> bool:
        return self.state is RoomState.RUNNING

    @property
    def tick_rate(self) -> int:
        return self.game_class.tick_rate

    # -- players ----------------------------------------------------------------

    def attach(self, session: Session) -> bool:
        """Seat (or re-seat) a session's player and send the welcome; True if resumed."""
        player_id = session.player_id
        resumed = not self.engine.offer_join(player_id, session.name)
        previous = self.sessions.get(player_id)
        if previous is not None and previous is not session:
            previous.close(CloseCode.REPLACED, "replaced by a newer connection of the same player")
            self.metrics.evicted.labels("replaced").inc()
        self.sessions[player_id] = session
        self.disconnected_at.pop(player_id, None)
        self.empty_since = None
        self.unwatched_since = None
        if self.paused:
            self._resume()
        session.transition(SessionState.JOINED)
        seat = self.engine.seats[player_id]
        session.welcome_tick = self.engine.tick
        session.send(
            welcome_message(
                room=self.name,
                game=self.game_class.name,
                player_id=player_id,
                server=self.server_id,
                epoch=self.lease.epoch,
                tick=self.engine.tick,
                tick_rate=self.tick_rate,
                ack=seat.ack,
                resumed=resumed,
                token_exp=session.token_exp,
                version=session.codec.version,
                options=self.engine.options,
                fallback=self.fallback_url(),
            )
        )
        session.needs_keyframe = True  # v2: the first state carries keyframes
        session.resumed = resumed  # v2: only a resumed seat gets the events it missed
        if self.timeline is not None:
            self.timeline.player_back(player_id)
        log.info(
            "join room=%s player=%s resumed=%s ack=%d", self.name, player_id, resumed, seat.ack
        )
        self.metrics.players.inc()
        return resumed

    def detach(self, session: Session) -> None:
        """A connection ended; the seat waits out its grace period unless the player left."""
        if self.sessions.get(session.player_id) is session:
            del self.sessions[session.player_id]
            self.metrics.players.dec()
            seat = self.engine.seats.get(session.player_id)
            if seat is not None and not seat.leaving:  # a player who left waits for nothing
                self.disconnected_at[session.player_id] = time.monotonic()
            if not self.sessions:
                self.unwatched_since = time.monotonic()

    def leave(self, session: Session) -> None:
        self.engine.offer_leave(session.player_id)
        self.disconnected_at.pop(session.player_id, None)

    def on_input(self, session: Session, message: InputMessage) -> None:
        try:
            verdict = self.engine.offer_input(session.player_id, message.seq, message.data)
        except IllegalInput as exc:
            self.metrics.traffic.count_input("illegal")
            session.send_error(ErrorCode.ILLEGAL_INPUT, str(exc), message.seq)
            return
        if verdict is Verdict.ACCEPTED:
            self.metrics.traffic.inputs_accepted += 1
            self.inputs_total += 1
            return
        self.metrics.traffic.count_input(verdict.value)
        if verdict is Verdict.OUT_OF_ORDER:
            seat = self.engine.seats[session.player_id]
            session.report_gap(message.seq, seat.accepted + 1)
        elif verdict is Verdict.QUEUE_FULL:
            session.send_error(
                ErrorCode.QUEUE_FULL,
                "too many inputs pending for this tick; resend from this seq",
                message.seq,
                message.seq,
            )
        elif verdict is Verdict.NOT_SEATED:
            session.send_error(ErrorCode.NOT_JOINED, "not seated in this room", message.seq)

    # -- the tick loop ------------------------------------------------------------
    #
    # The server-wide Ticker (server/ticker.py) calls on_clock at every multiple of the
    # period. A tick is synchronous up to the journal write, whose future calls
    # _journaled when Redis answers; only errors, retries, renewals without durability
    # and closing take a task (the slow path), never the tick of a healthy room.

    def on_clock(self, now: float) -> None:
        """One slot of the common clock: start this room's next tick, unless the last
        one is still in flight (then it is late: counted, and run as soon as that ends;
        an unanswered journal write past the lease deadline stops the room)."""
        if self.state is not RoomState.RUNNING:
            self._unclock()
            return
        if self._in_tick:
            if not self._missed:
                self._missed = True
                if self.ticks_timed:  # (not the first tick, started off the clock: start)
                    self.metrics.tick_overruns.inc()
            if self._journal_pending is not None and time.monotonic() >= self._lease_deadline():
                if self._overloaded_until() > time.monotonic():
                    return  # our own loop is late: the write's answer decides (see below)
                self._journal_pending.cancel()
                self.fence(f"room {self.name}: could not renew the lease in time")
            return
        self._begin_tick()

    def _overloaded_until(self) -> float:
        """How long past the lease margin this room waits for its journal write while the
        event loop is late (0: it is not; ``server.overload``): a loop that is merely late
        must not stop its rooms, or they move to peers that may be just as busy (a storm).

        Safe because every write is fenced in Redis: a write that lands is proof the lease
        was ours (and renews it), one that comes too late is refused (FENCED), and nothing
        is published until the answer is read. The wait is bounded by one more lease, for
        an answer that never comes."""
        load = self._load
        if load is None or not load.late:
            return 0.0
        return self._lease_deadline() + self.settings.lease_ms / 1000

    def _begin_tick(self) -> None:
        started = time.perf_counter()
        self._in_tick = True
        try:
            outcome = self.caught_up
            if outcome is not None:
                self.caught_up = None
            else:
                if self.disconnected_at:
                    self._expire_seats()
                outcome = self.engine.step()
            sent_at = time.monotonic()
            if not self._durable:
                if sent_at - self.lease_renewed_at >= self._renew_every_s:
                    self._slow(self._renew_then_finish(outcome, started))
                else:
                    self._finish(outcome, started)
                return
            if sent_at >= self.lease_renewed_at + self._lease_span_s and (
                sent_at >= self._overloaded_until()
            ):
                raise OwnershipLost(f"room {self.name}: could not renew the lease in time")
            emitted = outcome.emitted
            # Implied (module docstring): within the allowance of the last journaled
            # tick, and of a lease that is ours without counting an overload's grace.
            implied = (
                not emitted
                and not outcome.events
                and outcome.tick <= self._implied_until
                and sent_at < self.lease_renewed_at + self._lease_span_s
            )
            if not implied:
                future = self.store.append_soon(
                    self.lease,
                    outcome.tick,
                    outcome.events,
                    packed(emitted) if emitted else [],
                    self.event_log.keep_ticks,
                    self._implied_ticks,
                    outcome.tick == self._claim_tick,
                )
        except OwnershipLost as exc:
            self._in_tick = False
            self.fence(str(exc))
            return
        except Exception:
            self._failed()
            return
        if implied:
            self._finish(outcome, started)
            return
        self._journal_pending = future
        self._pending_outcome = outcome
        self._pending_started = started
        self._pending_sent_at = sent_at
        future.add_done_callback(self._journaled)

    def _journaled(self, future: asyncio.Future[Any]) -> None:
        """The tick's journal write answered: publish it, or hand the error to the slow
        path (which retries as long as the lease allows)."""
        outcome = self._pending_outcome
        self._journal_pending = self._pending_outcome = None
        if self.state is not RoomState.RUNNING or future.cancelled() or outcome is None:
            self._in_tick = False
            return
        started, sent_at = self._pending_started, self._pending_sent_at
        error = future.exception()
        if error is None:
            self.metrics.journal_seconds.observe(time.monotonic() - sent_at)
            self.lease_renewed_at = sent_at
            self._implied_until = max(self._implied_until, outcome.tick + self._implied_ticks)
            self._finish(outcome, started)
            return
        error = fenced_error(self.lease, error)
        if isinstance(error, OwnershipLost):
            self._in_tick = False
            self.fence(str(error))
            return
        self._slow(self._retry_then_finish(outcome, started, error))

    async def _retry_then_finish(
        self, outcome: TickOutcome, started: float, error: BaseException
    ) -> None:
        await self._append_durably(
            outcome.tick, outcome.events, packed(outcome.emitted), failed=error
        )
        self._implied_until = max(self._implied_until, outcome.tick + self._implied_ticks)
        self._finish(outcome, started)

    async def _renew_then_finish(self, outcome: TickOutcome, started: float) -> None:
        await self._renew_if_due()
        self._finish(outcome, started)

    def _finish(self, outcome: TickOutcome, started: float) -> None:
        """The tick is durable: publish it, checkpoint if due, close an abandoned room."""
        if self.state is RoomState.RUNNING:
            try:
                if not self.played:
                    self.played = any(event[0] == "i" for event in outcome.events)
                self.event_log.record(outcome.tick, outcome.emitted)
                if self.timeline is not None:
                    self.timeline.first_tick(outcome.tick)  # durable now, published next
                if self.sessions:
                    self._publish(outcome)
                now = time.monotonic()
                if self._durable and now >= self._checkpoint_due:
                    self._maybe_checkpoint()
                if self.sessions or self.engine.seats:
                    self.empty_since = None  # (what _is_abandoned would say, without a call)
                elif self._is_abandoned():
                    # Off the clock first: an implied next tick needs no round trip, so
                    # it could come (and close the room again) before close_empty runs.
                    self._unclock()
                    self._in_tick = False
                    self._slow(self.close_empty())
                    return
            except Exception:
                self._failed()
                return
        elapsed = time.perf_counter() - started
        self.metrics.tick_seconds.observe(elapsed)
        self.ticks_timed += 1
        self.tick_seconds_total += elapsed
        self._in_tick = False
        if self.state is not RoomState.RUNNING:
            return
        if self.unwatched_since is not None and self._idle():
            self._pause()
        elif self._missed:
            self._missed = False  # late: the next tick now rather than at the next slot
            self._begin_tick()

    # -- idle rooms -------------------------------------------------------------------
    #
    # A room nobody has watched for PAUSE_AFTER_S (and whose game does not tick
    # unwatched) leaves the ticker and stops ticking. While paused it wakes on a timer
    # of its own only for a tick when a seat's grace period ends or the empty room's time
    # is up (that tick frees the seat or closes the room). Its lease is renewed every
    # lease_ms / 3 by the server's lease keeper (server/lease_keeper.py: one timer and
    # one call for all paused rooms a slot). A player who connects resumes it at once.

    def _idle(self) -> bool:
        since = self.unwatched_since
        return (
            since is not None
            and not self.sessions
            and not self.game_class.ticks_unwatched
            and time.monotonic() - since >= PAUSE_AFTER_S
        )

    def _pause(self) -> None:
        self.paused = True
        self._missed = False
        self._unclock()
        self.metrics.rooms_paused.inc()
        self._keeper = keeper_for(self.store)
        self._keeper.add(self)
        self._plan_wake()
        log.debug("room=%s paused at tick %d (nobody connected)", self.name, self.engine.tick)

    def _resume(self, clock: bool = True) -> None:
        """Tick again from the next slot of the common clock (``clock``: False for a
        room that is closing)."""
        self.paused = False
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        if self._keeper is not None:
            self._keeper.discard(self)
            self._keeper = None
        self.metrics.rooms_paused.dec()
        if clock and self.state is RoomState.RUNNING and self._ticker is None:
            self._ticker = ticker_for(self.tick_rate, self.settings.tick_phases)
            self._ticker.add(self)
        log.debug("room=%s resumed at tick %d", self.name, self.engine.tick)

    def _next_event_at(self) -> float:
        """When a paused room must tick again: the first grace period to end, or the
        empty room's closing time (inf: neither)."""
        settings = self.settings
        seats = self.engine.seats
        at = math.inf
        for player_id, since in self.disconnected_at.items():
            seat = seats.get(player_id)
            played = seat is not None and seat.accepted > 0
            at = min(at, since + (settings.grace_s if played else settings.unplayed_grace_s))
        if not seats and not self.sessions and self.empty_since is not None:
            limit = settings.empty_room_s if self.played else 0.0
            at = min(at, self.empty_since + limit)
        return at

    def _plan_wake(self) -> None:
        """The paused room's own timer, for its next tick only (a grace period ending,
        the empty room's time up); its lease is renewed by the server's keeper."""
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        at = self._next_event_at()
        if at != math.inf:
            delay = max(0.0, at - time.monotonic())
            self._wake_timer = asyncio.get_running_loop().call_later(delay, self._wake)

    def _wake(self) -> None:
        self._wake_timer = None
        if not self.paused or self.state is not RoomState.RUNNING:
            return
        if time.monotonic() < self._next_event_at():
            self._plan_wake()  # (a timer fired a hair early)
            return
        self._resume()
        self._begin_tick()

    # What the lease keeper (server/lease_keeper.py) asks of a paused room.

    def renew_due_at(self) -> float:
        return self.lease_renewed_at + self._renew_every_s

    def renew_deadline(self) -> float:
        return max(self._lease_deadline(), self._overloaded_until())

    def lease_lost(self, reason: str) -> None:
        self.fence(reason)

    def lease_renewed(self, sent_at: float, error: BaseException | None) -> None:
        if self.state is not RoomState.RUNNING:
            return
        if error is None:
            self.lease_renewed_at = max(self.lease_renewed_at, sent_at)
            return
        error = fenced_error(self.lease, error)
        if isinstance(error, OwnershipLost):
            self.fence(str(error))
            return
        # Tried again at the keeper's next slot, until the lease deadline (then it stops);
        # the keeper logs the failed call once for all its rooms.
        log.debug("room=%s lease renewal failed (%s); retrying", self.name, error)

    def _slow(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run the rest of a tick (or the room's closing) as a task: retries, renewals,
        Redis calls that must be awaited. Errors end the room as a failed tick does."""
        self._task = asyncio.get_running_loop().create_task(
            self._guarded(coro), name=f"room:{self.name}"
        )

    async def _guarded(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except OwnershipLost as exc:
            self._in_tick = False
            self.fence(str(exc))
        except asyncio.CancelledError:
            self._in_tick = False
            raise
        except Exception:
            self._failed()

    def _failed(self) -> None:
        """A tick raised: close the room here and hand it back at once (it resumes from
        its last durable tick elsewhere) rather than hold the lease until it expires."""
        self._in_tick = False
        log.exception("room=%s tick failed; closing the room on this server", self.name)
        if self.state is RoomState.CLOSED:
            return
        self._close_sessions(CloseCode.INTERNAL_ERROR, "room failed on this server")
        self._set_closed()
        store, lease = self.store, self.lease

        async def release() -> None:
            with contextlib.suppress(Exception):
                await store.release(lease)

        asyncio.get_running_loop().create_task(release())

    def _unclock(self) -> None:
        if self._ticker is not None:
            self._ticker.discard(self)
            self._ticker = None

    async def _append_durably(
        self,
        tick: int,
        events: list[Any],
        emitted: list[list[Any]] | None = None,
        failed: BaseException | None = None,
    ) -> None:
        """Journal one tick, retrying transient errors until the lease would run out.

        ``failed``: the error of an attempt already made (the tick loop's own first
        write), handled as if this loop had made it.

        Under ``replica`` durability a write no replica confirmed in time (ReplicaTimeout,
        transient) is retried the same way: the tick stays unpublished, and a room whose
        replicas stay away past its lease margin stops as when Redis is unreachable."""
        while True:
            # (An overloaded loop's late answers, or its socket timeouts that fired before
            # it read the answer, get the longer wait of _overloaded_until.)
            deadline = max(self._lease_deadline(), self._overloaded_until())
            sent_at = time.monotonic()
            remaining = deadline - sent_at
            if remaining <= 0:
                raise OwnershipLost(f"room {self.name}: could not renew the lease in time")
            try:
                async with asyncio.timeout(remaining):
                    try:
                        if failed is not None:
                            error, failed = failed, None
                            raise error
                        await self.store.append(
                            self.lease,
                            tick,
                            events,
                            emitted,
                            self.event_log.keep_ticks,
                            self._implied_ticks,
                            tick == self._claim_tick,
                        )
                    except ResponseError as exc:
                        if not (
                            "equal or smaller" in str(exc) and await self._already_journaled(tick)
                        ):
                            raise
                        # An earlier attempt landed (its reply was lost, or no replica had
                        # confirmed it yet): under replica durability, confirm it now.
                        await self.store.confirm_durable(self.lease)
            except _REDIS_TRANSIENT as exc:
                log.warning("room=%s journal write failed (%s); retrying", self.name, exc)
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            self.metrics.journal_seconds.observe(time.monotonic() - sent_at)
            self.lease_renewed_at = sent_at
            return

    def _lease_deadline(self) -> float:
        """When this owner must consider its lease lost: lease_ms - margin after the last
        successful write was *sent* (Redis extended it later than that, never earlier)."""
        return self.lease_renewed_at + self._lease_span_s

    async def _already_journaled(self, tick: int) -> bool:
        """A retried append whose first attempt did land (the reply was lost)."""
        return await self.store.last_journaled(self.name) == (tick, self.lease.epoch)

    async def _renew_if_due(self) -> None:
        now = time.monotonic()
        if now - self.lease_renewed_at < self.settings.lease_ms / 3000:
            return
        deadline = self._lease_deadline()
        try:
            async with asyncio.timeout(max(0.001, deadline - now)):
                await self.store.renew(self.lease)
            self.lease_renewed_at = now
        except _REDIS_TRANSIENT:
            if time.monotonic() >= deadline:
                raise OwnershipLost(
                    f"room {self.name}: could not renew the lease in time"
                ) from None

    def _publish(self, outcome: TickOutcome) -> None:
        """Send the tick to every seated session: v1 sessions get the full public state,
        v2 sessions the shared delta (or keyframe), their own private part and events."""
        seats = self.engine.seats
        tick = outcome.tick
        v1: StateFrame | None = None
        v2: StateFrameV2 | None = None
        # v1: one buffer per encoding, [header room][the tick's prefix][this player's
        # ack]; each player's ack is written at its end and the buffer sent in place.
        buffers: dict[bool, tuple[bytearray, int]] = {}
        for player_id, session in list(self.sessions.items()):
            seat = seats.get(player_id)
            # A session welcomed while this tick was being made durable was told this tick
            # already (welcome.tick); its first state is the next one, which seats it.
            if seat is None or tick <= session.welcome_tick:
                continue
            codec = session.codec
            if codec.version < PROTOCOL_V2:
                if v1 is None:
                    v1 = StateFrame(tick, outcome.state)
                entry = buffers.get(codec.text)
                if entry is None:
                    buffer = bytearray(HEADER_ROOM) + v1.prefix(codec)
                    entry = buffers[codec.text] = (buffer, len(buffer))
                buffer, end = entry
                del buffer[end:]
                buffer += v1.tail(codec, seat.ack)
                session.send_in_place(buffer, HEADER_ROOM)
                continue
            if v2 is None:
                v2 = self._shared_frame(outcome)
            session.send_frame(self._frame_for(v2, session, outcome, seat.ack))

    def _shared_frame(self, outcome: TickOutcome) -> StateFrameV2:
        """This tick's shared payload, encoded once. The stream restarts (a keyframe for
        everyone) when ticks were skipped, e.g. while no v2 client was connected."""
        stream = self.shared_stream
        if stream is None or stream.tick != outcome.tick - 1:
            stream = self.shared_stream = DeltaEncoder(
                self.game_class.state_schema, stream=self.lease.epoch
            )
            for session in self.sessions.values():
                session.needs_keyframe = True
        delta = stream.delta(outcome.tick, outcome.state)
        return StateFrameV2(outcome.tick, delta, stream.current_keyframe)

    def _frame_for(
        self, frame: StateFrameV2, session: Session, outcome: TickOutcome, ack: int
    ) -> bytes:
        player_id = session.player_id
        keyframe = session.needs_keyframe
        private = None
        if self.has_views:
            stream = session.private_stream
            if stream is None or keyframe or stream.tick != outcome.tick - 1:
                stream = session.private_stream = DeltaEncoder(stream=self.lease.epoch)
            payload = stream.delta(outcome.tick, self.engine.view(player_id))
            private = stream.current_keyframe() if keyframe else payload
        # A resume: the events of the ticks it has not seen (since its join, when it saw
        # none: a client that dropped before its first state sends since=0), then this
        # tick's. A fresh seat starts with its join tick, which is this one.
        seat = self.engine.seats.get(player_id)
        after = max(session.since, seat.joined_tick - 1 if seat is not None else 0)
        if keyframe and session.resumed and after < outcome.tick - 1:
            events = self.event_log.for_player(player_id, after, outcome.tick)
        else:
            events = [e.data for e in outcome.emitted if e.for_player(player_id)]
        session.needs_keyframe = False
        session.resumed = False
        session.since = outcome.tick
        return frame.encode_for(
            session.codec, ack, keyframe=keyframe, private=private, events=events or None
        )

    def _expire_seats(self) -> None:
        """Free the seats whose grace period is over. The long grace is for players who
        have played (sent an input); a seat that never did keeps it only briefly, so
        connecting and leaving costs the cluster seconds, not half a minute."""
        if not self.disconnected_at:
            return
        now = time.monotonic()
        seats = self.engine.seats
        for player_id, since in list(self.disconnected_at.items()):
            seat = seats.get(player_id)
            played = seat is not None and seat.accepted > 0
            grace = self.settings.grace_s if played else self.settings.unplayed_grace_s
            if since <= now - grace:
                del self.disconnected_at[player_id]
                if player_id not in self.sessions:
                    log.info("room=%s player=%s grace period over: leaving", self.name, player_id)
                    self.engine.offer_leave(player_id)
                    if self.timeline is not None:
                        self.timeline.player_gone(player_id)

    def _is_abandoned(self) -> bool:
        """Empty (no seat, no connection) for ``empty_room_s``; at once for a room in which
        nobody ever played (a join on its way to a seat counts as not empty)."""
        if self.engine.seats or self.sessions or self.joining:
            self.empty_since = None
            return False
        now = time.monotonic()
        if self.empty_since is None:
            self.empty_since = now
        limit = self.settings.empty_room_s if self.played else 0.0
        return now - self.empty_since >= limit

    # -- checkpoints ----------------------------------------------------------------

    def _maybe_checkpoint(self) -> None:
        if not self.settings.durable:
            return
        if time.monotonic() < self._checkpoint_due:
            return
        if self._checkpoint_task is not None and not self._checkpoint_task.done():
            return
        data, implied = self._packed_snapshot()
        self.state_bytes = len(data)
        self.last_checkpoint_at = time.monotonic()
        self._checkpoint_due = self.last_checkpoint_at + self._checkpoint_every_s
        self._checkpoint_task = asyncio.get_running_loop().create_task(
            self._write_checkpoint(self.engine.tick, data, implied)
        )

    async def _write_checkpoint(self, tick: int, data: bytes, implied: int) -> None:
        started = time.perf_counter()
        try:
            await self.store.checkpoint(self.lease, tick, data, implied)
        except OwnershipLost as exc:
            self.fence(str(exc))
            return
        except _REDIS_TRANSIENT as exc:
            log.warning("room=%s checkpoint at tick %d failed: %s", self.name, tick, exc)
            return
        self.last_checkpoint_tick = tick
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        self.metrics.checkpoint_bytes.set(len(data))

    async def checkpoint_now(self) -> None:
        """Synchronous checkpoint for a graceful handover."""
        if self._checkpoint_task is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint_task
        data, implied = self._packed_snapshot()
        self.state_bytes = len(data)
        await self._write_checkpoint(self.engine.tick, data, implied)

    def _packed_snapshot(self) -> tuple[bytes, int]:
        """The engine's snapshot with the implied ticks this owner may still publish after
        it (what a rebuild from it runs on: ``RoomEngine.catch_up``), and that number (the
        claim script reads it beside the snapshot). A room that no longer ticks (a
        drain's last checkpoint) publishes none."""
        snapshot = self.engine.snapshot()
        running = self.state is RoomState.RUNNING
        implied = max(0, self._implied_until - self.engine.tick) if running else 0
        snapshot["implied"] = implied
        data: bytes = msgpack.packb(snapshot, use_bin_type=True)
        return data, implied

    # -- endings ------------------------------------------------------------------------

    def fence(self, reason: str) -> None:
        """We lost the lease: stop at once, publish nothing more, send clients elsewhere."""
        if self.state is RoomState.CLOSED:
            return
        log.warning("room=%s fenced at tick %d: %s", self.name, self.engine.tick, reason)
        self.metrics.fenced.inc()
        self._close_sessions(CloseCode.RECONNECT, "room moved to another server; reconnect")
        self._set_closed()

    async def drain(self, successor: tuple[str, str] | None = None) -> None:
        """Graceful handover: checkpoint, release the lease, send clients to another server.

        With a ``successor`` (server id, ws url), clients are redirected straight to it
        (redirect + 4021), and it claims the released room when the first one arrives;
        without one they get 4020 and reconnect to any server.
        """
        if self.state is not RoomState.RUNNING:
            return
        self.transition(RoomState.DRAINING)
        await self._stop_task()
        try:
            await self.checkpoint_now()
            await self.store.release(self.lease)
        except (OwnershipLost, *_REDIS_TRANSIENT) as exc:
            log.warning("room=%s drain could not release cleanly: %s", self.name, exc)
        if successor is not None:
            server_id, url = successor
            message = redirect_message(self.name, url + "?placed=1", server_id)
            for session in self.sessions.values():
                session.send(message)
            self._close_sessions(CloseCode.REDIRECT, "server shutting down; room moves")
        else:
            self._close_sessions(CloseCode.RECONNECT, "server shutting down; reconnect")
        self._set_closed()

    async def close_empty(self) -> None:
        if self.state is not RoomState.RUNNING:
            return  # closed meanwhile (fenced, drained, failed)
        log.info("room=%s empty (played: %s): closing", self.name, self.played)
        self.transition(RoomState.CLOSED)
        try:
            self.engine.game.dispose()
        except Exception:  # the game's hook; the room closes regardless
            log.exception("room=%s: the game's dispose hook failed", self.name)
        try:
            self.deleted = await self.store.delete_room(self.lease)
        except _REDIS_TRANSIENT as exc:
            log.warning("room=%s could not delete its keys: %s", self.name, exc)
        self._close_sessions(CloseCode.ROOM_CLOSED, "room closed")
        self._set_closed()

    async def _stop_task(self) -> None:
        self._unclock()
        if self._journal_pending is not None:
            self._journal_pending.cancel()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _close_sessions(self, code: CloseCode, reason: str) -> None:
        for session in list(self.sessions.values()):
            session.close(code, reason)
        self.metrics.players.dec(len(self.sessions))
        self.sessions.clear()

    def _set_closed(self) -> None:
        if self.paused:
            self._resume(clock=False)
        self._unclock()
        if self.state is not RoomState.CLOSED:
            self.state = RoomState.CLOSED
        self.on_closed(self)

    def sample_stats(self) -> None:
        """Turn the counters since the last sample into the rates of ``stats`` (called
        once per heartbeat: mean tick time and inputs per second over that window)."""
        ticks, seconds, inputs, at = self._sample
        now = time.monotonic()
        if self.ticks_timed > ticks:
            self.tick_ms = (self.tick_seconds_total - seconds) * 1000 / (self.ticks_timed - ticks)
        window = now - at
        if window > 0:
            self.inputs_per_s = (self.inputs_total - inputs) / window
        self._sample = (self.ticks_timed, self.tick_seconds_total, self.inputs_total, now)

    def stats(self) -> dict[str, Any]:
        """This room in the registry's ``room_stats`` (rates as of the last sample;
        ``state_bytes``: the last checkpoint's packed size, 0 before the first)."""
        return {
            "tick": self.engine.tick,
            "players": len(self.sessions),
            "tick_ms": round(self.tick_ms, 3),
            "state_bytes": self.state_bytes,
            "inputs_per_s": round(self.inputs_per_s, 1),
        }

    def status(self) -> dict[str, Any]:
        return {
            "room": self.name,
            "game": self.game_class.name,
            "state": self.state.value,
            "epoch": self.lease.epoch,
            "tick": self.engine.tick,
            "players": len(self.sessions),
            "seats": len(self.engine.seats),
            "checkpoint_tick": self.last_checkpoint_tick,
            "checkpoint_age_s": round(time.monotonic() - self.last_checkpoint_at, 3),
            "paused": self.paused,
        }


def build_engine(game_class: type[Game], seed: int) -> RoomEngine:
    return RoomEngine(game_class.create(seed))


__all__ = ["Room", "RoomFull", "RoomState", "build_engine"]
