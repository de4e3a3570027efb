"""``stateroom bots``: headless players that also check the room's guarantees.

Each bot logs in as a guest, joins the room through the SDK (which follows
redirects and resumes after failovers), asks its policy for an input every 1/rate s
and reads every state. It checks, from what it sees:

- latency: from sending an input to the first state whose ack covers it;
- rollbacks: a state whose tick is not newer than one already seen;
- lost acked inputs: the ack going backwards (an acked input forgotten);
- duplicate inputs: the arena counts the inputs it applied for each player;
  with seq 1..ack sent once each, ``inputs`` must equal ``ack`` — more means
  an input was applied twice. Sampled (about once a second, see ``read_states``):
  the other checks use only tick and ack and run on every state in the SDK;
- events (protocol v2): counted per bot; with ``--event-seq FIELD`` (events that are
  maps numbered in FIELD by the game, per recipient and per kind of event, as the test
  game ``tests.games:Cards`` does with ``n``), an event seen twice is a duplicate.
  Events carry no id of their own, so without it they are only counted.

The policy (``--policy module:callable``) says what a bot sends: it is called as
``policy(rng, state, me)`` once per input period, with the bot's own seeded
``random.Random``, the latest ``State`` it read (None before the first) and its player
id, and returns the input's data, or None to send nothing this time. A class is
instantiated once per bot (a policy with memory); a function is shared. The default,
``client.bots:ArenaPolicy``, is the arena's: a heading that changes one time in ten;
``client.bots:DuelPolicy`` plays the sample card game (``--game duel``).

The run fails (exit status 1) when any bot could not log in, join or play (its session
ended with an error, it never received a state, or none of its inputs was acked), or
when a guarantee was seen broken: an acked input lost or applied twice, a rollback, a
duplicate event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import random
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.cluster_file import DEFAULT_CLUSTER_FILE, ClusterInfo, load_cluster

if TYPE_CHECKING:
    from client.sdk import State

#: ``policy(rng, state, me) -> input data or None`` (see the module docstring).
Policy = Callable[[random.Random, "State | None", str], Any]
DEFAULT_POLICY = "client.bots:ArenaPolicy"
# The policy a built-in game's bots use when --policy is not given.
GAME_POLICIES = {"arena": DEFAULT_POLICY, "duel": "client.bots:DuelPolicy"}


class ArenaPolicy:
    """The arena's bot: move along a random heading, changed with probability 0.1 each
    input (the same inputs, for a given seed, as the bots before policies existed)."""

    def __init__(self) -> None:
        self.heading: tuple[float, float] | None = None

    def __call__(self, rng: random.Random, state: State | None, me: str) -> Any:
        if self.heading is None:
            self.heading = (rng.uniform(-1, 1), rng.uniform(-1, 1))
        if rng.random() < 0.1:
            self.heading = (rng.uniform(-1, 1), rng.uniform(-1, 1))
        return {"dx": round(self.heading[0], 3), "dy": round(self.heading[1], 3)}


class DuelPolicy:
    """The sample card game's bot (``--game duel --policy client.bots:DuelPolicy
    --event-seq n``): once a round, play a random card of its hand (its private view)."""

    def __init__(self) -> None:
        self.played_round: Any = None

    def __call__(self, rng: random.Random, state: State | None, me: str) -> Any:
        if state is None or not isinstance(state.private, dict):
            return None
        hand = state.private.get("hand") or []
        this_round = state.state.get("round") if isinstance(state.state, dict) else None
        if not hand or state.private.get("played") is not None or this_round == self.played_round:
            return None
        self.played_round = this_round
        return {"play": rng.choice(hand)}


def load_policy(spec: str) -> Callable[[], Policy]:
    """``module:callable`` (the attribute may be dotted) → a factory of per-bot policies.

    Raises ValueError with what is wrong: a bad spec, a module that does not import, a
    missing attribute, or one that is not callable.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--policy must be module:callable, not {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--policy {spec}: cannot import {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"--policy {spec}: {module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"--policy {spec}: {attribute!r} is not callable")
    if isinstance(target, type):
        return target  # a class: one instance per bot
    return lambda: target


def event_key(event: Any, seq_field: str) -> Hashable | None:
    """The identity of an event numbered by its game in ``seq_field`` (per recipient and
    per kind: the names of its other fields), or None for one that is not numbered."""
    if not isinstance(event, dict):
        return None
    number = event.get(seq_field)
    if not isinstance(number, int) or isinstance(number, bool):
        return None
    return (tuple(sorted(str(k) for k in event if k != seq_field)), number)


def missing_cluster(path: Path) -> str:
    """What to say when the cluster file is not there (``play`` says it too)."""
    return f"no cluster file at {path}: start one with `stateroom up` or pass --cluster"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        default=str(DEFAULT_CLUSTER_FILE),
        help=f"cluster.json written by stateroom up (default {DEFAULT_CLUSTER_FILE})",
    )
    parser.add_argument(
        "--room", required=True, help="room name (with --rooms-of, the name prefix)"
    )
    parser.add_argument("--count", type=int, default=10, help="number of bots (default 10)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to play (default 10)")
    parser.add_argument(
        "--rate", type=float, default=20.0, help="inputs per second per bot (default 20)"
    )
    parser.add_argument(
        "--rooms-of", type=int, default=0, help="spread bots over rooms of this many players"
    )
    parser.add_argument("--encoding", choices=["msgpack", "json"], default="msgpack")
    parser.add_argument(
        "--protocol", type=int, choices=[1, 2], default=2, help="wire protocol (default 2)"
    )
    parser.add_argument(
        "--policy",
        default=None,
        help="module:callable(rng, state, me) -> input data or None (a class: one instance"
        f" per bot; default: the built-in game's own, else {DEFAULT_POLICY})",
    )
    parser.add_argument("--game", default=None, help="game of a room the bots create")
    parser.add_argument(
        "--options", default=None, help="room options (a JSON object) for a room they create"
    )
    parser.add_argument(
        "--event-seq",
        default=None,
        metavar="FIELD",
        help="events are maps the game numbers in FIELD: report any seen twice",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass
class BotResult:
    inputs_sent: int = 0
    inputs_acked: int = 0
    latencies: list[float] = field(default_factory=list)
    reconnects: int = 0
    redirects: int = 0
    rollbacks: int = 0
    lost_acked_inputs: int = 0
    seat_resets: int = 0
    reauths: int = 0
    redirects_refused: int = 0
    fallbacks: int = 0
    duplicate_inputs: int = 0
    states: int = 0
    events: int = 0
    duplicate_events: int = 0
    resyncs: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    failed: str = ""


@dataclass(frozen=True)
class BotOptions:
    """What every bot of a run shares beyond the room and the clock."""

    policy: Callable[[], Policy] = ArenaPolicy
    game: str | None = None
    protocol: int = 2
    options: dict[str, Any] | None = None
    event_seq: str | None = None


async def run_bot(
    cluster: ClusterInfo,
    room: str,
    seconds: float,
    rate: float,
    encoding: str,
    start_gate: asyncio.Event,
    index: int,
    joined: Callable[[], None] = lambda: None,
    setup: BotOptions | None = None,
) -> BotResult:
    from client.sdk import AuthClient, ClientError, RoomClient
    from server.protocol import ProtocolError

    setup = setup or BotOptions()

    result = BotResult()
    auth = AuthClient(cluster.auth_url)
    try:
        tokens = await auth.guest(f"bot-{index}")
    except Exception as exc:
        result.failed = f"login: {exc}"
        await auth.aclose()
        return result
    # A refreshing token source: the SDK renews the session's token before it expires,
    # so a run longer than the access-token lifetime keeps playing.
    client = RoomClient(
        cluster.ws_urls,
        room,
        auth.token_source(tokens),
        encoding=encoding,
        game=setup.game,
        protocol=setup.protocol,
        options=setup.options,
    )
    policy = setup.policy()
    rng = random.Random(index)
    seen_events: set[Hashable] = set()
    duplicate_excess = 0
    last: State | None = None  # the newest state read
    last_checked: State | None = None
    undecodable = 0

    def check_duplicates(state: State) -> None:
        nonlocal duplicate_excess, last_checked, undecodable
        if state is last_checked:
            return
        last_checked = state
        try:
            world = state.state  # decodes the whole world: the one costly step of a bot
        except ProtocolError:
            undecodable += 1
            return
        me = world.get("players", {}).get(client.player_id) if isinstance(world, dict) else None
        if me is not None:
            duplicate_excess = max(duplicate_excess, int(me.get("inputs", 0)) - state.ack)

    async def read_states() -> None:
        # Decoding every state (~15 KB at 200 players, 20 a second, for every bot in one
        # process) would make the load generator, not the server, the bottleneck; the SDK
        # decodes a state only when it is read, so the duplicate check samples: at most one
        # state a second (first one at a random offset, so the bots spread the work), the
        # last state of the run, and the last state before any gap.
        #
        # Why sampling cannot miss a duplicate that persists: the server applies a player's
        # inputs strictly in seq order and ``ack`` is the highest seq applied, so a new input
        # adds 1 to both ``inputs`` and ``ack``, and an input applied a second time adds 1 to
        # ``inputs`` only. ``inputs - ack`` therefore never decreases once an input was applied
        # twice, and any later state of that seat shows the excess: the sample after it, or the
        # last state. What it could miss is an excess that goes away before the next sample:
        # for a game whose counter can decrease, or when the seat itself is reset (the seat
        # expired; the rejoined player starts again from inputs = ack = 0). In the arena the
        # counter only grows while the seat lives, and a reset seat needs a disconnection
        # longer than the grace period, i.e. a gap in ticks (or ack going back): on a gap the
        # last state before it, i.e. the old seat's last one, is checked, so nothing is missed.
        nonlocal last
        next_check = time.monotonic() + random.uniform(0.0, 1.0)  # not rng: inputs unchanged
        async for state in client.states():
            result.states += 1
            previous, last = last, state
            if state.events:
                result.events += len(state.events)
                if setup.event_seq is not None:
                    for event in state.events:
                        key = event_key(event, setup.event_seq)
                        if key is None:
                            continue
                        if key in seen_events:
                            result.duplicate_events += 1
                        seen_events.add(key)
            if previous is not None and (
                state.tick != previous.tick + 1 or state.ack < previous.ack
            ):
                check_duplicates(previous)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 1.0
                check_duplicates(state)

    try:
        await client.connect()
    except ClientError as exc:
        result.failed = f"join: {exc}"
        await auth.aclose()
        return result
    reader = asyncio.get_running_loop().create_task(read_states())
    joined()
    try:
        async with asyncio.timeout(30):
            await start_gate.wait()
        period = 1.0 / rate
        next_at = time.monotonic() + rng.uniform(0, period)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not reader.done():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            data = policy(rng, last, client.player_id)
            if data is not None:
                with contextlib.suppress(ClientError):
                    client.send_input(data)
        # Let the last inputs be acked (or give up after a few seconds).
        drain_until = time.monotonic() + 5
        while client.unacked and time.monotonic() < drain_until and not reader.done():
            await asyncio.sleep(0.02)
    except Exception as exc:  # the policy's, most likely: this bot cannot play
        result.failed = f"play: {type(exc).__name__}: {exc}"
    finally:
        ended: BaseException | None = None
        if reader.done() and not reader.cancelled():
            ended = reader.exception()  # the session ended (RoomError) before the run did
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        if not result.failed:
            if ended is not None:
                result.failed = f"play: {ended}"
            elif result.states == 0:
                result.failed = "play: no state received"
            elif client.stats.inputs_sent and not client.stats.inputs_acked:
                result.failed = "play: no input acked"
        if last is not None:
            check_duplicates(last)
        stats = client.stats
        result.inputs_sent = stats.inputs_sent
        result.inputs_acked = stats.inputs_acked
        result.latencies = stats.latencies_ms
        result.reconnects = stats.reconnects
        result.redirects = stats.redirects
        result.rollbacks = stats.rollbacks
        result.lost_acked_inputs = stats.ack_regressions
        result.seat_resets = stats.seat_resets
        result.reauths = stats.reauths
        result.redirects_refused = stats.redirects_refused
        result.fallbacks = stats.fallbacks
        result.resyncs = stats.resyncs
        result.duplicate_inputs = max(0, duplicate_excess)
        result.errors = dict(stats.errors)
        if undecodable:
            result.errors["undecodable_state"] = undecodable
        with contextlib.suppress(Exception):
            await client.leave()
        await auth.aclose()
    return result


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summarize(results: list[BotResult], seconds: float) -> dict[str, Any]:
    latencies = [v for r in results for v in r.latencies]
    errors: dict[str, int] = {}
    for r in results:
        for code, count in r.errors.items():
            errors[code] = errors.get(code, 0) + count
    return {
        "players": len(results),
        "failed_players": sum(1 for r in results if r.failed),
        "seconds": seconds,
        "inputs_sent": sum(r.inputs_sent for r in results),
        "inputs_acked": sum(r.inputs_acked for r in results),
        "states_received": sum(r.states for r in results),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50), 2),
            "p99": round(percentile(latencies, 0.99), 2),
            "max": round(max(latencies, default=0.0), 2),
        },
        "reconnects": sum(r.reconnects for r in results),
        "redirects": sum(r.redirects for r in results),
        "lost_acked_inputs": sum(r.lost_acked_inputs for r in results),
        "seat_resets": sum(r.seat_resets for r in results),
        "reauths": sum(r.reauths for r in results),
        "redirects_refused": sum(r.redirects_refused for r in results),
        # Reconnects that went first to the welcome's fallback (the room's successor).
        "fallbacks": sum(r.fallbacks for r in results),
        "duplicate_inputs": sum(r.duplicate_inputs for r in results),
        "rollbacks": sum(r.rollbacks for r in results),
        "events_received": sum(r.events for r in results),
        "duplicate_events": sum(r.duplicate_events for r in results),
        "resyncs": sum(r.resyncs for r in results),
        "errors": errors,
        "failures": sorted({r.failed for r in results if r.failed})[:5],
    }


