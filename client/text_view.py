"""The game-agnostic text view of ``stateroom play``, computed without a terminal.

For any game but the arena (or with ``--view text``), ``stateroom play`` shows what the
SDK hands it, as text: the room's public state, the player's private part and the last
events addressed to the player, each pretty-printed and trimmed to the terminal. The
player types an input on the bottom line and presses Enter: the line is read as JSON
and sent as the input (``{"play": 7}``). A game may have a shortcut (``SHORTCUTS``):
for Duel a bare number plays that card (``7``). ``q`` (or ``/quit``) and Enter, Esc on
an empty line, or Ctrl-C quit.

Screen layout::

    STATEROOM  room table  game duel  you guest-1234            <- title
    CONNECTED  tick 120  12 ms  server s1-ab12 epoch 2  reconn 0
    ── public state ─────────────────────────
    "round": 2                                   <- one key a line, unless it fits on one
    "scores": {"g_1": 1, "g_2": 0}
    ── yours ────────────────────────────────
    {"hand": [2, 5, 9, 11, 13], "played": null}
    ── events (last 20) ─────────────────────
    t118 {"kind": "round", "n": 3, ...}
    a card of your hand (7) or JSON {"play": 7}, Enter sends; q quits   <- or a notice
    > {"play": 7}_

Everything here is plain data in, plain data out (``Segment`` lists and a cursor
position, as :mod:`client.arena_view` does), so layout, trimming, the line editor and
input parsing are unit-tested without curses; ``client/play.py`` owns the terminal.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from client.arena_view import (
    Segment,
    Status,
    Style,
    char_width,
    clip,
    connection_label,
    format_latency,
    sanitize,
)

EVENTS_KEPT = 20  # the last N events are shown (and kept)
HISTORY_KEPT = 50  # lines sent, recalled with the up arrow
MIN_ROWS = 10
MIN_COLS = 40
INDENT = 2
QUIT_LINES = frozenset({"q", "quit", "/q", "/quit", "exit"})


# -- pretty-printing ------------------------------------------------------------------------


def text_width(text: str) -> int:
    return sum(char_width(c) for c in text)


def _scalar(value: Any) -> str:
    if value is None or isinstance(value, bool | int | float | str):
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=True)
        except (TypeError, ValueError):
            return repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    return repr(value)


def _key(key: Any) -> str:
    return _scalar(key if isinstance(key, str) else str(key))


def compact(value: Any) -> str:
    """``value`` as one line of JSON-like text (any msgpack value: bytes as ``<n bytes>``)."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)}: {compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(compact(v) for v in value) + "]"
    return _scalar(value)


def pretty_lines(value: Any, width: int, limit: int = 10_000) -> list[str]:
    """``value`` as indented lines no wider than ``width`` where possible: a map or list
    that fits on one line stays on one line, a bigger one gets one entry a line (a big
    map at the top level without its braces). At most ``limit`` lines (more are not
    computed)."""
    out: list[str] = []
    width = max(1, width)
    if isinstance(value, Mapping) and value and text_width(compact(value)) > width:
        # The top level of a big map: one key a line, without the braces and commas.
        for key, item in value.items():
            _emit(item, f"{_key(key)}: ", 0, "", width, out, limit)
        return out[:limit]
    _emit(value, "", 0, "", width, out, limit)
    return out[:limit]


def _emit(
    value: Any, prefix: str, level: int, trailer: str, width: int, out: list[str], limit: int
) -> None:
    if len(out) >= limit:
        return
    pad = " " * (INDENT * level)
    line = pad + prefix + compact(value) + trailer
    container = isinstance(value, Mapping | list | tuple) and len(value) > 0
    if not container or text_width(line) <= width:
        out.append(line)
        return
    if isinstance(value, Mapping):
        opening, closing = "{", "}"
        items: list[tuple[str, Any]] = [(f"{_key(k)}: ", v) for k, v in value.items()]
    else:
        opening, closing = "[", "]"
        items = [("", v) for v in value]
    out.append(pad + prefix + opening)
    for i, (key, item) in enumerate(items):
        _emit(item, key, level + 1, "," if i < len(items) - 1 else "", width, out, limit)
        if len(out) >= limit:
            return
    out.append(pad + closing + trailer)


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventLine:
    tick: int  # the tick of the state it came with
    data: Any


