"""``cluster.json`` (written by ``stateroom up``): where Redis, auth and the room servers are.

    {"redis_url", "auth_url", "servers": [{"id", "ws_url", "admin_url", "pid"}]}

``redis_url`` carries the Redis password: the CLI tools (``status``,
``kill-room``) read the cluster through Redis and need it. That is why the
file is written 0600 (``write_private``) inside a 0700 data folder, and why a
tool that reads it prints only ``redact(redis_url)`` (``infra.redis_url``).
``admin_url`` (a server's /status and /metrics listener) is optional when
reading, for files written before it existed.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# Where `stateroom up` writes it (its --data default): the tools' default --cluster.
DEFAULT_CLUSTER_FILE = Path(".stateroom") / "cluster.json"


@dataclass(frozen=True)
class ServerEntry:
    id: str
    ws_url: str
    pid: int | None
    admin_url: str = ""


@dataclass(frozen=True)
class ClusterInfo:
    redis_url: str
    auth_url: str
    servers: tuple[ServerEntry, ...]

    @property
    def ws_urls(self) -> list[str]:
        return [s.ws_url for s in self.servers]

    @property
    def redis_url_redacted(self) -> str:
        """``redis_url`` as it may be printed or logged."""
        from infra.redis_url import redact  # imported late: the sample clients need no redis

        return redact(self.redis_url)

    def scrub(self, text: str) -> str:
        """``text`` (say, an error message) with the Redis URL and password masked."""
        text = text.replace(self.redis_url, self.redis_url_redacted)
        password = urlsplit(self.redis_url).password
        if password:
            for form in {password, unquote(password)}:
                text = text.replace(form, "***")
        return text


def load_cluster(path: Path) -> ClusterInfo:
    """Parse cluster.json; raise SystemExit with a clear message if it is missing or bad."""
    try:
        raw = json.loads(path.read_text())
        return ClusterInfo(
            redis_url=str(raw["redis_url"]),
            auth_url=str(raw["auth_url"]),
            servers=tuple(
                ServerEntry(
                    str(s["id"]), str(s["ws_url"]), s.get("pid"), str(s.get("admin_url") or "")
                )
                for s in raw["servers"]
            ),
        )
    except FileNotFoundError:
        raise SystemExit(f"{path} not found: start the cluster with `make run` first") from None
    except PermissionError:
        raise SystemExit(
            f"{path} is not readable: it holds the Redis password and is 0600, so run this "
            "as the user that ran `stateroom up`"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # Name the problem, never echo the content: the file holds the Redis password.
        if isinstance(exc, KeyError):
            detail = f"missing field {exc}"
        elif isinstance(exc, json.JSONDecodeError):
            detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        else:
            detail = f"unexpected shape ({type(exc).__name__})"
        raise SystemExit(f"{path} is not a valid cluster file: {detail}") from None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, replacing it in one
    rename (a reader sees the old file or the new one, never a part, never a 0644 moment)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_cluster(path: Path, body: dict[str, Any]) -> None:
    """Write cluster.json (0600: its ``redis_url`` carries the Redis password)."""
    write_private(path, json.dumps(body, indent=2) + "\n")
