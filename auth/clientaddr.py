"""Who is asking: the client address a request is counted against, and its bucket.

Pure functions, no I/O, so they are tested on their own.

**Client address.** The TCP peer, unless the peer is one of the configured
``trusted_proxies`` (CIDRs; none by default). Only then is ``X-Forwarded-For`` read:
its entries are walked from the right (the hop nearest to us) past every address that
is itself a trusted proxy; the first one that is not is the client. That entry must
parse as an IP address (``ipaddress``; an IPv6 address may be in brackets); if it does
not — garbage, a host name, a port — the peer's own address is used, so a header can
never choose an arbitrary rate-limit key. From an untrusted peer the header is ignored:
anyone can write it. (uvicorn's own proxy-header rewriting is turned off in
``auth.cli`` so this is the only place that reads the header.)

**Bucket.** Rate limits count per bucket, not per address: an IPv4 address is its own
bucket, an IPv6 address counts for its /64 (one customer's LAN, where a host can pick
any of 2^64 addresses), and an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) is the
IPv4 address it maps. A peer that is not an IP address (a Unix socket, a test client)
is its own bucket, cut to 64 characters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from auth.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

IPV6_BUCKET_PREFIX = 64
MAX_XFF_ENTRIES = 32  # a longer chain is not from our proxies; read its right end only

__all__ = [
    "IPV6_BUCKET_PREFIX",
    "address_bucket",
    "client_address",
    "is_loopback",
    "parse_ip",
    "parse_networks",
]


def parse_networks(spec: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 2001:db8::/32, 192.0.2.7"`` -> networks; ConfigError on a bad one."""
    networks: list[Network] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"trusted_proxies: {item!r} is not an IP network; use CIDRs such as "
                "10.0.0.0/8,2001:db8::/32 (--trusted-proxies / STATEROOM_AUTH_TRUSTED_PROXIES)"
            ) from None
        networks.append(_unmapped_network(network))
    return tuple(networks)


def _unmapped_network(network: Network) -> Network:
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def parse_ip(text: str) -> Address | None:
    """An IP address (IPv4-mapped IPv6 becomes IPv4), or None if ``text`` is not one."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text or len(text) > 64 or "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_address(peer: str, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The address to count a request against (see the module doc).

    ``forwarded_for`` are the values of every ``X-Forwarded-For`` header, in order.
    """
    peer_ip = parse_ip(peer)
    if peer_ip is None or not trusted or not _trusted(peer_ip, trusted):
        return peer
    entries = [e for value in forwarded_for for e in value.split(",")]
    entries = [e.strip() for e in entries[-MAX_XFF_ENTRIES:]]
    found: Address | None = None
    for entry in reversed(entries):
        address = parse_ip(entry)
        if address is None:
            return peer  # garbage where the client should be: never a key
        found = address
        if not _trusted(address, trusted):
            return str(address)
    # Every hop is one of our proxies: the left-most is as far as we can see.
    return str(found) if found is not None else peer


def address_bucket(address: str) -> str:
    """The rate-limit bucket of ``address``: IPv4 itself, IPv6 its /64 (see module doc)."""
    ip = parse_ip(address)
    if ip is None:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network(f"{ip}/{IPV6_BUCKET_PREFIX}", strict=False)
        return str(network)
    return str(ip)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped forms."""
    ip = parse_ip(address)
    return ip is not None and ip.is_loopback
