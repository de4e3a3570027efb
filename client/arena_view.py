"""What ``stateroom play`` draws, computed without a terminal.

Everything here takes plain data (the arena state as the server sends it, a
:class:`Status` of the connection, the screen size) and returns plain data (a
list of :class:`Segment` to write at a row and column with a :class:`Style`),
so the layout, the world-to-screen scaling, the scoreboard and the status
texts are unit-tested without curses. ``client/play.py`` owns the terminal
and the event loop and maps each :class:`Style` to curses attributes.

Screen layout (a side panel on the right, a footer line under the world)::

    +--------------------------+ STATEROOM  room demo
    |   *        g             | you    alice (12)
    |        @          *      | state  CONNECTED
    |  *                       | tick   1234
    +--------------------------+ ...
    arrows/WASD move  space stop  q quit      <- or the current notice

Terminal cells are about twice as tall as they are wide, so the world is
drawn with two columns per row of the same world length (``CELL_ASPECT``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

CELL_ASPECT = 2.0  # a terminal cell's height / width
PANEL_WIDTH = 30  # the side panel, including its one-column left margin
MIN_FIELD_COLS = 20  # the world's inner size below which the view is useless
MIN_FIELD_ROWS = 6
MIN_SCORE_LINES = 3
NOTICE_SECONDS = 5.0
HELP_TEXT = "arrows/WASD move  space stop  q quit"


class Style(Enum):
    NORMAL = "normal"
    BORDER = "border"
    PICKUP = "pickup"
    OTHER = "other"  # another player
    SELF = "self"  # you: bold and reversed
    TITLE = "title"
    LABEL = "label"
    OK = "ok"  # connected
    WARN = "warn"  # connecting, reconnecting
    BAD = "bad"  # closed, errors
    NOTICE = "notice"  # the transient "reconnected to ..." line
    DIM = "dim"


@dataclass(frozen=True)
class Segment:
    """``text`` written at ``(row, col)`` in ``style``; never wider than the screen."""

    row: int
    col: int
    text: str
    style: Style = Style.NORMAL


@dataclass(frozen=True)
class Status:
    """What the panel shows besides the world (all plain values)."""

    room: str
    player_id: str = ""
    name: str = ""  # the login name, used until the state tells us ours
    tick: int = 0
    latency_ms: float | None = None
    server: str = ""
    epoch: int = 0
    connection: str = "connecting"  # a ConnectionState value
    reconnects: int = 0
    redirects: int = 0
    notice: str = ""  # shown in the footer instead of the help text
    error: str = ""  # a fatal error (shown in the footer in BAD style)


@dataclass(frozen=True)
class Box:
    """The world's inner rectangle on screen (the border is drawn around it)."""

    top: int
    left: int
    rows: int
    cols: int


@dataclass(frozen=True)
class ScoreLine:
    rank: int
    name: str
    score: int
    is_self: bool


# -- text helpers -----------------------------------------------------------------------


def char_width(char: str) -> int:
    """Display width of one character: 0 for combining marks, 2 for wide ones."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def sanitize(text: str) -> str:
    """Drop what would corrupt the screen: control characters and the like."""
    return "".join(c if c.isprintable() else "?" for c in text)


def clip(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` display columns (an ellipsis marks a cut)."""
    text = sanitize(text)
    if width <= 0:
        return ""
    if sum(char_width(c) for c in text) <= width:
        return text
    out: list[str] = []
    used = 0
    for char in text:
        w = char_width(char)
        if used + w > width - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + "…"


def player_glyph(name: str) -> str:
    """The one-column character that stands for another player: its name's first letter."""
    for char in name.strip():
        if char.isprintable() and char_width(char) == 1:
            return char
        break
    return "o"


def connection_label(connection: str) -> tuple[str, Style]:
    """The panel's connection state text and its colour."""
    if connection == "connected":
        return "CONNECTED", Style.OK
    if connection == "reconnecting":
        return "RECONNECTING…", Style.WARN
    if connection == "connecting":
        return "CONNECTING…", Style.WARN
    return connection.upper() or "?", Style.BAD