async def run_bots(
    cluster: ClusterInfo,
    room: str,
    count: int,
    seconds: float,
    rate: float = 20.0,
    rooms_of: int = 0,
    encoding: str = "msgpack",
    setup: BotOptions | None = None,
) -> dict[str, Any]:
    """Run ``count`` bots and return the summary (also used by tests and benches)."""
    gate = asyncio.Event()
    arrived = 0

    def room_for(index: int) -> str:
        return f"{room}-{index // rooms_of}" if rooms_of else room

    async def bot(index: int) -> BotResult:
        counted = False

        def mark() -> None:
            # Everyone starts sending once every bot has joined (or failed): joins are not measured.
            nonlocal arrived, counted
            if not counted:
                counted = True
                arrived += 1
                if arrived >= count:
                    gate.set()

        try:
            return await run_bot(
                cluster, room_for(index), seconds, rate, encoding, gate, index, mark, setup
            )
        finally:
            mark()

    tasks = [asyncio.create_task(bot(i)) for i in range(count)]
    results = await asyncio.gather(*tasks)
    return summarize(list(results), seconds)


def failures(summary: dict[str, Any]) -> list[str]:
    """Why a run's summary is a failure (empty: it is not)."""
    problems = [
        f"{key}={summary[key]}"
        for key in (
            "failed_players",
            "lost_acked_inputs",
            "duplicate_inputs",
            "rollbacks",
            "duplicate_events",
        )
        if summary.get(key)
    ]
    if not summary.get("players"):
        problems.append("no bot ran")
    return problems


