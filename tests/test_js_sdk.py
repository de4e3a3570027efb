"""The JavaScript SDK (client/js) under Node's own test runner, as part of ``make test``.

Three Node runs, each a real ``node --test`` subprocess with a timeout, whose output is
shown when it fails:

- the pure tests (codecs and their integer rules, the delta decoder against vectors the
  Python encoder wrote, backoff, renewal times, the redirect allow-list, the token
  source, a RoomClient against scripted WebSocket servers, the vendored msgpack, the
  TypeScript declarations);
- the live tests against a real cluster (Valkey, the login service, two room servers
  running the arena and ``tests.games:Cards``; tokens live 8 s so that sessions renew
  them on the open connection), found through ``STATEROOM_CLUSTER``;
- the owner kill: JS clients play in an arena room (msgpack v2 and JSON v1) and a Cards
  room (v2, events) while each room's owner is SIGKILLed (PIDs this test started, three
  servers); no acked input lost, none applied twice, no tick back, every event once, and
  the recovery as each client saw it, written to test-artifacts/js-sdk-failover.json.

The delta vectors (client/js/test/fixtures/delta-vectors.json) are committed so that
``npm test`` runs without Python; a test here checks they are what the encoder writes
today (refresh them with ``python -m tests.test_js_sdk``).

Node >= 20 and the npm packages (``make js-deps``) are required: their absence fails
here with what to install, never a silent skip.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.protocol import JSON_V2, MSGPACK_V2
from server.protocol.delta import Collection, DeltaEncoder, Field, Schema, quantize_view
from server.protocol.schemas import ARENA_SCHEMA
from tests.cluster import LocalCluster, cluster_for

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "client" / "js"
VECTORS = JS_DIR / "test" / "fixtures" / "delta-vectors.json"
ARTIFACTS = ROOT / "test-artifacts"
NODE_TIMEOUT_S = 240
ACCESS_TTL_S = 8


# -- node and its packages -------------------------------------------------------------------


def node_binary() -> str:
    """The node executable, or a failure that says what to install."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node (>= 20) is not installed: the JavaScript SDK's tests need it."
            " Install it (Debian: apt-get install nodejs npm), then run `make js-deps`."
        )
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    match = re.match(r"v(\d+)\.", out.stdout.strip())
    if match is None or int(match.group(1)) < 20:
        pytest.fail(f"node >= 20 is required, found {out.stdout.strip() or out.stderr.strip()}")
    for package in ("@msgpack/msgpack", "ws", "typescript"):
        if not (JS_DIR / "node_modules" / package / "package.json").exists():
            pytest.fail(
                f"the npm package {package} is not installed in client/js:"
                " run `make js-deps` (npm ci in client/js)"
            )
    return node


