"""Operator logs (issue 9, deliverable 6): one JSON object per line, and no per-connection noise.

Unit tests of ``infra.logs`` (the formatter, the settings), then real processes: a
fresh interpreter configured from the environment, a real room server that takes 20
WebSocket connections (silent by default, one line per open/close at DEBUG), a real
cluster logging JSON (the login service's uvicorn lines included), and
``stateroom --log-format json up`` whose children inherit the format.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.sync.client import connect

from infra.embedded_redis import EmbeddedRedis
from infra.logs import (
    FORMAT_ENV,
    LEVEL_ENV,
    JsonFormatter,
    LogConfigError,
    check_environment,
    log_format,
    log_level,
    logging_config,
    rfc3339_utc,
)
from server.cli import build_parser
from server.protocol import SUBPROTOCOLS
from tests.cluster import start_cluster
from tests.support import Processes, stateroom_up

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIXED = ("ts", "level", "logger", "component", "msg")
CONNECTIONS = 20


def json_record(**extra: Any) -> dict[str, Any]:
    """Format one record through a JsonFormatter on a private logger; return it parsed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("server"))
    logger = logging.getLogger("tests.logs.private")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("room=%s claimed", "lobby", extra=extra or None)
    finally:
        logger.handlers = []
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_json_line_schema() -> None:
    before = time.time()
    line = json_record(room="lobby", epoch=3)
    assert list(line)[:5] == list(FIXED)
    assert TS.match(line["ts"]), line["ts"]
    stamp = time.mktime(time.strptime(line["ts"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 1 <= stamp <= time.time() + 1
    assert line["level"] == "INFO"
    assert line["logger"] == "tests.logs.private"
    assert line["component"] == "server"
    assert line["msg"] == "room=lobby claimed"
    assert line["room"] == "lobby" and line["epoch"] == 3
    assert "exc" not in line


def test_extra_fields_never_replace_the_fixed_keys_and_any_value_is_written() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    line = json_record(level="FAKE", component="other", ts="never", thing=Opaque())
    assert line["level"] == "INFO" and line["component"] == "server"
    assert TS.match(line["ts"])
    assert line["thing"] == "opaque!"


def test_exception_is_one_field_on_one_line() -> None:
    formatter = JsonFormatter("auth")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "boom\nsecond", None, sys.exc_info())
    text = formatter.format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["msg"] == "boom\nsecond" and line["level"] == "ERROR"
    assert line["exc"].startswith("Traceback") and "ZeroDivisionError" in line["exc"]


def test_uvicorn_access_lines_carry_request_fields() -> None:
    args = ("127.0.0.1:5555", "POST", "/v1/guest", "1.1", 200)
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "h11", 1, '%s - "%s %s HTTP/%s" %d', args, None
    )
    line = json.loads(JsonFormatter("auth").format(record))
    assert line["msg"] == '127.0.0.1:5555 - "POST /v1/guest HTTP/1.1" 200'
    assert (line["client"], line["method"], line["path"], line["status"]) == (
        "127.0.0.1:5555",
        "POST",
        "/v1/guest",
        200,
    )


def test_rfc3339_utc_milliseconds() -> None:
    assert rfc3339_utc(0.5) == "1970-01-01T00:00:00.500Z"
    assert rfc3339_utc(1_700_000_000.9996) == "2023-11-14T22:13:20.999Z"


def test_settings_from_the_environment() -> None:
    assert log_format({}) == "text" and log_level({}) == "INFO"
    assert log_format({FORMAT_ENV: " JSON "}) == "json"
    assert log_level({LEVEL_ENV: "debug"}) == "DEBUG"
    with pytest.raises(LogConfigError, match="STATEROOM_LOG_FORMAT='xml' is not one of: text"):
        log_format({FORMAT_ENV: "xml"})
    with pytest.raises(LogConfigError, match="STATEROOM_LOG_LEVEL='LOUD'"):
        check_environment({LEVEL_ENV: "LOUD"})


def test_websockets_server_is_quiet_unless_debug() -> None:
    for level, expected in (("INFO", "WARNING"), ("WARNING", "WARNING"), ("DEBUG", "DEBUG")):
        config = logging_config("server", "text", level)
        assert config["loggers"]["websockets.server"]["level"] == expected
        assert config["root"]["level"] == level
    json_config = logging_config("auth", "json", "INFO")
    assert json_config["formatters"]["stateroom"] == {
        "()": "infra.logs.JsonFormatter",
        "component": "auth",
    }


def test_log_format_flag_before_or_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["--log-format", "json", "status"]).log_format == "json"
    assert parser.parse_args(["status", "--log-format", "text"]).log_format == "text"
    assert not hasattr(parser.parse_args(["status"]), "log_format")  # the environment decides


