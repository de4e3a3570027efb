"""The keyring: file format, thumbprint kids, rotation, reload, and the keys command."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest

from auth import keys_cli
from auth.errors import KeyFileError
from auth.keys import Keyring, ensure_key_file, retire_keys, rotate_key_file, thumbprint
from auth.tokens import TokenIssuer
from auth.verify import TokenVerifier


def test_ensure_key_file_creates_0600_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "key.pem"
    ensure_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    ensure_key_file(path)
    assert path.read_bytes() == before
    assert len(Keyring(path).keys) == 1


def test_rfc7638_thumbprint_example() -> None:
    # RFC 8037 appendix A.3: thumbprint of the Ed25519 example key
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


async def test_rotation_signs_with_new_key_and_old_tokens_still_verify(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    ensure_key_file(path)
    ring = Keyring(path, check_interval=0.0)
    issuer = TokenIssuer(ring, issuer="stateroom", audience="stateroom", ttl=600)
    old_kid = ring.current.kid
    old_token = issuer.issue("g_a", "guest-1")

    new = rotate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    new_token = issuer.issue("g_b", "guest-2")  # the issuer notices the changed file
    assert ring.current.kid == new.kid != old_kid
    import jwt

    assert jwt.get_unverified_header(new_token)["kid"] == new.kid
    jwks = ring.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [new.kid, old_kid]
    verifier = TokenVerifier.from_jwks(jwks)
    assert (await verifier.verify(old_token)).player_id == "g_a"
    assert (await verifier.verify(new_token)).player_id == "g_b"

    assert retire_keys(path, keep=1) == [old_kid]
    ring.maybe_reload()
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid]


def test_broken_file_keeps_previous_keys(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    ensure_key_file(path)
    ring = Keyring(path, check_interval=0.0)
    kid = ring.current.kid
    path.write_bytes(b"not a key")
    ring.maybe_reload()
    assert ring.current.kid == kid
    with pytest.raises(KeyFileError):
        Keyring(path)
    with pytest.raises(KeyFileError):
        Keyring(tmp_path / "missing.pem")


def test_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "ec.pem"
    path.write_bytes(pem)
    with pytest.raises(KeyFileError, match="Ed25519"):
        Keyring(path)


def test_keys_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    keys_cli.add_arguments(parser)
    path = str(tmp_path / "k.pem")
    assert keys_cli.run(parser.parse_args(["generate", "--key", path])) == 0
    assert keys_cli.run(parser.parse_args(["rotate", "--key", path])) == 0
    capsys.readouterr()
    assert keys_cli.run(parser.parse_args(["list", "--key", path])) == 0
    kids = capsys.readouterr().out.split()
    assert len(kids) == 2 and kids[-1] == Keyring(Path(path)).current.kid
    assert keys_cli.run(parser.parse_args(["retire", "--key", path, "--keep", "1"])) == 0
    assert len(Keyring(Path(path)).keys) == 1
    assert keys_cli.run(parser.parse_args(["list", "--key", str(tmp_path / "none")])) == 1
