"""A crowd of cheap players for failover benches: hundreds or thousands in one process.

Why not ``stateroom bots``: the SDK's players cost about 60 µs of Python per state and
input, so 1,000 players at 20 states/s would need more than the whole 2-core machine the
benches run on. These players speak the wire protocol (docs/protocol.md, v1 msgpack)
over ``picows`` (frames parsed in C) with one shared timer for their inputs and stall
checks, and still do what a failover bench must check on every state:

- acks never go back (an acked input lost), and on a resume ``welcome.ack`` is not below
  the highest ack seen (``lost_acked_inputs`` counts the inputs lost);
- ``inputs`` (the arena counts every input applied to a player) never exceeds the ack
  (``duplicate_inputs``), and ticks only go forward (``rollbacks``);
- a dropped connection (SIGKILLed owner: 1006), 4020, 4500 or a stall (no frame for
  ``STALL_S``) is followed by a reconnect to another known server, at random, with the
  SDK's backoff
  (50 ms doubling, capped at 250 ms, half jitter), a redirect (4021) at once to its URL;
  a resumed seat gets every unacked input again, in order;
- per player, the longest gap between two states (what a failover cost it).

Run: ``python bench/failover_clients.py --cluster F --room mass --rooms 200 --players 2
--rate 20 --seconds 30`` prints progress lines ``{"event": "joined", ...}`` on stdout,
then one summary object when done (``--until-file`` ends the run early when the file
appears). The process's own CPU is in the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, cast

import httpx
import msgpack
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from infra.cluster_file import load_cluster  # noqa: E402
from infra.eventloop import run_loop  # noqa: E402

STALL_S = 1.0  # no frame for this long while seated: the connection is taken for dead
JOIN_WAIT_S = 3.0  # no reply to join for this long: the connection is given up
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 0.25
RETRY = {1001, 1006, 1011, 1012, 1013, 4009, 4020, 4500}  # docs/protocol.md, close codes
REDIRECT = 4021
MAX_RESEND = 40  # unacked inputs resent at once after a resume (the server's burst is 60)


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 1)}


class Connection(WSListener):
    """One WebSocket connection of a player."""

    def __init__(self, player: Player) -> None:
        self.player = player
        self.transport: WSTransport | None = None
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.close_code = 1006
        self.opened_at = time.monotonic()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        packed = msgpack.packb({"t": "join", "v": 1, "room": self.player.room})
        transport.send(WSMsgType.BINARY, packed)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_code = int(code.value)
            transport.send_close(code)
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.BINARY:
            return
        self.player.on_message(self, msgpack.unpackb(frame.get_payload_as_bytes()))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(self.close_code)


class Player:
    def __init__(self, crowd: Crowd, index: int) -> None:
        self.crowd = crowd
        self.index = index
        self.room = f"{crowd.room}-{index // crowd.players_per_room}"
        self.token = ""
        self.player_id = ""
        self.conn: Connection | None = None
        self.seated = False
        self.stopped = False
        self.failed = ""
        self.seq = 0
        self.acked = 0
        self.last_tick = -1
        self.pending: deque[tuple[int, float]] = deque()  # (seq, sent at), unacked
        self.last_frame = 0.0
        self.last_state = 0.0
        self.longest_gap = 0.0
        self.next_input = 0.0
        self.url_index = index
        self.redirect_to = ""
        self.fallback = ""  # the welcome's fallback: asked first after a drop (as the SDK)
        self.welcomed = False
        self.rejoining = False  # dropped on purpose (Crowd.rejoin): back to the same server
        self.lost = self.duplicates = self.rollbacks = 0
        self.reconnects = self.redirects = self.seat_resets = self.fallbacks = 0

    # -- the connection loop ----------------------------------------------------------

    async def run(self) -> None:
        crowd = self.crowd
        attempt = 0
        while not self.over():
            url = self.redirect_to or crowd.urls[self.url_index % len(crowd.urls)]
            self.redirect_to = ""
            self.welcomed = False
            code = 1006
            try:
                _, listener = await ws_connect(
                    lambda: Connection(self),
                    url,
                    websocket_handshake_timeout=1.0,
                    extra_headers={"Authorization": f"Bearer {self.token}"},
                )
                self.conn = conn = cast(Connection, listener)
                code = await conn.closed
            except Exception as exc:  # refused, reset, handshake timeout: as a dropped connection
                code = 1006
                why = type(exc).__name__
                crowd.connect_errors[why] = crowd.connect_errors.get(why, 0) + 1
            self.conn = None
            self.seated = False
            if self.rejoining:
                self.rejoining = False
                self.redirect_to = url
                continue
            crowd.closes[code] = crowd.closes.get(code, 0) + 1
            if self.over():
                return
            if code == REDIRECT and self.redirect_to:
                self.redirects += 1
                attempt = 0
                continue
            if code not in RETRY and code != REDIRECT:
                self.failed = f"closed {code}"
                self.stopped = True
                return
            self.reconnects += 1
            if self.welcomed and self.fallback and self.fallback != url:
                # A seated connection dropped: the server the welcome named takes the
                # room over (the SDK does the same).
                self.redirect_to = self.fallback
                self.fallbacks += 1
            else:
                # Another known server at random: the SDK's rotation starts at a random
                # server per client, so a dead server's players spread over the others.
                # (Here the survivors were down while the crowd joined, which would
                # otherwise leave every player's rotation on the same next server.)
                self.url_index += random.randrange(1, len(crowd.urls)) if len(crowd.urls) > 1 else 1
            attempt += 1
            cap = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
            await asyncio.sleep(random.uniform(cap / 2, cap))

    def over(self) -> bool:
        return self.stopped or self.crowd.stopping

    # -- messages -----------------------------------------------------------------------

    def on_message(self, conn: Connection, msg: dict[str, Any]) -> None:
        now = time.monotonic()
        self.last_frame = now
        kind = msg.get("t")
        if kind == "state":
            self.on_state(msg, now)
        elif kind == "welcome":
            self.on_welcome(conn, msg, now)
        elif kind == "redirect":
            self.redirect_to = str(msg.get("url", ""))
        elif kind == "error":
            code = str(msg.get("code"))
            self.crowd.errors[code] = self.crowd.errors.get(code, 0) + 1
            expected = msg.get("expected")
            if isinstance(expected, int) and expected <= self.seq:
                self.resend(conn, expected - 1)

    def on_welcome(self, conn: Connection, msg: dict[str, Any], now: float) -> None:
        self.player_id = str(msg["player_id"])
        self.welcomed = True
        self.fallback = str(msg.get("fallback") or "")
        ack = int(msg["ack"])
        if msg.get("resumed"):
            if ack < self.acked:
                self.lost += self.acked - ack
        elif self.acked or self.seq:
            self.seat_resets += 1  # the grace period ran out: a fresh seat, seq from 1
            self.seq = self.acked = 0
            self.pending.clear()
        self.acked = max(self.acked, ack)
        while self.pending and self.pending[0][0] <= ack:
            self.pending.popleft()
        self.last_tick = max(self.last_tick, int(msg["tick"]))
        self.seated = True
        self.last_state = self.last_state or now
        self.next_input = max(self.next_input, now)
        self.resend(conn, ack)

    def on_state(self, msg: dict[str, Any], now: float) -> None:
        tick = int(msg["tick"])
        if tick <= self.last_tick:
            self.rollbacks += 1
        self.last_tick = max(self.last_tick, tick)
        if self.last_state:
            self.longest_gap = max(self.longest_gap, now - self.last_state)
        self.last_state = now
        ack = int(msg["ack"])
        if ack < self.acked:
            self.lost += self.acked - ack
        elif ack > self.acked:
            self.acked = ack
            latencies = self.crowd.latencies
            while self.pending and self.pending[0][0] <= ack:
                _, sent = self.pending.popleft()
                latencies.append((now - sent) * 1000)
        me = (msg.get("state") or {}).get("players", {}).get(self.player_id)
        if me is not None and int(me.get("inputs", 0)) > ack:
            self.duplicates = max(self.duplicates, int(me["inputs"]) - ack)

    # -- inputs ---------------------------------------------------------------------------

    def send_input(self, now: float) -> None:
        conn = self.conn
        if not self.seated or conn is None or conn.transport is None:
            return
        self.seq += 1
        self.pending.append((self.seq, now))
        self.crowd.inputs_sent += 1
        conn.transport.send(WSMsgType.BINARY, _input(self.seq, self.index))

    def resend(self, conn: Connection, after: int) -> None:
        """Every unacked input with seq > ``after``, in order (at most MAX_RESEND)."""
        if conn.transport is None:
            return
        for seq, _ in list(self.pending)[:MAX_RESEND]:
            if seq > after:
                conn.transport.send(WSMsgType.BINARY, _input(seq, self.index))


def _input(seq: int, index: int) -> bytes:
    angle = (seq * 37 + index * 11) % 360
    data = {"dx": round((angle - 180) / 180, 2), "dy": round((90 - angle % 180) / 90, 2)}
    return bytes(msgpack.packb({"t": "input", "seq": seq, "data": data}))


class Crowd:
    def __init__(self, args: argparse.Namespace) -> None:
        info = load_cluster(Path(args.cluster))
        self.auth_url = info.auth_url
        self.urls = [server.ws_url for server in info.servers]
        self.room = args.room
        self.players_per_room = args.players
        self.rate = args.rate
        self.seconds = args.seconds
        self.until_file = Path(args.until_file) if args.until_file else None
        self.rejoin_file = Path(args.rejoin_file) if args.rejoin_file else None
        self.join_wave = args.join_wave
        self.players = [Player(self, i) for i in range(args.rooms * args.players)]
        self.stopping = False
        self.inputs_sent = 0
        self.login_retries = 0
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.closes: dict[int, int] = {}  # close codes of the connections that ended
        self.connect_errors: dict[str, int] = {}  # connections that never opened, by error
        self.given_up = {"stall": 0, "join_wait": 0}  # connections this side dropped
        self.sending = True

    async def login(self, http: httpx.AsyncClient, player: Player) -> None:
        for _attempt in range(60):
            try:
                response = await http.post("/v1/guest", json={"name": f"c{player.index}"})
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 200:
                player.token = response.json()["access_token"]
                return
            if response is not None and response.status_code not in (429, 503):
                player.failed = f"login refused: HTTP {response.status_code}"
                return
            self.login_retries += 1
            await asyncio.sleep(random.uniform(0.1, 0.5))
        player.failed = "login kept failing"

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.auth_url, timeout=30) as http:
            queue = list(self.players)

            async def worker() -> None:
                while queue:
                    await self.login(http, queue.pop())

            await asyncio.gather(*(worker() for _ in range(32)))
        login_s = time.monotonic() - started
        timer = asyncio.create_task(self.timer())
        runners: list[asyncio.Task[None]] = []
        ready = [p for p in self.players if not p.failed and p.token]
        # Players arrive in waves (as they would over a few seconds), not all in one
        # event-loop turn: the bench measures the failover, not a join storm.
        for first in range(0, len(ready), self.join_wave):
            wave = ready[first : first + self.join_wave]
            runners += [asyncio.create_task(p.run()) for p in wave]
            wave_deadline = time.monotonic() + 10
            while time.monotonic() < wave_deadline and not all(p.seated or p.failed for p in wave):
                await asyncio.sleep(0.02)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seated = sum(1 for p in self.players if p.seated)
            if seated == len(self.players) or not any(not t.done() for t in runners):
                break
            await asyncio.sleep(0.1)
        out(
            {
                "event": "joined",
                "seated": sum(1 for p in self.players if p.seated),
                "players": len(self.players),
                "login_s": round(login_s, 2),
                "join_s": round(time.monotonic() - started, 2),
            }
        )
        cpu0, played_from = _cpu_s(), time.monotonic()
        end = played_from + self.seconds
        while time.monotonic() < end:
            if self.until_file is not None and self.until_file.exists():
                break
            if self.rejoin_file is not None and self.rejoin_file.exists():
                self.rejoin_file.unlink()
                await self.rejoin()
            await asyncio.sleep(0.1)
        self.sending = False
        await asyncio.sleep(2.0)  # the last inputs' acks
        self.stopping = True
        cpu_s, played_s = _cpu_s() - cpu0, time.monotonic() - played_from
        timer.cancel()
        for p in self.players:
            p.stopped = True
            if p.conn is not None and p.conn.transport is not None:
                p.conn.transport.disconnect()
        # A player still in a handshake or a backoff ends with it; none is waited for
        # longer than a few seconds.
        _, stuck = await asyncio.wait(runners, timeout=5)
        for task in stuck:
            task.cancel()
        return self.summary(cpu_s, played_s)

    async def rejoin(self) -> None:
        """Every seated player reconnects to its server once (a resume), then the file
        ``<rejoin-file>.done`` appears: their welcomes are fresh, and name the fallback
        of the servers live now (the failover benches start the survivors after the
        crowd has joined, so that one server owns every room)."""
        for p in self.players:
            if p.seated and p.conn is not None and p.conn.transport is not None:
                p.rejoining = True
                p.conn.transport.disconnect()
        deadline = time.monotonic() + 30
        await asyncio.sleep(0.1)
        while time.monotonic() < deadline and not all(
            p.seated or p.failed or p.stopped for p in self.players
        ):
            await asyncio.sleep(0.05)
        assert self.rejoin_file is not None
        await asyncio.to_thread(Path(f"{self.rejoin_file}.done").touch)

    async def timer(self) -> None:
        """Inputs at ``rate`` per player (phases spread), and stall checks."""
        period = 1.0 / self.rate
        for i, p in enumerate(self.players):
            p.next_input = time.monotonic() + period * (i % 97) / 97
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            for p in self.players:
                conn = p.conn
                if conn is None or conn.transport is None:
                    continue
                if not p.seated:
                    # No welcome (nor redirect) 3 s after connecting: try elsewhere.
                    if now - conn.opened_at > JOIN_WAIT_S:
                        conn.opened_at = now
                        self.given_up["join_wait"] += 1
                        conn.transport.disconnect()
                    continue
                if self.sending and now >= p.next_input:
                    p.next_input += period
                    if p.next_input < now:
                        p.next_input = now + period
                    p.send_input(now)
                if now - p.last_frame > STALL_S:
                    p.last_frame = now  # once per stall
                    self.given_up["stall"] += 1
                    conn.transport.disconnect()

    def summary(self, cpu_s: float, played_s: float) -> dict[str, Any]:
        players = self.players
        acked = sum(p.acked for p in players)
        unacked = sum(len(p.pending) for p in players)
        return {
            "players": len(players),
            "failed_players": sum(1 for p in players if p.failed),
            "failures": sorted({p.failed for p in players if p.failed})[:5],
            "inputs_sent": self.inputs_sent,
            "inputs_acked": acked,
            "inputs_unacked_at_end": unacked,
            "lost_acked_inputs": sum(p.lost for p in players),
            "duplicate_inputs": sum(p.duplicates for p in players),
            "rollbacks": sum(p.rollbacks for p in players),
            "reconnects": sum(p.reconnects for p in players),
            "redirects": sum(p.redirects for p in players),
            # Reconnects that went first to the welcome's fallback server (as the SDK).
            "fallbacks": sum(p.fallbacks for p in players),
            "seat_resets": sum(p.seat_resets for p in players),
            "latency_ms": spread(self.latencies),
            "longest_gap_ms": spread([p.longest_gap * 1000 for p in players]),
            "errors": self.errors,
            "closes": {str(code): n for code, n in sorted(self.closes.items())},
            "connect_errors": self.connect_errors,
            "given_up": self.given_up,
            "login_retries": self.login_retries,
            "loadgen_cpu_cores": round(cpu_s / played_s, 3) if played_s else None,
        }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--room", default="mass")
    parser.add_argument("--rooms", type=int, required=True)
    parser.add_argument("--players", type=int, default=1, help="players per room")
    parser.add_argument("--rate", type=float, default=20.0, help="inputs/s per player")
    parser.add_argument("--seconds", type=float, required=True, help="play time once joined")
    parser.add_argument("--until-file", default="", help="stop early once this file exists")
    parser.add_argument(
        "--rejoin-file", default="", help="when it appears: every player resumes once"
    )
    parser.add_argument(
        "--join-wave", type=int, default=50, help="players that join together (then the next)"
    )
    args = parser.parse_args(argv)
    if min(args.rooms, args.players, args.join_wave) < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--rooms, --players, --join-wave, --rate and --seconds must be > 0")
    summary: dict[str, Any] = {}

    async def go() -> None:
        summary.update(await Crowd(args).run())

    run_loop(go())
    out(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())


class CrowdProcess:
    """This module in a child process; ``stop()`` ends its run early (the until-file),
    ``result()`` waits for its summary. Started with PDEATHSIG, killed by PID."""

    def __init__(
        self,
        cluster_file: Path,
        rooms: int,
        players: int,
        rate: float,
        seconds: float = 600.0,
        room: str = "mass",
        log_path: Path | None = None,
    ) -> None:
        import subprocess

        from infra.embedded_redis import die_with_parent

        self.until = cluster_file.parent / f"crowd-{os.getpid()}-{id(self)}.stop"
        self.rejoin_file = cluster_file.parent / f"crowd-{os.getpid()}-{id(self)}.rejoin"
        args = [
            sys.executable, str(Path(__file__).resolve()),
            "--cluster", str(cluster_file),
            "--room", room,
            "--rooms", str(rooms),
            "--players", str(players),
            "--rate", str(rate),
            "--seconds", str(seconds),
            "--until-file", str(self.until),
            "--rejoin-file", str(self.rejoin_file),
        ]  # fmt: skip
        self.log_path = log_path or cluster_file.parent / "crowd.log"
        err = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                args,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                preexec_fn=die_with_parent,
            )
        finally:
            err.close()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.until.touch()

    def rejoin(self, timeout: float = 40.0) -> None:
        """Every seated player resumes once on its server (see ``Crowd.rejoin``)."""
        done = Path(f"{self.rejoin_file}.done")
        done.unlink(missing_ok=True)
        self.rejoin_file.touch()
        deadline = time.monotonic() + timeout
        while not done.exists():
            if time.monotonic() > deadline or not self.running:
                raise RuntimeError("the crowd did not rejoin in time")
            time.sleep(0.05)

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        import subprocess

        self.stop()
        try:
            stdout, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"the crowd did not finish within {timeout:.0f} s") from None
        lines = [json.loads(x) for x in stdout.decode().splitlines() if x.startswith("{")]
        summaries = [x for x in lines if "event" not in x]
        if not summaries:
            tail = self.log_path.read_text(errors="replace")[-800:]
            raise RuntimeError(f"the crowd exited {self.proc.returncode} without a summary: {tail}")
        result: dict[str, Any] = summaries[-1]
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
