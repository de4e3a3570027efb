"""The arena in a real browser (issue 9, deliverables 3 and 5).

Against a real ``stateroom up`` (temp ``--data``, free ports, its own process group),
Debian's ``chromium`` driven by ``playwright-core`` from client/js/node_modules (never a
browser download) runs tests/browser/play_and_kill.mjs: two pages play the arena in one
room (one holds arrow keys on msgpack; the other, a touch screen, holds the on-screen pad
and drags on the world, on JSON), a third opens ``/dashboard`` and clicks the room's "kill
owner" button, and both players carry on with the room's new owner.

How each page counts (client/web/arena-checks.js, the bots' method on every state): the
page sends seqs 1, 2, 3, ... (one per ``sendInput``; ``sent`` counts them) and the arena
counts the inputs it applied per player (``inputs``); the server applies a player's
inputs in seq order and ``ack`` is the highest seq applied, so every state must show
``inputs == ack``.

- acked: the highest ack seen (seqs are consecutive, so it is the number acked);
- duplicated: the largest ``inputs - ack`` seen (an input applied twice);
- lost: the largest ``H - min(ack, inputs)`` seen, H being the highest ack so far (an
  acked input forgotten when the ack goes back, or acked without being applied);
- tickWentBack: a state handed to the page whose tick is not newer than one before, or
  the render clock going back.

The test requires, for both pages: a change of owner seen (another server or epoch),
``reconnects >= 1``, every input sent acked (``acked == sent``, after letting go), 0
lost, 0 duplicated, no tick back; and the dashboard's timeline for the room complete.
Screenshots (the players while reconnecting, when caught, and after; the dashboard's
timeline) go to test-artifacts/browser/ and their paths are printed.

Chromium missing: fails when ``CI`` is set (``.ci/run`` sets it), skips elsewhere, and
says how to install it. Every process is ended by PID in a ``finally``: node and the
Chromium it started (their own process group), and ``stateroom up`` and its children.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.embedded_redis import die_with_parent
from tests.support import http_ok, stateroom_up, wait_until

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "tests" / "browser"
PLAYWRIGHT = REPO / "client" / "js" / "node_modules" / "playwright-core" / "index.mjs"
ARTIFACTS = REPO / "test-artifacts" / "browser"
SERVERS = 2
INSTALL_CHROMIUM = "apt-get install -y chromium (or `make system-deps` as root)"

pytestmark = [pytest.mark.slow]


def require(what: str, how: str) -> None:
    """A missing tool fails the test on CI and skips it elsewhere, saying how to get it."""
    message = f"{what} is missing: {how}"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message} (required on CI)")
    pytest.skip(message)


def node_path() -> str:
    node = shutil.which("node")
    if node is None:
        require("node (>= 20)", "apt-get install -y nodejs")
    assert node is not None
    return node


def chromium_path() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        require("Debian's chromium", INSTALL_CHROMIUM)
    assert chromium is not None
    if not PLAYWRIGHT.exists():
        require("playwright-core (client/js/node_modules)", "make js-deps")
    return chromium


# -- a real `stateroom up` ----------------------------------------------------------------


def kill_group(pgid: int, grace: float) -> None:
    """SIGTERM the process group ``pgid`` (led by a PID we started), SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _is_chromium_leader(pid: int) -> bool:
    """``pid`` is still the Chromium that Playwright started (not a reused PID)."""
    try:
        return os.getpgid(pid) == pid and b"chrom" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ProcessLookupError):
        return False


@dataclass
class Up:
    output: Path
    auth_url: str


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    with stateroom_up(tmp_path, servers=SERVERS) as running:
        auth_url = str(running.cluster()["auth_url"])
        wait_until(lambda: http_ok(f"{auth_url}/healthz"), 20, "the login service")
        yield Up(running.output, auth_url)


# -- the tests ----------------------------------------------------------------------------


def down_ms(statuses: list[dict[str, Any]]) -> int | None:
    """How long the page's connection was not open after it first was (ms, page clock)."""
    opened = False
    down_at = None
    for entry in statuses:
        if entry["status"] == "open":
            if down_at is not None:
                return round(entry["at"] - down_at)
            opened = True
        elif opened and down_at is None:
            down_at = entry["at"]
    return None


