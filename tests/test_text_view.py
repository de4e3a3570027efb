"""``stateroom play`` for any game: the text view (``client.text_view``) without a terminal,
the play screen's line handling with a stand-in client, and Duel played for real in two
tmux terminals against a real cluster."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from client import play
from client.arena_view import Status, Style, render_text
from client.sdk import ClientStats
from client.text_view import (
    GENERIC_HELP,
    MIN_COLS,
    MIN_ROWS,
    EventLog,
    InputError,
    LineEditor,
    Section,
    allocate,
    compact,
    help_text,
    is_quit,
    parse_input,
    pretty_lines,
    render,
    text_width,
    trim,
)
from tests.cluster import LocalCluster
from tests.test_play_tmux import REPO, Tmux, tmux  # noqa: F401  (the tmux fixture)

DUEL_STATE: dict[str, Any] = {
    "round": 2,
    "match": 1,
    "target": 3,
    "scores": {"g_ann": 1, "g_bob": 0},
    "played": ["g_bob"],
    "hand_sizes": {"g_ann": 5, "g_bob": 4},
    "last": {"cards": {"g_ann": 12, "g_bob": 4}, "winner": "g_ann", "round": 1},
}
HAND = {"hand": [2, 5, 7, 9, 13], "played": None}
STATUS = Status(
    room="table",
    player_id="g_ann",
    name="ann",
    tick=120,
    latency_ms=12.0,
    server="s1-ab12",
    epoch=2,
    connection="connected",
)


def screen(rows: int = 30, cols: int = 100, **overrides: Any) -> list[str]:
    events = overrides.pop("events", None) or EventLog()
    params: dict[str, Any] = {
        "state": DUEL_STATE,
        "private": HAND,
        "status": STATUS,
        "game": "duel",
        "typed": "",
        **overrides,
    }
    frame = render(
        params.pop("state"),
        params.pop("private"),
        events,
        params.pop("status"),
        params.pop("game"),
        params.pop("typed"),
        rows,
        cols,
        **params,
    )
    lines = render_text(frame.segments, rows, cols)
    for seg in frame.segments:
        assert 0 <= seg.row < rows and seg.col >= 0
        assert seg.col + text_width(seg.text) <= cols - 1, seg  # never the last column
    return lines


# -- pretty-printing -------------------------------------------------------------------------


def test_what_fits_stays_on_one_line_and_the_rest_is_one_entry_a_line() -> None:
    assert pretty_lines({"hand": [2, 5], "played": None}, 80) == [
        '{"hand": [2, 5], "played": null}'
    ]
    lines = pretty_lines(DUEL_STATE, 40)
    assert lines[0] == '"round": 2'  # a big top-level map loses its braces
    assert '"scores": {"g_ann": 1, "g_bob": 0}' in lines
    assert '"last": {' in lines and '  "cards": {"g_ann": 12, "g_bob": 4},' in lines
    assert all(len(line) <= 40 for line in lines)
    nested = pretty_lines({"a": {"b": list(range(30))}}, 20)
    assert nested[:2] == ['"a": {', '  "b": [']
    assert nested[2:4] == ["    0,", "    1,"] and nested[-1] == "}"
    assert pretty_lines(list(range(1000)), 10, limit=5) == ["[", "  0,", "  1,", "  2,", "  3,"]


def test_any_msgpack_value_prints() -> None:
    assert compact({1: b"abc", "x": (1.5, True, None), "é": "ü"}) == (
        '{"1": <3 bytes>, "x": [1.5, true, null], "é": "ü"}'
    )
    assert pretty_lines(None, 10) == ["null"] and pretty_lines({}, 10) == ["{}"]


def test_rows_are_shared_and_a_cut_says_how_much_is_hidden() -> None:
    assert allocate(10, [20, 1, 20]) == [5, 1, 4]
    assert allocate(10, [2, 2, 2]) == [2, 2, 2]
    assert allocate(0, [3]) == [0]
    section = Section("x", [str(i) for i in range(10)])
    assert trim(section, 4) == ["0", "1", "2", "… 7 more lines"]
    assert trim(Section("e", section.lines, keep_tail=True), 4) == ["… 7 earlier", "7", "8", "9"]
    assert trim(Section("x", section.lines, capped=True), 2) == ["0", "… 9+ more lines"]
    assert trim(section, 20) == section.lines


# -- the screen ---------------------------------------------------------------------------------


def test_the_screen_shows_state_hand_events_help_and_the_input_line() -> None:
    events = EventLog()
    events.add(118, [{"kind": "dealt", "n": 1, "cards": [2, 5, 7, 9, 13]}])
    events.add(119, [{"kind": "played", "n": 1, "who": "g_bob"}])
    lines = screen(events=events, typed='{"play": 7}')
    text = "\n".join(lines)
    assert lines[0].startswith("STATEROOM  room table  game duel  you ann (g_ann)")
    assert lines[1].startswith("CONNECTED  tick 120  12 ms  server s1-ab12 epoch 2")
    assert "── public state" in lines[2]
    assert '"scores": {"g_ann": 1, "g_bob": 0}' in text
    assert "── yours" in text and '{"hand": [2, 5, 7, 9, 13], "played": null}' in text
    assert "── events (last 20)" in text
    assert 't118 {"kind": "dealt", "n": 1, "cards": [2, 5, 7, 9, 13]}' in text
    assert 't119 {"kind": "played", "n": 1, "who": "g_bob"}' in text
    assert lines[-2] == help_text("duel")
    assert lines[-1] == '> {"play": 7}'


def test_the_cursor_ends_the_input_line_and_a_long_line_keeps_its_end_in_view() -> None:
    events = EventLog()
    frame = render(DUEL_STATE, HAND, events, STATUS, "duel", "12", 20, 60)
    assert frame.cursor == (19, 4)
    typed = '{"say": "' + "x" * 100 + 'END"}'
    frame = render(DUEL_STATE, HAND, events, STATUS, "duel", typed, 20, 60)
    last = render_text(frame.segments, 20, 60)[-1]
    assert last.startswith("> ") and last.endswith('END"}') and len(last) <= 59
    assert frame.cursor == (19, len(last))


def test_a_small_terminal_trims_every_section_and_keeps_the_newest_events() -> None:
    events = EventLog()
    for n in range(1, 31):
        events.add(n, [{"kind": "played", "n": n}])
    lines = screen(rows=14, cols=50, events=events)
    assert len(lines) == 14 and all(len(line) < 50 for line in lines)
    text = "\n".join(lines)
    assert "more lines" in text  # the public state was cut
    assert '"n": 30}' in text and '"n": 11}' not in text  # the log keeps the last 20
    assert "earlier" in text
    assert lines[-1] == ">"


def test_no_state_yet_nothing_private_and_no_events() -> None:
    text = "\n".join(
        screen(state=None, private=None, status=Status(room="r", connection="connecting"))
    )
    assert "(no state yet)" in text and "(nothing private)" in text and "(none yet)" in text
    assert "CONNECTING…" in text


def test_errors_and_notices_take_the_help_line() -> None:
    assert screen(message="sent #3 {}")[-2] == "sent #3 {}"
    failed = Status(room="table", error="room closed the session: 4003 room_full")
    assert screen(status=failed, message="ignored")[-2].startswith("room closed the session")
    assert screen(game="tag")[-2] == GENERIC_HELP


def test_too_small_a_terminal_says_so() -> None:
    lines = screen(rows=MIN_ROWS - 1, cols=MIN_COLS)
    assert lines[0] == "Terminal too small"
    assert render(None, None, EventLog(), STATUS, "duel", "", 5, 20).cursor is None


# -- typing an input -----------------------------------------------------------------------------


def test_a_line_is_json_and_in_duel_a_bare_number_plays_that_card() -> None:
    assert parse_input('{"play": 7}', "duel") == {"play": 7}
    assert parse_input(" 7 ", "duel") == {"play": 7}
    assert parse_input("7", "tag") == 7  # no shortcut: JSON
    assert parse_input('{"dx": 1, "dy": 0}', "arena") == {"dx": 1, "dy": 0}
    with pytest.raises(InputError, match="not JSON"):
        parse_input("play seven", "duel")
    with pytest.raises(InputError, match="nothing to send"):
        parse_input("  ", "duel")
    assert is_quit("q") and is_quit(" /quit ") and not is_quit('"q"')


def test_the_line_editor_edits_and_remembers() -> None:
    editor = LineEditor()
    editor.insert("12\x07")  # a control character is dropped
    editor.backspace()
    editor.insert("3")
    assert editor.submit() == "13" and editor.text == ""
    editor.insert("  ")
    assert editor.submit() == ""
    editor.insert('{"play": 2}')
    editor.submit()
    editor.up()
    assert editor.text == '{"play": 2}'
    editor.up()
    assert editor.text == "13"
    editor.down()
    editor.down()
    assert editor.text == ""
    editor.insert("x")
    editor.clear()
    assert editor.text == "" and editor.history == ["13", '{"play": 2}']


class FakeClient:
    """What the play screen reads of a ``RoomClient``."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.stats = ClientStats()

    def send_input(self, data: Any) -> int:
        self.sent.append(data)
        return len(self.sent)


