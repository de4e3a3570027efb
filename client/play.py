"""``stateroom play``: the interactive terminal client.

Logs in as a guest, joins the room through the SDK (which follows redirects
and resumes after a failover), and draws the arena live with curses: arrows
or WASD set your heading, space stops, q quits. The panel shows the room,
your score, the scoreboard, the tick, the input latency, the server and epoch
serving the room, the connection state and the reconnect count; after a
failover the footer says where the room went.

Any other game (``--game duel``, or ``--view text``) gets the game-agnostic text
view (:mod:`client.text_view`): the public state, the player's private part and the
last events, as text, and an input line read as JSON (Duel also takes a bare card
number). ``--options '{"hand": 3}'`` are the room options, used when this join
creates the room.

Layout and texts are computed by the pure :mod:`client.arena_view` and
:mod:`client.text_view`; this module owns the terminal, the keyboard and the
event loop. The keyboard is never read blockingly: curses runs in ``nodelay``
mode and is polled when stdin becomes readable (``loop.add_reader``) and at
each frame.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.bots import missing_cluster
from client.sdk import RefreshingToken
from infra.cluster_file import DEFAULT_CLUSTER_FILE

if TYPE_CHECKING:
    import curses

    from client.arena_view import Segment, Status, Style
    from client.sdk import RoomClient, State

log = logging.getLogger("stateroom.play")

FPS = 20.0
REPEAT_INPUT_AFTER = 0.25  # s: the same heading is resent at most this often
LEAVE_TIMEOUT = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        default=str(DEFAULT_CLUSTER_FILE),
        help=f"cluster.json written by stateroom up (default {DEFAULT_CLUSTER_FILE})",
    )
    parser.add_argument("--room", required=True, help="room name (created on first join)")
    parser.add_argument("--name", default=None, help="display name for the guest login")
    parser.add_argument(
        "--encoding",
        choices=["msgpack", "json"],
        default="msgpack",
        help="wire encoding (default msgpack)",
    )
    parser.add_argument(
        "--game",
        default=None,
        help="the room's game (default: the server's, arena); used when the join creates it",
    )
    parser.add_argument(
        "--options",
        default=None,
        help="room options as a JSON object, e.g. '{\"hand\": 3}' (when the join creates it)",
    )
    parser.add_argument(
        "--view",
        choices=["auto", "arena", "text"],
        default="auto",
        help="arena: the arena's map; text: any game as text; auto (default): by --game",
    )


def room_options(raw: str | None) -> dict[str, Any] | None:
    """``--options`` as a dict (ValueError with what is wrong)."""
    if raw is None:
        return None
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--options is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ValueError("--options must be a JSON object, such as '{\"hand\": 3}'")
    return options


def view_of(args: argparse.Namespace) -> str:
    """``arena`` or ``text``: what this game is drawn with."""
    view: str = getattr(args, "view", "auto")
    if view != "auto":
        return view
    game = getattr(args, "game", None)
    return "arena" if game in (None, "arena") else "text"


def run(args: argparse.Namespace) -> int:
    from infra.cluster_file import load_cluster

    try:
        args.room_options = room_options(getattr(args, "options", None))
    except ValueError as exc:
        print(f"stateroom play: {exc}", file=sys.stderr)
        return 2
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return _fail("stateroom play needs an interactive terminal (stdin and stdout a tty)")
    path = Path(args.cluster)
    if not path.exists():
        return _fail(missing_cluster(path))
    try:
        cluster = load_cluster(path)
    except SystemExit as exc:
        return _fail(str(exc.code))
    if not cluster.servers:
        return _fail(f"{args.cluster} lists no room servers: is the cluster running?")
    try:
        return asyncio.run(_play(args, cluster.auth_url, cluster.ws_urls))
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    print(f"stateroom play: {message}", file=sys.stderr)
    return 1


class TokenKeeper(RefreshingToken):
    """The access token for (re)connections and for renewing the open session.

    ``client.sdk.RefreshingToken`` (what ``AuthClient.token_source`` returns), passed
    to ``RoomClient`` as its token source: the SDK asks it for a fresh token before the
    session's token expires and on every reconnect; it refreshes only when due. If the
    login service cannot refresh, the current token is returned while it is valid, so
    the room server's refusal (once it has expired) ends the session with a clear error.
    """


async def _play(args: argparse.Namespace, auth_url: str, ws_urls: list[str]) -> int:
    import httpx

    from client.sdk import AuthClient, ClientError, LoginError, RoomClient

    auth = AuthClient(auth_url, timeout=5.0)
    try:
        try:
            tokens = await auth.guest(args.name)
        except LoginError as exc:
            return _fail(f"login refused by {auth_url}: {exc}")
        except (httpx.HTTPError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            return _fail(
                f"cannot reach the login service at {auth_url} ({reason});"
                " is the cluster running? (stateroom up)"
            )
        keeper = TokenKeeper(auth, tokens)
        client = RoomClient(
            ws_urls,
            args.room,
            keeper,
            encoding=args.encoding,
            game=getattr(args, "game", None),
            options=getattr(args, "room_options", None),
        )
        try:
            await client.connect(timeout=10.0)
        except ClientError as exc:
            # connect() says "session ended"; the room's own refusal is queued as a state.
            detail = await _room_reason(client, str(exc))
            with contextlib.suppress(Exception):
                await client.close()
            return _fail(f"cannot join room {args.room!r}: {detail}")
        try:
            code, message = await _ui(client, args)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LEAVE_TIMEOUT):
                    await client.leave()
        if message:
            print(f"stateroom play: {message}", file=sys.stderr)
        return code
    finally:
        with contextlib.suppress(Exception):
            await auth.aclose()


async def _room_reason(client: RoomClient, default: str) -> str:
    """The RoomError a failed connect() left in the state queue, if any."""
    from client.sdk import RoomError

    try:
        await client.next_state(timeout=0.05)
    except RoomError as exc:
        detail = f" ({exc.error_code})" if exc.error_code else ""
        return f"the room refused: {exc.code} {exc.reason}{detail}"
    except Exception:
        return default
    return default


class _LogTrap(logging.Handler):
    """Keeps warnings away from the curses screen; the last few are printed on exit."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[str] = deque(maxlen=5)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.records.append(f"{record.name}: {record.getMessage()}")