def run_node(
    args: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Runs node in its own process group and ends every process it started, by PID.

    Playwright starts Chromium as the leader of a process group of its own and the
    script prints ``chromium-pid: N``: after node, that group is ended too, so a script
    killed at its timeout leaves no browser behind.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [node_path(), *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            kill_group(proc.pid, 5)  # SIGTERM first: Playwright then closes its browser
            proc.wait()
            out.seek(0)
            for line in out.read().decode(errors="replace").splitlines():
                if line.startswith("chromium-pid: ") and _is_chromium_leader(int(line.split()[1])):
                    kill_group(int(line.split()[1]), 2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        return proc.returncode, stdout, stderr


@pytest.mark.timeout(10)
def test_missing_chromium_fails_on_ci_and_skips_elsewhere_saying_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium.*required on CI"):
        chromium_path()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install -y chromium"):
        chromium_path()


@pytest.mark.timeout(30)
def test_arena_page_modules() -> None:
    """The page's pure modules (interpolation, checks, controls) under Node's test runner."""
    code, out, err = run_node(["--test", str(SCRIPTS / "arena_units.test.mjs")], 25)
    assert code == 0, out + err
    assert "# fail 0" in out, out


@pytest.mark.timeout(90)
def test_two_browsers_play_through_a_kill_from_the_dashboard(up: Up, tmp_path: Path) -> None:
    chromium = chromium_path()
    room = f"browser-{os.getpid()}-{int(time.time()) % 100000}"
    config = {
        "baseUrl": up.auth_url,
        "room": room,
        "chromium": chromium,
        "artifacts": str(ARTIFACTS),
        "timeoutMs": 60_000,
    }
    # Playwright's fresh Chromium profile goes here (TMPDIR); a short path, because
    # Chromium's singleton socket must fit in a Unix socket address (~100 bytes).
    profiles = tempfile.mkdtemp(prefix="sr-chromium-")
    try:
        script = [str(SCRIPTS / "play_and_kill.mjs"), json.dumps(config)]
        code, out, err = run_node(script, 75, env={"TMPDIR": profiles})
    finally:
        shutil.rmtree(profiles, ignore_errors=True)
    for line in out.splitlines():
        if line.startswith("screenshot: "):
            print(line)  # the artefacts, for whoever reads the test output
    result_lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert result_lines, f"no result (exit {code})\nstdout:\n{out}\nstderr:\n{err}"
    result: dict[str, Any] = json.loads(result_lines[-1][len("RESULT ") :])
    assert result["ok"], (
        f"{result.get('error')}\nconsole errors: {result.get('consoleErrors')}\n"
        f"pages: {json.dumps(result.get('pages'), indent=1)}\nstderr:\n{err}\n"
        f"up:\n{up.output.read_text()}"
    )
    assert code == 0, err
    for index, page in enumerate(result["players"], 1):
        stats = page["stats"]
        print(
            f"player{index} ({page['encoding']}): sent {stats['sent']} acked {stats['acked']} "
            f"lost {stats['lost']} duplicated {stats['duplicated']} reconnects "
            f"{stats['reconnects']} maxTick {stats['maxTick']} tickWentBack "
            f"{stats['tickWentBack']}; not open for {down_ms(page['statuses'])} ms; "
            f"moves {page['owners']}"
        )
    print(f"caught reconnecting: {result['caughtReconnecting']}; timeline {result['timeline']}")
    for page in result["players"]:
        stats = page["stats"]
        assert stats["sent"] > 20, page  # it played: an input every 50 ms while keys are held
        assert stats["acked"] == stats["sent"], page
        assert stats["lost"] == 0, page
        assert stats["duplicated"] == 0, page
        assert stats["tickWentBack"] is False, page
        assert stats["reconnects"] >= 1, page
        assert page["owners"], page  # it saw the room change owner
        move = page["owners"][0]
        assert (move["toServer"], move["toEpoch"]) != (move["fromServer"], move["fromEpoch"])
        assert move["firstTick"] > move["lastTick"], move
        assert page["sdk"]["lost"] == 0 and page["sdk"]["duplicated"] == 0, page["sdk"]
        assert page["error"] == "", page
    # The status bar says so too (it is always visible): open, the new owner, the counts.
    for page, shown in zip(result["players"], result["bars"], strict=True):
        stats = page["stats"]
        assert shown["status"] == "open", shown
        assert (shown["server"], shown["epoch"]) == (page["server"], str(page["epoch"])), shown
        assert shown["reconnects"] == str(stats["reconnects"]), shown
        assert (shown["sent"], shown["acked"]) == (str(stats["sent"]), str(stats["acked"])), shown
        assert shown["latency"].endswith(")") and "ms" in shown["latency"], shown
    assert [page["encoding"] for page in result["players"]] == ["msgpack", "json"]
    # Drawn between ticks: the render tick trails the newest state, mostly by a fraction.
    rendering = result["rendering"]
    assert all(0 <= newest - drawn <= 5 for drawn, newest in rendering), rendering
    assert sum(drawn != int(drawn) for drawn, _ in rendering) >= len(rendering) // 2, rendering
    assert rendering[-1][0] > rendering[0][0], rendering
    assert result["badRoom"]["error"].startswith("bad room name"), result["badRoom"]
    assert result["badRoom"]["banner"] == result["badRoom"]["error"], result["badRoom"]
    assert result["padShown"] is True  # the touch screen shows the pad (it played with it)
    # Both players are in the same room, each seeing the other on the same new owner.
    first, second = result["players"]
    assert first["playerId"] != second["playerId"]
    assert (first["server"], first["epoch"]) == (second["server"], second["epoch"])
    steps = [step["step"] for step in result["timeline"]]
    assert steps, result["timeline"]
    assert all(step["ms"] >= 0 for step in result["timeline"]), result["timeline"]
    assert result["consoleErrors"] == [], result["consoleErrors"]
    for path in result["screenshots"]:
        assert Path(path).stat().st_size > 1000, path
