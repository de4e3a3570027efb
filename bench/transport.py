"""Raw transport bench: the room server's hot path on each transport, same run, interleaved.

A server process (pinned to one core) runs only the transport: N connections, each
sends one small input every 50 ms (delivered to a callback, as the endpoint does),
and every 50 ms one 200-600 byte payload is sent to every connection (as a tick
does). The load generator (pinned to the other core, picows client) reports its
own CPU and the delivery delay of the broadcasts, and marks a point it saturated.

    .venv/bin/python bench/transport.py [--n 200] [--seconds 5] [--rounds 2]

Prints one JSON object: per transport and round, server CPU (cores, µs per input,
µs per message in or out), RSS, broadcast delivery p50/p99; and the ratio
picows / websockets of the CPU per message (mean over rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CLK_TCK,
    REPO,
    CpuWindow,
    cpu_count,
    emit,
    log,
    percentile,
    proc_rss_mb,
)
from infra.embedded_redis import die_with_parent, terminate
from infra.ports import free_port

TICK_S = 0.05
CLEAN_P99_MS = 20.0
READ_MS_PER_FRAME = 0.015  # the load generator reads a tick's N frames one after another
TWO_CORES = cpu_count() >= 2  # read before the load generator pins itself to core 1
INPUT = b"\x83\xa1t\xa1i\xa1s\x01\xa1d\x82\xa2dx\x01\xa2dy\xff"  # a msgpack input, 19 bytes


# -- the server side -----------------------------------------------------------------------


async def serve(kind: str, port: int) -> None:
    from server.transport import Connection, TransportOptions, listen

    connections: set[Connection] = set()
    inputs = 0

    def on_input(message: bytes | str) -> None:
        nonlocal inputs
        inputs += 1

    async def handler(conn: Connection) -> None:
        await conn.recv()  # the join
        connections.add(conn)
        conn.on_message = on_input
        try:
            await conn.wait_closed()
        finally:
            connections.discard(conn)

    options = TransportOptions(
        host="127.0.0.1",
        port=port,
        subprotocols=("stateroom.v1.msgpack",),
        socket_sndbuf=64 * 1024,
    )
    listener = await listen(kind, handler, options)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    rng = random.Random(1)
    next_tick = loop.time()
    while True:
        next_tick += TICK_S
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
        size = rng.randint(200, 600)
        stamp = time.monotonic().hex().encode()
        payload = stamp.ljust(size, b".")  # one encoding per tick, sent to everyone
        for conn in list(connections):
            conn.send(payload, False)
    await listener.close()  # pragma: no cover - ended by SIGTERM


def serve_main(kind: str, port: int) -> None:
    from infra.eventloop import run_loop

    run_loop(serve(kind, port))


# -- the load generator --------------------------------------------------------------------


def _user_system(pid: int) -> tuple[float, float]:
    """utime and stime of a process, in seconds (user: Python and the libraries; system:
    the kernel, mostly socket syscalls)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


