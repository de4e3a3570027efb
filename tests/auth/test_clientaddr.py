"""Who a request counts against: IPv6 /64 buckets, X-Forwarded-For from trusted proxies
only. Pure functions first (with hypothesis), then through the app and a real Valkey."""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth.clientaddr import address_bucket, client_address, is_loopback, parse_ip, parse_networks
from auth.errors import ConfigError
from tests.auth.conftest import AuthUnderTest, MakeAuth
from tests.auth.test_api import assert_error

PROXIES = parse_networks("10.0.0.0/8, 2001:db8:ffff::/48")
# No per-example deadline: the machine is shared, and these are pure functions.
PURE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- buckets


def test_ipv4_is_its_own_bucket() -> None:
    assert address_bucket("203.0.113.7") == "203.0.113.7"
    assert address_bucket("203.0.113.8") == "203.0.113.8"


def test_ipv6_counts_for_its_64() -> None:
    assert address_bucket("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_bucket("[2001:DB8:1:2::abcd]") == "2001:db8:1:2::/64"
    assert address_bucket("::1") == "::/64"


def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    assert address_bucket("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_bucket("::ffff:cb00:7107") == "203.0.113.7"


def test_a_peer_that_is_not_an_ip_is_its_own_bounded_bucket() -> None:
    assert address_bucket("testclient") == "testclient"
    assert address_bucket("x" * 500) == "x" * 64
    assert address_bucket("fe80::1%eth0") == "fe80::1%eth0"  # scoped: not parsed


@PURE
@given(st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1))
def test_same_64_same_bucket(address: int, low: int) -> None:
    a = ipaddress.IPv6Address(address)
    b = ipaddress.IPv6Address((address >> 64 << 64) | low)
    if a.ipv4_mapped is None and b.ipv4_mapped is None:
        assert address_bucket(str(a)) == address_bucket(str(b))


@PURE
@given(st.integers(0, 2**128 - 1), st.integers(0, 2**128 - 1))
def test_different_64_different_bucket(x: int, y: int) -> None:
    a, b = ipaddress.IPv6Address(x), ipaddress.IPv6Address(y)
    if x >> 64 != y >> 64 and a.ipv4_mapped is None and b.ipv4_mapped is None:
        assert address_bucket(str(a)) != address_bucket(str(b))


@PURE
@given(st.integers(0, 2**32 - 1))
def test_ipv4_and_its_mapped_form_share_a_bucket(value: int) -> None:
    v4 = ipaddress.IPv4Address(value)
    assert address_bucket(f"::ffff:{v4}") == address_bucket(str(v4)) == str(v4)


def test_loopback() -> None:
    for address in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(address), address
    for address in ("10.0.0.1", "2001:db8::1", "testclient", "", "localhost"):
        assert not is_loopback(address), address


# ---------------------------------------------------------------- X-Forwarded-For


def test_no_trusted_proxy_ignores_the_header() -> None:
    assert client_address("203.0.113.9", ["198.51.100.1"], ()) == "203.0.113.9"
    assert client_address("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"


def test_spoofed_header_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address("203.0.113.9", ["198.51.100.1"], PROXIES) == "203.0.113.9"
    assert client_address("203.0.113.9", ["10.0.0.1"], PROXIES) == "203.0.113.9"


def test_trusted_proxy_gives_the_right_most_untrusted_entry() -> None:
    # the client wrote a fake left part; our proxy appended the address it saw
    assert client_address("10.0.0.5", ["6.6.6.6, 198.51.100.1"], PROXIES) == "198.51.100.1"
    assert client_address("10.0.0.5", ["198.51.100.1"], PROXIES) == "198.51.100.1"
    assert client_address("10.0.0.5", [" 2001:db8:1::7 "], PROXIES) == "2001:db8:1::7"
    assert client_address("10.0.0.5", ["[2001:db8:1::7]"], PROXIES) == "2001:db8:1::7"
    assert client_address("10.0.0.5", ["::ffff:198.51.100.1"], PROXIES) == "198.51.100.1"


def test_a_chain_of_trusted_proxies_is_walked() -> None:
    chain = ["198.51.100.7, 10.1.1.1", "2001:db8:ffff::2"]  # two headers, three hops
    assert client_address("10.0.0.5", chain, PROXIES) == "198.51.100.7"
    # only our proxies in the chain: the left-most is as far as we can see
    assert client_address("10.0.0.5", ["10.9.9.9, 10.1.1.1"], PROXIES) == "10.9.9.9"
    assert client_address("::ffff:10.0.0.5", ["198.51.100.7"], PROXIES) == "198.51.100.7"


@pytest.mark.parametrize(
    "header",
    ["garbage", "198.51.100.1:4321", "unknown", "", " , ", "1.2.3.4.5", "a" * 5000,
     "198.51.100.1, not-an-ip", "2001:db8::1%eth0", "[2001:db8::1]:443", "999.1.1.1"],
)  # fmt: skip
def test_garbage_falls_back_to_the_peer(header: str) -> None:
    assert client_address("10.0.0.5", [header], PROXIES) == "10.0.0.5"


def test_no_header_from_a_trusted_proxy_is_the_proxy() -> None:
    assert client_address("10.0.0.5", [], PROXIES) == "10.0.0.5"


@PURE
@given(st.lists(st.text(max_size=60) | st.ip_addresses().map(str), max_size=4))
def test_a_header_never_becomes_an_arbitrary_key(headers: list[str]) -> None:
    # from an untrusted peer: always the peer
    assert client_address("203.0.113.9", headers, PROXIES) == "203.0.113.9"
    # from a trusted one: the peer, or a canonical IP address
    result = client_address("10.0.0.5", headers, PROXIES)
    assert result == "10.0.0.5" or parse_ip(result) is not None
    assert result == "10.0.0.5" or str(parse_ip(result)) == result


def test_bad_trusted_proxies_setting_names_the_entry() -> None:
    with pytest.raises(ConfigError, match="not-a-net"):
        parse_networks("10.0.0.0/8,not-a-net")
    assert parse_networks("") == ()
    assert parse_networks("::ffff:10.0.0.0/104") == (ipaddress.ip_network("10.0.0.0/8"),)
    from pathlib import Path

    from auth.settings import AuthSettings

    with pytest.raises(ConfigError, match="trusted_proxies"):
        AuthSettings(redis_url="redis://x", key_file=Path("k"), trusted_proxies="10.0.0.0/33")


# ---------------------------------------------------------------- through the app


async def guests(client: httpx.AsyncClient, n: int, **headers: str) -> list[int]:
    return [(await client.post("/v1/guest", headers=headers)).status_code for _ in range(n)]


async def test_one_ipv6_64_shares_one_budget(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth(rate_limit_per_minute=3)
    a = auth.client_from("2001:db8:1:2::1")
    b = auth.client_from("2001:db8:1:2:dead:beef:0:9")  # same /64, another address
    c = auth.client_from("2001:db8:1:3::1")  # the neighbour /64
    assert await guests(a, 2) == [200, 200]
    assert await guests(b, 2) == [200, 429]
    assert_error(await a.post("/v1/guest"), 429, "rate_limited")
    assert await guests(c, 3) == [200, 200, 200]
    keys = {k.decode() async for k in auth.services.redis.scan_iter("auth:rl:ip:*")}
    assert {k.rsplit(":", 1)[0] for k in keys} == {
        "auth:rl:ip:2001:db8:1:2::/64",
        "auth:rl:ip:2001:db8:1:3::/64",
    }


async def test_ipv4_mapped_peer_counts_as_ipv4(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth(rate_limit_per_minute=2)
    assert await guests(auth.client_from("203.0.113.5"), 1) == [200]
    assert await guests(auth.client_from("::ffff:203.0.113.5"), 2) == [200, 429]


async def test_spoofed_forwarded_for_is_ignored_by_default(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth(rate_limit_per_minute=3)
    client = auth.client_from("203.0.113.9")
    statuses = [
        (await client.post("/v1/guest", headers={"X-Forwarded-For": f"198.51.100.{i}"})).status_code
        for i in range(4)
    ]
    assert statuses == [200, 200, 200, 429]  # one budget: the peer's


async def test_trusted_proxy_forwarded_for_and_garbage(make_auth: MakeAuth) -> None:
    auth: AuthUnderTest = await make_auth(rate_limit_per_minute=2, trusted_proxies="10.0.0.0/8")
    proxy = auth.client_from("10.0.0.5")
    # two players behind the proxy have a budget each
    assert await guests(proxy, 2, **{"X-Forwarded-For": "198.51.100.1"}) == [200, 200]
    assert await guests(proxy, 2, **{"X-Forwarded-For": "6.6.6.6, 198.51.100.2"}) == [200, 200]
    assert await guests(proxy, 1, **{"X-Forwarded-For": "198.51.100.1"}) == [429]
    # a chain through a second proxy of ours still finds the player
    chain = {"X-Forwarded-For": "198.51.100.2, 10.20.30.40"}
    assert await guests(proxy, 1, **chain) == [429]
    # garbage counts against the proxy itself, never as a key of its own
    junk = [{"X-Forwarded-For": v} for v in ("garbage", "x" * 300, "198.51.100.3:80")]
    assert [(await proxy.post("/v1/guest", headers=h)).status_code for h in junk] == [
        200,
        200,
        429,
    ]
    keys = {k.decode() async for k in auth.services.redis.scan_iter("auth:rl:ip:*")}
    assert {k.rsplit(":", 1)[0] for k in keys} == {
        "auth:rl:ip:198.51.100.1",
        "auth:rl:ip:198.51.100.2",
        "auth:rl:ip:10.0.0.5",
    }
