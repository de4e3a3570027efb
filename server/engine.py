"""The room engine, pure: seats, the per-tick input batch, acks, snapshot and replay.

No clock, no sockets, no Redis: the runner calls ``step()`` at the tick rate,
tests call it in a loop. A tick is the ordered list of events applied to the
game (joins, leaves, inputs); that list is what the journal stores, and
``apply`` is used both live and to replay the journal on another server, so
a rebuilt room is the same room.

Events (msgpack-able lists):
    ["j", player_id, name]        seat a player
    ["l", player_id]              remove a player for good
    ["i", player_id, seq, data]   apply an input (data already validated)

A tick with no event that emits nothing may be left out of the journal (an implied
tick, ``server.room``): ``catch_up`` replays it with no event, the same way.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from server.errors import GameError, IllegalInput
from server.game import Emitted, Game

Event = list[Any]
SNAPSHOT_VERSION = 1


class RoomFull(GameError):
    """No free seat in the room."""


class JournalGap(GameError):
    """Replay met a tick that does not follow the last one: the journal is incomplete."""


class Verdict(Enum):
    """What happened to an offered input."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # seq already accepted: dropped silently (a resend)
    OUT_OF_ORDER = "out_of_order"  # not the next seq: an earlier input was dropped
    QUEUE_FULL = "queue_full"  # too many inputs pending for this tick
    NOT_SEATED = "not_seated"


@dataclass(slots=True)
class Seat:
    """A player's place in the room; survives disconnects for the grace period."""

    player_id: str
    name: str
    ack: int = 0  # last applied input sequence
    accepted: int = 0  # last accepted (queued or applied) sequence
    pending: int = 0  # inputs queued for the next tick
    leaving: bool = False
    joined_tick: int = 0  # the tick that applied its join (its first events belong to it)


@dataclass(slots=True)  # not frozen: one per room and tick (a frozen __init__ is slow)
class TickOutcome:
    tick: int
    events: list[Event]  # the journal's: joins, leaves, inputs
    state: Mapping[str, Any]  # the public state
    emitted: list[Emitted] = field(default_factory=list)  # the game's events of this tick