async def drive(port: int, n: int, warmup: float, seconds: float, pid: int) -> dict[str, Any]:
    from picows import WSListener, WSMsgType, ws_connect

    measuring = False
    delays: list[float] = []
    inputs_sent = 0
    frames_in = 0

    class Listener(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            nonlocal frames_in
            if frame.msg_type == WSMsgType.BINARY and measuring:
                frames_in += 1
                stamp = frame.get_payload_as_bytes().rstrip(b".")
                delays.append((time.monotonic() - float.fromhex(stamp.decode())) * 1000)

    url = f"ws://127.0.0.1:{port}/v1/ws"
    transports = []
    for _ in range(n):
        transport, _listener = await ws_connect(
            Listener, url, extra_headers={"Sec-WebSocket-Protocol": "stateroom.v1.msgpack"}
        )
        transport.send(WSMsgType.BINARY, b"join")
        transports.append(transport)

    loop = asyncio.get_running_loop()
    lag: list[float] = []

    async def sender(index: int) -> None:
        nonlocal inputs_sent
        transport = transports[index]
        await asyncio.sleep(TICK_S * index / n)  # inputs spread over the tick
        next_at = loop.time()
        while True:
            next_at += TICK_S
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif measuring:
                lag.append(-delay * 1000)
            transport.send(WSMsgType.BINARY, INPUT)
            if measuring:
                inputs_sent += 1

    tasks = [loop.create_task(sender(i)) for i in range(n)]
    await asyncio.sleep(warmup)
    window = CpuWindow({"server": pid, "loadgen": os.getpid()})
    measuring = True
    user_before, system_before = _user_system(pid)
    window.start()
    await asyncio.sleep(seconds)
    window.stop()
    user_after, system_after = _user_system(pid)
    user, system = user_after - user_before, system_after - system_before
    measuring = False
    rss = proc_rss_mb(pid)
    for task in tasks:
        task.cancel()
    for transport in transports:
        transport.disconnect()
    server_us = window.used["server"] * 1e6
    loadgen_cores = window.cores("loadgen")
    return {
        "server_cpu_cores": round(window.cores("server"), 4),
        "cpu_us_per_input": round(server_us / max(1, inputs_sent), 2),
        "cpu_us_per_message": round(server_us / max(1, inputs_sent + frames_in), 2),
        "inputs": inputs_sent,
        "broadcast_frames": frames_in,
        "expected_frames": int(n * seconds / TICK_S),
        "server_rss_mb": rss,
        "server_user_share": round(user / (user + system), 3) if user + system else None,
        "delivery_ms": {
            "p50": round(percentile(delays, 0.5), 2),
            "p99": round(percentile(delays, 0.99), 2),
        },
        "loadgen_cpu_cores": round(loadgen_cores, 3),
        "loadgen_send_lag_p99_ms": round(percentile(lag, 0.99), 2) if lag else 0.0,
        "loadgen_saturated": loadgen_cores > 0.85,
        # A point whose broadcasts arrived late or short was starved of its core (another
        # process ran there): its CPU per message is not comparable, the means skip it.
        "clean": loadgen_cores <= 0.85
        and frames_in >= 0.98 * n * seconds / TICK_S
        and percentile(delays, 0.99) < CLEAN_P99_MS + n * READ_MS_PER_FRAME,
    }


def point(kind: str, n: int, warmup: float, seconds: float) -> dict[str, Any]:
    port = free_port()

    def pinned_server() -> None:
        die_with_parent()
        if TWO_CORES:
            os.sched_setaffinity(0, {0})

    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        preexec_fn=pinned_server,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        from infra.eventloop import run_loop

        result: dict[str, Any] = {}

        async def run() -> None:
            result.update(await drive(port, n, warmup, seconds, proc.pid))

        run_loop(run())
        return {"transport": kind, **result}
    finally:
        terminate(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="connections (default 200)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both transports")
    parser.add_argument("--serve", choices=("websockets", "picows"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main(args.serve, args.port)
        return 0
    if TWO_CORES:
        os.sched_setaffinity(0, {1})
    points: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = ("websockets", "picows") if r % 2 == 0 else ("picows", "websockets")
        for kind in order:
            log(f"round {r + 1}: {kind}, N={args.n}")
            points.append({"round": r + 1, **point(kind, args.n, args.warmup, args.seconds)})

    def mean(kind: str, key: str) -> float:
        values = [p[key] for p in points if p["transport"] == kind and p["clean"]]
        return sum(values) / len(values) if values else 0.0

    ws, pw = mean("websockets", "cpu_us_per_message"), mean("picows", "cpu_us_per_message")
    emit(
        {
            "bench": "transport",
            "n": args.n,
            "tick_ms": TICK_S * 1000,
            "pinned": TWO_CORES,
            "points": points,
            "mean_cpu_us_per_message": {"websockets": round(ws, 2), "picows": round(pw, 2)},
            "mean_cpu_us_per_input": {
                "websockets": round(mean("websockets", "cpu_us_per_input"), 2),
                "picows": round(mean("picows", "cpu_us_per_input"), 2),
            },
            "ratio_picows_over_websockets": round(pw / ws, 3) if ws and pw else None,
            "clean_points": {
                kind: sum(1 for p in points if p["transport"] == kind and p["clean"])
                for kind in ("websockets", "picows")
            },
            "any_loadgen_saturated": any(p["loadgen_saturated"] for p in points),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
