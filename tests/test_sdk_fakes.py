"""Fake room servers on loopback for the SDK's tests (and a check that they speak the protocol).

``FakeRoomServer`` is a real WebSocket server (``websockets.asyncio.server`` on a free
port of 127.0.0.1, or 127.0.0.2: another host on the same loopback) that speaks
protocol v1 through ``server.protocol``'s codecs and message builders. What it does with
a ``join`` is its ``behaviour``: ``play`` (welcome, then a state every 50 ms with the
player's ack, pongs, ``auth`` → ``authed``, the session closed with ``token_expired`` +
4001 at its token's expiry + leeway), ``redirect``, or ``refuse``. It counts
connections, handshake attempts and the ``Authorization`` headers it was sent.

``freeze()`` models a SIGSTOP'd process: open sessions go silent (no states, no
pongs, nothing read, so no closing handshake either) and new handshakes never
complete (TCP is accepted, the HTTP upgrade is never answered). ``Room`` is the
world the fakes share, so a second fake can "take the room over" and resume a
player's seat with the right ack.

Tokens are ``tok:<player>:<exp>:<n>`` (``make_token``), exp in unix seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from server.protocol import (
    SUBPROTOCOLS,
    CloseCode,
    ErrorCode,
    StateFrame,
    authed_message,
    codec_for_subprotocol,
    error_message,
    pong_message,
    redirect_message,
    welcome_message,
)

_counter = 0


def make_token(player: str = "p1", lifetime: float = 600.0) -> str:
    """A fresh fake access token for ``player``, valid ``lifetime`` s from now."""
    global _counter
    _counter += 1
    return f"tok:{player}:{int(time.time() + lifetime)}:{_counter}"


def token_exp(token: str) -> int:
    return int(token.split(":")[2])


def now_tick() -> int:
    """A tick from the wall clock at 20 Hz: grows across fake servers, as a room's does."""
    return int(time.monotonic() * 20)


@dataclass
class Room:
    """The room the fakes share: each player's last applied seq (its ack)."""

    acks: dict[str, int] = field(default_factory=dict)
    seated: set[str] = field(default_factory=set)


@dataclass
class Session:
    server: FakeRoomServer
    ws: ServerConnection
    join: dict[str, Any]
    token: str
    player: str
    codec: Any

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(self.codec.encode(message), text=self.codec.text)

    async def close_with(self, code: ErrorCode | None, close: int, reason: str) -> None:
        if code is not None:
            await self.send(error_message(code, reason))
        await self.ws.close(close, reason)


Behaviour = Callable[[Session], Awaitable[None]]


class FakeRoomServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        name: str = "fake",
        room: Room | None = None,
        behaviour: Behaviour | None = None,
        ssl: Any = None,
        leeway: float = 30.0,
        auth_reply: str = "authed",  # or "refuse": error unauthorized, connection left open
    ) -> None:
        self.host = host
        self.name = name
        self.room = room or Room()
        self.behaviour: Behaviour = behaviour or self.play
        self.ssl = ssl
        self.leeway = leeway
        self.auth_reply = auth_reply
        self.epoch = 1
        self.fallback = ""  # the welcome's fallback URL ("" : none)
        self.handshakes = 0  # HTTP upgrade requests received (also while frozen)
        self.connections = 0  # WebSocket connections opened
        self.authorizations: list[str | None] = []
        self.auth_messages: list[str] = []
        self.joins: list[dict[str, Any]] = []
        self.inputs: list[int] = []
        self.pings = 0
        self.state_interval = 0.05  # s between two states (20 Hz)
        self.frozen = False
        self._thaw = asyncio.Event()
        self._open: set[ServerConnection] = set()
        self._server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}/v1/ws"

    async def __aenter__(self) -> FakeRoomServer:
        self._server = await serve(
            self._handler,
            self.host,
            0,
            ssl=self.ssl,
            subprotocols=[Subprotocol(name) for name in SUBPROTOCOLS],
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._thaw.set()
        for ws in self._open:
            ws.transport.resume_reading()
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._server.wait_closed()

    def freeze(self) -> None:
        self.frozen = True
        for ws in self._open:  # no more reads: no pong, no answer to a closing handshake
            ws.transport.pause_reading()

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        if self.frozen:
            await self._thaw.wait()  # never answered while frozen (until the test ends)
            return ws.respond(503, "frozen\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        header = ws.request.headers.get("Authorization") if ws.request else None
        self.authorizations.append(header)
        codec = codec_for_subprotocol(ws.subprotocol)
        self._open.add(ws)
        try:
            join = codec.decode(await ws.recv())
            self.joins.append(join)
            token = (header or "").removeprefix("Bearer ")
            player = token.split(":")[1] if token.count(":") >= 2 else "anonymous"
            await self.behaviour(Session(self, ws, join, token, player, codec))
        except ConnectionClosed:
            pass
        finally:
            self._open.discard(ws)

    # -- behaviours ---------------------------------------------------------------------

    @staticmethod
    def redirect(url: str, server: str = "other") -> Behaviour:
        async def behaviour(session: Session) -> None:
            await session.send(redirect_message(str(session.join["room"]), url, server))
            await session.ws.close(int(CloseCode.REDIRECT), "room is on another server")

        return behaviour

    @staticmethod
    def refuse(code: ErrorCode | None, close: int, reason: str = "refused") -> Behaviour:
        async def behaviour(session: Session) -> None:
            await session.close_with(code, close, reason)

        return behaviour

    @staticmethod
    def until(deadline: Callable[[], bool], before: Behaviour, after: Behaviour) -> Behaviour:
        """``before`` while ``deadline()`` is false, then ``after``."""

        async def behaviour(session: Session) -> None:
            await (after if deadline() else before)(session)

        return behaviour

    async def play(self, session: Session) -> None:
        """Seat the player and play: a state every 50 ms, pongs, re-auth, token expiry."""
        ws, room, player = session.ws, self.room, session.player
        try:
            exp = token_exp(session.token)
        except (IndexError, ValueError):
            await session.close_with(ErrorCode.UNAUTHORIZED, 4001, "unauthorized")
            return
        if time.time() >= exp + self.leeway:
            await session.close_with(ErrorCode.TOKEN_EXPIRED, 4001, "token_expired")
            return
        resumed = player in room.seated
        room.seated.add(player)
        ack = room.acks.setdefault(player, 0)
        deadline = [exp]
        await session.send(
            welcome_message(
                room=str(session.join["room"]),
                game="arena",
                player_id=player,
                server=self.name,
                epoch=self.epoch,
                tick=now_tick(),
                tick_rate=20,
                ack=ack,
                resumed=resumed,
                token_exp=exp,
                fallback=self.fallback,
            )
        )

        async def ticker() -> None:
            while True:
                await asyncio.sleep(self.state_interval)
                if self.frozen:
                    continue
                if time.time() >= deadline[0] + self.leeway:
                    await session.close_with(ErrorCode.TOKEN_EXPIRED, 4001, "token_expired")
                    return
                frame = StateFrame(now_tick(), {"players": {player: {"inputs": room.acks[player]}}})
                await ws.send(frame.encode_for(session.codec, room.acks[player]))

        task = asyncio.get_running_loop().create_task(ticker())
        try:
            async for raw in ws:
                if self.frozen:
                    continue  # a stopped process reads nothing and answers nothing
                message = session.codec.decode(raw)
                kind = message.get("t")
                if kind == "input":
                    seq = int(message["seq"])
                    self.inputs.append(seq)
                    if seq == room.acks[player] + 1:
                        room.acks[player] = seq
                elif kind == "ping":
                    self.pings += 1
                    await session.send(pong_message(int(message["id"]), now_tick()))
                elif kind == "auth":
                    fresh = str(message["token"])
                    self.auth_messages.append(fresh)
                    if self.auth_reply == "authed" and fresh.split(":")[1] == player:
                        deadline[0] = token_exp(fresh)
                        await session.send(authed_message(deadline[0]))
                    else:
                        await session.send(error_message(ErrorCode.UNAUTHORIZED, "refused"))
                elif kind == "leave":
                    room.seated.discard(player)
                    await ws.close(1000, "left the room")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task


class Blackhole:
    """Accepts TCP connections and never answers: a frozen process, as a client sees it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/ws"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass

    async def __aenter__(self) -> Blackhole:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


# -- the fakes themselves ------------------------------------------------------------------


async def test_the_fake_speaks_the_protocol() -> None:
    from websockets.asyncio.client import connect

    from server.protocol import MSGPACK

    async with FakeRoomServer(name="s1") as server:
        token = make_token("ann", 60)
        headers = Headers({"Authorization": f"Bearer {token}"})
        async with connect(
            server.url, additional_headers=headers, subprotocols=[Subprotocol(SUBPROTOCOLS[0])]
        ) as ws:
            await ws.send(MSGPACK.encode({"t": "join", "v": 1, "room": "r"}))
            welcome = MSGPACK.decode(await ws.recv())
            assert welcome["t"] == "welcome" and welcome["player_id"] == "ann"
            assert welcome["token_exp"] == token_exp(token)
            await ws.send(MSGPACK.encode({"t": "input", "seq": 1, "data": None}))
            await ws.send(MSGPACK.encode({"t": "ping", "id": 3}))
            seen: set[str] = set()
            while seen != {"state", "pong"}:
                seen.add(MSGPACK.decode(await ws.recv())["t"])
    assert server.authorizations == [f"Bearer {token}"]
    assert server.room.acks == {"ann": 1}