class RoomEngine:
    """One room's rules-independent bookkeeping around a Game."""

    def __init__(
        self,
        game: Game,
        *,
        tick: int = 0,
        max_pending_per_player: int = 32,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.game = game
        self.options: dict[str, Any] = dict(options or {})
        # The room's seat limit: the game's, or lower if the creator asked for it.
        self.max_players = int(self.options.get("max_players", game.max_players))
        self.tick = tick
        self.seats: dict[str, Seat] = {}
        self.max_pending_per_player = max_pending_per_player
        self._queue: list[Event] = []
        self.last_state: Mapping[str, Any] | None = None
        self.last_emitted: list[Emitted] = []

    # -- offers: called as messages arrive, between ticks ------------------

    def offer_join(self, player_id: str, name: str) -> bool:
        """Seat a player at the next tick; False when the seat already exists (a resume)."""
        seat = self.seats.get(player_id)
        if seat is not None:
            if seat.leaving:
                raise RoomFull("this player is leaving the room; join again in a moment")
            return False
        if len(self.seats) >= self.max_players:
            raise RoomFull(f"the room is full ({self.max_players} players)")
        if not self.game.joinable():
            raise RoomFull("this room takes no new players right now; try another room")
        self.seats[player_id] = Seat(player_id, name)
        self._queue.append(["j", player_id, name])
        return True

    def offer_leave(self, player_id: str) -> None:
        seat = self.seats.get(player_id)
        if seat is None or seat.leaving:
            return
        seat.leaving = True
        self._queue.append(["l", player_id])

    def offer_input(self, player_id: str, seq: int, data: Any) -> Verdict:
        """Queue an input for the next tick. Raises IllegalInput if the game refuses it."""
        seat = self.seats.get(player_id)
        if seat is None or seat.leaving:
            return Verdict.NOT_SEATED
        if seq <= seat.accepted:
            return Verdict.DUPLICATE
        # Strictly in order: an ack then means every input up to it was applied. If a gap
        # were accepted, the ack would cover an input the server dropped (rate limit, full
        # queue) and the client would forget it: an acked input lost.
        if seq != seat.accepted + 1:
            return Verdict.OUT_OF_ORDER
        if seat.pending >= self.max_pending_per_player:
            return Verdict.QUEUE_FULL
        validated = self.game.validate_input(player_id, data)
        seat.accepted = seq
        seat.pending += 1
        self._queue.append(["i", player_id, seq, validated])
        return Verdict.ACCEPTED

    # -- ticks ----------------------------------------------------------------

    def step(self) -> TickOutcome:
        """Advance one tick with everything offered since the last one."""
        events, self._queue = self._queue, []
        state = self.apply(self.tick + 1, events)
        return TickOutcome(self.tick, events, state, self.last_emitted)

    def apply(self, tick: int, events: list[Event]) -> Mapping[str, Any]:
        """Apply one tick's events; the same code path live and in replay."""
        if tick != self.tick + 1:
            raise JournalGap(f"tick {tick} does not follow tick {self.tick}")
        inputs: list[tuple[str, Any]] = []
        left = False
        for event in events:
            kind, player_id = event[0], event[1]
            if kind == "i":
                seat = self.seats.get(player_id)
                if seat is None:
                    continue
                seq = event[2]
                if seq > seat.ack:  # (the max() calls written out: once per input)
                    seat.ack = seq
                    if seq > seat.accepted:
                        seat.accepted = seq
                    if seat.pending > 0:
                        seat.pending -= 1
                    inputs.append((player_id, event[3]))
            elif kind == "j":
                seat = self.seats.setdefault(player_id, Seat(player_id, event[2]))
                seat.joined_tick = tick
                self.game.join(player_id, event[2])
            elif kind == "l":
                if self.seats.pop(player_id, None) is not None:
                    self.game.leave(player_id)
                    left = True
            else:
                raise IllegalInput(f"unknown journal event {kind!r}")
        if left:
            # An input queued before its player's leave in the same tick: the game
            # has already removed the player and must never see an unknown id.
            inputs = [entry for entry in inputs if entry[0] in self.seats]
        self.tick = tick
        self.last_state = self.game.tick(inputs)
        # Events come out of the same calls as the state, so a replay derives them again.
        self.last_emitted = self.game.take_emitted()
        return self.last_state

    def catch_up(
        self,
        entries: Iterable[tuple[int, list[Event], int]],
        implied: int,
        claims: Container[int] = (),
        own_claim: int | None = None,
    ) -> TickOutcome | None:
        """Replay a journal after this state, with the eventless ticks its owner published
        without an entry (``implied``: the allowance of this state, then each entry's).

        A tick missing between two entries had no event (``server.room``: an implied
        tick): it is replayed with none. A gap over the allowance, or a missing tick that
        emits, is a JournalGap. After the last entry, its allowance of eventless ticks
        is run too: the previous owner may have published them, so this room must not
        publish those tick numbers with other content. The first of them that emits ends
        the run and is returned: nobody saw it (it would have been journaled), and it
        must be journaled before anything is published. None: none emitted.

        ``claims``: the ticks of claim entries, which a takeover's claim journals (no
        event) right after the ticks its old owner may have published; the ticks missing
        before one may emit (nobody had published them: its claimer recorded their game
        events with it). ``own_claim``: this rebuild's own claim tick, the last entry:
        the replay ends there, and returns that tick with the game events of it and of
        the ticks missing before it (to be stored before it is published; its journal
        entry is there already)."""
        emitted: list[Emitted] = []
        for tick, events, allowance in entries:
            if tick - self.tick - 1 > implied:
                raise JournalGap(
                    f"tick {tick} follows tick {self.tick}: more than the {implied}"
                    " ticks its owner could publish without an entry"
                )
            claimed = tick in claims
            while self.tick < tick - 1:
                self.apply(self.tick + 1, [])
                if self.last_emitted:
                    if not claimed:
                        raise JournalGap(
                            f"tick {self.tick} has no journal entry but emits events when"
                            " replayed: the game is not deterministic"
                        )
                    emitted.extend(self.last_emitted)
            state = self.apply(tick, events)
            if tick == own_claim:
                return TickOutcome(tick, [], state, [*emitted, *self.last_emitted])
            emitted.clear()  # a claim's own gap: its claimer stored these with it
            implied = allowance
        for _ in range(implied):
            state = self.apply(self.tick + 1, [])
            if self.last_emitted:
                return TickOutcome(self.tick, [], state, self.last_emitted)
        return None

    def view(self, player_id: str) -> Any:
        """A seated player's private part after the latest tick (None if the game has
        none); nobody else's."""
        return self.game.view(player_id)

    # -- persistence ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to rebuild the room at this tick (queued offers excluded)."""
        joining = {event[1] for event in self._queue if event[0] == "j"}
        return {
            "v": SNAPSHOT_VERSION,
            "tick": self.tick,
            "game": self.game.snapshot(),
            # A seat whose leave is still queued is in the game at this tick; the
            # leave reaches the journal with the tick that applies it.
            # A seat whose join is still queued is not in the game yet: leave it out,
            # or a restored room would hold a seat the game never heard of.
            "seats": [
                [s.player_id, s.name, s.ack, s.joined_tick]
                for s in self.seats.values()
                if s.player_id not in joining
            ],
        }

    @classmethod
    def restore(
        cls, game_class: type[Game], snapshot: dict[str, Any], **options: Any
    ) -> RoomEngine:
        if snapshot.get("v") != SNAPSHOT_VERSION:
            raise GameError(f"unsupported snapshot version {snapshot.get('v')!r}")
        engine = cls(game_class.restore(snapshot["game"]), tick=int(snapshot["tick"]), **options)
        for entry in snapshot["seats"]:
            player_id, name, ack = entry[0], entry[1], int(entry[2])
            joined = int(entry[3]) if len(entry) > 3 else 0  # older snapshots: unknown
            engine.seats[player_id] = Seat(
                player_id, name, ack=ack, accepted=ack, joined_tick=joined
            )
        return engine