def format_latency(latency_ms: float | None) -> str:
    if latency_ms is None:
        return "-"
    if latency_ms >= 10_000:
        return f"{latency_ms / 1000:.0f} s"
    return f"{latency_ms:.0f} ms"


def status_line(status: Status) -> str:
    """One line summarising the connection (used by tests and as a terminal title)."""
    label, _ = connection_label(status.connection)
    return (
        f"{status.room} | {label} | server {status.server or '-'} epoch {status.epoch}"
        f" | tick {status.tick} | {format_latency(status.latency_ms)}"
        f" | reconnects {status.reconnects}"
    )


# -- the world ----------------------------------------------------------------------------


def fit_field(
    avail_rows: int, avail_cols: int, world_w: float, world_h: float, aspect: float = CELL_ASPECT
) -> tuple[int, int]:
    """The largest inner (rows, cols) within the space that keeps the world's proportions."""
    if avail_rows <= 0 or avail_cols <= 0:
        return 0, 0
    if world_w <= 0 or world_h <= 0:
        return avail_rows, avail_cols
    ratio = aspect * world_w / world_h  # wanted cols per row
    if avail_cols >= avail_rows * ratio:
        rows = avail_rows
        cols = min(avail_cols, max(1, round(rows * ratio)))
    else:
        cols = avail_cols
        rows = min(avail_rows, max(1, round(cols / ratio)))
    return rows, cols


def world_to_screen(
    x: float, y: float, world_w: float, world_h: float, box: Box
) -> tuple[int, int]:
    """The (row, col) of world point (x, y) inside ``box``; the edges map to the last cell."""
    fx = x / world_w if world_w > 0 else 0.0
    fy = y / world_h if world_h > 0 else 0.0
    col = min(box.cols - 1, max(0, int(fx * box.cols)))
    row = min(box.rows - 1, max(0, int(fy * box.rows)))
    return box.top + row, box.left + col


