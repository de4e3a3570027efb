"""The pages on the login service's port (auth.web): where the files are found, types,
caching, CSP, no way out of the folders; GET /v1/servers; the OpenAPI covers every route."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.routing import Route

import auth
from auth import web
from auth.web import Roots, content_type, inline_hashes, resolve
from infra.ports import free_port
from infra.room_keys import SERVERS_KEY, liveness_name
from tests.auth.conftest import AuthUnderTest, MakeAuth
from tests.auth.test_api import assert_error
from tests.support import Processes, wait_until

IMPORT_MAP = '\n{ "imports": { "@msgpack/msgpack": "/vendor/msgpack/index.mjs" } }\n'
INDEX = f"""<!doctype html><html><head>
<link rel="stylesheet" href="/web/style.css">
<script type="importmap">{IMPORT_MAP}</script>
<script type="module" src="/web/a.js"></script>
<style>body {{ margin: 0 }}</style>
</head><body>arena</body></html>"""


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A client/ folder of our own, with a secret next to it and symlinks out."""
    client = tmp_path / "pkg" / "client"
    (client / "web").mkdir(parents=True)
    (client / "js" / "src" / "sub").mkdir(parents=True)
    (client / "js" / "vendor" / "msgpack").mkdir(parents=True)
    (client / "web" / "index.html").write_text(INDEX)
    (client / "web" / "dashboard.html").write_text("<!doctype html><p>dashboard</p>")
    (client / "web" / "a.js").write_text("export const a = 1;\n")
    (client / "web" / "style.css").write_text("body { color: red }\n")
    (client / "web" / "logo.svg").write_text("<svg></svg>")
    (client / "web" / ".hidden").write_text("dotfile")
    (client / "js" / "src" / "index.js").write_text("export * from './sub/mod.js';\n")
    (client / "js" / "src" / "sub" / "mod.js").write_text("export const b = 2;\n")
    (client / "js" / "vendor" / "msgpack" / "index.mjs").write_text("export const c = 3;\n")
    secret = tmp_path / "pkg" / "secret.txt"
    secret.write_text("top secret")
    (client / "web" / "link.txt").symlink_to(secret)
    (client / "web" / "outside").symlink_to(tmp_path / "pkg")
    (client / "web" / "inside.js").symlink_to(client / "web" / "a.js")  # stays inside: fine
    monkeypatch.setattr(web, "CLIENT_DIR", client)
    return client


async def asgi_get(
    app: Starlette, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET with ``path`` exactly as a server hands it over (decoded, never normalized)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"auth.test")]
        + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 5000),
        "server": ("auth.test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    found = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], found, body


def test_the_folders_are_found_next_to_the_auth_package() -> None:
    client = Path(auth.__file__).resolve().parent.parent / "client"
    assert client == web.CLIENT_DIR
    roots = Roots()
    assert roots.web == client / "web" and (roots.web / "dashboard.html").is_file()
    assert roots.sdk == client / "js" / "src"
    assert roots.vendor == client / "js" / "vendor"


def test_the_wheel_ships_the_pages_and_the_sdk() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]["client"]
    shipped = {
        p.relative_to(root / "client").as_posix()
        for pattern in patterns
        for p in (root / "client").glob(pattern)
        if p.is_file()
    }
    for wanted in ("web/dashboard.html", "web/dashboard.js", "web/dashboard.css"):
        assert wanted in shipped, (wanted, patterns)
    for folder in ("web/**/*", "js/src/**/*", "js/vendor/**/*"):
        assert folder in patterns


