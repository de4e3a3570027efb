"""The Python client SDK: log in, join a room, send inputs, iterate over states.

``RoomClient`` keeps one logical session to a room across any number of
WebSocket connections: it follows redirects to the owner, reconnects with
exponential backoff and jitter when a server dies or hands the room over,
rejoins its seat, resends every input the server has not acked yet (the
server drops duplicates by sequence number), and never hands the
application a state older than one it already delivered.

    async with RoomClient(urls, "lobby", token) as room:
        room.send_input({"dx": 1, "dy": 0})
        async for state in room.states():
            ...

Errors:
    ClientError
    ├── LoginError        the login service refused (carries its error code)
    ├── TokenUnavailable  the token callable failed (retried with backoff)
    └── RoomError         the room refused us for good (close code + reason)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any

import httpx
import msgpack
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from server.protocol import JSON, MSGPACK, CloseCode, Codec, ErrorCode, ProtocolError

log = logging.getLogger("stateroom.client")

TokenSource = str | Callable[[], Awaitable[str]]


class ClientError(Exception):
    """Root of the SDK's errors."""


class LoginError(ClientError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


class TokenUnavailable(ClientError):
    """The token callable failed; the session retries with backoff."""


class RoomError(ClientError):
    """The server closed the session with a code that retrying will not fix."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"room closed the session: {code} {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    player_id: str
    expires_at: float


class AuthClient:
    """The login service's HTTP API."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def _post(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        response = await self._http.post(path, json=body if body is not None else {})
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise LoginError(response.status_code, error["code"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise LoginError(response.status_code, "http_error", response.text[:200]) from None
        if response.status_code == 204:
            return {}
        result: dict[str, Any] = response.json()
        return result

    @staticmethod
    def _tokens(body: dict[str, Any]) -> Tokens:
        return Tokens(
            access_token=body["access_token"],
            refresh_token=body["refresh_token"],
            player_id=body["player_id"],
            expires_at=time.time() + float(body["expires_in"]),
        )

    async def guest(self, name: str | None = None) -> Tokens:
        return self._tokens(await self._post("/v1/guest", {"name": name} if name else None))

    async def register(self, username: str, password: str) -> None:
        await self._post("/v1/accounts", {"username": username, "password": password})

    async def login(self, username: str, password: str) -> Tokens:
        return self._tokens(
            await self._post("/v1/login", {"username": username, "password": password})
        )

    async def refresh(self, tokens: Tokens) -> Tokens:
        return self._tokens(
            await self._post("/v1/refresh", {"refresh_token": tokens.refresh_token})
        )

    async def logout(self, tokens: Tokens) -> None:
        await self._post("/v1/logout", {"refresh_token": tokens.refresh_token})

    async def aclose(self) -> None:
        await self._http.aclose()


class ConnectionState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class State:
    """One tick of the room as this player sees it.

    ``State(tick, ack, state, server, epoch)``, immutable. On a msgpack connection the
    ``state`` is decoded on first access (then cached): a reader that looks only at
    ``tick`` and ``ack``, or at one state in N, does not pay for decoding the world every
    tick. The SDK checks the state's msgpack structure on receipt; content that only a
    full decode can reject (invalid UTF-8, an unhashable map key) raises ``ProtocolError``
    on that first access instead.
    """

    __slots__ = ("_raw", "_state", "ack", "epoch", "server", "tick")

    tick: int
    ack: int
    server: str
    epoch: int
    _state: Any
    _raw: memoryview | None  # the state's msgpack bytes while not decoded yet

    def __init__(self, tick: int, ack: int, state: Any, server: str, epoch: int) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "tick", tick)
        setattr_(self, "ack", ack)
        setattr_(self, "_state", state)
        setattr_(self, "_raw", None)
        setattr_(self, "server", server)
        setattr_(self, "epoch", epoch)

    @classmethod
    def lazy(cls, tick: int, ack: int, raw: memoryview, server: str, epoch: int) -> State:
        """A state whose ``state`` is the msgpack value in ``raw``, decoded when first read."""
        self = cls(tick, ack, None, server, epoch)
        object.__setattr__(self, "_raw", raw)
        return self

    @property
    def state(self) -> Any:
        raw = self._raw
        if raw is not None:
            object.__setattr__(self, "_state", _unpack_value(raw))
            object.__setattr__(self, "_raw", None)
        return self._state

    @property
    def decoded(self) -> bool:
        """Whether ``state`` has been decoded already (always, for JSON connections)."""
        return self._raw is None

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State):
            return NotImplemented
        return (
            self.tick == other.tick
            and self.ack == other.ack
            and self.server == other.server
            and self.epoch == other.epoch
            and self.state == other.state
        )

    def __hash__(self) -> int:
        return hash((self.tick, self.ack, self.server, self.epoch))

    def __reduce__(self) -> tuple[type[State], tuple[int, int, Any, str, int]]:
        return State, (self.tick, self.ack, self.state, self.server, self.epoch)

    def __repr__(self) -> str:
        raw = self._raw
        state = f"<{len(raw)} msgpack bytes, not decoded>" if raw is not None else repr(self._state)
        return (
            f"State(tick={self.tick!r}, ack={self.ack!r}, state={state}, "
            f"server={self.server!r}, epoch={self.epoch!r})"
        )


@dataclass
class ClientStats:
    """What a client observed; the bots aggregate these."""

    inputs_sent: int = 0
    inputs_acked: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    reconnects: int = 0
    redirects: int = 0
    rollbacks: int = 0  # states older than (or as old as) one already delivered
    ack_regressions: int = 0  # acked inputs the server later forgot (lost)
    seat_resets: int = 0  # rejoined on a fresh seat (the old one had expired)
    max_ack: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_tick: int = 0


@dataclass
class _Pending:
    seq: int
    data: Any
    sent_at: float


# Flow control. The server applies inputs strictly in seq order: one it drops (over 32 pending
# in a tick: queue_full; over its message rate: rate_limited) makes it drop every later seq
# with sequence_gap until the missing one is resent. The SDK resends from the seq the server
# names, and paces itself so that this stays rare even when resending a backlog after a
# failover: at most _WINDOW unacked inputs on the wire, at most _SEND_RATE messages a second.
_WINDOW = 24
_SEND_RATE = 40.0
_SEND_BURST = 40.0

_RETRYABLE_CLOSES = {
    int(CloseCode.RECONNECT),
    int(CloseCode.REDIRECT),
    int(CloseCode.INTERNAL_ERROR),
    1001,  # going away
    1006,  # abnormal closure (process killed)
    1011,  # internal error / keepalive timeout
    1012,  # service restart
    1013,  # try again later
}


class RoomClient:
    """One player's session in one room, surviving server deaths and handovers."""

    def __init__(
        self,
        urls: str | Sequence[str],
        room: str,
        token: TokenSource,
        *,
        game: str | None = None,
        encoding: str = "msgpack",
        stall_timeout: float = 2.5,
        open_timeout: float = 2.0,
        backoff_base: float = 0.05,
        backoff_max: float = 1.0,
        max_pending: int = 4096,
        queue_size: int = 64,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("RoomClient needs at least one server URL")
        self.room = room
        self._token_source = token
        self.game = game
        self.codec: Codec = JSON if encoding == "json" else MSGPACK
        self.stall_timeout = stall_timeout
        self.open_timeout = open_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_pending = max_pending
        self.stats = ClientStats()
        self.connection_state = ConnectionState.CONNECTING
        self.player_id = ""
        self.server = ""
        self.epoch = 0
        self.tick_rate = 20
        self.latency_ms: float | None = None
        self._seq = 0
        self._pending: deque[_Pending] = deque()
        self._sent_upto = 0  # highest seq written on the current connection
        self._tokens = _SEND_BURST
        self._tokens_at = time.monotonic()
        self._ws: ClientConnection | None = None
        self._states: asyncio.Queue[State | BaseException] = asyncio.Queue(queue_size)
        self._runner: asyncio.Task[None] | None = None
        self._joined = asyncio.Event()
        self._closing = False
        self._welcomed_this_session = False
        self._next_url: str | None = None
        self._url_index = random.randrange(len(self.urls))
        self.on_latency: Callable[[float], None] | None = None

    # -- public API ------------------------------------------------------------------

    async def __aenter__(self) -> RoomClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self, timeout: float = 15.0) -> None:
        """Start the session and wait for the first welcome."""
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"room:{self.room}")
        joined = asyncio.ensure_future(self._joined.wait())
        try:
            done, _ = await asyncio.wait(
                {joined, self._runner}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            joined.cancel()
        if self._runner in done:
            self._runner.result()
            if not self._states.empty():
                refusal = self._states.get_nowait()
                if isinstance(refusal, BaseException):
                    raise refusal
            raise ClientError("session ended before joining")
        if not self._joined.is_set():
            await self.close()
            raise ClientError(f"could not join room {self.room!r} within {timeout}s")

    def send_input(self, data: Any) -> int:
        """Queue an input; it is (re)sent until a state acks it. Returns its sequence."""
        if len(self._pending) >= self.max_pending:
            raise ClientError("too many unacknowledged inputs; is the connection down?")
        self._seq += 1
        pending = _Pending(self._seq, data, time.monotonic())
        self._pending.append(pending)
        self.stats.inputs_sent += 1
        self._flush()
        return pending.seq

    async def states(self) -> AsyncIterator[State]:
        """Every state in tick order (old or repeated ticks are never yielded)."""
        while True:
            item = await self._states.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def next_state(self, timeout: float | None = None) -> State:
        async with asyncio.timeout(timeout):
            item = await self._states.get()
        if isinstance(item, BaseException):
            raise item
        return item

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def unacked(self) -> int:
        return len(self._pending)

    async def leave(self) -> None:
        """Give up the seat for good (no grace period) and close."""
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(self.codec.encode({"t": "leave"}), text=self.codec.text)
        await self.close()

    async def close(self) -> None:
        self._closing = True
        self.connection_state = ConnectionState.CLOSED
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner

    # -- connection management ---------------------------------------------------------

    async def _token(self) -> str:
        if isinstance(self._token_source, str):
            return self._token_source
        try:
            return await self._token_source()
        except Exception as exc:  # the callable is the application's; retry later
            raise TokenUnavailable(f"token source failed: {exc}") from exc

    def _pick_url(self) -> str:
        if self._next_url:
            url, self._next_url = self._next_url, None
            return url
        url = self.urls[self._url_index % len(self.urls)]
        self._url_index += 1
        return url

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            url = self._pick_url()
            self._welcomed_this_session = False
            try:
                code, reason = await self._session(url)
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
                code, reason = 1006, str(exc) or type(exc).__name__
            except ProtocolError as exc:
                code, reason = int(CloseCode.PROTOCOL_ERROR), exc.message
            except TokenUnavailable as exc:
                code, reason = 1013, str(exc)
            if self.closing:
                return
            if self._welcomed_this_session:
                attempt = 0  # that connection worked: the next drop starts a fresh backoff
            if code == CloseCode.REDIRECT and self._next_url:
                self.stats.redirects += 1
                continue
            if code not in _RETRYABLE_CLOSES:
                self.connection_state = ConnectionState.CLOSED
                await self._states.put(RoomError(code, reason))
                return
            self.connection_state = ConnectionState.RECONNECTING
            attempt += 1
            delay = min(self.backoff_max, self.backoff_base * 2 ** min(attempt - 1, 10))
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _session(self, url: str) -> tuple[int, str]:
        """One WebSocket connection; returns its close code and reason."""
        token = await self._token()
        async with asyncio.timeout(self.open_timeout):
            ws = await connect(
                url,
                subprotocols=[Subprotocol(self.codec.subprotocol)],
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=self.open_timeout,
                compression=None,
                max_size=8 * 1024 * 1024,
                ping_interval=5,
                ping_timeout=5,
                close_timeout=1,
            )
        self._ws = ws
        try:
            join: dict[str, Any] = {"t": "join", "v": 1, "room": self.room}
            if self.game:
                join["game"] = self.game
            await ws.send(self.codec.encode(join), text=self.codec.text)
            while True:
                try:
                    async with asyncio.timeout(self.stall_timeout):
                        frame = await ws.recv()
                except TimeoutError:
                    await ws.close(1000, "stalled")
                    return 1006, "no state within the stall timeout"
                message = _decode_server_frame(frame, self.codec.text)
                self._handle(ws, message)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (1006, "connection lost")
        finally:
            self._ws = None
            if self.connection_state is ConnectionState.CONNECTED:
                self.connection_state = ConnectionState.RECONNECTING
            with contextlib.suppress(Exception):
                await ws.close()

    def _flush(self) -> None:
        """Send the pending inputs not yet sent on this connection, within the flow limits."""
        ws = self._ws
        if ws is None or self.connection_state is not ConnectionState.CONNECTED:
            return
        now = time.monotonic()
        self._tokens = min(_SEND_BURST, self._tokens + (now - self._tokens_at) * _SEND_RATE)
        self._tokens_at = now
        for pending in self._pending:
            if pending.seq <= self._sent_upto:
                continue
            if pending.seq - self.stats.max_ack > _WINDOW or self._tokens < 1:
                break
            self._tokens -= 1
            self._sent_upto = pending.seq
            self._send_now(ws, {"t": "input", "seq": pending.seq, "data": pending.data})

    def _send_now(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(ws, message))
        task.add_done_callback(_ignore_result)

    async def _send(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(self.codec.encode(message), text=self.codec.text)

    def _handle(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "state":
            self._on_state(message)
        elif kind == "welcome":
            self._on_welcome(ws, message)
        elif kind == "redirect":
            self._next_url = str(message["url"])
        elif kind == "error":
            code = str(message.get("code"))
            self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
            log.debug("server error %s: %s", code, message.get("message"))
            expected = message.get("expected")
            if isinstance(expected, int) and expected - 1 < self._sent_upto:
                self._sent_upto = expected - 1  # resend from there, paced by _flush

    def _on_welcome(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        if self._joined.is_set():
            self.stats.reconnects += 1  # a resumed session, not a failed attempt
        self._welcomed_this_session = True
        self.player_id = message["player_id"]
        self.server = message["server"]
        self.epoch = int(message["epoch"])
        self.tick_rate = int(message["tick_rate"])
        self.connection_state = ConnectionState.CONNECTED
        ack = int(message["ack"])
        if not message.get("resumed") and self._joined.is_set():
            self._new_seat()
        self._joined.set()
        self._apply_ack(ack)
        # A new connection: resend every input the server has not applied, in order.
        self._sent_upto = 0
        self._tokens, self._tokens_at = _SEND_BURST, time.monotonic()
        self._flush()

    def _new_seat(self) -> None:
        """The room gave us a fresh seat (ours expired): sequences start again at 1."""
        self.stats.seat_resets += 1
        self.stats.max_ack = 0
        self._seq = 0
        for pending in self._pending:
            self._seq += 1
            pending.seq = self._seq

    def _on_state(self, message: dict[str, Any]) -> None:
        tick: int = message["tick"]  # ints: checked by _decode_server_frame
        ack: int = message["ack"]
        if tick <= self.stats.last_tick:
            self.stats.rollbacks += 1
            return
        self.stats.last_tick = tick
        self._apply_ack(ack)
        self._flush()
        state = _make_state(message, self.server, self.epoch)
        if self._states.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._states.get_nowait()  # conflate: a slow reader gets the latest states
        self._states.put_nowait(state)

    def _apply_ack(self, ack: int) -> None:
        if ack < self.stats.max_ack:
            self.stats.ack_regressions += self.stats.max_ack - ack
            log.warning("ack went back from %d to %d", self.stats.max_ack, ack)
        now = time.monotonic()
        while self._pending and self._pending[0].seq <= ack:
            pending = self._pending.popleft()
            if pending.seq > self.stats.max_ack:
                latency = (now - pending.sent_at) * 1000
                self.stats.latencies_ms.append(latency)
                self.latency_ms = latency
                self.stats.inputs_acked += 1
        self.stats.max_ack = max(self.stats.max_ack, ack)


class _RawState:
    """A state message's ``state`` field, still msgpack: the bytes it spans in the frame."""

    __slots__ = ("raw",)

    def __init__(self, raw: memoryview) -> None:
        self.raw = raw


def _protocol_error(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message)


def _unpack_value(raw: bytes | memoryview) -> Any:
    """Decode one msgpack value of a server frame (the client's decoding options)."""
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _protocol_error(
            f"undecodable server frame: {str(exc) or type(exc).__name__}"
        ) from None


def _parse_msgpack_frame(frame: bytes) -> dict[str, Any]:
    """Parse a msgpack server frame without decoding a state message's ``state``.

    Walks the top-level map with an ``Unpacker``: every field but ``state`` is decoded
    (they are a few bytes); ``state`` is skipped (``skip()`` checks its structure but
    builds no objects) and kept as the byte range it spans, a ``_RawState``. Keys may come
    in any order. A message other than ``state`` gets its ``state`` field (if any) decoded.
    """
    if frame and not (0x80 <= frame[0] <= 0x8F or frame[0] in (0xDE, 0xDF)):
        # Not a fixmap, map 16 or map 32 header; an empty frame is "undecodable" below.
        raise _protocol_error("server sent a non-map message")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(frame) or 1)
    message: dict[Any, Any] = {}
    span: tuple[int, int] | None = None  # where the "state" value is (the last one, if repeated)
    try:
        unpacker.feed(frame)
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "state":
                begin = unpacker.tell()
                unpacker.skip()
                span = (begin, unpacker.tell())
            else:
                message[key] = unpacker.unpack()
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        detail = str(exc) or type(exc).__name__
        raise _protocol_error(f"undecodable server frame: {detail}") from None
    if unpacker.tell() != len(frame):
        raise _protocol_error("undecodable server frame: extra data after the message")
    if span is not None:
        raw = memoryview(frame)[span[0] : span[1]]
        message["state"] = _RawState(raw) if message.get("t") == "state" else _unpack_value(raw)
    return message


def _decode_server_frame(frame: bytes | str, text: bool) -> dict[str, Any]:
    """Decode a server frame. States can be far larger than the 16 KiB limit on client
    messages, so only the shape is checked here, not the client-side size limits.

    On a msgpack connection a state message's ``state`` is left undecoded (a
    ``_RawState``, see ``_parse_msgpack_frame``); ``_make_state`` wraps it in a lazy
    ``State``. A state message's ``tick`` and ``ack`` are checked to be ints.
    """
    if text:
        try:
            value: Any = orjson.loads(frame)
        except ValueError as exc:
            raise _protocol_error(f"undecodable server frame: {exc}") from None
        if not isinstance(value, dict):
            raise _protocol_error("server sent a non-map message")
        message: dict[str, Any] = value
    else:
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise _protocol_error("server sent a text frame on a msgpack connection")
        message = _parse_msgpack_frame(bytes(frame))
    if message.get("t") == "state":
        for name in ("tick", "ack"):
            number = message.get(name)
            if not isinstance(number, int) or isinstance(number, bool):
                raise _protocol_error(f"state message without an integer {name!r}")
        if "state" not in message:
            raise _protocol_error("state message without a 'state'")
    return message


def _make_state(message: dict[str, Any], server: str, epoch: int) -> State:
    """The ``State`` of a state message from ``_decode_server_frame``."""
    value = message["state"]
    if isinstance(value, _RawState):
        return State.lazy(message["tick"], message["ack"], value.raw, server, epoch)
    return State(message["tick"], message["ack"], value, server, epoch)


def _ignore_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


__all__ = [
    "AuthClient",
    "ClientError",
    "ClientStats",
    "ConnectionState",
    "LoginError",
    "RoomClient",
    "RoomError",
    "State",
    "Tokens",
]