def run_node(targets: list[str], env: dict[str, str] | None = None) -> str:
    """``node --test`` on ``targets`` (relative to client/js); its output, or a failure
    showing it. The run gets its own process group, killed whole on a timeout."""
    node = node_binary()
    command = [node, "--test", "--test-concurrency=1", "--test-reporter=spec", *targets]
    proc = subprocess.Popen(
        command,
        cwd=JS_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=NODE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(
            f"node --test {' '.join(targets)} ran over {NODE_TIMEOUT_S} s:\n"
            + output.decode(errors="replace")[-20000:]
        )
    text = output.decode(errors="replace")
    if proc.returncode != 0:
        pytest.fail(
            f"node --test {' '.join(targets)} failed (exit {proc.returncode}):\n{text[-20000:]}"
        )
    if not re.search(r"^\S*\s*pass (?!0\b)\d+", text, re.MULTILINE):
        pytest.fail(f"node --test {' '.join(targets)} ran no test:\n{text[-5000:]}")
    return text


# -- delta vectors from the Python encoder ---------------------------------------------------

KITCHEN_SCHEMA = Schema(
    (
        Field("round", "int"),
        Field("big", "int"),
        Field("clock", "fixed", 0.001),
        Field("ratio", "float"),
        Field("phase", "str"),
        Field("open", "bool"),
        Field("board", "any"),
        Field("noise", "int", diff=False),
        Collection(
            "units",
            (Field("x", "fixed", 0.5), Field("hp", "int"), Field("tag", "any")),
            tuples=True,
        ),
        Collection("seen", ()),
        Collection(
            "log",
            (Field("who", "str"), Field("at", "float"), Field("ok", "bool"), Field("n", "int")),
            keyed=False,
        ),
    )
)  # fmt: skip


def _arena_views(rng: random.Random, ticks: int) -> Iterator[dict[str, Any]]:
    players: dict[str, dict[str, Any]] = {}
    pickups = [[round(rng.uniform(0, 64), 2), round(rng.uniform(0, 32), 2)] for _ in range(8)]
    for tick in range(ticks):
        if rng.random() < 0.15 or not players:
            pid = f"g_{rng.getrandbits(40):010x}"
            players[pid] = {
                "name": f"p{tick}",
                "x": round(rng.uniform(0, 64), 2),
                "y": round(rng.uniform(0, 32), 2),
                "score": 0,
                "inputs": 0,
            }
        if rng.random() < 0.08 and len(players) > 1:
            del players[rng.choice(sorted(players))]
        for p in players.values():
            if rng.random() < 0.7:
                p["x"] = min(64.0, max(0.0, round(p["x"] + rng.uniform(-0.6, 0.6), 2)))
                p["y"] = min(32.0, max(0.0, round(p["y"] + rng.uniform(-0.6, 0.6), 2)))
                p["inputs"] += 1
            if rng.random() < 0.05:
                p["score"] += 1
                pickups[rng.randrange(8)] = [round(rng.uniform(0, 64), 2), 0.0]
        yield {"w": 64, "h": 32, "players": players, "pickups": pickups}


def _generic_views(rng: random.Random, ticks: int) -> Iterator[Any]:
    view: dict[str, Any] = {"a": 1, "nested": {"deep": {"x": 1.5}, "list": [1, 2]}, "s": "hi"}
    for tick in range(ticks):
        if tick == ticks - 3:
            yield [1, "a list view", {"k": None}]  # a list replaces the map
            continue
        if tick == ticks - 2:
            yield {"back": True, "r": ["p", "s"]}  # keys that look like patch entries
            continue
        view = json.loads(json.dumps(view))
        key = f"k{rng.randrange(6)}"
        choice = rng.random()
        if choice < 0.3:
            view[key] = rng.choice([1, 2.5, -0.0, "x", None, True, [tick], {"in": tick}])
        elif choice < 0.5:
            view.pop(key, None)
        elif choice < 0.8:
            view["nested"]["deep"]["x"] = round(view["nested"]["deep"]["x"] + 0.25, 2)
            view["nested"]["deep"][key] = tick
        else:
            view["nested"]["list"] = [*view["nested"]["list"], tick]
        view["big"] = 2**62 + tick * 7  # a 64-bit int in a generic view
        yield view


def _kitchen_views(rng: random.Random, ticks: int) -> Iterator[dict[str, Any]]:
    units: dict[str, list[Any]] = {"u1": [1.5, 10, None]}
    seen: dict[str, dict[str, Any]] = {}
    log: list[dict[str, Any]] = []
    big = 2**60
    for tick in range(ticks):
        big = -(2**62) if tick == ticks // 2 else big + rng.randrange(1, 1000)  # a jump > 2^53
        if rng.random() < 0.3:
            units[f"u{rng.randrange(2, 7)}"] = [rng.randrange(-8, 8) / 2, rng.randrange(100), tick]
        if rng.random() < 0.2 and len(units) > 1:
            del units[rng.choice(sorted(units))]
        for unit in units.values():
            if rng.random() < 0.5:
                unit[0] = unit[0] + 0.5
                unit[1] = max(0, unit[1] - 1)
            if rng.random() < 0.2:
                unit[2] = {"t": tick, "l": [1, 2]}
        if rng.random() < 0.3:
            seen[f"id{rng.randrange(5)}"] = {}
        if rng.random() < 0.2 and seen:
            del seen[rng.choice(sorted(seen))]
        if rng.random() < 0.4:
            log.append({"who": f"p{tick % 3}", "at": tick / 8, "ok": tick % 2 == 0, "n": tick})
        if rng.random() < 0.15 and log:
            del log[: rng.randrange(1, len(log) + 1)]
        if log and rng.random() < 0.3:
            log[0]["n"] += 2**53  # a difference too large: the whole list again
        view: dict[str, Any] = {
            "round": tick // 10,
            "big": big,
            "clock": tick * 0.05,
            "ratio": [0.5, -0.0, 1e300, 3.0][tick % 4],
            "phase": ["lobby", "play", "end"][tick // 10 % 3],
            "open": tick % 7 < 3,
            "board": [[tick % 3, 0], [1, 1]] if tick % 5 else {"any": "thing"},
            "noise": rng.randrange(-(2**40), 2**40),
            "units": {k: list(v) for k, v in units.items()},
            "seen": dict(seen),
            "log": [dict(e) for e in log],
        }
        if tick % 6 < 3:
            view["extra"] = {"undeclared": tick, "nested": {"a": [tick]}}
        if tick % 9 == 0:
            view["flag"] = "rest key"
        yield view


def _stream(
    name: str, schema: Schema | None, views: Iterator[Any], stream_id: int | str | None
) -> dict[str, Any]:
    encoder = DeltaEncoder(schema, stream=stream_id)
    steps: list[dict[str, Any]] = []
    for tick, view in enumerate(views, start=1):
        payload = encoder.keyframe(tick, view) if tick % 25 == 0 else encoder.delta(tick, view)
        step: dict[str, Any] = {
            "tick": tick,
            "msgpack": MSGPACK_V2.encode({"p": payload}).hex(),
            "json": JSON_V2.encode({"p": payload}).decode(),
            "view": JSON_V2.encode({"v": quantize_view(schema, view)}).decode(),
        }
        if tick % 10 == 5:  # a client that joins here gets the current keyframe
            step["late"] = JSON_V2.encode({"p": encoder.current_keyframe()}).decode()
        steps.append(step)
    return {"name": name, "steps": steps}


def delta_vectors() -> dict[str, Any]:
    """Payloads of the Python encoder (both codecs) and the view each one must give."""
    rng = random.Random(20250109)
    return {
        "comment": "written by `python -m tests.test_js_sdk` from server/protocol/delta.py;"
        " each step: the payload in msgpack (hex) and JSON, each wrapped as {p: payload},"
        " and the view it must give ({v: view}); 'late': a keyframe for a client joining",
        "streams": [
            _stream("arena", ARENA_SCHEMA, _arena_views(rng, 80), 3),
            _stream("generic", None, _generic_views(rng, 60), "s-1"),
            _stream("kitchen", KITCHEN_SCHEMA, _kitchen_views(rng, 80), 7),
        ],
    }


def write_vectors() -> None:
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(json.dumps(delta_vectors(), indent=1) + "\n")


def test_the_committed_delta_vectors_are_what_the_encoder_writes() -> None:
    assert VECTORS.exists(), "run `python -m tests.test_js_sdk` to write the delta vectors"
    committed = json.loads(VECTORS.read_text())
    assert committed == delta_vectors(), (
        "server/protocol/delta.py now encodes differently from the committed vectors:"
        " run `python -m tests.test_js_sdk` and commit client/js/test/fixtures/"
    )


# -- the Node runs ----------------------------------------------------------------------------


def test_js_sdk_pure() -> None:
    """Codecs, delta vectors, policies, token source, scripted servers, vendor, types."""
    run_node(["test/"], env={"STATEROOM_CLUSTER": ""})


@pytest.fixture(scope="module")
def js_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    tmp = tmp_path_factory.mktemp("js-live")
    with cluster_for(
        tmp,
        servers=2,
        extra=("--games", "tests.games:Cards"),
        auth_extra=("--access-ttl", str(ACCESS_TTL_S)),
    ) as cluster:
        yield cluster, cluster.write_cluster_file(tmp / "cluster.json")


def test_js_sdk_live(js_cluster: tuple[LocalCluster, Path]) -> None:
    """Logins, matchmaking, rooms in both encodings and versions, ints >= 2^32 accepted
    by the server, redirects, events exactly once, renewal on the open connection."""
    _, cluster_file = js_cluster
    run_node(["test/live/"], env={"STATEROOM_CLUSTER": str(cluster_file)})


def test_js_sdk_survives_a_kill_of_the_owner(tmp_path: Path) -> None:
    """SIGKILL of the room's owner while the JS client plays (a PID this test started)."""
    with cluster_for(tmp_path, servers=3, extra=("--games", "tests.games:Cards")) as cluster:
        cluster_file = cluster.write_cluster_file(tmp_path / "cluster.json")
        report = tmp_path / "failover.json"
        run_node(
            ["test/failover/"],
            env={"STATEROOM_CLUSTER": str(cluster_file), "STATEROOM_JS_REPORT": str(report)},
        )
        killed = [s for s in cluster.servers.values() if s.proc and s.proc.poll() is not None]
        assert 1 <= len(killed) <= 2, "the Node test kills each room's owner once"
    figures = json.loads(report.read_text())
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert figures["ticks_back"] == 0
    assert figures["acked"] == figures["sent"] > 0
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "js-sdk-failover.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"JS SDK failover: {json.dumps(figures)}")


if __name__ == "__main__":
    write_vectors()
    print(f"wrote {VECTORS.relative_to(ROOT)}", file=sys.stderr)
