"""The dashboard's API (auth.dashboard): access by mode, the kill forwarded to a launcher's
control endpoint (a real loopback HTTP server started here) with each of its answers, and
the view of a real cluster, including a kill whose recovery the timeline shows as the
cluster recorded it; ``stateroom status`` reads the same view."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from auth import dashboard
from auth.app import Services, create_app
from auth.errors import ConfigError
from auth.keys import ensure_key_file
from auth.settings import AuthSettings, from_sources
from client.sdk import AuthClient, RoomClient, State
from infra.ports import free_port
from server.killroom import kill_owner
from tests.cluster import LocalCluster, cluster_for

TOKEN = "launcher-secret-" + "x" * 20
ADMIN = "admin-secret-" + "y" * 20
ROOT = Path(__file__).resolve().parent.parent


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"], error
    assert "access-control-allow-origin" not in response.headers  # the dashboard: no CORS
    return error


# ---------------------------------------------------------------- a fake launcher


@dataclasses.dataclass
class Seen:
    path: str
    authorization: str
    body: Any


class FakeLauncher:
    """A real HTTP server on loopback answering ``POST /kill-room`` with ``answer``."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.answer: Callable[[dict[str, Any]], tuple[int, dict[str, str], bytes]] = lambda body: (
            500,
            {},
            b"",
        )
        launcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                launcher.seen.append(Seen(self.path, self.headers.get("authorization", ""), body))
                status, headers, payload = launcher.answer(body)
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)  # the slow answer's caller has given up

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answer = lambda _: (status, headers or {}, payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def launcher() -> Iterator[FakeLauncher]:
    fake = FakeLauncher()
    try:
        yield fake
    finally:
        fake.close()


# ---------------------------------------------------------------- in-process service

MakeDashboard = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def make_dashboard(redis_url: str, tmp_path: Path) -> AsyncIterator[MakeDashboard]:
    """``await make_dashboard(peer="127.0.0.1", host="127.0.0.1:8000", **settings)``."""
    key = tmp_path / "auth-key.pem"
    ensure_key_file(key)
    opened: list[tuple[httpx.AsyncClient, Services]] = []

    async def make(
        peer: str = "127.0.0.1", host: str = "127.0.0.1:8000", **overrides: Any
    ) -> httpx.AsyncClient:
        settings = AuthSettings(
            redis_url=overrides.pop("redis_url", redis_url),
            key_file=key,
            argon2_memory_kib=64,
            argon2_time_cost=1,
            **overrides,
        )
        services = Services.create(settings)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(settings, services), client=(peer, 5)),
            base_url=f"http://{host}",
        )
        opened.append((client, services))
        return client

    yield make
    for client, services in opened:
        await client.aclose()
        await services.aclose()


API = "/dashboard/api/cluster"


async def test_admin_mode_with_a_token(make_dashboard: MakeDashboard) -> None:
    client = await make_dashboard(admin_token=ADMIN)
    assert_error(await client.get(API), 401, "unauthorized")
    wrong = await client.get(API, headers={"Authorization": "Bearer not-it"})
    assert_error(wrong, 401, "unauthorized")
    ok = await client.get(API, headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["mode"] == "admin" and ok.json()["kill_available"] is False
    # the page itself is static: it loads, then asks for the token
    page = await client.get("/dashboard")
    assert page.status_code == 200 and "dashboard.js" in page.text
    room = await client.get("/dashboard/api/rooms/r1")
    assert_error(room, 401, "unauthorized")


async def test_admin_mode_without_a_token_is_loopback_only(
    make_dashboard: MakeDashboard,
) -> None:
    assert (await (await make_dashboard()).get(API)).status_code == 200
    outsider = await make_dashboard(peer="203.0.113.9")
    error = assert_error(await outsider.get(API), 403, "forbidden")
    assert "dashboard" in error["message"] and "STATEROOM_ADMIN_TOKEN" in error["message"]


async def test_open_mode_and_the_host_it_answers(make_dashboard: MakeDashboard) -> None:
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "10.1.2.3"):
        client = await make_dashboard(peer="203.0.113.9", host=host, dashboard="open")
        response = await client.get(API)
        assert response.status_code == 200, (host, response.text)
        assert response.json()["mode"] == "open"
    rebound = await make_dashboard(host="evil.example.com:8000", dashboard="open")
    assert_error(await rebound.get(API), 403, "dashboard_host_refused")


async def test_off_mode_has_no_dashboard(make_dashboard: MakeDashboard) -> None:
    client = await make_dashboard(dashboard="off")
    for path in (API, "/dashboard/api/rooms/r1", "/dashboard"):
        assert (await client.get(path)).status_code == 404, path
    assert (await client.post("/dashboard/api/rooms/r1/kill")).status_code == 404


