"""Redirects are trusted only when they point into the cluster (issue 7, deliverable 6).

A ``redirect`` is a URL the SDK would send its bearer token to. These tests show, with
real sockets on loopback, that a redirect to a host the client does not know (127.0.0.2
is another host on the same loopback) is never connected to, that one within the
allow-list is followed, and that ``wss`` is never downgraded to ``ws``.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.sdk import ClientError, RedirectPolicy, RoomClient, redact_url
from tests.test_sdk_fakes import FakeRoomServer, make_token

OWN = ["ws://10.0.0.1:8001/v1/ws", "ws://rooms-b.internal:8002/v1/ws"]


@pytest.mark.parametrize(
    "url",
    [
        "ws://10.0.0.1:8001/v1/ws",
        "ws://10.0.0.1:9999/v1/ws?placed=1",  # a known host, any port
        "ws://ROOMS-B.internal./v1/ws",  # case and a trailing dot do not matter
        "wss://10.0.0.1:8443/v1/ws",  # an upgrade is fine
        "ws://edge.example.com/v1/ws",  # allowed_hosts: exact
        "wss://a.rooms.example.net/v1/ws",  # allowed_hosts: *.rooms.example.net
        "wss://x.y.rooms.example.net:1/",
        "ws://[::1]:8001/v1/ws",  # allowed_hosts: an IPv6 address
    ],
)
def test_trusted_redirects(url: str) -> None:
    policy = RedirectPolicy(OWN, ["edge.example.com", "*.rooms.example.net", "[::1]"])
    assert policy.refusal(url, OWN[0]) is None


@pytest.mark.parametrize(
    ("url", "current", "why"),
    [
        ("ws://10.0.0.2:8001/v1/ws", OWN[0], "not a known server"),
        ("ws://evil.example.com/v1/ws", OWN[0], "not a known server"),
        ("ws://rooms.example.net/v1/ws", OWN[0], "not a known server"),  # not *below* it
        ("ws://badrooms.example.net/v1/ws", OWN[0], "not a known server"),
        ("ws://10.0.0.1.evil.com/v1/ws", OWN[0], "not a known server"),
        ("ws://10.0.0.1:8001/v1/ws", "wss://10.0.0.1:8443/v1/ws", "downgrade"),
        ("http://10.0.0.1:8001/v1/ws", OWN[0], "scheme"),
        ("javascript:alert(1)", OWN[0], "scheme"),
        ("ws://[::1/v1/ws", OWN[0], "unparseable"),
        ("ws://10.0.0.1:99999/v1/ws", OWN[0], "unparseable"),
        ("ws:///v1/ws", OWN[0], "no host"),
        ("", OWN[0], "scheme"),
        ("ws://user:pw@10.0.0.1:8001/v1/ws", OWN[0], "credentials"),
    ],
)
def test_refused_redirects(url: str, current: str, why: str) -> None:
    policy = RedirectPolicy(OWN, ["*.rooms.example.net"])
    refusal = policy.refusal(url, current)
    assert refusal is not None and why in refusal


def test_redacted_urls_carry_no_secret() -> None:
    assert redact_url("ws://u:secret@h:1/p?token=secret#x") == "ws://h:1/p?…"
    assert redact_url("wss://[::1]/v1/ws") == "wss://[::1]/v1/ws"
    assert "secret" not in redact_url("ws://[::1/secret")
    assert len(redact_url("ws://h/" + "a" * 500)) <= 200


async def test_a_redirect_out_of_the_cluster_gets_no_connection_and_no_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = make_token("p1")
    async with FakeRoomServer("127.0.0.2", name="evil") as evil:
        poisoned = f"ws://127.0.0.2:{evil.port}/v1/ws?token=leaked-{token}"
        async with FakeRoomServer(behaviour=FakeRoomServer.redirect(poisoned)) as own:
            client = RoomClient([own.url], "lobby", token, protocol=1)
            with (
                caplog.at_level(logging.WARNING, "stateroom.client"),
                pytest.raises(ClientError, match="could not join"),
            ):
                await client.connect(timeout=1.5)
    assert evil.handshakes == evil.connections == 0
    assert evil.authorizations == []
    assert own.connections >= 2  # it went back to its own server, with backoff
    # every redirect was refused (the last connection may have been cut by the timeout)
    assert own.connections - 1 <= client.stats.redirects_refused <= own.connections
    assert client.stats.redirects == 0
    refused = [r.getMessage() for r in caplog.records if "refused a redirect" in r.getMessage()]
    assert refused and all(r.levelno == logging.WARNING for r in caplog.records)
    assert f"ws://127.0.0.2:{evil.port}/v1/ws?…" in refused[0]
    assert not any(token in m or "leaked" in m for m in caplog.messages)


async def test_a_redirect_to_an_allowed_host_is_followed() -> None:
    token = make_token("p1")
    async with FakeRoomServer("127.0.0.2", name="owner") as owner:
        redirect = FakeRoomServer.redirect(owner.url, "owner")
        async with (
            FakeRoomServer(behaviour=redirect) as entry,
            RoomClient([entry.url], "lobby", token, allowed_hosts=["127.0.0.2"], protocol=1) as c,
        ):
            state = await c.next_state(timeout=5)
            assert state.server == "owner"
    assert owner.authorizations == [f"Bearer {token}"]
    assert (c.stats.redirects, c.stats.redirects_refused) == (1, 0)


async def test_a_redirect_to_a_known_host_on_another_port_is_followed() -> None:
    token = make_token("p1")
    async with FakeRoomServer(name="owner") as owner:
        redirect = FakeRoomServer.redirect(owner.url)
        async with (
            FakeRoomServer(behaviour=redirect) as entry,
            RoomClient([entry.url], "lobby", token, protocol=1) as client,
        ):
            await client.next_state(timeout=5)
    assert owner.connections == 1 and client.stats.redirects == 1


def tls_context(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (server context, client context)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_wss_is_never_downgraded_to_ws(tmp_path: Path) -> None:
    server_tls, client_tls = tls_context(tmp_path)
    token = make_token("p1")
    async with FakeRoomServer(name="plain") as plain:  # same host: only the scheme is wrong
        redirect = FakeRoomServer.redirect(plain.url)
        async with FakeRoomServer(behaviour=redirect, ssl=server_tls) as secure:
            assert secure.url.startswith("wss://127.0.0.1:")
            client = RoomClient([secure.url], "lobby", token, ssl=client_tls, protocol=1)
            with pytest.raises(ClientError, match="could not join"):
                await client.connect(timeout=1.0)
    assert secure.connections >= 1 and secure.authorizations[0] == f"Bearer {token}"
    assert plain.handshakes == plain.connections == 0
    assert 1 <= client.stats.redirects_refused <= secure.connections
    assert client.stats.redirects_refused >= secure.connections - 1


async def test_wss_to_wss_is_followed(tmp_path: Path) -> None:
    server_tls, client_tls = tls_context(tmp_path)
    token = make_token("p1")
    async with FakeRoomServer(name="owner", ssl=server_tls) as owner:
        redirect = FakeRoomServer.redirect(owner.url)
        async with (
            FakeRoomServer(behaviour=redirect, ssl=server_tls) as entry,
            RoomClient([entry.url], "lobby", token, ssl=client_tls, protocol=1) as client,
        ):
            assert (await client.next_state(timeout=5)).server == "owner"
    assert owner.authorizations == [f"Bearer {token}"]
