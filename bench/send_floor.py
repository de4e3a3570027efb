"""The kernel's part of a state send: CPU per ``send()`` over loopback TCP, no server.

A room server sends one state per player and tick, one ``send()`` each. This measures
what such a send costs with nothing above it: ``socket.send`` from Python to a child
process that drains every connection, in ticks (one send per connection, then a 2 ms
pause) so the receiver keeps up, the sender pinned to CPU 0 as bench/arena.py pins the
room server. Prints one JSON line: µs of the sender's CPU (user + system) per send for
each (bytes, connections) pair; compare with the ``state_sends`` part of
``bench/arena.py --cpu-split``.

    .venv/bin/python bench/send_floor.py [--sends 40000] [--points 480x400,14000x200]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import time


def _drain(port: int, connections: int, expected: int) -> None:
    selector = selectors.DefaultSelector()
    for _ in range(connections):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
    received = 0
    while received < expected:
        events = selector.select(5.0)
        if not events:
            return  # the sender is gone
        for key, _ in events:
            try:
                received += len(key.fileobj.recv(1 << 20))  # type: ignore[union-attr]
            except BlockingIOError:
                pass


def measure(size: int, connections: int, sends: int) -> float:
    """µs of CPU per send of ``size`` bytes, round-robin over ``connections``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:  # the reader
        try:
            _drain(port, connections, sends * size)
        finally:
            os._exit(0)
    peers = []
    for _ in range(connections):
        peer, _ = listener.accept()
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peers.append(peer)
    listener.close()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    payload = b"x" * size
    started = time.thread_time()
    for index in range(sends):
        peers[index % connections].send(payload)
        if index % connections == connections - 1:
            time.sleep(0.002)  # one tick's round; the reader catches up
    spent = time.thread_time() - started
    os.waitpid(child, 0)
    for peer in peers:
        peer.close()
    return spent / sends * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=40_000)
    parser.add_argument("--points", default="480x400,14000x200", help="BYTESxCONNECTIONS,...")
    args = parser.parse_args()
    points = []
    for spec in args.points.split(","):
        size, connections = (int(part) for part in spec.split("x"))
        points.append(
            {
                "bytes": size,
                "connections": connections,
                "cpu_us_per_send": round(measure(size, connections, args.sends), 2),
            }
        )
    print(json.dumps({"bench": "send_floor", "sends_per_point": args.sends, "points": points}))


if __name__ == "__main__":
    main()
