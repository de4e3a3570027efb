"""``stateroom play`` for real: two terminals (tmux) in one room, moving, through a failover.

Skipped when tmux is not installed. The tmux server runs on a private socket
owned by this test and is killed at teardown, which hangs up the clients.
Every wait polls the screen with a deadline instead of sleeping a fixed time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import LocalCluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

REPO = Path(__file__).resolve().parent.parent


class Tmux:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def run(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.stdout

    def start(self, name: str, command: str) -> None:
        self.run("new-session", "-d", "-s", name, "-x", "120", "-y", "40", command)

    def keys(self, name: str, *keys: str) -> None:
        self.run("send-keys", "-t", name, *keys)

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-t", name)

    def wait_for(self, name: str, predicate: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + 30
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen(name)
            if predicate(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{name}: timed out waiting for {what}; screen:\n{screen}")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    # A private tmux server on its own socket (short path: sockets are limited to ~100 bytes).
    directory = Path(tempfile.mkdtemp(prefix="stateroom-tmux-"))
    mux = Tmux(directory / "sock")
    try:
        yield mux
    finally:
        mux.run("kill-server")
        shutil.rmtree(directory, ignore_errors=True)


def me(screen: str) -> tuple[int, int] | None:
    """Where the '@' is inside the world (the part left of the panel)."""
    for row, line in enumerate(screen.splitlines()):
        col = line.find("@", 0, 90)
        if col >= 0:
            return row, col
    return None


def move(tmux: Tmux, name: str, horizontal: bool) -> None:
    """Head away from the nearer wall, then wait until the '@' has moved."""
    start = me(tmux.screen(name))
    assert start is not None
    row, col = start
    if horizontal:
        tmux.keys(name, "Left" if col > 45 else "Right")
    else:
        tmux.keys(name, "Up" if row > 11 else "Down")
    tmux.wait_for(name, lambda s: me(s) not in (None, start), "the player to move")


def field(screen: str, name: str) -> str:
    match = re.search(rf"\b{name}\s+(\S+)", screen)
    return match.group(1) if match else ""


def test_two_players_move_and_survive_a_failover(
    cluster: LocalCluster, tmux: Tmux, tmp_path: Path
) -> None:
    cluster_file = cluster.write_cluster_file(tmp_path / "cluster.json")
    for name in ("alice", "bob"):
        exit_file = tmp_path / f"{name}.exit"
        command = (
            f"cd {REPO} && {sys.executable} -m server.cli play --cluster {cluster_file}"
            f" --room demo --name {name}; echo $? > {exit_file}; sleep 60"
        )
        tmux.start(name, command)
    for name in ("alice", "bob"):
        tmux.wait_for(name, lambda s: "SCORES (2 playing)" in s and me(s) is not None, "2 players")

    # Both move (away from the nearest wall), and each sees its own '@' move.
    move(tmux, "alice", horizontal=True)
    move(tmux, "bob", horizontal=False)
    assert re.search(r"^\|.*b.*\|", tmux.screen("alice"), re.MULTILINE)
    assert re.search(r"^\|.*a.*\|", tmux.screen("bob"), re.MULTILINE)

    # Kill the owner: both clients show the reconnection and carry on.
    screen = tmux.screen("alice")
    owner = field(screen, "server")
    assert owner.startswith(("s1-", "s2-")), screen
    old_tick = int(field(screen, "tick"))
    cluster.kill(owner.split("-")[0])
    survivor = "s2-" if owner.startswith("s1-") else "s1-"
    for name in ("alice", "bob"):
        screen = tmux.wait_for(
            name,
            lambda s: f"reconnected to {survivor}" in s and "CONNECTED" in s,
            "the reconnection notice",
        )
        assert field(screen, "server").startswith(survivor)
        assert int(field(screen, "reconn")) >= 1
    tmux.wait_for("alice", lambda s: int(field(s, "tick") or 0) > old_tick + 20, "ticks going on")
    move(tmux, "alice", horizontal=False)

    # q leaves cleanly and the exit code is 0.
    for name in ("alice", "bob"):
        tmux.keys(name, "q")
    deadline = time.monotonic() + 15
    for name in ("alice", "bob"):
        exit_file = tmp_path / f"{name}.exit"
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert exit_file.read_text().strip() == "0", tmux.screen(name)
