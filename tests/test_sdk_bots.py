"""``stateroom bots`` with its policy hook and event checks, against the v2 fake room server
of ``tests.test_sdk_v2`` and a fake login service (guest and refresh only).

What the tests prove: the arena policy sends the same inputs as before policies existed;
a policy given as ``module:callable`` drives the bots (a class gets one instance per bot;
None sends nothing); events are counted, and with ``--event-seq`` one delivered twice is
reported; the command exits 1 when a bot cannot join and 0 when all play, and 2 on a bad
``--policy``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from client import bots
from client.bots import ArenaPolicy, BotOptions, event_key, failures, load_policy, run_bots
from client.sdk import State
from infra.cluster_file import ClusterInfo, ServerEntry
from tests.test_sdk_fakes import make_token
from tests.test_sdk_v2 import V2FakeRoomServer

# -- a fake login service ----------------------------------------------------------------------


class FakeAuth:
    """HTTP/1.1 on loopback: ``POST /v1/guest`` and ``/v1/refresh`` hand out fake tokens
    (``tests.test_sdk_fakes.make_token``) for the name asked; anything else is a 404."""

    def __init__(self) -> None:
        self.port = 0
        self.guests: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeAuth:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, path, _ = head.split("\r\n", 1)[0].split(" ", 2)
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = json.loads(await reader.readexactly(length) or b"{}")
            if method == "POST" and path in ("/v1/guest", "/v1/refresh"):
                name = str(body.get("name") or body.get("refresh_token") or "guest")
                self.guests.append(name)
                status, answer = (
                    "200 OK",
                    {
                        "access_token": make_token(name, 600),
                        "refresh_token": name,
                        "player_id": name,
                        "expires_in": 600,
                    },
                )
            else:
                status, answer = "404 Not Found", {"error": {"code": "not_found", "message": path}}
            data = json.dumps(answer).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        writer.close()


def cluster_of(auth: FakeAuth, *servers: V2FakeRoomServer) -> ClusterInfo:
    return ClusterInfo(
        redis_url="redis://127.0.0.1:1",
        auth_url=auth.url,
        servers=tuple(ServerEntry(s.name, s.url, None, "") for s in servers),
    )


# -- policies used by name (``tests.test_sdk_bots:...``) -----------------------------------------


def draw(rng: random.Random, state: State | None, me: str) -> Any:
    """The Cards game's bot: always draw."""
    return "draw"


def idle(rng: random.Random, state: State | None, me: str) -> Any:
    return None


class Counting:
    """A policy with memory: its instance numbers the inputs of its own bot."""

    instances = 0

    def __init__(self) -> None:
        Counting.instances += 1
        self.sent = 0

    def __call__(self, rng: random.Random, state: State | None, me: str) -> Any:
        self.sent += 1
        return {"n": self.sent, "me": me, "seen": state is not None}


not_callable = 42


# -- pure parts ------------------------------------------------------------------------------


def test_the_arena_policy_sends_what_the_bots_sent_before_policies() -> None:
    def before(seed: int, count: int) -> list[Any]:  # the loop of client/bots.py until now
        rng = random.Random(seed)
        rng.uniform(0, 0.05)  # the first send's offset
        heading = (rng.uniform(-1, 1), rng.uniform(-1, 1))
        out = []
        for _ in range(count):
            if rng.random() < 0.1:
                heading = (rng.uniform(-1, 1), rng.uniform(-1, 1))
            out.append({"dx": round(heading[0], 3), "dy": round(heading[1], 3)})
        return out

    for seed in range(5):
        rng = random.Random(seed)
        rng.uniform(0, 0.05)
        policy = ArenaPolicy()
        assert [policy(rng, None, "me") for _ in range(200)] == before(seed, 200)


def test_load_policy_takes_functions_classes_and_names_what_is_wrong() -> None:
    assert load_policy("tests.test_sdk_bots:draw")()(random.Random(1), None, "me") == "draw"
    make = load_policy("tests.test_sdk_bots:Counting")
    first, second = make(), make()
    assert first is not second  # a class: one instance per bot
    assert isinstance(load_policy(bots.DEFAULT_POLICY)(), ArenaPolicy)
    for spec, words in [
        ("draw", "module:callable"),
        ("tests.nowhere:draw", "cannot import"),
        ("tests.test_sdk_bots:nothing", "has no"),
        ("tests.test_sdk_bots:not_callable", "not callable"),
    ]:
        with pytest.raises(ValueError, match=words):
            load_policy(spec)


def test_event_keys_tell_kinds_and_numbers_apart() -> None:
    assert event_key({"drew": "c1", "n": 3}, "n") == event_key({"drew": "c9", "n": 3}, "n")
    assert event_key({"drew": "c1", "n": 3}, "n") != event_key({"who": "p", "n": 3}, "n")
    assert event_key({"drew": "c1"}, "n") is None and event_key("chat", "n") is None
    assert event_key({"n": True}, "n") is None


def test_a_summary_fails_on_any_failed_bot_or_broken_guarantee() -> None:
    good = {"players": 2, "failed_players": 0, "lost_acked_inputs": 0, "duplicate_inputs": 0}
    assert failures(good | {"rollbacks": 0, "duplicate_events": 0}) == []
    assert failures(good | {"failed_players": 1}) == ["failed_players=1"]
    assert failures(good | {"duplicate_events": 2}) == ["duplicate_events=2"]
    assert failures({"players": 0}) == ["no bot ran"]


# -- bots against the fakes ---------------------------------------------------------------------