async def test_kill_unavailable_without_a_launcher(make_dashboard: MakeDashboard) -> None:
    client = await make_dashboard(dashboard="open")
    error = assert_error(await client.post("/dashboard/api/rooms/r1/kill"), 403, "kill_unavailable")
    assert error["message"] == "only the dev cluster of stateroom up can kill owners"
    assert (await client.get(API)).json()["kill_available"] is False


async def test_bad_and_unknown_rooms(make_dashboard: MakeDashboard) -> None:
    client = await make_dashboard(dashboard="open")
    assert_error(await client.get("/dashboard/api/rooms/nowhere"), 404, "unknown_room")
    assert_error(await client.get("/dashboard/api/rooms/a%20b"), 422, "invalid_room")
    assert_error(await client.get(f"/dashboard/api/rooms/{'x' * 65}"), 422, "invalid_room")
    assert_error(await client.post("/dashboard/api/rooms/a%20b/kill"), 422, "invalid_room")


async def test_kill_goes_to_the_launcher(
    make_dashboard: MakeDashboard, launcher: FakeLauncher
) -> None:
    client = await make_dashboard(
        dashboard="open", launcher_control=launcher.url + "/", launcher_token=TOKEN
    )
    assert (await client.get(API)).json()["kill_available"] is True
    killed = {"room": "r1", "killed_pid": 4242, "old_server": "s1", "old_epoch": 3}
    launcher.reply(200, {**killed, "killed_ms": 1_700_000_000_000})
    ok = await client.post("/dashboard/api/rooms/r1/kill")
    assert ok.status_code == 200, ok.text
    assert ok.json() == {**killed, "killed_ms": 1_700_000_000_000}
    (seen,) = launcher.seen
    assert seen == Seen("/kill-room", f"Bearer {TOKEN}", {"room": "r1"})
    # from the dashboard's own page (same origin) a browser may post; from another, not
    same = await client.post(
        "/dashboard/api/rooms/r1/kill", headers={"Origin": "http://127.0.0.1:8000"}
    )
    assert same.status_code == 200
    foreign = await client.post(
        "/dashboard/api/rooms/r1/kill", headers={"Origin": "https://evil.example.com"}
    )
    assert_error(foreign, 403, "cross_origin")
    assert len(launcher.seen) == 2  # the refused one never reached the launcher
    assert_error(await client.post("/dashboard/api/rooms/a%20b/kill"), 422, "invalid_room")
    assert len(launcher.seen) == 2


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected_status", "code"),
    [
        (404, {"error": {"code": "no_owner", "message": "nobody"}}, {}, 404, "no_owner"),
        (409, {"error": {"code": "foreign_process", "message": "no"}}, {}, 409, "foreign_process"),
        (
            503,
            {"error": {"code": "redis_unavailable", "message": "down"}},
            {"Retry-After": "2"},
            503,
            "redis_unavailable",
        ),
        (401, {"error": {"code": "unauthorized", "message": "who"}}, {}, 502, "launcher_refused"),
        (500, b"<html>oops</html>", {}, 502, "launcher_error"),
        (404, b"not json", {}, 502, "launcher_error"),
        (200, {"room": "another"}, {}, 502, "launcher_error"),  # not what was asked
        (400, {"error": {"code": "bad_request", "message": "x"}}, {}, 502, "launcher_error"),
    ],
)
async def test_launcher_errors(
    make_dashboard: MakeDashboard,
    launcher: FakeLauncher,
    status: int,
    body: Any,
    headers: dict[str, str],
    expected_status: int,
    code: str,
) -> None:
    client = await make_dashboard(
        dashboard="open", launcher_control=launcher.url, launcher_token=TOKEN
    )
    launcher.reply(status, body, headers)
    response = await client.post("/dashboard/api/rooms/r1/kill")
    error = assert_error(response, expected_status, code)
    if isinstance(body, dict) and expected_status == status:
        assert error["message"] == body["error"]["message"]
    if headers:
        assert response.headers["retry-after"] == "2"
    assert TOKEN not in response.text


