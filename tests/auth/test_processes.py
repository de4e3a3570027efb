"""Real ``stateroom auth`` processes: stateless replicas, restarts, key rotation, and the
verifier fetching the JWKS over HTTP."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
import pytest

from auth.errors import InvalidToken
from auth.verify import TokenVerifier
from infra.ports import free_port
from server.cli import COMMANDS
from tests.support import Processes, wait_until


def _stateroom_cli_complete() -> bool:
    return all(importlib.util.find_spec(module) is not None for module, _ in COMMANDS.values())


# `stateroom` imports every sub-command's module to build its parser; while some of
# them are still being written, run the same two sub-commands through `python -m auth`.
CLI = ["-m", "server.cli"] if _stateroom_cli_complete() else ["-m", "auth"]


def start_auth(processes: Processes, name: str, redis_url: str, key: Path, port: int) -> str:
    url = f"http://127.0.0.1:{port}"
    args = ["auth", "--port", str(port), "--redis", redis_url, "--key", str(key)]
    proc = processes.start([sys.executable, *CLI, *args], name)
    try:
        wait_until(lambda: proc.poll() is not None or _ok(f"{url}/healthz"), 20, f"{name} /healthz")
    except TimeoutError:
        raise TimeoutError(processes.log(name)) from None
    assert proc.poll() is None, processes.log(name)
    return url


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    from auth.keys import ensure_key_file

    path = tmp_path / "auth-key.pem"
    ensure_key_file(path)
    return path


async def test_replicas_and_restart_accept_each_others_tokens(
    processes: Processes, redis_url: str, key: Path
) -> None:
    port_a = free_port()
    first = start_auth(processes, "auth-a", redis_url, key, port_a)
    second = start_auth(processes, "auth-b", redis_url, key, free_port())

    pair = httpx.post(f"{first}/v1/guest", timeout=5).json()
    verifier = TokenVerifier(f"{second}/.well-known/jwks.json")
    try:
        assert (await verifier.verify(pair["access_token"])).player_id == pair["player_id"]
    finally:
        await verifier.aclose()
    # the other replica also rotates the refresh token the first one issued
    rotated = httpx.post(
        f"{second}/v1/refresh", json={"refresh_token": pair["refresh_token"]}, timeout=5
    )
    assert rotated.status_code == 200

    stop(processes.children[0])
    restarted = start_auth(processes, "auth-a2", redis_url, key, port_a)
    verifier = TokenVerifier(f"{restarted}/.well-known/jwks.json")
    try:
        assert (await verifier.verify(pair["access_token"])).player_id == pair["player_id"]
        assert verifier.fetches == 1
    finally:
        await verifier.aclose()
    again = httpx.post(
        f"{restarted}/v1/refresh", json={"refresh_token": rotated.json()["refresh_token"]}
    )
    assert again.status_code == 200


async def test_key_rotation_on_a_running_process(
    processes: Processes, redis_url: str, key: Path
) -> None:
    url = start_auth(processes, "auth", redis_url, key, free_port())
    old = httpx.post(f"{url}/v1/guest").json()["access_token"]
    old_kid = jwt.get_unverified_header(old)["kid"]

    rotate = subprocess.run(
        [sys.executable, *CLI, "keys", "rotate", "--key", str(key)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert rotate.returncode == 0, rotate.stderr
    # the service notices the new file within its 1 s check interval
    wait_until(
        lambda: len(httpx.get(f"{url}/.well-known/jwks.json").json()["keys"]) == 2, 5, "reload"
    )
    new = httpx.post(f"{url}/v1/guest").json()["access_token"]
    new_kid = jwt.get_unverified_header(new)["kid"]
    assert new_kid != old_kid and new_kid in rotate.stdout

    verifier = TokenVerifier(f"{url}/.well-known/jwks.json")
    try:
        assert (await verifier.verify(old)).claims["sub"].startswith("g_")
        assert (await verifier.verify(new)).claims["sub"].startswith("g_")
    finally:
        await verifier.aclose()


async def test_verifier_refetch_is_rate_limited(
    processes: Processes, redis_url: str, key: Path
) -> None:
    url = start_auth(processes, "auth", redis_url, key, free_port())
    verifier = TokenVerifier(f"{url}/.well-known/jwks.json", refetch_interval=60)
    try:
        await verifier.verify(httpx.post(f"{url}/v1/guest").json()["access_token"])
        assert verifier.fetches == 1

        from auth.keys import rotate_key_file

        rotate_key_file(key)
        wait_until(
            lambda: len(httpx.get(f"{url}/.well-known/jwks.json").json()["keys"]) == 2, 5, "reload"
        )
        new = httpx.post(f"{url}/v1/guest").json()["access_token"]
        # unknown kid within the interval: no refetch storm, the token is refused
        for _ in range(20):
            with pytest.raises(InvalidToken) as info:
                await verifier.verify(new)
            assert info.value.code == "unknown_key"
        assert verifier.fetches == 1
        # once the interval has passed, an unknown kid triggers one refetch
        assert verifier._fetched_at is not None
        verifier._fetched_at -= 61
        assert (await verifier.verify(new)).claims["sub"].startswith("g_")
        assert verifier.fetches == 2
    finally:
        await verifier.aclose()


async def test_verifier_without_a_login_service() -> None:
    verifier = TokenVerifier(f"http://127.0.0.1:{free_port()}/.well-known/jwks.json")
    try:
        with pytest.raises(InvalidToken) as info:
            await verifier.verify(jwt.encode({"sub": "x"}, "k" * 32, headers={"kid": "k"}))
        assert info.value.code == "token_invalid"  # HS256 is refused before any fetch
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        token = jwt.encode(
            {"sub": "x"}, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "k"}
        )
        with pytest.raises(InvalidToken) as info:
            await verifier.verify(token)
        assert info.value.code == "keys_unavailable"  # not the token's fault: retry
        assert "login service" in info.value.message and "retry" in info.value.message
    finally:
        await verifier.aclose()


def test_refuses_to_start_on_an_evicting_redis(
    processes: Processes, tmp_path: Path, key: Path
) -> None:
    import redis

    from infra.embedded_redis import EmbeddedRedis

    with EmbeddedRedis(tmp_path / "evicting") as server:
        admin = redis.Redis.from_url(server.url)
        try:
            admin.config_set("maxmemory", "64mb")
            admin.config_set("maxmemory-policy", "allkeys-lru")
        finally:
            admin.close()
        args = ["auth", "--port", str(free_port()), "--redis", server.url, "--key", str(key)]
        proc = processes.start([sys.executable, *CLI, *args], "auth-evicting")
        assert proc.wait(30) == 3
        log = processes.log("auth-evicting")
        assert "refusing to start" in log and "allkeys-lru" in log and "noeviction" in log
        assert "Sizing Redis" in log


def test_forwarded_for_from_loopback_is_not_trusted_by_default(
    processes: Processes, redis_url: str, key: Path
) -> None:
    """uvicorn trusts X-Forwarded-For from 127.0.0.1 by default; the service turns that
    off, so a local client cannot pick its own rate-limit bucket."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["auth", "--port", str(port), "--redis", redis_url, "--key", str(key),
            "--rate-limit-per-minute", "3"]  # fmt: skip
    proc = processes.start([sys.executable, *CLI, *args], "auth-xff")
    wait_until(lambda: proc.poll() is not None or _ok(f"{url}/healthz"), 20, "auth /healthz")
    statuses = [
        httpx.post(
            f"{url}/v1/guest", headers={"X-Forwarded-For": f"198.51.100.{i}"}, timeout=5
        ).status_code
        for i in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    assert httpx.get(f"{url}/metrics", timeout=5).status_code == 200  # loopback scrape