def test_bad_log_setting_is_a_usage_error() -> None:
    for env in ({FORMAT_ENV: "xml"}, {LEVEL_ENV: "LOUD"}):
        result = subprocess.run(
            [sys.executable, "-m", "server.cli", "status", "--cluster", "/nonexistent"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result.stderr
        assert f"stateroom: error: {next(iter(env))}=" in result.stderr


SCRIPT = """
import logging
from infra.logs import configure_logging
configure_logging("server")
logging.getLogger("stateroom.test").info("hello %s", "world", extra={"room": "r1"})
logging.getLogger("websockets.server").info("connection open")
logging.getLogger("uvicorn.error").info("Uvicorn running")
try:
    raise ValueError("bad")
except ValueError:
    logging.getLogger("stateroom.test").exception("failed")
"""


def run_script(env: dict[str, str]) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in (FORMAT_ENV, LEVEL_ENV)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout == ""
    return result.stderr.splitlines()


def test_configure_logging_json_from_the_environment() -> None:
    lines = [json.loads(line) for line in run_script({FORMAT_ENV: "json"})]
    assert [(x["logger"], x["msg"]) for x in lines] == [
        ("stateroom.test", "hello world"),
        ("uvicorn.error", "Uvicorn running"),
        ("stateroom.test", "failed"),
    ]
    assert all(x["component"] == "server" for x in lines)
    assert lines[0]["room"] == "r1"
    assert "ValueError: bad" in lines[2]["exc"]


def test_configure_logging_text_and_debug() -> None:
    text = run_script({})
    assert re.match(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO stateroom.test hello world$", text[0]
    )
    assert not any("connection open" in line for line in text)
    debug = run_script({LEVEL_ENV: "DEBUG"})
    assert any("INFO websockets.server connection open" in line for line in debug)


# -- real processes ---------------------------------------------------------------------


@pytest.fixture
def session_redis(redis_url: str, redis_server: EmbeddedRedis) -> EmbeddedRedis:
    """The session's Valkey, emptied (``redis_url``), for a cluster of this test."""
    return redis_server


def connect_and_close(ws_url: str, count: int) -> None:
    for _ in range(count):
        with connect(ws_url, subprotocols=list(SUBPROTOCOLS), open_timeout=5):
            pass


def scrape_admin(admin_url: str, count: int) -> None:
    for _ in range(count):
        with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as response:
            assert response.status == 200


def test_connections_are_silent_by_default_and_logged_at_debug(
    processes: Processes,
    tmp_path: Path,
    session_redis: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """websockets (the reference transport, and the admin listener) logs every connection
    at INFO; the default transport (picows) logs none. Either way, by default: silence."""
    monkeypatch.delenv(FORMAT_ENV, raising=False)
    monkeypatch.delenv(LEVEL_ENV, raising=False)
    reference = ("--transport", "websockets")
    cluster = start_cluster(processes, tmp_path, servers=1, redis=session_redis)
    quiet = [cluster.servers["s1"], cluster.add_server("s2", reference)]
    monkeypatch.setenv(LEVEL_ENV, "DEBUG")
    loud = cluster.add_server("s3", reference)
    for server in [*quiet, loud]:
        connect_and_close(server.ws_url, CONNECTIONS)
        scrape_admin(server.admin_url, CONNECTIONS)
    processes.stop_all()  # SIGTERM, waited for: every line is written
    noise = ("connection open", "connection closed", "connection rejected", "HTTP response sent")
    for server in quiet:
        lines = (tmp_path / f"{server.name}.log").read_text().splitlines()
        assert not [line for line in lines if any(n in line for n in noise)], lines
        # Start-up and shutdown only: 20 connections and 20 scrapes added nothing.
        assert len(lines) < CONNECTIONS, lines
        assert any("stopped" in line for line in lines), lines
    loud_lines = (tmp_path / "s3.log").read_text().splitlines()
    assert sum("connection open" in line for line in loud_lines) >= CONNECTIONS
    assert sum("connection closed" in line for line in loud_lines) >= CONNECTIONS
    assert sum("HTTP response sent (200 OK)" in line for line in loud_lines) >= CONNECTIONS


def test_a_cluster_logs_json_lines(
    processes: Processes,
    tmp_path: Path,
    session_redis: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FORMAT_ENV, "json")
    monkeypatch.delenv(LEVEL_ENV, raising=False)
    cluster = start_cluster(processes, tmp_path, servers=1, redis=session_redis)
    request = urllib.request.Request(f"{cluster.auth_url}/v1/guest", data=b"{}", method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    connect_and_close(cluster.servers["s1"].ws_url, 1)
    processes.stop_all()
    password = urlsplit(session_redis.url).password
    assert password
    for name, component in (("auth", "auth"), ("s1", "server")):
        text = (tmp_path / f"{name}.log").read_text()
        assert password not in text
        lines = [json.loads(line) for line in text.splitlines()]
        assert lines, name
        for line in lines:
            assert list(line)[:5] == list(FIXED), line
            assert line["component"] == component and TS.match(line["ts"])
        if name == "auth":
            loggers = {line["logger"] for line in lines}
            assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers
            access = [line for line in lines if line["logger"] == "uvicorn.access"]
            assert any(
                (x["method"], x["path"], x["status"]) == ("POST", "/v1/guest", 200) for x in access
            ), access
        else:
            assert any(
                line["logger"] == "stateroom.server" and "listening on" in line["msg"]
                for line in lines
            )


@pytest.fixture
def json_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """``stateroom --log-format json up --servers 1`` in its own process group."""
    env = {k: v for k, v in os.environ.items() if k not in (FORMAT_ENV, LEVEL_ENV)}
    with stateroom_up(
        tmp_path, servers=1, before=("--log-format", "json"), env=env, stdout_too=False
    ) as running:
        yield running.proc, running.data, running.output


def test_up_and_its_children_log_json(
    json_up: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    proc, data, errors = json_up
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    components: dict[str, set[str]] = {}
    sources = [errors, *sorted((data / "logs").glob("*.log"))]
    assert len(sources) >= 3, sources  # up itself, auth, one room server
    for path in sources:
        lines = path.read_text().splitlines()
        assert lines, path
        for raw in lines:
            line = json.loads(raw)
            components.setdefault(path.name, set()).add(line["component"])
    assert components.pop(errors.name) == {"up"}
    assert set().union(*components.values()) == {"auth", "server"}, components
