"""The arena bench's load generator in Python: the same players and control protocol as
loadgen.mjs (see there), on asyncio + websockets + uvloop in ONE process.

It exists to compare (``bench/arena.py --loadgen python``) and for machines without Node.
It is the slower of the two: websockets parses and assembles every message of every drainer
in Python, so this process saturates its core well before the Node one (see bench/README.md
for figures); bench/arena.py marks such points ``loadgen_saturated`` from its CPU and
event-loop delay, whatever load generator ran.

Run by bench/arena.py: ``python bench/loadgen/loadgen.py --auth-url URL --ws-url URL
--room R --count N [--rooms-of K] [--probes P] [--protocol 1|2] [--input-ms 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx
import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from infra.eventloop import run_loop

SLOTS = 10
LAG_S = 0.010
#: A drainer's peek (as in wsclient.mjs): fixmap, "t", a 5-letter string starting with "s".
STATE_PEEK = (0xA1, 0x74, 0xA5, 0x73)


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    i = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return round(values[i], 3)


def summary(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.5),
        "p99": percentile(ordered, 0.99),
        "max": percentile(ordered, 1.0),
        "mean": round(sum(ordered) / len(ordered), 3),
        "n": len(ordered),
    }


class Window:
    """Counters of one measured window (reset by the ``window`` command)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.cpu = time.process_time()
        self.inputs_sent = 0
        self.states_received = 0
        self.probe_states_decoded = 0
        self.probe_inputs_seen = 0
        self.bytes_received = 0
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.errors: dict[str, int] = {}
        self.closes: dict[str, int] = {}
        self.seq_resets = 0
        self.late_slots = 0
        self.inputs_skipped = 0
        self.rollbacks = 0


def bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


class Player:
    def __init__(self, gen: LoadGen, index: int) -> None:
        self.gen = gen
        self.index = index
        self.probe = index < gen.probes
        self.room = f"{gen.room}-{index // gen.rooms_of}" if gen.rooms_of else gen.room
        self.token = ""
        self.player_id = ""
        self.ws: ClientConnection | None = None
        self.seated = False
        self.closed = False
        self.seq = 0
        self.pending: list[tuple[int, float]] = []
        self.last_tick = -1
        self.last_ack = 0
        self.last_inputs: int | None = None
        self.angle = index * 0.7
        self.failed: str | None = None

    async def join(self, url: str) -> None:
        gen = self.gen
        for _hop in range(5):
            ws = await connect(
                url,
                subprotocols=[Subprotocol(f"stateroom.v{gen.protocol}.msgpack")],
                additional_headers={"Authorization": f"Bearer {self.token}"},
                compression=None,
                max_size=None,
                open_timeout=30,
            )
            await ws.send(msgpack.packb({"t": "join", "v": gen.protocol, "room": self.room}))
            reply = msgpack.unpackb(await ws.recv(decode=False))
            if reply.get("t") == "redirect":
                await ws.close()
                url = reply["url"]
                continue
            if reply.get("t") != "welcome":
                await ws.close()
                raise RuntimeError(f"error {reply.get('code')}: {reply.get('message')}")
            self.ws = ws
            self.player_id = reply["player_id"]
            self.seq = self.last_ack = int(reply["ack"])
            self.last_tick = int(reply["tick"])
            self.seated = True
            return
        raise RuntimeError("too many redirects")

    async def read(self) -> None:
        assert self.ws is not None
        gen = self.gen
        try:
            async for data in self.ws:
                assert isinstance(data, bytes)
                w = gen.win
                w.bytes_received += len(data)
                if len(data) > 5 and tuple(data[1:5]) == STATE_PEEK and data[0] & 0xF0 == 0x80:
                    w.states_received += 1
                    if not self.probe:
                        continue
                msg = msgpack.unpackb(data)
                kind = msg.get("t")
                if kind == "state":
                    self.on_state(msg)
                elif kind == "error":
                    bump(w.errors, str(msg.get("code")))
                    bump(gen.errors_total, str(msg.get("code")))
                    expected = msg.get("expected")
                    if isinstance(expected, int):
                        w.seq_resets += 1
                        self.seq = expected - 1
                        while self.pending and self.pending[-1][0] >= expected:
                            self.pending.pop()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.seated = False
            code = self.ws.close_code if self.ws.close_code is not None else 1006
            bump(gen.win.closes, str(code))
            bump(gen.closes_total, str(code))

    def on_state(self, msg: dict[str, Any]) -> None:
        w = self.gen.win
        w.probe_states_decoded += 1
        tick = int(msg["tick"])
        if tick < self.last_tick:
            w.rollbacks += 1
        self.last_tick = tick
        ack = int(msg["ack"])
        if ack > self.last_ack:
            now = time.monotonic()
            k = 0
            while k < len(self.pending) and self.pending[k][0] <= ack:
                if self.pending[k][1] >= w.started:
                    w.latencies.append((now - self.pending[k][1]) * 1000)
                k += 1
            del self.pending[:k]
            self.last_ack = ack
        if self.gen.protocol == 1:
            me = (msg.get("state") or {}).get("players", {}).get(self.player_id)
            if me is not None:
                self.last_inputs = int(me["inputs"])
                w.probe_inputs_seen += 1

    def send_input(self) -> None:
        if not self.seated or self.closed or self.ws is None:
            return
        self.seq += 1
        self.angle += 0.37
        data = {"dx": round(math.cos(self.angle), 2), "dy": round(math.sin(self.angle), 2)}
        frame = msgpack.packb({"t": "input", "seq": self.seq, "data": data})
        # Straight to the transport through websockets' sans-I/O protocol, as the Node one
        # writes: a coroutine (a task) per input would cost this process more than the frame.
        try:
            self.ws.protocol.send_binary(frame)
        except Exception:  # the connection is closing: its reader records how
            return
        self.ws.send_data()
        if self.probe:
            self.pending.append((self.seq, time.monotonic()))
        self.gen.win.inputs_sent += 1