async def _ui(client: RoomClient, args: argparse.Namespace) -> tuple[int, str]:
    """Run the screen until q, Ctrl-C or a fatal room error; (exit code, message)."""
    import curses

    os.environ.setdefault("ESCDELAY", "25")
    try:
        stdscr = curses.initscr()
    except curses.error as exc:
        term = os.environ.get("TERM", "")
        return 1, f"cannot start the terminal UI ({exc}); TERM={term!r}"
    trap = _LogTrap()
    root = logging.getLogger()
    root.addHandler(trap)
    try:
        curses.noecho()
        curses.cbreak()
        stdscr.keypad(True)
        stdscr.nodelay(True)
        text = view_of(args) == "text"
        with contextlib.suppress(curses.error):
            curses.curs_set(1 if text else 0)
        screen = _TextGame if text else _Game
        result = await screen(client, args, stdscr, _styles()).run()
    finally:
        with contextlib.suppress(curses.error):
            stdscr.keypad(False)
            curses.nocbreak()
            curses.echo()
        curses.endwin()
        root.removeHandler(trap)
    for line in trap.records:
        print(f"stateroom play: warning: {line}", file=sys.stderr)
    return result


def _styles() -> dict[Style, int]:
    import curses

    from client.arena_view import Style

    styles = {
        Style.NORMAL: curses.A_NORMAL,
        Style.BORDER: curses.A_NORMAL,
        Style.PICKUP: curses.A_BOLD,
        Style.OTHER: curses.A_BOLD,
        Style.SELF: curses.A_BOLD | curses.A_REVERSE,
        Style.TITLE: curses.A_BOLD,
        Style.LABEL: curses.A_DIM,
        Style.OK: curses.A_BOLD,
        Style.WARN: curses.A_BOLD | curses.A_REVERSE,
        Style.BAD: curses.A_BOLD | curses.A_REVERSE,
        Style.NOTICE: curses.A_BOLD | curses.A_REVERSE,
        Style.DIM: curses.A_DIM,
    }
    if not curses.has_colors():
        return styles
    with contextlib.suppress(curses.error):
        curses.start_color()
        background = -1
        try:
            curses.use_default_colors()
        except curses.error:
            background = curses.COLOR_BLACK
        colours = {
            Style.BORDER: (1, curses.COLOR_BLUE, 0),
            Style.PICKUP: (2, curses.COLOR_YELLOW, curses.A_BOLD),
            Style.OTHER: (3, curses.COLOR_CYAN, curses.A_BOLD),
            Style.OK: (4, curses.COLOR_GREEN, curses.A_BOLD),
            Style.WARN: (2, curses.COLOR_YELLOW, curses.A_BOLD | curses.A_REVERSE),
            Style.BAD: (5, curses.COLOR_RED, curses.A_BOLD | curses.A_REVERSE),
            Style.NOTICE: (4, curses.COLOR_GREEN, curses.A_BOLD | curses.A_REVERSE),
            Style.TITLE: (3, curses.COLOR_CYAN, curses.A_BOLD),
        }
        for style, (pair, colour, attrs) in colours.items():
            curses.init_pair(pair, colour, background)
            styles[style] = curses.color_pair(pair) | attrs
    return styles