async def test_launcher_unreachable_or_slow(
    make_dashboard: MakeDashboard, launcher: FakeLauncher, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    client = await make_dashboard(dashboard="open", launcher_control=closed, launcher_token=TOKEN)
    assert_error(await client.post("/dashboard/api/rooms/r1/kill"), 502, "launcher_unreachable")
    monkeypatch.setattr(dashboard, "LAUNCHER_TIMEOUT_S", 0.2)

    def slow(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        time.sleep(1.0)
        return 200, {}, json.dumps({"room": "r1"}).encode()

    launcher.answer = slow
    client = await make_dashboard(
        dashboard="open", launcher_control=launcher.url, launcher_token=TOKEN
    )
    assert_error(await client.post("/dashboard/api/rooms/r1/kill"), 502, "launcher_unreachable")


async def test_kill_in_admin_mode_needs_the_admin_token(
    make_dashboard: MakeDashboard, launcher: FakeLauncher
) -> None:
    client = await make_dashboard(
        admin_token=ADMIN, launcher_control=launcher.url, launcher_token=TOKEN
    )
    assert_error(await client.post("/dashboard/api/rooms/r1/kill"), 401, "unauthorized")
    # the launcher's token is not an admin token
    h = {"Authorization": f"Bearer {TOKEN}"}
    assert_error(await client.post("/dashboard/api/rooms/r1/kill", headers=h), 401, "unauthorized")
    assert launcher.seen == []


def test_dashboard_settings() -> None:
    import argparse

    from auth import cli

    base = AuthSettings(redis_url="redis://x", key_file=Path("k"))
    assert (base.dashboard, base.web, base.launcher_control, base.launcher_token) == (
        "admin",
        True,
        "",
        "",
    )
    with pytest.raises(ConfigError, match="dashboard must be one of off, admin, open"):
        AuthSettings(redis_url="r", key_file=Path("k"), dashboard="public")
    with pytest.raises(ConfigError, match="STATEROOM_LAUNCHER_TOKEN"):
        AuthSettings(redis_url="r", key_file=Path("k"), launcher_control="http://127.0.0.1:1")
    for bad in ("127.0.0.1:9000", "ftp://127.0.0.1:9", "http://", "http://h:1/?x=1"):
        with pytest.raises(ConfigError, match="--launcher-control"):
            AuthSettings(
                redis_url="r", key_file=Path("k"), launcher_control=bad, launcher_token="t"
            )
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    env = {
        "STATEROOM_AUTH_DASHBOARD": "open",
        "STATEROOM_AUTH_LAUNCHER_CONTROL": "http://127.0.0.1:9000",
        "STATEROOM_LAUNCHER_TOKEN": TOKEN,
        "STATEROOM_AUTH_WEB": "false",
    }
    settings = from_sources(parser.parse_args(["--key", "k", "--redis", "r"]), env)
    assert settings.dashboard == "open" and settings.web is False
    assert settings.launcher_control == "http://127.0.0.1:9000"
    assert settings.launcher_token == TOKEN and TOKEN not in repr(settings)
    flags = parser.parse_args(["--key", "k", "--redis", "r", "--no-web", "--dashboard", "off"])
    assert from_sources(flags, {}).web is False and from_sources(flags, {}).dashboard == "off"
    with pytest.raises(SystemExit):  # a secret has no flag
        parser.parse_args(["--key", "k", "--redis", "r", "--launcher-token", "t"])


# ---------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with cluster_for(tmp_path_factory.mktemp("dashboard"), servers=2) as local:
        yield local


class Player:
    """One SDK client playing in the background (it resumes by itself after a kill)."""

    def __init__(self, client: RoomClient) -> None:
        self.client = client
        self.states: list[State] = []
        self.task = asyncio.get_running_loop().create_task(self._play())

    async def _play(self) -> None:
        async for state in self.client.states():
            self.states.append(state)
            if len(self.states) % 2 == 0:
                self.client.send_input({"dx": 1, "dy": 0})

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.close()


async def poll(
    fetch: Callable[[], Awaitable[httpx.Response]],
    ready: Callable[[dict[str, Any]], bool],
    within: float = 15,
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        response = await fetch()
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if ready(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready in {within}s: {json.dumps(body)[:2000]}")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_a_kill_from_the_dashboard_and_its_recovery(
    live: LocalCluster, make_dashboard: MakeDashboard, launcher: FakeLauncher
) -> None:
    room = "dash-kill"
    auth = AuthClient(live.auth_url)
    tokens = await auth.guest("dash-player")
    await auth.aclose()
    urls = [s.ws_url for s in live.servers.values()]
    client = RoomClient(urls, room, tokens.access_token)
    await client.connect()
    player = Player(client)
    real = httpx.AsyncClient(base_url=live.auth_url, timeout=5)
    try:
        # the real login service (admin mode, loopback): servers and the room, live
        view = await poll(
            lambda: real.get(API),
            # (the heartbeat can list the player before the room's first tick is journaled)
            lambda v: any(
                r["room"] == room and r["players"] == 1 and r["tick"] > 0 for r in v["rooms"]
            ),
        )
        by_pid = {s["pid"]: s for s in view["servers"]}  # ids are the names + a suffix
        assert set(by_pid) == {s.pid for s in live.servers.values()}
        for s in live.servers.values():
            assert by_pid[s.pid]["live"] and by_pid[s.pid]["ws_url"] == s.ws_url
            assert by_pid[s.pid]["id"].startswith(s.name)
        (row,) = [r for r in view["rooms"] if r["room"] == room]
        assert row["owner_live"] and row["game"] == "arena"
        assert "timeline" not in row and row["recovery"]["steps"] == 0  # slim rows
        assert row["epoch"] >= 1 and row["tick"] > 0
        old_owner, old_epoch = row["owner"], row["epoch"]
        (owner_row,) = [s for s in view["servers"] if s["id"] == old_owner]
        assert owner_row["rooms"] >= 1 and owner_row["players"] >= 1
        detail = await poll(
            lambda: real.get(f"/dashboard/api/rooms/{room}"),
            lambda d: d["tick_ms"] is not None and (d["state_bytes"] or 0) > 0,  # checkpointed
        )
        assert detail["owner_ws_url"] == owner_row["ws_url"]
        assert detail["tick_ms"] > 0 and detail["state_bytes"] > 0
        assert detail["inputs_per_s"] is not None and detail["lease_ttl_ms"] > 0

        # /v1/servers (an access token) lists both servers for a browser client
        h = {"Authorization": f"Bearer {tokens.access_token}"}
        listed = (await real.get("/v1/servers", headers=h)).json()["servers"]
        assert {s["id"]: s["ws_url"] for s in listed} == {
            s["id"]: s["ws_url"] for s in view["servers"]
        }

        # the kill: the dashboard asks the launcher, which kills as `stateroom up` does
        def kill(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
            result = asyncio.run(kill_owner(live.redis_url, body["room"]))
            return 200, {}, json.dumps(result).encode()

        launcher.answer = kill
        dash = await make_dashboard(
            redis_url=live.redis_url,
            dashboard="open",
            launcher_control=launcher.url,
            launcher_token=TOKEN,
        )
        killed = await dash.post(f"/dashboard/api/rooms/{room}/kill")
        assert killed.status_code == 200, killed.text
        answer = killed.json()
        assert answer["killed_pid"] == owner_row["pid"]
        assert (answer["old_server"], answer["old_epoch"]) == (old_owner, old_epoch)

        detail = await poll(
            lambda: dash.get(f"/dashboard/api/rooms/{room}"),
            lambda d: d["recovery"]["complete"] and d["recovery"]["of_kill"],
            within=20,
        )
        steps = detail["timeline"]
        by_step = {s["step"]: s for s in steps}
        assert sorted(by_step) == ["claim", "first_tick", "kill", "player_back"]
        assert len(steps) == 4  # one player
        assert steps[0]["step"] == "kill" and steps[0]["at_ms"] == answer["killed_ms"]
        assert steps[0]["since_kill_ms"] == 0
        assert by_step["player_back"]["player"] == tokens.player_id
        since = [s["since_kill_ms"] for s in steps]
        assert since == sorted(since), since  # in time order
        assert by_step["claim"]["since_kill_ms"] <= by_step["first_tick"]["since_kill_ms"]
        unavailable = by_step["first_tick"]["since_kill_ms"]
        assert 0 < unavailable < 10_000  # a killed owner is replaced in about a second
        assert detail["kill"]["pid"] == answer["killed_pid"]
        assert detail["takeover"]["old_epoch"] == old_epoch
        assert detail["owner"] != old_owner and detail["epoch"] > old_epoch
        assert detail["recovery"]["unavailable_ms"] == unavailable
        # the real service shows the same records
        again = (await real.get(f"/dashboard/api/rooms/{room}")).json()
        assert again["timeline"] == steps
    finally:
        await real.aclose()
        await player.stop()


def stateroom(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_status_reads_the_same_view(live: LocalCluster, tmp_path: Path) -> None:
    folder = tmp_path / "here"
    (folder / ".stateroom").mkdir(parents=True)
    live.write_cluster_file(folder / ".stateroom" / "cluster.json")
    # --cluster defaults to .stateroom/cluster.json, the file `stateroom up` writes
    shown = stateroom("status", "--json", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert {s["pid"] for s in report["servers"]} >= {
        s.pid for s in live.servers.values() if s.proc is not None and s.proc.poll() is None
    }
    assert any(s["live"] for s in report["servers"])
    assert {"rooms", "rooms_total", "now_ms"} <= set(report)
    text = stateroom("status", "--cluster", str(folder / ".stateroom" / "cluster.json"))
    assert text.returncode == 0 and "TICK MS" in text.stdout
    assert all(s["id"] in text.stdout for s in report["servers"])
    missing = stateroom("status", cwd=tmp_path)
    assert missing.returncode == 1
    assert ".stateroom/cluster.json (the default)" in missing.stderr
    assert "--cluster" in missing.stderr and "Traceback" not in missing.stderr