async def test_pages_types_and_caching(make_auth: MakeAuth, tree: Path) -> None:
    a: AuthUnderTest = await make_auth()
    index = await a.client.get("/")
    assert index.status_code == 200 and "arena" in index.text
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.headers["cache-control"] == "no-cache"
    assert index.headers["x-content-type-options"] == "nosniff"
    etag = index.headers["etag"]
    again = await a.client.get("/", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert (await a.client.get("/", headers={"If-None-Match": '"other"'})).status_code == 200
    for path, kind in (
        ("/web/a.js", "text/javascript; charset=utf-8"),
        ("/web/style.css", "text/css; charset=utf-8"),
        ("/web/logo.svg", "image/svg+xml"),
        ("/web/inside.js", "text/javascript; charset=utf-8"),
        ("/sdk/index.js", "text/javascript; charset=utf-8"),
        ("/sdk/sub/mod.js", "text/javascript; charset=utf-8"),
        ("/vendor/msgpack/index.mjs", "text/javascript; charset=utf-8"),
        ("/dashboard", "text/html; charset=utf-8"),
    ):
        response = await a.client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"] == kind, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["etag"].startswith('"')
    assert (await a.client.get("/sdk/sub/mod.js")).text == "export const b = 2;\n"
    head = await a.client.head("/web/a.js")
    assert head.status_code == 200
    # an edit is seen at once (no restart, no stale cache)
    (tree / "web" / "a.js").write_text("export const a = 2;\n")
    assert (await a.client.get("/web/a.js")).text == "export const a = 2;\n"
    assert content_type(Path("x.unknown")) == "application/octet-stream"
    assert content_type(Path("X.MJS")) == "text/javascript; charset=utf-8"


async def test_a_strict_csp_on_pages(make_auth: MakeAuth, tree: Path, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    r.hset(
        SERVERS_KEY,
        mapping={
            "s1": json.dumps({"ws_url": "ws://127.0.0.1:9001/v1/ws"}),
            "s2": json.dumps({"ws_url": "wss://rooms.example.com/v1/ws"}),
            "bad": json.dumps({"ws_url": "ws://x; script-src *"}),
        },
    )
    r.close()
    a: AuthUnderTest = await make_auth()
    csp = (await a.client.get("/")).headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    digest = base64.b64encode(hashlib.sha256(IMPORT_MAP.encode()).digest()).decode()
    assert directives["script-src"] == ["'self'", f"'sha256-{digest}'"]  # the import map
    style = base64.b64encode(hashlib.sha256(b"body { margin: 0 }").digest()).decode()
    assert directives["style-src"] == ["'self'", f"'sha256-{style}'"]
    assert directives["connect-src"] == ["'self'", "ws://127.0.0.1:9001", "wss://rooms.example.com"]
    assert directives["default-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"] and directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert "unsafe" not in csp
    # scripts and styles are not pages: no CSP needed on them
    assert "content-security-policy" not in (await a.client.get("/web/a.js")).headers
    # Redis down: the page is still served, talking to its own origin only
    down: AuthUnderTest = await make_auth(redis_url="redis://127.0.0.1:1/0")
    page = await down.client.get("/dashboard")
    assert page.status_code == 200
    assert "connect-src 'self';" in page.headers["content-security-policy"]


def test_inline_hashes_skip_external_scripts() -> None:
    scripts, styles = inline_hashes(b'<script src="/a.js"></script><SCRIPT>x()</SCRIPT>')
    assert scripts == [
        "'sha256-" + base64.b64encode(hashlib.sha256(b"x()").digest()).decode() + "'"
    ]
    assert styles == []


@pytest.mark.parametrize(
    "path",
    [
        "/web/../secret.txt",  # .. (a server hands over %2e%2e decoded, like this)
        "/web/../../pkg/secret.txt",
        "/web/outside/secret.txt",  # a symlinked folder out
        "/web/link.txt",  # a symlinked file out
        "/web//etc/passwd",  # absolute
        "/web/.hidden",
        "/web/./a.js",
        "/web/..\\secret.txt",
        "/web/a.js\x00.png",
        "/sdk/../web/index.html",
        "/sdk/../../../pkg/secret.txt",
        "/vendor/msgpack/../../../../secret.txt",
        "/web/",
        "/web/nothing.js",
        "/web/sub",  # a folder is not a file
        "/vendor/msgpack",
    ],
)
async def test_no_way_out_of_the_folders(make_auth: MakeAuth, tree: Path, path: str) -> None:
    a: AuthUnderTest = await make_auth()
    status, _, body = await asgi_get(a.app, path)
    assert status == 404, (path, body)
    assert json.loads(body)["error"]["code"] == "not_found"
    assert b"secret" not in body.replace(b"secret.txt", b"")


def test_resolve_directly(tree: Path) -> None:
    root = tree / "web"
    assert resolve(root, "a.js") == (root / "a.js").resolve()
    for bad in ("", "/a.js", "../secret.txt", "link.txt", "outside/secret.txt", "x" * 600):
        assert resolve(root, bad) is None, bad
    assert resolve(tree / "missing", "a.js") is None


async def test_missing_index_is_a_json_404(make_auth: MakeAuth, tree: Path) -> None:
    (tree / "web" / "index.html").unlink()
    a: AuthUnderTest = await make_auth()
    assert_error(await a.client.get("/"), 404, "not_found")


async def test_web_and_dashboard_settings(make_auth: MakeAuth, tree: Path) -> None:
    off: AuthUnderTest = await make_auth(web=False)
    for path in ("/", "/dashboard", "/web/a.js", "/sdk/index.js", "/vendor/msgpack/index.mjs"):
        assert_error(await off.client.get(path), 404, "not_found")
    assert (await off.client.post("/v1/guest")).status_code == 200
    no_dashboard: AuthUnderTest = await make_auth(dashboard="off")
    assert_error(await no_dashboard.client.get("/dashboard"), 404, "not_found")
    assert (await no_dashboard.client.get("/")).status_code == 200


async def test_servers_lists_the_live_ones(make_auth: MakeAuth, redis_url: str) -> None:
    a: AuthUnderTest = await make_auth()
    assert_error(await a.client.get("/v1/servers"), 401, "unauthorized")
    bad = await a.client.get("/v1/servers", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    token = (await a.client.post("/v1/guest")).json()["access_token"]
    h = {"Authorization": f"Bearer {token}"}
    assert (await a.client.get("/v1/servers", headers=h)).json() == {"servers": []}
    r = redis.Redis.from_url(redis_url)
    liveness = redis.Redis.from_url(redis_url, single_connection_client=True)
    try:
        liveness.client_setname(liveness_name("s2"))
        r.hset(
            SERVERS_KEY,
            mapping={
                "s1": json.dumps({"ws_url": "ws://127.0.0.1:9001/v1/ws"}),  # not live
                "s2": json.dumps({"ws_url": "ws://127.0.0.1:9002/v1/ws"}),
            },
        )
        listed = (await a.client.get("/v1/servers", headers=h)).json()
        assert listed == {"servers": [{"id": "s2", "ws_url": "ws://127.0.0.1:9002/v1/ws"}]}
    finally:
        liveness.close()
        r.close()


async def test_openapi_covers_every_route(make_auth: MakeAuth) -> None:
    a: AuthUnderTest = await make_auth()
    spec = (await a.client.get("/openapi.json")).json()
    routes = {
        route.path.replace(":path", ""): {m.lower() for m in (route.methods or ())} - {"head"}
        for route in a.app.routes
        if isinstance(route, Route)
    }
    documented = {path: set(ops) for path, ops in spec["paths"].items()}
    assert routes == documented
    for schema in ("ServerList", "ClusterView", "RoomDetail", "KillResult", "TimelineStep"):
        assert schema in spec["components"]["schemas"]


@pytest.fixture
def real_auth(processes: Processes, redis_url: str, tmp_path: Path) -> Iterator[int]:
    from auth.keys import ensure_key_file

    key = tmp_path / "auth-key.pem"
    ensure_key_file(key)
    port = free_port()
    args = ["auth", "--port", str(port), "--redis", redis_url, "--key", str(key)]
    proc = processes.start([sys.executable, "-m", "auth", *args], "auth")

    def up() -> bool:
        try:
            url = f"http://127.0.0.1:{port}/healthz"
            return proc.poll() is not None or httpx.get(url, timeout=1).is_success
        except httpx.HTTPError:
            return False

    wait_until(up, 20, "auth /healthz")
    assert proc.poll() is None, processes.log("auth")
    yield port


def raw_request(port: int, target: str) -> tuple[int, bytes]:
    """A request line sent as written: no client normalizes the path."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def test_a_real_server_serves_the_dashboard_and_nothing_outside(real_auth: int) -> None:
    status, body = raw_request(real_auth, "/dashboard")
    assert status == 200 and b"/web/dashboard.js" in body
    status, body = raw_request(real_auth, "/web/dashboard.js")
    assert status == 200 and b"data-kill-room" in body
    # client/web/../../auth/app.py is this service's own source, two folders up
    for target in (
        "/web/../../auth/app.py",
        "/web/%2e%2e/%2e%2e/auth/app.py",
        "/web/%2E%2E%2F%2E%2E%2Fpyproject.toml",
        "/web/..%2f..%2fpyproject.toml",
        "/sdk/%2e%2e/%2e%2e/%2e%2e/auth/app.py",
        "/vendor/..%5c..%5cpackage.json",
        "/web/%00",
    ):
        status, body = raw_request(real_auth, target)
        assert status in (400, 404), (target, status)
        assert b"create_app" not in body and b"[project]" not in body, target
