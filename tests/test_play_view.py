"""``stateroom play`` without a terminal: layout, scaling, scoreboard, texts, keys, tokens."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import pytest

from client import play
from client.arena_view import (
    HELP_TEXT,
    KEY_DIRECTIONS,
    PANEL_WIDTH,
    Box,
    FailoverNotices,
    Segment,
    Status,
    Style,
    char_width,
    clip,
    connection_label,
    fit_field,
    format_latency,
    layout,
    min_size,
    player_glyph,
    render,
    render_text,
    scoreboard,
    status_line,
    world_to_screen,
)
from client.sdk import ClientError, LoginError, Tokens
from infra.ports import free_port


def arena_state(**players: tuple[str, float, float, int]) -> dict[str, Any]:
    return {
        "w": 64,
        "h": 32,
        "players": {
            pid: {"name": name, "x": x, "y": y, "score": score, "inputs": 0}
            for pid, (name, x, y, score) in players.items()
        },
        "pickups": [[0.0, 0.0], [64.0, 32.0], [32.0, 16.0]],
    }


STATUS = Status(
    room="demo",
    player_id="p-alice",
    name="alice",
    tick=1234,
    latency_ms=12.4,
    server="s1-abc123",
    epoch=3,
    connection="connected",
    reconnects=1,
    redirects=2,
)


def cells_at(segments: list[Segment], row: int, col: int) -> list[Segment]:
    return [s for s in segments if s.row == row and s.col == col]


# -- scaling -------------------------------------------------------------------------


def test_fit_field_keeps_the_world_proportions_with_tall_cells() -> None:
    # 64x32 world, cells twice as tall as wide: 4 columns per row.
    assert fit_field(38, 88, 64, 32) == (22, 88)  # width-bound
    assert fit_field(10, 200, 64, 32) == (10, 40)  # height-bound
    rows, cols = fit_field(30, 120, 64, 32)
    assert cols == 4 * rows


def test_fit_field_degenerate_inputs() -> None:
    assert fit_field(0, 10, 64, 32) == (0, 0)
    assert fit_field(10, 0, 64, 32) == (0, 0)
    assert fit_field(5, 7, 0, 32) == (5, 7)


def test_world_to_screen_maps_corners_and_clamps() -> None:
    box = Box(top=1, left=1, rows=10, cols=40)
    assert world_to_screen(0, 0, 64, 32, box) == (1, 1)
    assert world_to_screen(64, 32, 64, 32, box) == (10, 40)  # the far edge is the last cell
    assert world_to_screen(32, 16, 64, 32, box) == (6, 21)
    assert world_to_screen(-5, 99, 64, 32, box) == (10, 1)  # out of the world: clamped
    assert world_to_screen(1, 1, 0, 0, box) == (1, 1)


def test_layout_too_small_and_big_enough() -> None:
    need_rows, need_cols = min_size()
    assert layout(need_rows - 1, 200, 64, 32) is None
    assert layout(100, need_cols - 1, 64, 32) is None
    box = layout(need_rows, need_cols, 64, 32)
    assert box is not None
    assert box.cols >= 20 and box.rows >= 6
    box = layout(40, 120, 64, 32)
    assert box == Box(top=1, left=1, rows=22, cols=88)
    assert box.left + box.cols + 1 + PANEL_WIDTH <= 120


# -- the whole screen -----------------------------------------------------------------


def test_render_two_players_pickups_border_and_panel() -> None:
    state = arena_state(**{"p-alice": ("alice", 10.0, 5.0, 3), "p-bob": ("bob", 50.0, 20.0, 7)})
    segments = render(state, STATUS, 40, 120)
    box = layout(40, 120, 64, 32)
    assert box is not None
    me_row, me_col = world_to_screen(10, 5, 64, 32, box)
    bob_row, bob_col = world_to_screen(50, 20, 64, 32, box)
    assert Segment(me_row, me_col, "@", Style.SELF) in segments
    assert Segment(bob_row, bob_col, "b", Style.OTHER) in segments
    pickups = [s for s in segments if s.style is Style.PICKUP]
    assert [(s.row, s.col, s.text) for s in pickups] == [
        (1, 1, "*"),
        (22, 88, "*"),
        (12, 45, "*"),
    ]
    text = render_text(segments, 40, 120)
    assert text[0].startswith("+" + "-" * 88 + "+")
    assert text[23].startswith("+" + "-" * 88 + "+")
    assert text[5].startswith("|") and text[5][89] == "|"
    screen = "\n".join(text)
    for expected in (
        "room demo",
        "alice  score 3",
        "CONNECTED",
        "tick   1234",
        "12 ms",
        "s1-abc123",
        "epoch  3",
        "reconn 1   redirects 2",
        "SCORES (2 playing)",
    ):
        assert expected in screen, expected
    # the scoreboard: bob first (7), then alice (3), highlighted
    board = [s for s in segments if "bob" in s.text or "alice" in s.text]
    assert any(s.text.startswith(" 1 bob") for s in board)
    assert any(s.text.startswith(" 2 alice") and s.style is Style.SELF for s in board)
    # the help line sits right under the world
    assert text[24] == HELP_TEXT


def test_self_is_drawn_on_top_of_others_and_pickups() -> None:
    state = arena_state(**{"p-bob": ("bob", 32.0, 16.0, 0), "p-alice": ("alice", 32.0, 16.0, 0)})
    segments = render(state, STATUS, 40, 120)
    text = render_text(segments, 40, 120)
    assert text[12][45] == "@"


def test_render_stays_inside_the_screen_for_every_size() -> None:
    state = arena_state(
        **{
            "p-alice": ("alice", 64.0, 32.0, 1),
            "p-x": ("Ωmega-with-a-very-long-name-indeed", 0.0, 0.0, 99),
            "p-wide": ("全角の名前", 3.0, 3.0, 5),
        }
    )
    status = Status(room="r" * 64, player_id="p-alice", notice="reconnected to " + "s" * 200)
    for rows in range(0, 50, 3):
        for cols in range(0, 160, 7):
            for seg in render(state, status, rows, cols):
                width = sum(char_width(c) for c in seg.text)
                assert 0 <= seg.row < rows, (rows, cols, seg)
                assert seg.col >= 0 and seg.col + width <= cols, (rows, cols, seg)


def test_terminal_too_small_says_so() -> None:
    segments = render(arena_state(), STATUS, 10, 40)
    text = "\n".join(render_text(segments, 10, 40))
    assert "Terminal too small" in text
    need_rows, need_cols = min_size()
    assert f"need {need_cols}x{need_rows}, have 40x10" in text
    assert render(None, STATUS, 0, 0) == []


def test_render_before_the_first_state_and_with_malformed_state() -> None:
    for state in (
        None,
        {},
        {"w": "x", "h": None, "players": [1, 2], "pickups": "no"},
        {"w": 64, "h": 32, "players": {"p": "not a map", "q": {"x": "a"}}, "pickups": [[1], "x"]},
    ):
        segments = render(state, Status(room="demo"), 30, 100)
        text = "\n".join(render_text(segments, 30, 100))
        assert "CONNECTING…" in text
        assert "room demo" in text


def test_notice_and_error_replace_the_help_line() -> None:
    state = arena_state(**{"p-alice": ("alice", 1.0, 1.0, 0)})
    notice = "reconnected to s2-def456 (epoch 4) after 0.3 s"
    segments = render(state, Status(room="demo", player_id="p-alice", notice=notice), 40, 120)
    assert Segment(24, 0, notice, Style.NOTICE) in segments
    error = Status(room="demo", error="room closed the session: 4001 token expired")
    segments = render(state, error, 40, 120)
    assert any(s.style is Style.BAD and "4001" in s.text for s in segments)
    # a notice wider than the space under the world goes to the last row, full width
    long = "x" * 100
    segments = render(state, Status(room="demo", notice=long), 40, 120)
    assert Segment(39, 0, long, Style.NOTICE) in segments


# -- pieces ----------------------------------------------------------------------------


def test_scoreboard_orders_and_always_shows_you() -> None:
    players = {
        f"p{i}": {"name": f"n{i}", "score": i, "x": 0, "y": 0, "inputs": 0} for i in range(10)
    }
    top = scoreboard(players, "p9", 3)
    assert [(e.rank, e.name, e.score, e.is_self) for e in top] == [
        (1, "n9", 9, True),
        (2, "n8", 8, False),
        (3, "n7", 7, False),
    ]
    top = scoreboard(players, "p1", 3)
    assert [(e.rank, e.name) for e in top] == [(1, "n9"), (2, "n8"), (9, "n1")]
    assert top[-1].is_self
    assert scoreboard(players, "p1", 0) == []
    assert scoreboard({}, "p1", 5) == []
    # ties by name, then id
    tied = {"b": {"name": "zed", "score": 1}, "a": {"name": "amy", "score": 1}}
    assert [e.name for e in scoreboard(tied, "", 5)] == ["amy", "zed"]


def test_connection_labels() -> None:
    assert connection_label("connected") == ("CONNECTED", Style.OK)
    assert connection_label("reconnecting") == ("RECONNECTING…", Style.WARN)
    assert connection_label("connecting") == ("CONNECTING…", Style.WARN)
    assert connection_label("closed") == ("CLOSED", Style.BAD)


def test_status_line_and_latency() -> None:
    assert status_line(STATUS) == (
        "demo | CONNECTED | server s1-abc123 epoch 3 | tick 1234 | 12 ms | reconnects 1"
    )
    assert format_latency(None) == "-"
    assert format_latency(0.4) == "0 ms"
    assert format_latency(12_345) == "12 s"


def test_clip_and_glyphs() -> None:
    assert clip("hello", 10) == "hello"
    assert clip("hello world", 5) == "hell…"
    assert clip("abc", 0) == ""
    assert clip("a\x1b[2Jb\n", 10) == "a?[2Jb?"
    assert clip("全角全角", 5) == "全角…"
    assert player_glyph("bob") == "b"
    assert player_glyph("  Émile") == "É"
    assert player_glyph("全角") == "o"
    assert player_glyph("") == "o"
    assert player_glyph("\x07x") == "o"


def test_keys_map_to_headings() -> None:
    assert KEY_DIRECTIONS["KEY_UP"] == KEY_DIRECTIONS["w"] == (0.0, -1.0)
    assert KEY_DIRECTIONS["KEY_DOWN"] == KEY_DIRECTIONS["S"] == (0.0, 1.0)
    assert KEY_DIRECTIONS["KEY_LEFT"] == KEY_DIRECTIONS["a"] == (-1.0, 0.0)
    assert KEY_DIRECTIONS["KEY_RIGHT"] == KEY_DIRECTIONS["d"] == (1.0, 0.0)
    assert KEY_DIRECTIONS[" "] == (0.0, 0.0)


# -- failover notices --------------------------------------------------------------------


def test_notice_after_a_failover_then_it_fades() -> None:
    notices = FailoverNotices(hold=5.0)
    notices.observe("connecting", "", 0, 0, 0.0)
    assert notices.current(0.0) == ""
    notices.observe("connected", "s1-abc", 1, 0, 1.0)
    assert notices.current(1.0) == ""  # the first connection is not news
    notices.observe("reconnecting", "s1-abc", 1, 1, 10.0)
    assert notices.current(10.5) == "connection to s1-abc lost, reconnecting… (0.5 s)"
    notices.observe("reconnecting", "s1-abc", 1, 2, 10.6)
    notices.observe("connected", "s2-def", 2, 2, 10.8)
    assert notices.current(11.0) == "reconnected to s2-def (epoch 2) after 0.8 s"
    assert notices.current(15.7) != ""
    assert notices.current(15.9) == ""


def test_a_reconnect_too_fast_to_see_is_still_reported() -> None:
    notices = FailoverNotices()
    notices.observe("connected", "s1-abc", 1, 0, 0.0)
    notices.observe("connected", "s1-abc", 1, 1, 0.05)  # same server, count went up
    assert notices.current(0.1) == "reconnected to s1-abc (epoch 1)"
    notices.observe("connected", "s1-abc", 1, 1, 10.0)
    assert notices.current(10.0) == ""
    notices.observe("connected", "s2-def", 2, 1, 11.0)  # moved without a counted reconnect
    assert notices.current(11.0) == "reconnected to s2-def (epoch 2)"


# -- the client's non-terminal parts -------------------------------------------------------


class FakeAuth:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    async def refresh(self, tokens: Tokens) -> Tokens:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail:
            raise LoginError(401, "invalid_token", "refresh token reused")
        return Tokens(f"access-{self.calls}", f"refresh-{self.calls}", tokens.player_id, 1000.0)


def keeper(auth: FakeAuth, expires_at: float, now: list[float]) -> play.TokenKeeper:
    tokens = Tokens("access-0", "refresh-0", "p1", expires_at)
    return play.TokenKeeper(auth, tokens, margin=60.0, clock=lambda: now[0])  # type: ignore[arg-type]


async def test_token_keeper_refreshes_only_near_expiry() -> None:
    auth, now = FakeAuth(), [0.0]
    source = keeper(auth, 600.0, now)
    assert await source() == "access-0"
    now[0] = 539.0
    assert await source() == "access-0"
    now[0] = 540.0
    assert await source() == "access-1"
    assert await source() == "access-1"  # now valid until 1000
    assert auth.calls == 1 and source.refreshes == 1


async def test_token_keeper_concurrent_callers_refresh_once() -> None:
    auth, now = FakeAuth(), [590.0]
    source = keeper(auth, 600.0, now)
    got = await asyncio.gather(*(source() for _ in range(5)))
    assert got == ["access-1"] * 5
    assert auth.calls == 1  # rotation with reuse detection: a double refresh would be fatal


async def test_token_keeper_never_raises() -> None:
    auth, now = FakeAuth(fail=True), [590.0]
    source = keeper(auth, 600.0, now)
    assert await source() == "access-0"
    assert "refresh token reused" in source.last_error


async def test_token_keeper_background_refresh() -> None:
    auth, now = FakeAuth(), [0.0]
    source = keeper(auth, 60.02, now)  # due 0.02 s from now on the fake clock
    task = asyncio.get_running_loop().create_task(source.keep_fresh(retry=0.01))
    try:
        await asyncio.sleep(0.1)
        assert auth.calls == 0  # the fake clock has not moved: not due yet
        now[0] = 1.0
        deadline = time.monotonic() + 10
        while not auth.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert auth.calls == 1 and source.tokens.access_token == "access-1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class FakeClient:
    def __init__(self, full: bool = False) -> None:
        self.sent: list[dict[str, float]] = []
        self.full = full

    def send_input(self, data: dict[str, float]) -> int:
        if self.full:
            raise ClientError("too many unacknowledged inputs")
        self.sent.append(data)
        return len(self.sent)


def game(client: FakeClient) -> Any:
    args = argparse.Namespace(room="demo", name="alice")
    return play._Game(client, args, None, {})  # type: ignore[arg-type]


async def test_keys_send_inputs_once_per_change() -> None:
    client = FakeClient()
    g = game(client)
    g._handle_keys(["KEY_RIGHT"])
    g._handle_keys(["KEY_RIGHT", "d"])  # same heading again at once: not resent
    g._handle_keys(["x", "KEY_UP", "s"])  # a batch of keys: the last heading wins
    g._handle_keys([" "])
    g._handle_keys(["F1", "é"])  # unknown keys do nothing
    assert client.sent == [
        {"dx": 1.0, "dy": 0.0},
        {"dx": 0.0, "dy": 1.0},
        {"dx": 0.0, "dy": 0.0},
    ]
    g.sent_at -= play.REPEAT_INPUT_AFTER
    g._handle_keys([" "])
    assert len(client.sent) == 4
    assert not g.quit.is_set()
    g._handle_keys(["KEY_LEFT", "q", "KEY_RIGHT"])
    assert g.quit.is_set()
    assert client.sent[-1] == {"dx": 0.0, "dy": 0.0}


async def test_a_full_input_queue_does_not_crash_the_ui() -> None:
    g = game(FakeClient(full=True))
    g._handle_keys(["w"])
    assert g.heading is None


def test_arguments_and_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    play.add_arguments(parser)
    args = parser.parse_args(["--cluster", "c.json", "--room", "demo", "--name", "al"])
    assert (args.cluster, args.room, args.name, args.encoding) == (
        "c.json",
        "demo",
        "al",
        "msgpack",
    )
    assert parser.parse_args(["--room", "demo"]).cluster == ".stateroom/cluster.json"
    capsys.readouterr()
    assert play.run(args) == 1  # pytest's stdin is not a terminal
    err = capsys.readouterr().err
    assert err.strip() == "stateroom play: stateroom play needs an interactive terminal " + (
        "(stdin and stdout a tty)"
    )


def test_login_failure_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    args = argparse.Namespace(room="demo", name=None, encoding="msgpack")
    start = time.monotonic()
    code = asyncio.run(play._play(args, f"http://127.0.0.1:{port}", ["ws://127.0.0.1:1/v1/ws"]))
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot reach the login service" in err and "stateroom up" in err
    assert time.monotonic() - start < 10
