"""Bad input is never a 500: random bodies and headers at every POST endpoint."""

from __future__ import annotations

import random

import httpx
import orjson

from tests.auth.conftest import MakeClient

ENDPOINTS = ["/v1/guest", "/v1/accounts", "/v1/login", "/v1/refresh", "/v1/logout"]


def random_value(rng: random.Random, depth: int = 0) -> object:
    choices: list[object] = [
        None,
        True,
        rng.randint(-(2**40), 2**40),
        rng.random(),
        "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 40))),
        "a" * rng.choice([0, 3, 8, 24, 25, 129, 5000]),
    ]
    if depth < 2:
        choices.append([random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))])
        choices.append(
            {
                rng.choice(["username", "password", "name", "refresh_token", "x"]): random_value(
                    rng, depth + 1
                )
                for _ in range(rng.randint(0, 4))
            }
        )
    return rng.choice(choices)


async def test_random_bodies_never_500(make_client: MakeClient) -> None:
    client: httpx.AsyncClient = await make_client(rate_limit_per_minute=10_000)
    rng = random.Random(20_240_101)
    for _ in range(150):
        path = rng.choice(ENDPOINTS)
        kind = rng.random()
        if kind < 0.6:
            body = orjson.dumps(random_value(rng), option=orjson.OPT_NON_STR_KEYS)
        else:
            body = rng.randbytes(rng.randint(0, 64))
        content_type = rng.choice(
            ["application/json", "application/json; charset=utf-8", "text/plain", "", "x/+json"]
        )
        headers = {"content-type": content_type} if content_type else {}
        response = await client.post(path, content=body, headers=headers)
        assert response.status_code < 500, (path, body, response.text)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"code", "message"}