def text_game(game: str = "duel") -> tuple[Any, FakeClient]:
    client = FakeClient()
    args = argparse.Namespace(room="table", name="ann", game=game)
    return play._TextGame(client, args, None, {}), client  # type: ignore[arg-type]


def test_the_play_screen_sends_what_is_typed_and_reports_it() -> None:
    game, client = text_game()
    game._handle_keys([*"7", "ENTER"])
    game._handle_keys([*'{"play": 9}', "ENTER"])
    assert client.sent == [{"play": 7}, {"play": 9}]
    assert game._footer("") == ('sent #2 {"play": 9}  (waiting for the ack)', False)
    client.stats.max_ack = 2
    assert game._footer("") == ('sent #2 {"play": 9}  (acked)', False)
    client.stats.errors["illegal_input"] = 1
    assert game._footer("") == ("the server refused: illegal_input", True)
    assert game._footer("reconnected to s2") == ("reconnected to s2", False)
    game._handle_keys([*"oops", "ENTER"])
    message, bad = game._footer("")
    assert bad and message.startswith("not JSON") and len(client.sent) == 2
    game._handle_keys(["UP", "UP", "ENTER"])  # the history recalls a line sent before
    assert client.sent == [{"play": 7}, {"play": 9}, {"play": 9}]
    game._handle_keys([*"abc", "ESC"])  # Esc clears a line, then quits
    assert game.editor.text == "" and not game.quit.is_set()
    game._handle_keys(["ESC"])
    assert game.quit.is_set()