async def test_bots_play_a_v2_room_count_events_and_see_none_twice() -> None:
    async with FakeAuth() as auth, V2FakeRoomServer(name="s1") as server:
        setup = BotOptions(event_seq="n")
        summary = await run_bots(cluster_of(auth, server), "r", 3, 1.5, rate=10, setup=setup)
    assert failures(summary) == [], summary
    assert summary["inputs_acked"] == summary["inputs_sent"] > 20
    assert summary["events_received"] > 3 * 10 and summary["duplicate_events"] == 0
    assert {j["v"] for j in server.joins} == {2}


async def test_a_policy_by_name_drives_every_bot() -> None:
    Counting.instances = 0
    async with FakeAuth() as auth, V2FakeRoomServer(name="s1") as server:
        setup = BotOptions(policy=load_policy("tests.test_sdk_bots:Counting"), game="cards")
        summary = await run_bots(cluster_of(auth, server), "r", 2, 1.0, rate=10, setup=setup)
    assert failures(summary) == [] and Counting.instances == 2
    assert {j.get("game") for j in server.joins} == {"cards"}
    assert summary["inputs_acked"] == summary["inputs_sent"] >= 15


async def test_an_idle_policy_sends_nothing_and_still_plays() -> None:
    async with FakeAuth() as auth, V2FakeRoomServer(name="s1") as server:
        setup = BotOptions(policy=load_policy("tests.test_sdk_bots:idle"))
        summary = await run_bots(cluster_of(auth, server), "r", 2, 0.5, setup=setup)
    assert failures(summary) == [] and summary["inputs_sent"] == 0
    assert summary["states_received"] > 0 and server.inputs == []


async def test_an_event_delivered_twice_is_reported() -> None:
    async with FakeAuth() as auth, V2FakeRoomServer(name="s1") as server:
        # A broken server: every resume resends every event from the start.
        original = server.world.events_for

        def from_start(player: str, after: int, upto: int) -> list[Any]:
            return original(player, 0 if upto - after > 1 else after, upto)

        server.world.events_for = from_start  # type: ignore[method-assign]
        task = asyncio.create_task(
            run_bots(cluster_of(auth, server), "r", 1, 1.5, setup=BotOptions(event_seq="n"))
        )
        await asyncio.sleep(0.7)
        server.blackout = 2  # so that the resume covers more than one tick
        await asyncio.sleep(server.state_interval * 3)
        for player in list(server.peers):
            await server.kick(player)
        summary = await task
    assert summary["duplicate_events"] > 0
    assert failures(summary) == [f"duplicate_events={summary['duplicate_events']}"]


async def test_bots_that_cannot_join_fail_the_run() -> None:
    async with FakeAuth() as auth, V2FakeRoomServer(name="s1") as server:
        setup = BotOptions(options={"bad": True})  # the fake refuses: 4006 invalid_options
        summary = await run_bots(cluster_of(auth, server), "r", 2, 0.5, setup=setup)
    assert summary["failed_players"] == 2 and failures(summary) == ["failed_players=2"]
    assert all("invalid_options" in f for f in summary["failures"])


async def test_the_command_exits_1_when_a_bot_cannot_join_and_0_when_all_play(
    tmp_path: Path,
) -> None:
    async def command(cluster: ClusterInfo, *extra: str) -> tuple[int, str]:
        path = tmp_path / "cluster.json"
        path.write_text(
            json.dumps(
                {
                    "redis_url": cluster.redis_url,
                    "auth_url": cluster.auth_url,
                    "servers": [{"id": s.id, "ws_url": s.ws_url} for s in cluster.servers],
                }
            )
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from server.cli import main; sys.exit(main())",
            "bots",
            "--cluster",
            str(path),
            "--room",
            "r",
            "--count",
            "2",
            "--seconds",
            "0.5",
            "--json",
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode() + err.decode()

    async with FakeAuth() as auth, V2FakeRoomServer(name="s1") as server:
        cluster = cluster_of(auth, server)
        code, output = await command(cluster, "--options", '{"bad": true}')
        assert code == 1 and "failed_players=2" in output, output
        server.world.options = None  # the refused room was never created
        code, output = await command(cluster, "--policy", "tests.test_sdk_bots:draw")
        assert code == 0, output
        assert json.loads(output.splitlines()[0])["failed_players"] == 0
        code, output = await command(cluster, "--policy", "tests.test_sdk_bots:nothing")
        assert code == 2 and "has no" in output


def test_flags_become_bot_options() -> None:
    parser = argparse.ArgumentParser()
    bots.add_arguments(parser)
    args = parser.parse_args(
        ["--cluster", "c", "--room", "r", "--options", '{"mode": "fast"}', "--protocol", "1"]
    )
    setup = bots.setup_from_args(args)
    assert (setup.options, setup.protocol, setup.game) == ({"mode": "fast"}, 1, None)
    args.options = "[1]"
    with pytest.raises(ValueError, match="JSON object"):
        bots.setup_from_args(args)


def test_a_built_in_games_bots_use_its_policy_unless_told_otherwise() -> None:
    import argparse

    from client.bots import ArenaPolicy, DuelPolicy, add_arguments, setup_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--cluster", "c.json", "--room", "r"]
    assert setup_from_args(parser.parse_args(base)).policy is ArenaPolicy
    assert setup_from_args(parser.parse_args([*base, "--game", "duel"])).policy is DuelPolicy
    told = parser.parse_args([*base, "--game", "duel", "--policy", "client.bots:ArenaPolicy"])
    assert setup_from_args(told).policy is ArenaPolicy
