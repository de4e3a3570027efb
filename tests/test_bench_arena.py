"""bench/arena.py and its load generator (bench/loadgen/).

- Smoke runs against real processes at a tiny N for a few seconds, each printing one JSON
  object with the fields the performance issue reads: ``--compare HEAD`` (the room server
  of this tree and of a ``git worktree`` of HEAD, the Node load generator; the worktree is
  gone afterwards), rooms of 4 with the Python load generator, and ``--standin``.
- What a probe reads from a state (bench/loadgen/walk.mjs), on frames made by the server's
  own encoder (server.protocol.messages), agrees with a full msgpack decode.
- The saturation rule, the "served" rule and bad flags, without processes.

Node and @msgpack/msgpack come from what ``make test`` has: ``make js-deps`` installs it in
client/js/node_modules (or ``npm ci`` in bench/loadgen); without them these tests fail and
say how to install them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.arena import Options, saturation, served
from infra.embedded_redis import die_with_parent
from server.protocol.codec import MSGPACK, MSGPACK_V2
from server.protocol.messages import StateFrame, StateFrameV2

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "bench" / "loadgen"


def node_ready() -> None:
    """Fail (not skip) with what to do when Node or its package is missing."""
    if shutil.which("node") is None:
        pytest.fail("node is not installed: install Node >= 20 (CI does), then `make js-deps`")
    if not any(
        (base / "node_modules" / "@msgpack" / "msgpack").exists()
        for base in (LOADGEN, ROOT / "client" / "js")
    ):
        pytest.fail(
            "@msgpack/msgpack is missing: run `make js-deps` (or `npm ci` in bench/loadgen)"
        )


def run_arena(tmp_path: Path, args: list[str], timeout: float) -> tuple[int, str, str]:
    """bench/arena.py in a child (its temp dirs, worktree included, under tmp_path)."""
    out, err = tmp_path / "arena.out", tmp_path / "arena.err"
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "arena.py"), *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=o,
            stderr=e,
            env=env,
            preexec_fn=die_with_parent,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # it stops what it started, worktree included
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = -1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, out.read_text(), err.read_text()


def worktrees_under(path: Path) -> list[str]:
    listing = subprocess.run(
        ["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return [line for line in listing.splitlines() if str(path) in line]


def remove_worktrees_under(path: Path) -> None:
    for line in worktrees_under(path):
        subprocess.run(
            ["git", "worktree", "remove", "--force", line.split(" ", 1)[1]],
            cwd=ROOT,
            capture_output=True,
        )
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


POINT_FIELDS = (
    "server_cpu_cores",
    "cpu_us_per_input",
    "rss_mb",
    "bytes_per_player_per_tick",
    "bytes_per_player_per_update",
    "loadgen_cpu_cores",
    "loadgen_event_loop_delay_ms",
    "loadgen_saturated",
    "latency_ms",
    "latency_ms_raw",
    "offered_rate_ratio",
    "tick_ms",
)


FAST = ["--npm", "never", "--seconds", "1.5", "--warmup", "0.5", "--idle", "0.3", "--probes", "3"]


def one_object(out: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected ONE JSON object on stdout, got {len(lines)} lines"
    result: dict[str, Any] = json.loads(lines[0])
    return result


def check_point(p: dict[str, Any]) -> None:
    assert p.get("error") is None, p
    for field in POINT_FIELDS:
        assert field in p, (field, p)
    assert p["seated_at_end"] == p["n"]
    assert p["server_cpu_cores"] > 0 and p["rss_mb"] > 0
    assert p["cpu_us_per_input"] > 0 and p["bytes_per_player_per_tick"] > 0
    assert p["loadgen_cpu_cores"] > 0
    assert p["loadgen_event_loop_delay_ms"]["p99"] >= 0
    # The probes found their own entry in every state they read, and it agreed with ack.
    assert p["probe_states"] > 0 and p["probe_inputs_seen"] == p["probe_states"]
    assert p["lost_acked_inputs"] == 0 and p["duplicate_inputs"] == 0
    assert p["rollbacks"] == 0
    assert p["latency_ms_raw"]["n"] > 0
    if p["loadgen_saturated"]:
        assert p["latency_ms"] is None and p["latency_null_reason"]
        assert p["loadgen_saturated_reasons"]
    else:
        assert p["latency_ms"] == p["latency_ms_raw"]


def git_out(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


@pytest.mark.timeout(60)
def test_compare_runs_both_trees_and_prints_ratios(tmp_path: Path) -> None:
    node_ready()
    head = git_out("rev-parse", "HEAD")
    args = [*FAST, "--compare", "HEAD", "--scenarios", "one_room", "--one-room", "6"]
    try:
        code, out, err = run_arena(tmp_path, args, timeout=50)
        assert code == 0, f"exit {code}\n{err[-3000:]}"
        assert worktrees_under(tmp_path) == [], "the worktree of --compare was left behind"
    finally:
        remove_worktrees_under(tmp_path)
    result = one_object(out)
    assert result["loadgen"] == "node" and result["durable"] is True
    assert [t["name"] for t in result["trees"]] == ["ref", "current"]
    ref_commit = result["trees"][0]["commit"]
    # HEAD, or a later commit if another commit landed meanwhile.
    assert (
        subprocess.run(
            ["git", "merge-base", "--is-ancestor", head, ref_commit], cwd=ROOT
        ).returncode
        == 0
    )
    assert sorted((p["tree"], p["n"]) for p in result["points"]) == [
        ("current", 6),
        ("ref", 6),
    ]
    for p in result["points"]:
        check_point(p)
    [row] = result["compare"]["ratios"]
    assert (row["scenario"], row["n"]) == ("one_room", 6)
    assert row["cpu_us_per_input"]["ratio"] > 0 and row["rss_mb"]["ratio"] > 0
    assert row["bytes_per_player_per_update"]["ratio"] > 0
    assert row["comparable"] is True
    assert set(result["compare"]["targets"]) == {
        "cpu_us_per_input_one_room_200",
        "cpu_us_per_input_rooms_of_4_800",
        "p99_not_worse",
        "rss_not_worse",
        "largest_n_rooms_of_4_doubled",
        "bytes_per_player_per_update_held",
    }
    assert len(result["loadgen_load"]) == 2


@pytest.mark.timeout(40)
def test_python_load_generator_in_rooms_of_4(tmp_path: Path) -> None:
    code, out, err = run_arena(
        tmp_path,
        [*FAST, "--loadgen", "python", "--scenarios", "rooms_of_4", "--rooms-of-4", "8"],
        timeout=35,
    )
    assert code == 0, f"exit {code}\n{err[-3000:]}"
    result = one_object(out)
    assert result["loadgen"] == "python" and "compare" not in result
    [p] = result["points"]
    check_point(p)
    assert (p["scenario"], p["rooms"]) == ("rooms_of_4", 2)
    largest = result["largest_n_rooms_of_4_p99_under_100ms"]["current"]
    assert largest == (8 if served(p) else None)


@pytest.mark.timeout(40)
def test_standin_measures_the_load_generator_alone(tmp_path: Path) -> None:
    node_ready()
    code, out, err = run_arena(
        tmp_path,
        [*FAST, "--standin", "--scenarios", "rooms_of_4", "--rooms-of-4", "12"],
        timeout=35,
    )
    assert code == 0, f"exit {code}\n{err[-3000:]}"
    result = one_object(out)
    [p] = result["points"]
    assert p.get("error") is None, p
    assert p["tree"] == "standin" and p["seated_at_end"] == 12 and p["rooms"] == 3
    assert p["standin_cpu_cores"] > 0 and p["loadgen_cpu_cores"] > 0
    assert p["loadgen_states_per_s"] > 0 and p["latency_ms_raw"]["n"] > 0


def arena_state(players: int, ids: list[str]) -> dict[str, Any]:
    return {
        "w": 64,
        "h": 32,
        "players": {
            pid: {"name": f"lg-{i}", "x": 1.5 + i, "y": 30.25, "score": i, "inputs": 2**i + i}
            for i, pid in enumerate(ids[:players])
        },
        "pickups": [[1.5, 2.25], [60.01, 30.0]],
    }


@pytest.mark.timeout(20)
def test_probe_reads_the_servers_frames_like_a_full_decode() -> None:
    node_ready()
    ids = ["g_fIW8WS4G0nld5ngW", "g_é-ünïcode", "g_" + "x" * 40, "g_short", "g_absent"]
    cases = []
    for tick, ack in ((1, 0), (200, 127), (70_000, 65_536), (2**33, 2**32 + 5)):
        frame = StateFrame(tick, arena_state(4, ids)).encode_for(MSGPACK, ack)
        cases += [{"frame": frame.hex(), "me": me} for me in ids]
    # v2: ack is not last when private/events follow; the probe must still read it.
    v2 = StateFrameV2(9, {"tick": 9, "base": 8, "set": {"a": 1}}, lambda: {"tick": 9})
    frame = v2.encode_for(MSGPACK_V2, 41, private={"tick": 9}, events=[{"n": 1}])
    cases.append({"frame": frame.hex(), "me": ids[0]})
    proc = subprocess.run(
        ["node", str(LOADGEN / "walkcheck.mjs")],
        input="".join(json.dumps(c) + "\n" for c in cases),
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(answers) == len(cases)
    for case, answer in zip(cases, answers, strict=True):
        assert answer["find"] == answer["full"], (case["me"], answer)
        assert answer["walk"] == answer["full"], (case["me"], answer)
    assert answers[1]["full"]["inputs"] == 2**1 + 1  # the non-ASCII id was found
    assert answers[4]["full"]["inputs"] is None  # g_absent is not in the room
    assert answers[-1]["full"] == {"tick": 9, "ack": 41, "inputs": None}


OPTS = Options(
    loadgen="node",
    seconds=10,
    warmup=2,
    idle=1.0,
    durable=True,
    protocol=1,
    probes=16,
    max_loadgen_cpu=0.85,
    max_loop_delay_ms=20.0,
    core_full=0.9,
)


def test_saturation_names_each_limit_of_the_load_generator() -> None:
    calm = {"loadgen_cpu_cores": 0.3, "loadgen_schedule_ratio": 1.0}
    assert saturation(calm, {"event_loop_delay_ms": {"p99": 5.0}}, OPTS) == []
    reasons = saturation(
        {"loadgen_cpu_cores": 0.9, "loadgen_schedule_ratio": 0.9},
        {"event_loop_delay_ms": {"p99": 45.0}},
        OPTS,
    )
    assert len(reasons) == 3
    assert "CPU 0.90" in reasons[0] and "45.0" in reasons[1] and "90%" in reasons[2]


def test_served_needs_everyone_kept_and_a_server_p99_under_100ms() -> None:
    good = {
        "n": 8,
        "failed_players": 0,
        "seated_at_end": 8,
        "lost_acked_inputs": 0,
        "duplicate_inputs": 0,
        "rollbacks": 0,
        "evicted_clients": {},
        "offered_rate_ratio": 1.0,
        "latency_ms": {"p50": 30.0, "p99": 60.0},
    }
    assert served(good)
    assert not served({**good, "latency_ms": {"p50": 30.0, "p99": 100.0}})
    # A saturated load generator's point has no server latency: never "served".
    assert not served({**good, "latency_ms": None})
    assert not served({**good, "seated_at_end": 7})
    assert not served({**good, "evicted_clients": {"slow_consumer": 1}})
    assert not served({**good, "offered_rate_ratio": 0.9})


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--one-room", "100,x"], "not a comma-separated list of integers"),
        (["--scenarios", "one_room,nope"], "unknown scenario 'nope'"),
        (["--seconds", "0"], "--seconds > 0"),
        (["--loadgen", "rust"], "invalid choice: 'rust'"),
    ],
)
def test_bad_flags_exit_2_and_say_why(args: list[str], message: str, tmp_path: Path) -> None:
    code, out, err = run_arena(tmp_path, args, timeout=20)
    assert code == 2 and out == ""
    assert message in err


@pytest.mark.timeout(30)
def test_compare_with_an_unknown_ref_says_so(tmp_path: Path) -> None:
    node_ready()
    code, out, err = run_arena(tmp_path, ["--npm", "never", "--compare", "no-such-ref-x"], 20)
    assert code == 1 and out == ""
    assert "--compare 'no-such-ref-x' is not a commit of this repo" in err
