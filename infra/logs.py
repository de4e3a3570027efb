"""One logging set-up for every Stateroom process: text for people, JSON for collectors.

``stateroom server``, ``stateroom auth`` and ``stateroom up`` all call
``configure_logging(component)``. The format comes from ``STATEROOM_LOG_FORMAT``
(``text``, the default, or ``json``; the global ``stateroom --log-format`` flag sets
it), the level from ``STATEROOM_LOG_LEVEL`` (default ``INFO``). Both are environment
variables on purpose: the children of ``stateroom up`` inherit them, so one setting
covers the whole local cluster.

A JSON line is one object::

    {"ts": "2025-01-31T12:00:00.123Z", "level": "INFO", "logger": "stateroom.server",
     "component": "server", "msg": "...", "exc": "Traceback ...", ...extra fields}

``ts`` is RFC 3339 in UTC with milliseconds; ``exc`` appears only with an exception;
fields given with ``log.info(..., extra={...})`` follow (they never replace the fixed
keys). uvicorn's access lines also carry ``client``, ``method``, ``path`` and
``status``.

websockets logs every connection opened and closed at INFO (half of a busy room
server's lines); ``websockets.server`` is held at WARNING unless the level is DEBUG.

The configuration is a ``logging.config.dictConfig`` dict, returned so that uvicorn
(which applies its own ``log_config`` when it starts) is handed the same one: its
``uvicorn.error`` and ``uvicorn.access`` lines then go through the same formatter.
Messages are logged as the code wrote them: secrets (Redis URLs) are redacted where
they are formatted (``infra.redis_url.redact``), not here.
"""

from __future__ import annotations

import logging
import logging.config
import os
import time
from collections.abc import Mapping
from typing import Any

import orjson

FORMAT_ENV = "STATEROOM_LOG_FORMAT"
LEVEL_ENV = "STATEROOM_LOG_LEVEL"
FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Loggers that speak once per connection or request at INFO; quiet unless DEBUG.
CHATTY_LOGGERS = ("websockets.server",)

# Every attribute a bare LogRecord has: whatever else a record carries came from extra=.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_FIXED_KEYS = ("ts", "level", "logger", "component", "msg", "exc", "stack")


class LogConfigError(ValueError):
    """A log setting has a value Stateroom does not know; the message names the fix."""


def log_format(env: Mapping[str, str] | None = None) -> str:
    """``text`` or ``json`` from ``STATEROOM_LOG_FORMAT``; LogConfigError otherwise."""
    raw = (os.environ if env is None else env).get(FORMAT_ENV, "") or "text"
    value = raw.strip().lower()
    if value not in FORMATS:
        raise LogConfigError(f"{FORMAT_ENV}={raw!r} is not one of: {', '.join(FORMATS)}")
    return value


def log_level(env: Mapping[str, str] | None = None) -> str:
    """The level name from ``STATEROOM_LOG_LEVEL`` (default INFO); LogConfigError otherwise."""
    raw = (os.environ if env is None else env).get(LEVEL_ENV, "") or "INFO"
    value = raw.strip().upper()
    if value not in LEVELS:
        raise LogConfigError(f"{LEVEL_ENV}={raw!r} is not one of: {', '.join(LEVELS)}")
    return value


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Raise LogConfigError if either log variable is set to something unknown."""
    log_format(env)
    log_level(env)


def rfc3339_utc(created: float) -> str:
    """``2025-01-31T12:00:00.123Z`` for a ``time.time()`` value."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring for the keys)."""

    def __init__(self, component: str = "") -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": rfc3339_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "component": self.component,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for key, value in _extra_fields(record).items():
            if key not in _FIXED_KEYS:
                line[key] = value
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    extra = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
    args = record.args
    # uvicorn's access line: (client_addr, method, full_path, http_version, status_code)
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        client, method, path, _version, status = args
        extra.update(client=client, method=method, path=path, status=status)
    return extra


def logging_config(component: str, fmt: str, level: str) -> dict[str, Any]:
    """The dictConfig of a process: one stderr handler on the root logger."""
    formatter: dict[str, Any]
    if fmt == "json":
        formatter = {"()": f"{__name__}.JsonFormatter", "component": component}
    else:
        formatter = {"format": TEXT_FORMAT}
    chatty_level = "DEBUG" if level == "DEBUG" else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"stateroom": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "stateroom",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            **{name: {"level": chatty_level} for name in CHATTY_LOGGERS},
            # uvicorn's own handlers are replaced: its lines reach the root handler.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }


def configure_logging(component: str) -> dict[str, Any]:
    """Set up this process's logging from the environment; returns the dictConfig applied
    (give it to uvicorn as ``log_config``). Raises LogConfigError on an unknown setting."""
    config = logging_config(component, log_format(), log_level())
    logging.config.dictConfig(config)
    return config