class _Game:
    """The frame loop: keys in, inputs out, the latest state drawn at most FPS times a second."""

    def __init__(
        self,
        client: RoomClient,
        args: argparse.Namespace,
        stdscr: curses.window,
        styles: dict[Style, int],
    ) -> None:
        from client.arena_view import FailoverNotices

        self.client = client
        self.room: str = args.room
        self.name: str = args.name or ""
        self.stdscr = stdscr
        self.styles = styles
        self.notices = FailoverNotices()
        self.latest: State | None = None
        self.error = ""
        self.quit = asyncio.Event()
        self.wake = asyncio.Event()
        self.heading: tuple[float, float] | None = None
        self.sent_at = 0.0
        self.drawn: Any = None
        self.resized = False

    async def run(self) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        consumer = loop.create_task(self._consume())
        handled: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.quit.set)
                handled.append(sig)
        reader = False
        with contextlib.suppress(NotImplementedError, OSError, ValueError):
            loop.add_reader(sys.stdin.fileno(), self.wake.set)
            reader = True
        try:
            await self._frames(loop, reader)
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(sys.stdin.fileno())
            for sig in handled:
                loop.remove_signal_handler(sig)
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consumer
        if self.error:
            return 1, self.error
        return 0, ""

    async def _consume(self) -> None:
        from client.sdk import ClientError

        try:
            async for state in self.client.states():
                self.latest = state
        except ClientError as exc:
            self.error = str(exc)
            self.quit.set()

    async def _frames(self, loop: asyncio.AbstractEventLoop, reader: bool) -> None:
        frame = 1.0 / FPS
        next_draw = 0.0
        idle_wakes = 0
        while not self.quit.is_set():
            woken = self.wake.is_set()
            self.wake.clear()
            keys = self._read_keys()
            if woken and not keys and not self.resized:
                idle_wakes += 1
                if reader and idle_wakes > 100:  # stdin readable but no key: it hung up
                    loop.remove_reader(sys.stdin.fileno())
                    reader = False
            else:
                idle_wakes = 0
            self._handle_keys(keys)
            now = loop.time()
            if now >= next_draw:
                self._draw()
                next_draw = now + frame
            if self.quit.is_set():
                break
            # A key (stdin readable) ends the wait early so inputs go out at once; drawing
            # waits for its frame slot, so the screen is redrawn at most FPS times a second.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_draw - loop.time())):
                    await self._wait_any()

    async def _wait_any(self) -> None:
        waiters = [
            asyncio.ensure_future(self.quit.wait()),
            asyncio.ensure_future(self.wake.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _read_keys(self) -> list[str]:
        import curses

        keys: list[str] = []
        for _ in range(64):  # bounded: a flood of keys cannot starve the frame loop
            try:
                code = self.stdscr.getch()
            except curses.error:
                break
            if code == -1:
                break
            if code == curses.KEY_RESIZE:
                self.resized = True
                continue
            try:
                keys.append(curses.keyname(code).decode("ascii", "replace"))
            except ValueError:
                continue
        return keys

    def _handle_keys(self, keys: list[str]) -> None:
        from client.arena_view import KEY_DIRECTIONS, QUIT_KEYS
        from client.sdk import ClientError

        heading: tuple[float, float] | None = None
        for key in keys:
            if key in QUIT_KEYS:
                self.quit.set()
                return
            if key in KEY_DIRECTIONS:
                heading = KEY_DIRECTIONS[key]
        if heading is None:
            return
        now = time.monotonic()
        if heading == self.heading and now - self.sent_at < REPEAT_INPUT_AFTER:
            return
        try:
            self.client.send_input({"dx": heading[0], "dy": heading[1]})
        except ClientError as exc:
            log.warning("input not sent: %s", exc)
            return
        self.heading, self.sent_at = heading, now

    def _status(self) -> Status:
        from client.arena_view import Status

        client = self.client
        now = time.monotonic()
        self.notices.observe(
            client.connection_state.value,
            client.server,
            client.epoch,
            client.stats.reconnects,
            now,
        )
        return Status(
            room=self.room,
            player_id=client.player_id,
            name=self.name,
            tick=self.latest.tick if self.latest else 0,
            latency_ms=client.latency_ms,
            server=client.server,
            epoch=client.epoch,
            connection=client.connection_state.value,
            reconnects=client.stats.reconnects,
            redirects=client.stats.redirects,
            notice=self.notices.current(now),
            error=self.error,
        )

    def _draw(self) -> None:
        import curses

        from client.arena_view import render

        status = self._status()
        if self.resized:
            self.resized = False
            with contextlib.suppress(curses.error, AttributeError):
                curses.update_lines_cols()
        rows, cols = self.stdscr.getmaxyx()
        state = self.latest.state if self.latest else None
        key = (status, rows, cols, self.latest.tick if self.latest else -1)
        if key == self.drawn:
            return  # nothing changed: leave the terminal alone
        self.drawn = key
        _paint(self.stdscr, render(state, status, rows, cols), self.styles)


def _paint(
    stdscr: curses.window,
    segments: list[Segment],
    styles: dict[Style, int],
    cursor: tuple[int, int] | None = None,
) -> None:
    import curses

    stdscr.erase()
    for seg in segments:
        try:
            stdscr.addstr(seg.row, seg.col, seg.text, styles.get(seg.style, 0))
        except curses.error:
            pass  # the bottom-right cell, or a size change under our feet
    if cursor is not None:
        with contextlib.suppress(curses.error):
            stdscr.move(*cursor)
    stdscr.noutrefresh()
    curses.doupdate()


# -- any game, as text -------------------------------------------------------------------

# What the text screen's key reader yields besides typed characters (which are 1 long).
_TEXT_KEYS = {
    "\n": "ENTER",
    "\r": "ENTER",
    "KEY_ENTER": "ENTER",
    "\x7f": "BACKSPACE",
    "\b": "BACKSPACE",
    "KEY_BACKSPACE": "BACKSPACE",
    "KEY_DC": "BACKSPACE",
    "\x1b": "ESC",
    "\x15": "CLEAR",  # Ctrl-U
    "\x04": "EOF",  # Ctrl-D
    "\x03": "QUIT",  # Ctrl-C, should it arrive as a key
    "KEY_UP": "UP",
    "KEY_DOWN": "DOWN",
}


class _TextGame(_Game):
    """Any game as text (``client.text_view``): every state's events are logged, the
    latest state and private part drawn, and typed lines sent as inputs."""

    def __init__(
        self,
        client: RoomClient,
        args: argparse.Namespace,
        stdscr: curses.window,
        styles: dict[Style, int],
    ) -> None:
        from client.text_view import EventLog, LineEditor

        super().__init__(client, args, stdscr, styles)
        self.game: str = getattr(args, "game", None) or "arena"
        self.events = EventLog()
        self.editor = LineEditor()
        self.message = ""
        self.message_bad = False
        self.sent_seq = 0
        self.errors_seen: dict[str, int] = {}

    async def _consume(self) -> None:
        from client.sdk import ClientError

        try:
            async for state in self.client.states():
                self.latest = state
                if state.events:
                    self.events.add(state.tick, state.events)
        except ClientError as exc:
            self.error = str(exc)
            self.quit.set()

    def _read_keys(self) -> list[str]:
        import curses

        keys: list[str] = []
        for _ in range(256):  # bounded: a paste cannot starve the frame loop
            try:
                key = self.stdscr.get_wch()
            except curses.error:
                break  # no input (nodelay)
            if isinstance(key, int):
                if key == curses.KEY_RESIZE:
                    self.resized = True
                    continue
                try:
                    name = curses.keyname(key).decode("ascii", "replace")
                except ValueError:
                    continue
                if name in _TEXT_KEYS:
                    keys.append(_TEXT_KEYS[name])
                continue
            if key in _TEXT_KEYS:
                keys.append(_TEXT_KEYS[key])
            elif key.isprintable():
                keys.append(key)
        return keys

    def _handle_keys(self, keys: list[str]) -> None:
        editor = self.editor
        for key in keys:
            if len(key) == 1:
                editor.insert(key)
            elif key == "ENTER":
                self._submit(editor.submit())
            elif key == "BACKSPACE":
                editor.backspace()
            elif key == "CLEAR":
                editor.clear()
            elif key == "UP":
                editor.up()
            elif key == "DOWN":
                editor.down()
            elif key in ("ESC", "EOF") and editor.text:
                editor.clear()
            elif key in ("ESC", "EOF", "QUIT"):
                self.quit.set()
            if self.quit.is_set():
                return

    def _submit(self, line: str) -> None:
        from client.sdk import ClientError
        from client.text_view import InputError, compact, is_quit, parse_input

        if not line:
            return
        if is_quit(line):
            self.quit.set()
            return
        try:
            value = parse_input(line, self.game)
            seq = self.client.send_input(value)
        except InputError as exc:
            self.message, self.message_bad = str(exc), True
            return
        except (ClientError, TypeError, ValueError) as exc:
            self.message, self.message_bad = f"not sent: {exc}", True
            return
        self.sent_seq = seq
        self.message, self.message_bad = f"sent #{seq} {compact(value)}", False

    def _footer(self, notice: str) -> tuple[str, bool]:
        """The footer's text and whether it is bad news: the failover notice, a refusal
        by the server, or what became of the last line typed."""
        errors = self.client.stats.errors
        for code, count in errors.items():
            if count > self.errors_seen.get(code, 0):
                self.message, self.message_bad = f"the server refused: {code}", True
        self.errors_seen = dict(errors)
        if notice:
            return notice, False
        message = self.message
        if self.sent_seq and not self.message_bad and message.startswith("sent #"):
            acked = self.client.stats.max_ack >= self.sent_seq
            message += "  (acked)" if acked else "  (waiting for the ack)"
        return message, self.message_bad

    def _draw(self) -> None:
        import curses

        from client.arena_view import Style
        from client.text_view import render

        status = self._status()
        if self.resized:
            self.resized = False
            with contextlib.suppress(curses.error, AttributeError):
                curses.update_lines_cols()
        rows, cols = self.stdscr.getmaxyx()
        message, bad = self._footer(status.notice)
        latest = self.latest
        tick = latest.tick if latest else -1
        key = (status, rows, cols, tick, self.events.total, self.editor.text, message, bad)
        if key == self.drawn:
            return
        self.drawn = key
        frame = render(
            latest.state if latest else None,
            latest.private if latest else None,
            self.events,
            status,
            self.game,
            self.editor.text,
            rows,
            cols,
            message=message,
            message_style=Style.BAD if bad else Style.NOTICE,
        )
        _paint(self.stdscr, frame.segments, self.styles, frame.cursor)
