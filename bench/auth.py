"""Login-service throughput in one process; prints one JSON object.

- guest logins/s: POST /v1/guest through the in-process ASGI app (httpx ASGITransport,
  no sockets) against a real embedded Valkey: token signing + one Redis pipeline each;
- token verifications/s: ``TokenVerifier`` (static JWKS) on a batch of distinct tokens;
- password hashes/s: argon2id with the default (OWASP) parameters, one thread.

Run: .venv/bin/python bench/auth.py [--logins 2000] [--concurrency 32] [--verifies 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auth.app import Services, create_app
from auth.keys import Keyring, ensure_key_file
from auth.passwords import Hasher
from auth.settings import AuthSettings
from auth.tokens import TokenIssuer
from auth.verify import TokenVerifier
from infra.embedded_redis import EmbeddedRedis


async def guest_logins(redis_url: str, key: Path, count: int, concurrency: int) -> float:
    settings = AuthSettings(redis_url=redis_url, key_file=key, rate_limit_per_minute=10**9)
    services = Services.create(settings)
    app = create_app(settings, services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        await client.post("/v1/guest")  # warm up (script loading, connections)
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.post("/v1/guest")
                assert response.status_code == 200, response.text

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    await services.aclose()
    return count / elapsed


async def verifications(key: Path, count: int) -> float:
    ring = Keyring(key)
    issuer = TokenIssuer(ring, issuer="stateroom", audience="stateroom", ttl=600)
    tokens = [issuer.issue(f"g_{i}", f"guest-{i % 10_000:04d}") for i in range(count)]
    verifier = TokenVerifier.from_jwks(ring.jwks())
    start = time.perf_counter()
    for token in tokens:
        await verifier.verify(token)
    return count / (time.perf_counter() - start)


async def hashes(count: int) -> float:
    hasher = Hasher(workers=1, queue=count)  # default OWASP parameters
    try:
        start = time.perf_counter()
        for i in range(count):
            await hasher.hash(f"password-{i}")
        return count / (time.perf_counter() - start)
    finally:
        hasher.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--verifies", type=int, default=5000)
    parser.add_argument("--hashes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "key.pem"
        ensure_key_file(key)
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            logins = await guest_logins(redis.url, key, args.logins, args.concurrency)
        finally:
            redis.stop()
        verifies = await verifications(key, args.verifies)
    hashed = await hashes(args.hashes)
    result = {
        "bench": "auth",
        "guest_logins_per_s": round(logins, 1),
        "guest_logins": args.logins,
        "concurrency": args.concurrency,
        "token_verifications_per_s": round(verifies, 1),
        "password_hashes_per_s": round(hashed, 1),
        "argon2": {"memory_kib": 19_456, "time_cost": 2, "parallelism": 1},
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    asyncio.run(main())
