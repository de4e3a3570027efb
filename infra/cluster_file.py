"""Reading ``cluster.json`` (written by ``stateroom up``): where auth and the room servers are."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerEntry:
    id: str
    ws_url: str
    pid: int | None


@dataclass(frozen=True)
class ClusterInfo:
    redis_url: str
    auth_url: str
    servers: tuple[ServerEntry, ...]

    @property
    def ws_urls(self) -> list[str]:
        return [s.ws_url for s in self.servers]


def load_cluster(path: Path) -> ClusterInfo:
    """Parse cluster.json; raise SystemExit with a clear message if it is missing or bad."""
    try:
        raw = json.loads(path.read_text())
        return ClusterInfo(
            redis_url=raw["redis_url"],
            auth_url=raw["auth_url"],
            servers=tuple(
                ServerEntry(str(s["id"]), str(s["ws_url"]), s.get("pid")) for s in raw["servers"]
            ),
        )
    except FileNotFoundError:
        raise SystemExit(f"{path} not found: start the cluster with `make run` first") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path} is not a valid cluster file: {exc}") from None
