"""The launcher's control endpoint (server/control.py) against a real ``stateroom up``.

``up`` (two room servers, its own data folder and free ports, its own process group,
ended by PID) hands the login service the endpoint and its secret in the environment.
Through the endpoint: a kill of a room's owner while SDK players play, after which the
room recovers on the other server and ``up`` restarts the killed one; every refusal
(no or wrong secret, bad bodies, an unknown room, a method or path it does not serve)
and the owner that is not one of ``up``'s children (409, nothing killed). Redis down
(503) is checked on an endpoint of its own pointed at a closed port.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from client.sdk import AuthClient, RoomClient
from infra.ports import free_port
from server.control import ControlEndpoint
from server.store import RoomStore
from tests.integration.faults import wait_for
from tests.support import Processes, children_of, stateroom_up, wait_until
from tests.test_secrets import cmdline

SERVERS = 2


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    data: Path
    output: Path
    base: int
    control_url: str
    token: str
    auth_env: dict[str, str]
    auth_pid: int

    @property
    def cluster(self) -> dict[str, Any]:
        return dict(json.loads((self.data / "cluster.json").read_text()))

    def post(self, body: Any = None, token: str | None = "", **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.token}"
        if body is not None and "content" not in kw:
            kw["json"] = body
        path = kw.pop("path", "/kill-room")
        with httpx.Client(trust_env=False, timeout=10) as http:
            return http.post(self.control_url + path, headers=headers, **kw)


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    banner = "Ctrl-C stops everything"
    with stateroom_up(
        tmp_path_factory.mktemp("up-control"),
        servers=SERVERS,
        ready=lambda running: banner in running.output.read_text(errors="replace"),
    ) as running:
        auth_pid = next(p for p in running.children if b"\0auth\0" in cmdline(p))
        env = environ(auth_pid)
        yield Up(
            running.proc,
            running.data,
            running.output,
            running.base,
            env["STATEROOM_AUTH_LAUNCHER_CONTROL"],
            env["STATEROOM_LAUNCHER_TOKEN"],
            env,
            auth_pid,
        )


def test_the_login_service_gets_the_endpoint_in_its_environment(up: Up) -> None:
    auth = f"http://127.0.0.1:{up.base}"
    assert up.control_url.startswith("http://127.0.0.1:")
    assert len(up.token) >= 32
    assert up.auth_env["STATEROOM_AUTH_DASHBOARD"] == "open"
    origins = up.auth_env["STATEROOM_AUTH_CORS_ORIGINS"].split(",")
    assert origins == [auth, f"http://localhost:{up.base}"]
    # Never in argv (readable by every local user), nor given to the room servers.
    assert up.token.encode() not in cmdline(up.auth_pid)
    for pid in children_of(up.proc.pid):
        assert up.token.encode() not in cmdline(pid)
        if pid != up.auth_pid and b"server.cli" in cmdline(pid):
            assert "STATEROOM_LAUNCHER_TOKEN" not in environ(pid)
    printed = up.output.read_text(errors="replace")
    assert up.token not in printed
    assert f"play in a browser:  {auth}/\n" in printed
    assert f"dashboard:          {auth}/dashboard\n" in printed


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"body": {"room": "x"}, "token": None}, 401, "unauthorized"),
        ({"body": {"room": "x"}, "token": "not-the-secret"}, 401, "unauthorized"),
        ({"body": {"room": "x"}, "headers": {"Authorization": "Basic eDp4"}, "token": None}, 401,
         "unauthorized"),
        ({"content": b"{not json"}, 400, "bad_request"),
        ({"content": b""}, 400, "bad_request"),
        ({"body": ["room", "x"]}, 400, "bad_request"),
        ({"body": {}}, 400, "bad_request"),
        ({"body": {"room": 7}}, 400, "bad_request"),
        ({"body": {"room": ""}}, 400, "bad_request"),
        ({"body": {"room": "x" * 300}}, 400, "bad_request"),
        ({"content": b"{" + b" " * 5000 + b"}"}, 400, "bad_request"),
        ({"body": {"room": "nobody-plays-here"}}, 404, "no_owner"),
        ({"body": {"room": "x"}, "path": "/elsewhere"}, 404, "not_found"),
    ],
    ids=lambda v: repr(v)[:40],
)  # fmt: skip
def test_refusals(up: Up, kwargs: dict[str, Any], status: int, code: str) -> None:
    answer = up.post(**kwargs)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == code and error["message"]


def test_only_post(up: Up) -> None:
    with httpx.Client(trust_env=False, timeout=5) as http:
        answer = http.get(up.control_url + "/kill-room")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert answer.json()["error"]["code"] == "method_not_allowed"


def test_an_owner_that_is_not_a_child_of_up_is_not_killed(up: Up, processes: Processes) -> None:
    """A registry entry and lease naming a process ``up`` did not start: 409, still alive."""
    victim = processes.start(["sleep", "60"], "victim")
    url = up.cluster["redis_url"]
    # The stand-in owner looks alive to the room servers (a liveness connection of its own),
    # so their watchers leave its registry entry alone while the request runs.
    liveness = redis.Redis.from_url(url, client_name="sr:foreign-1", single_connection_client=True)
    client = redis.Redis.from_url(url)
    try:
        entry = {"id": "foreign-1", "pid": victim.pid, "liveness_id": liveness.client_id()}
        client.hset("sr:servers", "foreign-1", json.dumps(entry))
        client.set("sr:{foreign}:lease", "7|foreign-1", px=30_000)
        answer = up.post({"room": "foreign"})
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "foreign_process"
        assert str(victim.pid) in answer.json()["error"]["message"]
        assert victim.poll() is None  # not killed
        assert client.exists("sr:{foreign}:killed") == 0  # and no kill recorded
    finally:
        client.hdel("sr:servers", "foreign-1")
        client.delete("sr:{foreign}:lease")
        client.close()
        liveness.close()


async def test_kill_through_the_endpoint_while_players_play(up: Up) -> None:
    cluster = up.cluster
    urls = [s["ws_url"] for s in cluster["servers"]]
    pids_before = {s["pid"] for s in cluster["servers"]}
    auth = AuthClient(cluster["auth_url"])
    tokens = [(await auth.guest(name)).access_token for name in ("ann", "bob")]
    await auth.aclose()
    clients = [RoomClient(urls, "ctl", token) for token in tokens]
    rdb = aioredis.Redis.from_url(cluster["redis_url"], socket_timeout=2)
    store = RoomStore(rdb)
    stop = asyncio.Event()

    async def play(client: RoomClient) -> None:
        while not stop.is_set():
            client.send_input({"dx": 0, "dy": 1})
            await asyncio.sleep(0.05)

    async def read(client: RoomClient) -> None:
        async for _ in client.states():
            pass

    tasks: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(60):
            for client in clients:
                await client.connect()
            tasks = [asyncio.create_task(f(c)) for c in clients for f in (play, read)]

            async def acked() -> bool:
                return all(c.stats.max_ack >= 5 for c in clients)

            await wait_for(acked, 15, "both players to play")
            started = time.monotonic()
            answer = await asyncio.to_thread(up.post, {"room": "ctl"})
            answered_s = time.monotonic() - started
            assert answer.status_code == 200, answer.text
            report = answer.json()
            assert set(report) == {"room", "killed_pid", "old_server", "old_epoch", "killed_ms"}
            assert report["room"] == "ctl" and report["killed_pid"] in pids_before
            assert answered_s < 2  # it returns at once, without waiting for the recovery

            async def recovered() -> bool:
                record = await store.takeover_record("ctl")
                return (
                    int(record.get("old_epoch") or 0) == report["old_epoch"]
                    and "first_tick_ms" in record
                    and all(f"player:{c.player_id}" in record for c in clients)
                )

            await wait_for(recovered, 15, "the room to recover on the other server")
            record = await store.takeover_record("ctl")
            killed = await store.kill_record("ctl")
            acks = [c.stats.max_ack for c in clients]

            async def playing() -> bool:
                return all(c.stats.max_ack > a + 5 for c, a in zip(clients, acks, strict=True))

            await wait_for(playing, 10, "both players to carry on")

            def restarted() -> bool:
                pids = {s["pid"] for s in up.cluster["servers"]}
                return report["killed_pid"] not in pids and len(pids) == SERVERS

            await asyncio.to_thread(wait_until, restarted, 20, "up to restart the killed server")
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.close()
        await rdb.aclose()

    assert killed["killed_ms"] == str(report["killed_ms"])
    assert killed["pid"] == str(report["killed_pid"])
    assert record["old_server"] == report["old_server"] != record["server"]
    assert int(record["claimed_ms"]) >= report["killed_ms"]
    assert int(record["players_expected"]) == 2
    for client in clients:
        assert client.stats.reconnects >= 1
        assert client.stats.rollbacks == 0 and client.stats.ack_regressions == 0


def test_redis_down_is_503() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    endpoint = ControlEndpoint(lambda: closed, set).start()
    try:
        with httpx.Client(trust_env=False, timeout=10) as http:
            started = time.monotonic()
            answer = http.post(
                endpoint.url + "/kill-room",
                json={"room": "x"},
                headers={"Authorization": f"Bearer {endpoint.token}"},
            )
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "redis_unavailable" and "127.0.0.1" in error["message"]
        assert time.monotonic() - started < 5
    finally:
        endpoint.stop()