def _number(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def players_of(state: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """The state's players, keeping only well-formed entries."""
    if not state:
        return {}
    players = state.get("players")
    if not isinstance(players, Mapping):
        return {}
    return {str(k): v for k, v in players.items() if isinstance(v, Mapping)}


def scoreboard(
    players: Mapping[str, Mapping[str, Any]], self_id: str, limit: int
) -> list[ScoreLine]:
    """The top ``limit`` players by score (ties by name); you are always on it.

    When you are not in the top ``limit``, the last line is yours with your real rank.
    """
    ranked = sorted(
        players.items(),
        key=lambda item: (-_number(item[1].get("score")), str(item[1].get("name", "")), item[0]),
    )
    lines = [
        ScoreLine(i + 1, str(p.get("name", "?")), int(_number(p.get("score"))), pid == self_id)
        for i, (pid, p) in enumerate(ranked)
    ]
    if limit <= 0:
        return []
    top = lines[:limit]
    if self_id in players and not any(line.is_self for line in top):
        mine = next(line for line in lines if line.is_self)
        top[-1] = mine
    return top


def world_cells(state: Mapping[str, Any] | None, self_id: str, box: Box) -> list[Segment]:
    """The border, the pickups, the other players and you (drawn last, so on top)."""
    cells: list[Segment] = []
    top, left, rows, cols = box.top - 1, box.left - 1, box.rows, box.cols
    cells.append(Segment(top, left, "+" + "-" * cols + "+", Style.BORDER))
    for r in range(rows):
        cells.append(Segment(box.top + r, left, "|", Style.BORDER))
        cells.append(Segment(box.top + r, box.left + cols, "|", Style.BORDER))
    cells.append(Segment(box.top + rows, left, "+" + "-" * cols + "+", Style.BORDER))
    if not state:
        return cells
    world_w = _number(state.get("w"), 1.0)
    world_h = _number(state.get("h"), 1.0)
    pickups = state.get("pickups")
    if isinstance(pickups, list):
        for pickup in pickups:
            if isinstance(pickup, list | tuple) and len(pickup) == 2:
                row, col = world_to_screen(
                    _number(pickup[0]), _number(pickup[1]), world_w, world_h, box
                )
                cells.append(Segment(row, col, "*", Style.PICKUP))
    me: Segment | None = None
    for player_id, player in players_of(state).items():
        row, col = world_to_screen(
            _number(player.get("x")), _number(player.get("y")), world_w, world_h, box
        )
        if player_id == self_id:
            me = Segment(row, col, "@", Style.SELF)
        else:
            cells.append(Segment(row, col, player_glyph(str(player.get("name", ""))), Style.OTHER))
    if me is not None:
        cells.append(me)
    return cells


# -- the whole screen ---------------------------------------------------------------------

_PANEL_FIXED_LINES = 10  # title .. keys, without the score lines


def min_size() -> tuple[int, int]:
    """The smallest (rows, cols) the view draws in."""
    rows = max(MIN_FIELD_ROWS + 2, _PANEL_FIXED_LINES + MIN_SCORE_LINES) + 1  # + footer
    cols = MIN_FIELD_COLS + 2 + PANEL_WIDTH
    return rows, cols


def layout(rows: int, cols: int, world_w: float, world_h: float) -> Box | None:
    """Where the world goes on a ``rows`` x ``cols`` screen, or None if it is too small."""
    need_rows, need_cols = min_size()
    if rows < need_rows or cols < need_cols:
        return None
    avail_rows = rows - 1 - 2  # footer, border
    avail_cols = cols - PANEL_WIDTH - 2
    inner_rows, inner_cols = fit_field(avail_rows, avail_cols, world_w, world_h)
    if inner_rows < MIN_FIELD_ROWS or inner_cols < MIN_FIELD_COLS:
        # A very flat or tall world: give up the proportions rather than the view.
        inner_rows, inner_cols = max(inner_rows, MIN_FIELD_ROWS), max(inner_cols, MIN_FIELD_COLS)
    return Box(top=1, left=1, rows=inner_rows, cols=inner_cols)


def too_small(rows: int, cols: int) -> list[Segment]:
    need_rows, need_cols = min_size()
    lines = [
        "Terminal too small",
        f"need {need_cols}x{need_rows}, have {cols}x{rows}",
        "enlarge it, or q to quit",
    ]
    out: list[Segment] = []
    start = max(0, rows // 2 - 1)
    for i, line in enumerate(lines):
        row = start + i
        if 0 <= row < rows and cols > 0:
            out.append(Segment(row, 0, clip(line, cols), Style.BAD if i == 0 else Style.NORMAL))
    return out


def panel(
    state: Mapping[str, Any] | None, status: Status, top: int, left: int, rows: int, width: int
) -> list[Segment]:
    """The side panel: room, you, connection, tick, latency, server, epoch, scores."""
    out: list[Segment] = []
    players = players_of(state)
    me = players.get(status.player_id)
    my_name = str(me.get("name", status.name)) if me else status.name
    my_score = int(_number(me.get("score"))) if me else 0
    label, conn_style = connection_label(status.connection)
    kv_width = width - 8

    def line(row: int, text: str, style: Style = Style.NORMAL, col: int = 0) -> None:
        if row < top + rows:
            out.append(Segment(row, left + col, clip(text, width - col), style))

    def field(row: int, key: str, value: str, style: Style = Style.NORMAL) -> None:
        line(row, key, Style.LABEL)
        line(row, clip(value, kv_width), style, col=7)

    r = top
    line(r, "STATEROOM", Style.TITLE)
    line(r, clip(f"room {status.room}", width - 11), Style.NORMAL, col=11)
    r += 2
    field(r, "you", f"{my_name or '-'}  score {my_score}", Style.SELF if me else Style.NORMAL)
    r += 1
    field(r, "state", label, conn_style)
    r += 1
    field(r, "tick", str(status.tick))
    r += 1
    field(r, "lat", format_latency(status.latency_ms))
    r += 1
    field(r, "server", status.server or "-")
    r += 1
    field(r, "epoch", str(status.epoch))
    r += 1
    field(r, "reconn", f"{status.reconnects}   redirects {status.redirects}")
    r += 2
    line(r, f"SCORES ({len(players)} playing)", Style.TITLE)
    r += 1
    score_lines = max(0, top + rows - r)
    for entry in scoreboard(players, status.player_id, score_lines):
        text = f"{entry.rank:>2} {clip(entry.name, width - 10):<{width - 10}}{entry.score:>5}"
        line(r, text, Style.SELF if entry.is_self else Style.NORMAL)
        r += 1
    return out


def render(state: Mapping[str, Any] | None, status: Status, rows: int, cols: int) -> list[Segment]:
    """Everything to draw on a ``rows`` x ``cols`` screen for this state and status."""
    world_w = _number(state.get("w"), 64.0) if state else 64.0
    world_h = _number(state.get("h"), 32.0) if state else 32.0
    box = layout(rows, cols, world_w, world_h)
    if box is None:
        return too_small(rows, cols)
    out = world_cells(state, status.player_id, box)
    panel_left = box.left + box.cols + 2
    out += panel(state, status, 0, panel_left, rows - 1, cols - panel_left)
    if status.error:
        text, style = status.error, Style.BAD
    elif status.notice:
        text, style = status.notice, Style.NOTICE
    else:
        text, style = HELP_TEXT, Style.DIM
    text = sanitize(text)
    # Right under the world, where the eyes are, if it fits beside the panel; else the last row.
    row, width = box.top + box.rows + 1, panel_left - 1
    if row >= rows - 1 or sum(char_width(c) for c in text) > width:
        row, width = rows - 1, cols - 1
    out.append(Segment(row, 0, clip(text, width), style))
    return out


def render_text(segments: Sequence[Segment], rows: int, cols: int) -> list[str]:
    """The screen as lines of text (for tests and debugging); later segments win."""
    grid = [[" "] * cols for _ in range(rows)]
    for seg in segments:
        col = seg.col
        for char in seg.text:
            if 0 <= seg.row < rows and 0 <= col < cols:
                grid[seg.row][col] = char
            col += char_width(char)
    return ["".join(row).rstrip() for row in grid]


# -- keys and notices -------------------------------------------------------------------

# curses.keyname() of a key -> the heading it sets ((0, 0) stops)
KEY_DIRECTIONS: dict[str, tuple[float, float]] = {
    "KEY_UP": (0.0, -1.0),
    "KEY_DOWN": (0.0, 1.0),
    "KEY_LEFT": (-1.0, 0.0),
    "KEY_RIGHT": (1.0, 0.0),
    "w": (0.0, -1.0),
    "s": (0.0, 1.0),
    "a": (-1.0, 0.0),
    "d": (1.0, 0.0),
    "W": (0.0, -1.0),
    "S": (0.0, 1.0),
    "A": (-1.0, 0.0),
    "D": (1.0, 0.0),
    " ": (0.0, 0.0),
}
QUIT_KEYS = frozenset({"q", "Q", "^C"})


class FailoverNotices:
    """Turns what the client reports, polled over time, into the footer's notice.

    ``observe`` is called every frame with the connection state, server, epoch
    and reconnect count. While the connection is down it says so; when it comes
    back (the reconnect count went up, or the server or epoch changed) it says
    where to, and for how long the room was out, for ``NOTICE_SECONDS``.
    """

    def __init__(self, hold: float = NOTICE_SECONDS) -> None:
        self.hold = hold
        self._server = ""
        self._epoch = 0
        self._reconnects = 0
        self._down_since: float | None = None
        self._text = ""
        self._until = 0.0

    def observe(
        self, connection: str, server: str, epoch: int, reconnects: int, now: float
    ) -> None:
        if connection in ("reconnecting", "connecting"):
            if self._server and self._down_since is None:
                self._down_since = now
            return
        if connection != "connected":
            return
        changed = bool(self._server) and (
            reconnects > self._reconnects or server != self._server or epoch != self._epoch
        )
        if changed:
            text = f"reconnected to {server} (epoch {epoch})"
            if self._down_since is not None:
                text += f" after {now - self._down_since:.1f} s"
            self._text = text
            self._until = now + self.hold
        self._server, self._epoch, self._reconnects = server, epoch, reconnects
        self._down_since = None

    def current(self, now: float) -> str:
        if self._down_since is not None:
            down = now - self._down_since
            return f"connection to {self._server} lost, reconnecting… ({down:.1f} s)"
        return self._text if now < self._until else ""