def test_q_quits_and_options_and_views_come_from_the_flags() -> None:
    game, client = text_game()
    game._handle_keys([*"q", "ENTER"])
    assert game.quit.is_set() and client.sent == []
    assert play.room_options('{"hand": 3}') == {"hand": 3}
    assert play.room_options(None) is None
    for bad in ("[1]", "{hand: 3}"):
        with pytest.raises(ValueError, match="--options"):
            play.room_options(bad)
    view = argparse.Namespace
    assert play.view_of(view(view="auto", game=None)) == "arena"
    assert play.view_of(view(view="auto", game="arena")) == "arena"
    assert play.view_of(view(view="auto", game="duel")) == "text"
    assert play.view_of(view(view="text", game="arena")) == "text"


def test_bad_options_exit_2_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    play.add_arguments(parser)
    args = parser.parse_args(["--cluster", "nowhere.json", "--room", "t", "--options", "[1]"])
    assert play.run(args) == 2
    assert "--options must be a JSON object" in capsys.readouterr().err


# -- for real: two players play a round of Duel in two terminals -------------------------------

HAND_RE = re.compile(r'\{"hand": \[([\d, ]*)\], "played": (null|\d+)\}')


def hand(screen_text: str) -> list[int]:
    match = HAND_RE.search(screen_text)
    assert match is not None, screen_text
    return [int(x) for x in match.group(1).split(",") if x.strip()]


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_two_players_play_a_round_of_duel_in_the_text_view(
    cluster: LocalCluster,
    tmux: Tmux,  # noqa: F811
    tmp_path: Path,
) -> None:
    cluster_file = cluster.write_cluster_file(tmp_path / "cluster.json")
    for name in ("alice", "bob"):
        exit_file = tmp_path / f"{name}.exit"
        command = (
            f"cd {REPO} && {sys.executable} -m server.cli play --cluster {cluster_file}"
            f""" --room table --name {name} --game duel --options '{{"hand": 3}}'"""
            f"; echo $? > {exit_file}; sleep 60"
        )
        tmux.start(name, command)
    for name in ("alice", "bob"):
        tmux.wait_for(
            name,
            lambda s: (
                "CONNECTED" in s
                and re.search(r'"hand_sizes": \{"[^"]+": 3, "[^"]+": 3\}', s) is not None
            ),
            "two players with 3 cards each",
        )
    alice_hand, bob_hand = hand(tmux.screen("alice")), hand(tmux.screen("bob"))
    assert len(alice_hand) == len(bob_hand) == 3  # the room was made with hand=3

    # Something that is not an input is refused on the spot, and nothing is sent.
    tmux.keys("alice", "-l", "play it")
    tmux.keys("alice", "Enter")
    tmux.wait_for("alice", lambda s: "not JSON" in s, "the refusal")

    # alice plays with the shortcut (a bare number), bob with JSON.
    tmux.keys("alice", "-l", str(alice_hand[-1]))
    tmux.keys("alice", "Enter")
    tmux.wait_for("alice", lambda s: "(acked)" in s and '"played": ' in s, "alice's card acked")
    tmux.wait_for("bob", lambda s: '"kind": "played"' in s, "bob to see that alice played")
    tmux.keys("bob", "-l", f'{{"play": {bob_hand[0]}}}')
    tmux.keys("bob", "Enter")
    for name in ("alice", "bob"):
        screen_text = tmux.wait_for(
            name, lambda s: '"kind": "round"' in s and '"round": 2' in s, "the round's reveal"
        )
        assert len(hand(screen_text)) == 3  # played one, drew one
        assert f": {alice_hand[-1]}" in screen_text and f": {bob_hand[0]}" in screen_text

    # q and Enter leave cleanly.
    for name in ("alice", "bob"):
        tmux.keys(name, "-l", "q")
        tmux.keys(name, "Enter")
    for name in ("alice", "bob"):
        exit_file = tmp_path / f"{name}.exit"
        tmux.wait_for(name, lambda s, done=exit_file: done.exists(), "the exit")
        assert exit_file.read_text().strip() == "0", tmux.screen(name)


def test_styles_of_the_footer() -> None:
    frame = render(DUEL_STATE, HAND, EventLog(), STATUS, "duel", "", 20, 60, "x", Style.BAD)
    assert any(s.text == "x" and s.style is Style.BAD for s in frame.segments)