class EventLog:
    """The last ``size`` events delivered to this player, oldest first."""

    def __init__(self, size: int = EVENTS_KEPT) -> None:
        self.lines: deque[EventLine] = deque(maxlen=size)
        self.total = 0

    def add(self, tick: int, events: Iterable[Any]) -> None:
        for event in events:
            self.lines.append(EventLine(tick, event))
            self.total += 1


# -- the input line -------------------------------------------------------------------------


@dataclass
class LineEditor:
    """The bottom line: typed characters, backspace, Ctrl-U, history (up/down)."""

    text: str = ""
    history: list[str] = field(default_factory=list)
    _recall: int | None = None  # index into history while browsing it

    def insert(self, chars: str) -> None:
        self.text += "".join(c for c in chars if c.isprintable())
        self._recall = None

    def backspace(self) -> None:
        self.text = self.text[:-1]
        self._recall = None

    def clear(self) -> None:
        self.text = ""
        self._recall = None

    def up(self) -> None:
        if not self.history:
            return
        self._recall = len(self.history) - 1 if self._recall is None else max(0, self._recall - 1)
        self.text = self.history[self._recall]

    def down(self) -> None:
        if self._recall is None:
            return
        self._recall += 1
        if self._recall >= len(self.history):
            self._recall = None
            self.text = ""
        else:
            self.text = self.history[self._recall]

    def submit(self) -> str:
        """The line (stripped), now in the history; the editor is empty again."""
        line = self.text.strip()
        if line and (not self.history or self.history[-1] != line):
            self.history.append(line)
            del self.history[:-HISTORY_KEPT]
        self.clear()
        return line


# -- reading an input -------------------------------------------------------------------------


class InputError(ValueError):
    """The line is not an input; the message says what to type."""


def _duel(line: str) -> Any:
    """Duel: a bare number plays that card."""
    try:
        rank = int(line)
    except ValueError:
        return NOT_A_SHORTCUT
    return {"play": rank}


NOT_A_SHORTCUT: Any = object()
#: Per game: a line -> an input, or NOT_A_SHORTCUT to read the line as JSON.
SHORTCUTS: dict[str, Callable[[str], Any]] = {"duel": _duel}
HELP: dict[str, str] = {
    "duel": 'a card of your hand (7) or JSON {"play": 7}, Enter sends; q quits',
}
GENERIC_HELP = "type an input as JSON, Enter sends it; q quits"


def help_text(game: str) -> str:
    return HELP.get(game, GENERIC_HELP)


def is_quit(line: str) -> bool:
    return line.strip().lower() in QUIT_LINES


def parse_input(line: str, game: str = "") -> Any:
    """The input a typed line stands for: the game's shortcut, else the line as JSON."""
    line = line.strip()
    if not line:
        raise InputError("nothing to send: " + help_text(game))
    shortcut = SHORTCUTS.get(game)
    if shortcut is not None:
        value = shortcut(line)
        if value is not NOT_A_SHORTCUT:
            return value
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON ({exc.msg} at column {exc.colno}): {help_text(game)}") from None


# -- the screen -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """What to draw, and where the terminal's cursor goes (the end of the input line)."""

    segments: list[Segment]
    cursor: tuple[int, int] | None


@dataclass(frozen=True)
class Section:
    title: str
    lines: list[str]
    keep_tail: bool = False  # trimmed from the top (events: the newest are kept)
    capped: bool = False  # ``lines`` stopped at a cap: there are more than counted


def allocate(total: int, wants: Sequence[int]) -> list[int]:
    """Share ``total`` rows between sections wanting ``wants`` rows: equal shares, and
    what one does not need goes to the others."""
    got = [0] * len(wants)
    left = max(0, total)
    while left > 0:
        moved = False
        for i, want in enumerate(wants):
            if left > 0 and got[i] < want:
                got[i] += 1
                left -= 1
                moved = True
        if not moved:
            break
    return got