class LoadGen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.auth_url = args.auth_url.rstrip("/")
        self.ws_url = args.ws_url
        self.room = args.room
        self.count = args.count
        self.rooms_of = args.rooms_of
        self.probes = min(args.probes, args.count)
        self.protocol = args.protocol
        self.input_s = args.input_ms / 1000
        self.login_concurrency = args.login_concurrency
        self.connect_concurrency = args.connect_concurrency
        self.join_timeout = args.join_timeout_s
        self.win = Window()
        self.players = [Player(self, i) for i in range(self.count)]
        self.login_retries = 0
        self.closes_total: dict[str, int] = {}
        self.errors_total: dict[str, int] = {}
        self.quit = asyncio.Event()

    async def guest(self, http: httpx.AsyncClient, player: Player) -> None:
        for _attempt in range(30):
            try:
                response = await http.post("/v1/guest", json={"name": f"lg-{player.index}"})
            except httpx.HTTPError:
                self.login_retries += 1
                await asyncio.sleep(random.uniform(0.1, 0.5))
                continue
            if response.status_code == 200:
                player.token = response.json()["access_token"]
                return
            if response.status_code not in (429, 503):
                raise RuntimeError(f"guest login refused with HTTP {response.status_code}")
            self.login_retries += 1
            await asyncio.sleep(random.uniform(0.1, 0.5))
        raise RuntimeError("guest login kept failing (503/429)")

    async def pool(self, items: list[Player], concurrency: int, fn: Any) -> None:
        queue = list(reversed(items))

        async def worker() -> None:
            while queue:
                await fn(queue.pop())

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(items)))))

    async def join_all(self) -> None:
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.auth_url, timeout=30) as http:

            async def login(p: Player) -> None:
                try:
                    await self.guest(http, p)
                except (RuntimeError, httpx.HTTPError) as exc:
                    p.failed = f"login: {exc}"

            await self.pool(self.players, self.login_concurrency, login)
        login_s = time.monotonic() - started

        async def join(p: Player) -> None:
            try:
                await asyncio.wait_for(p.join(self.ws_url), self.join_timeout)
            except (OSError, RuntimeError, ConnectionClosed, TimeoutError) as exc:
                p.failed = f"join: {exc}"

        await self.pool([p for p in self.players if not p.failed], self.connect_concurrency, join)
        failed = [p for p in self.players if not p.seated]
        reasons: dict[str, int] = {}
        for p in failed:
            bump(reasons, p.failed or "not seated")
        out(
            {
                "event": "joined",
                "seated": self.count - len(failed),
                "failed": len(failed),
                "failures": reasons,
                "login_s": round(login_s, 2),
                "join_s": round(time.monotonic() - started, 2),
                "login_retries": self.login_retries,
                "probes": self.probes,
                "protocol": self.protocol,
            }
        )

    async def lag_probe(self) -> None:
        while True:
            due = time.monotonic() + LAG_S
            await asyncio.sleep(LAG_S)
            self.win.lags.append(max(0.0, time.monotonic() - due) * 1000)

    async def pump(self) -> None:
        slot_s = self.input_s / SLOTS
        next_at = time.monotonic()
        slot = 0
        while True:
            now = time.monotonic()
            if now - next_at > self.input_s:
                missed = int((now - next_at) / slot_s)
                self.win.late_slots += missed
                seated = sum(1 for p in self.players if p.seated)
                self.win.inputs_skipped += round(missed * seated / SLOTS)
                next_at = now
            while next_at <= now:
                for p in self.players[slot::SLOTS]:
                    p.send_input()
                slot = (slot + 1) % SLOTS
                next_at += slot_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def report(self) -> None:
        w = self.win
        wall = time.monotonic() - w.started
        lost = dup = 0
        for p in self.players:
            if p.probe and p.last_inputs is not None:
                lost += max(0, p.last_ack - p.last_inputs)
                dup += max(0, p.last_inputs - p.last_ack)
        out(
            {
                "event": "report",
                "window_s": round(wall, 3),
                "cpu_cores": round((time.process_time() - w.cpu) / wall, 4) if wall else 0.0,
                "event_loop_delay_ms": summary(w.lags),
                "latency_ms": summary(w.latencies),
                "inputs_sent": w.inputs_sent,
                "states_received": w.states_received,
                "probe_states_decoded": w.probe_states_decoded,
                "probe_inputs_seen": w.probe_inputs_seen,
                "bytes_received": w.bytes_received,
                "seated": sum(1 for p in self.players if p.seated),
                "errors": w.errors,
                "closes": w.closes,
                "seq_resets": w.seq_resets,
                "late_slots": w.late_slots,
                "inputs_skipped": w.inputs_skipped,
                "closes_total": self.closes_total,
                "errors_total": self.errors_total,
                "rollbacks": w.rollbacks,
                "lost_acked_inputs": lost,
                "duplicate_inputs": dup,
            }
        )

    def command(self, line: str) -> None:
        cmd = line.strip()
        if cmd == "window":
            self.win = Window()
        elif cmd == "report":
            self.report()
        elif cmd in ("quit", ""):
            self.quit.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def stdin() -> None:
            # EOF (the driver died) reads as "" and quits.
            for line in iter(sys.stdin.readline, ""):
                loop.call_soon_threadsafe(self.command, line)
            loop.call_soon_threadsafe(self.quit.set)

        threading.Thread(target=stdin, daemon=True).start()
        lag = asyncio.create_task(self.lag_probe())
        await self.join_all()
        readers = [asyncio.create_task(p.read()) for p in self.players if p.seated]
        pump = asyncio.create_task(self.pump())
        await self.quit.wait()
        pump.cancel()
        lag.cancel()
        for p in self.players:
            if p.ws is not None:
                p.ws.transport.abort()
        for task in readers:
            task.cancel()
        out({"event": "done"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auth-url", required=True)
    parser.add_argument("--ws-url", required=True)
    parser.add_argument("--room", default="bench")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--rooms-of", type=int, default=0)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--protocol", type=int, choices=(1, 2), default=1)
    parser.add_argument("--probe-decode", choices=("full",), default="full")
    parser.add_argument("--input-ms", type=float, default=50.0)
    parser.add_argument("--login-concurrency", type=int, default=32)
    parser.add_argument("--connect-concurrency", type=int, default=64)
    parser.add_argument("--join-timeout-s", type=float, default=90.0)
    args = parser.parse_args()
    if args.count < 1 or args.rooms_of < 0 or args.probes < 0 or args.input_ms <= 0:
        parser.error("--count >= 1, --rooms-of >= 0, --probes >= 0 and --input-ms > 0")

    async def go() -> None:
        await LoadGen(args).run()

    run_loop(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())
