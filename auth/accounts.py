"""Accounts in Redis: ``auth:user:<lowercased username>`` -> JSON record.

Usernames are unique case-insensitively (``Alice`` and ``alice`` are one
account) and created with ``SET NX``, so two replicas racing on one name cannot
both win. The record holds the player id, the username as typed and the argon2id
hash; nothing else about a player is stored. A retried ``SET NX`` (the client retries
after a timeout) recognises its own record by the new player id.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis


@dataclass(frozen=True)
class Account:
    player_id: str
    username: str
    password_hash: str


class AccountStore:
    def __init__(self, redis: aioredis.Redis, *, prefix: str = "auth:") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, username: str) -> str:
        return f"{self.prefix}user:{username.lower()}"

    async def create(self, username: str, password_hash: str) -> Account | None:
        """Store a new account; None when the username is taken."""
        account = Account("u_" + secrets.token_urlsafe(12), username, password_hash)
        record = orjson.dumps(
            {"player_id": account.player_id, "username": username, "hash": password_hash}
        )
        if await self.redis.set(self._key(username), record, nx=True):
            return account
        # Taken — unless by this very call: the client retries a SET whose reply was lost
        # (a timeout after Redis ran it), and must not then call our own account taken.
        existing = await self.get(username)
        return account if existing is not None and existing.player_id == account.player_id else None

    async def get(self, username: str) -> Account | None:
        raw = await self.redis.get(self._key(username))
        if raw is None:
            return None
        data = orjson.loads(raw)
        return Account(data["player_id"], data["username"], data["hash"])