def trim(section: Section, rows: int) -> list[str]:
    """At most ``rows`` lines of the section; a cut is marked with ``… N more``."""
    lines = section.lines
    if len(lines) <= rows:
        return lines
    if rows <= 0:
        return []
    hidden = f"{len(lines) - (rows - 1)}{'+' if section.capped else ''}"
    if section.keep_tail:
        return [f"… {hidden} earlier", *lines[-(rows - 1) :]] if rows > 1 else lines[-1:]
    return [*lines[: rows - 1], f"… {hidden} more lines"]


def status_text(status: Status) -> str:
    label, _ = connection_label(status.connection)
    return (
        f"{label}  tick {status.tick}  {format_latency(status.latency_ms)}"
        f"  server {status.server or '-'} epoch {status.epoch}"
        f"  reconn {status.reconnects}"
    )


def too_small(rows: int, cols: int) -> Frame:
    lines = [
        "Terminal too small",
        f"need {MIN_COLS}x{MIN_ROWS}, have {cols}x{rows}",
        "Ctrl-C quits",
    ]
    out = [
        Segment(i, 0, clip(line, cols), Style.BAD if i == 0 else Style.NORMAL)
        for i, line in enumerate(lines)
        if i < rows and cols > 0
    ]
    return Frame(out, None)


def render(
    state: Any,
    private: Any,
    events: EventLog,
    status: Status,
    game: str,
    typed: str,
    rows: int,
    cols: int,
    message: str = "",
    message_style: Style = Style.NOTICE,
) -> Frame:
    """The whole screen: title, connection, the three sections, the help (or ``message``,
    or the fatal ``status.error``) and the input line with ``typed``."""
    if rows < MIN_ROWS or cols < MIN_COLS:
        return too_small(rows, cols)
    out: list[Segment] = []
    width = cols - 1  # never the last column: writing there can scroll some terminals

    who = status.name or status.player_id or "-"
    if status.name and status.player_id:
        who = f"{status.name} ({status.player_id})"  # games name players by id
    out.append(Segment(0, 0, "STATEROOM", Style.TITLE))
    out.append(Segment(0, 11, clip(f"room {status.room}  game {game}  you {who}", width - 11)))
    label, conn_style = connection_label(status.connection)
    out.append(Segment(1, 0, clip(label, width), conn_style))
    rest = status_text(status)[len(label) + 2 :]
    out.append(Segment(1, len(label) + 2, clip(rest, max(0, width - len(label) - 2)), Style.DIM))

    body_top, body_rows = 2, rows - 4
    cap = rows * 4  # lines computed per section: enough to fill the screen and say "more"
    public = pretty_lines(state, width, cap) if state is not None else ["(no state yet)"]
    mine = pretty_lines(private, width, cap) if private is not None else ["(nothing private)"]
    recent = [f"t{e.tick} {compact(e.data)}" for e in events.lines] or ["(none yet)"]
    sections = [
        Section("public state", public, capped=len(public) >= cap),
        Section("yours", mine, capped=len(mine) >= cap),
        Section(f"events (last {events.lines.maxlen})", recent, keep_tail=True),
    ]
    shares = allocate(body_rows - len(sections), [len(s.lines) for s in sections])
    row = body_top
    for section, share in zip(sections, shares, strict=True):
        heading = f"── {section.title} "
        heading += "─" * max(0, width - text_width(heading))
        out.append(Segment(row, 0, clip(heading, width), Style.LABEL))
        row += 1
        for line in trim(section, share):
            out.append(Segment(row, 0, clip(line, width), Style.NORMAL))
            row += 1

    if status.error:
        footer, style = status.error, Style.BAD
    elif message:
        footer, style = message, message_style
    else:
        footer, style = help_text(game), Style.DIM
    out.append(Segment(rows - 2, 0, clip(footer, width), style))

    prompt = "> "
    room_for = max(1, width - len(prompt))
    shown = sanitize(typed)
    while text_width(shown) > room_for - 1:  # keep the end (where the cursor is) in view
        shown = shown[1:]
    out.append(Segment(rows - 1, 0, prompt + shown, Style.TITLE))
    return Frame(out, (rows - 1, len(prompt) + text_width(shown)))