def setup_from_args(args: argparse.Namespace) -> BotOptions:
    """The run's ``BotOptions``; ValueError names the bad flag."""
    options = None
    if args.options is not None:
        try:
            options = json.loads(args.options)
        except ValueError as exc:
            raise ValueError(f"--options is not JSON: {exc}") from None
        if not isinstance(options, dict):
            raise ValueError("--options must be a JSON object")
    return BotOptions(
        policy=load_policy(args.policy or GAME_POLICIES.get(args.game or "", DEFAULT_POLICY)),
        game=args.game,
        protocol=args.protocol,
        options=options,
        event_seq=args.event_seq,
    )


def run(args: argparse.Namespace) -> int:
    from infra.eventloop import run_loop

    try:
        setup = setup_from_args(args)
    except ValueError as exc:
        print(f"stateroom bots: {exc}", file=sys.stderr)
        return 2
    path = Path(args.cluster)
    if not path.exists():
        print(f"stateroom bots: {missing_cluster(path)}", file=sys.stderr)
        return 1
    cluster = load_cluster(path)
    summary: dict[str, Any] = {}

    async def main() -> None:
        summary.update(
            await run_bots(
                cluster,
                args.room,
                args.count,
                args.seconds,
                args.rate,
                args.rooms_of,
                args.encoding,
                setup,
            )
        )

    run_loop(main())
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>20}: {value}")
    problems = failures(summary)
    if problems:
        print(f"stateroom bots: failed: {', '.join(problems)}", file=sys.stderr)
        for reason in summary["failures"]:
            print(f"  {reason}", file=sys.stderr)
    return 1 if problems else 0
