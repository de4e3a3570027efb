"""server.endpoint.TokenCache: a verified token is reused until its exp or the cache's
max age, whichever is first; the cache is bounded, oldest out."""

from __future__ import annotations

from auth.verify import VerifiedToken
from server.endpoint import TokenCache


def _token(player: str, exp: float) -> VerifiedToken:
    return VerifiedToken(player_id=player, name=player, expires_at=exp, claims={"sub": player})


def test_reused_until_exp() -> None:
    cache = TokenCache()
    verified = _token("p", exp=1000.0)
    cache.put("t", verified, now=990.0)
    assert cache.get("t", now=999.9) is verified
    assert cache.get("t", now=1000.0) is None  # the verifier decides from its exp on
    assert len(cache) == 0
    assert cache.get("other", now=995.0) is None


def test_reused_at_most_max_age() -> None:
    cache = TokenCache()
    cache.put("t", _token("p", exp=10_000.0), now=0.0)
    assert cache.get("t", now=TokenCache.MAX_AGE_S - 0.1) is not None
    assert cache.get("t", now=TokenCache.MAX_AGE_S) is None


def test_an_expired_token_is_not_kept() -> None:
    cache = TokenCache()
    cache.put("t", _token("p", exp=100.0), now=100.0)  # (verified within its leeway)
    assert len(cache) == 0


def test_bounded_oldest_out() -> None:
    cache = TokenCache()
    cache.MAX_ENTRIES = 3
    for i in range(5):
        cache.put(f"t{i}", _token(f"p{i}", exp=1e9), now=0.0)
    assert len(cache) == 3
    assert cache.get("t0", now=1.0) is None and cache.get("t1", now=1.0) is None
    assert cache.get("t4", now=1.0) is not None
    cache.put("t2", _token("p2", exp=1e9), now=2.0)  # re-put: now the newest
    cache.put("t5", _token("p5", exp=1e9), now=2.0)
    assert cache.get("t2", now=3.0) is not None and cache.get("t3", now=3.0) is None
