"""One client connection: its lifecycle, its rate limit and its bounded outbox.

Sends never await: a frame is handed to the connection's transport
(``server/transport``), so a tick never waits for a socket. The outbox is the
transport's write buffer; its bound is ``outbox_bytes`` and the overload policy
is ``Overflow.EVICT``: a client over it is closed with 4009 (slow consumer) and
the room goes on without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import Enum
from typing import TYPE_CHECKING, Any

from server.budgets import TokenBucket
from server.protocol import CloseCode, Codec, ErrorCode, close_reason, error_message
from server.protocol.delta import DeltaEncoder
from server.transport import Connection

if TYPE_CHECKING:
    from server.metrics import ServerMetrics

log = logging.getLogger("stateroom.session")


class SessionState(Enum):
    AUTHENTICATING = "authenticating"
    JOINED = "joined"
    CLOSING = "closing"


_TRANSITIONS = {
    SessionState.AUTHENTICATING: {SessionState.JOINED, SessionState.CLOSING},
    SessionState.JOINED: {SessionState.CLOSING},
    SessionState.CLOSING: set(),
}


class Session:
    """A player's connection; the room holds it while JOINED."""

    def __init__(
        self,
        ws: Connection,
        codec: Codec,
        metrics: ServerMetrics,
        outbox_bytes: int,
        input_rate: float,
        input_burst: float,
    ) -> None:
        self.ws = ws
        self.codec = codec
        self.metrics = metrics
        self._send = ws.send
        self._send_in_place = ws.send_in_place
        self._text = codec.text
        self._traffic = metrics.traffic
        self.outbox_bytes = outbox_bytes
        ws.outbox_bytes = outbox_bytes
        ws.on_overflow = self._evicted
        self.bucket = TokenBucket(input_rate, input_burst, time.monotonic())
        self.state = SessionState.AUTHENTICATING
        self.player_id = ""
        self.name = ""
        self.room_name = ""
        self.welcome_tick = 0  # welcome.tick; states are sent for later ticks only
        # Protocol v2: the tick the client saw last when it joined (events after it are
        # resent), whether its next state needs keyframes, and its private stream.
        self.since = 0
        self.needs_keyframe = True
        self.resumed = False
        self.private_stream: DeltaEncoder | None = None
        self.token_exp = 0  # unix seconds: the session ends at this + the verifier's leeway
        self.session_id: str | None = None  # the token's sid (login session), for logout
        self.address = ""  # the client's address bucket (IPv6: its /64)
        self._expiry: asyncio.TimerHandle | None = None
        self._dropped_in_window = 0
        self._window_start = time.monotonic()
        self._last_rate_error = 0.0
        self._gap_reported = 0
        self._gap_reported_at = 0.0
        self.close_code: int | None = None

    def transition(self, new: SessionState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"session cannot go from {self.state.value} to {new.value}")
        self.state = new

    @property
    def open(self) -> bool:
        return self.state is not SessionState.CLOSING and self.ws.open

    def send_frame(self, frame: bytes) -> bool:
        """Write one encoded frame now; the transport evicts the client (4009, then
        ``_evicted``) when its outbox is full. Once per player per tick: every name it
        needs is bound at creation."""
        if self.state is SessionState.CLOSING or not self._send(frame, self._text):
            return False
        traffic = self._traffic
        traffic.messages_out += 1
        traffic.bytes_out += len(frame)
        return True

    def send_in_place(self, buffer: bytearray, offset: int) -> bool:
        """Write ``buffer[offset:]`` as one frame (``Connection.send_in_place``): the
        room's one buffer for a tick's states, each player's ack written at its end."""
        if self.state is SessionState.CLOSING or not self._send_in_place(
            buffer, offset, self._text
        ):
            return False
        traffic = self._traffic
        traffic.messages_out += 1
        traffic.bytes_out += len(buffer) - offset
        return True

    def send(self, message: dict[str, Any]) -> bool:
        return self.send_frame(self.codec.encode(message))

    def send_error(
        self, code: ErrorCode, message: str, seq: int | None = None, expected: int | None = None
    ) -> None:
        self.send(error_message(code, message, seq, expected))

    def report_gap(self, seq: int, expected: int) -> None:
        """sequence_gap, at most once per expected seq and half second (a burst of inputs
        after one drop gets one error, a client that did not react gets reminded)."""
        now = time.monotonic()
        if expected == self._gap_reported and now - self._gap_reported_at < 0.5:
            return
        self._gap_reported, self._gap_reported_at = expected, now
        self.send_error(
            ErrorCode.SEQUENCE_GAP,
            f"expected seq {expected}; resend from there (inputs after a gap are dropped)",
            seq,
            expected,
        )

    def expire_at(self, deadline: float) -> None:
        """End the session with token_expired + 4001 at ``deadline`` (unix seconds) unless
        a fresh token moves it (``auth``). A session never outlives its token."""
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, deadline - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def ended(self) -> None:
        """The connection is over: drop the expiry timer (the handler's return closes it)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expired(self) -> None:
        self._expiry = None
        if self.state is SessionState.CLOSING:
            return
        self.metrics.evicted.labels("token_expired").inc()
        self.send_error(
            ErrorCode.TOKEN_EXPIRED, "access token expired; send a fresh one with 'auth' in time"
        )
        self.close(CloseCode.UNAUTHORIZED, "token_expired")

    def refuse_rate(self, message: str) -> None:
        """A message dropped for a rate or budget: one rate_limited error a second."""
        now = time.monotonic()
        if now - self._last_rate_error >= 1.0:
            self._last_rate_error = now
            self.send_error(ErrorCode.RATE_LIMITED, message)

    def admit(self, now: float) -> bool:
        """Rate limit: False drops the message; a sustained flood closes the connection."""
        if self.bucket.take(1, now):
            return True
        if now - self._window_start > 1.0:
            self._window_start = now
            self._dropped_in_window = 0
        self._dropped_in_window += 1
        if self._dropped_in_window > 4 * self.bucket.rate:
            self.metrics.evicted.labels("rate_limited").inc()
            self.close(CloseCode.RATE_LIMITED, "message flood: far over the input rate limit")
        else:
            self.refuse_rate("input dropped: over the input rate limit")
        return False

    def _evicted(self) -> None:
        """The transport closed this slow client (Overflow.EVICT, 4009)."""
        if self.state is SessionState.CLOSING:
            return
        self._closing(CloseCode.SLOW_CONSUMER, "outbox overflow: the client is not reading")
        self.metrics.evicted.labels("slow_consumer").inc()

    def close(self, code: int, reason: str) -> None:
        """Start closing without waiting (callable from the tick)."""
        if self.state is SessionState.CLOSING:
            return
        self._closing(code, reason)
        self.ws.close(int(code), close_reason(reason))

    def _closing(self, code: int, reason: str) -> None:
        self.state = SessionState.CLOSING
        self.close_code = int(code)
        self.ended()
        log.info(
            "close player=%s room=%s code=%d reason=%s",
            self.player_id or "-",
            self.room_name or "-",
            int(code),
            reason,
        )

    async def wait_closed(self) -> None:
        """Once closing, until the connection is gone (the handler's return would
        otherwise close it 1000 at once; our code and reason went first)."""
        if self.state is SessionState.CLOSING:
            await self.ws.wait_closed()
