"""The signing keyring: Ed25519 private keys in one PEM file, newest last.

Why one file with several PEM blocks: ``stateroom up`` and Kubernetes both hand
the service a single secret file, and rotation is then one atomic file
replacement. Rules:

- the file holds one or more PKCS#8 ``PRIVATE KEY`` blocks; the *last* one is the
  newest and signs; every one is published in the JWKS so tokens signed by older
  keys keep verifying until those keys are removed;
- ``kid`` is the RFC 7638 JWK thumbprint of the public key, so every replica
  derives the same ``kid`` from the same file with no extra metadata;
- a running service notices a replaced file by checking its (mtime, size, inode)
  at most once per ``key_check_interval`` (1 s) — no signal needed, which also
  works for Kubernetes secret volumes. A file that fails to parse is ignored
  (the previous keys stay in use) and logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from auth.errors import KeyFileError

log = logging.getLogger("stateroom.auth.keys")

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The public JWK members of an Ed25519 key (RFC 8037), without ``kid``."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint: SHA-256 of the required members, sorted, no whitespace."""
    required = {k: jwk[k] for k in ("crv", "kty", "x")}
    canonical = orjson.dumps(required, option=orjson.OPT_SORT_KEYS)
    return b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class SigningKey:
    """One private key with its ``kid`` and public JWK."""

    kid: str
    private_key: Ed25519PrivateKey
    jwk: dict[str, str]

    @classmethod
    def from_private(cls, private_key: Ed25519PrivateKey) -> SigningKey:
        jwk = public_jwk(private_key.public_key())
        kid = thumbprint(jwk)
        return cls(kid=kid, private_key=private_key, jwk={**jwk, "kid": kid})


def generate_pem() -> bytes:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def parse_keys(data: bytes, source: str = "key file") -> list[SigningKey]:
    """Every Ed25519 private key in ``data``, in file order (oldest first)."""
    keys: list[SigningKey] = []
    for match in _PEM_BLOCK.finditer(data):
        if b"PRIVATE KEY" not in match.group(1):
            continue
        try:
            private = serialization.load_pem_private_key(match.group(0), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source}: unreadable private key ({exc})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(
                f"{source}: only Ed25519 keys are supported; create one with "
                "`stateroom keys generate --key FILE`"
            )
        keys.append(SigningKey.from_private(private))
    if not keys:
        raise KeyFileError(
            f"{source}: no PEM private key found; "
            "create one with `stateroom keys generate --key FILE`"
        )
    return keys


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, replacing it in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ensure_key_file(path: Path) -> None:
    """Create ``path`` holding one new Ed25519 private key (mode 0600) unless it exists."""
    path = Path(path)
    if path.exists():
        return
    _write_atomic(path, generate_pem())


def rotate_key_file(path: Path) -> SigningKey:
    """Append a new newest key to ``path`` (creating it if needed); return the new key."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old:
        parse_keys(old, str(path))  # refuse to extend a broken file
        if not old.endswith(b"\n"):
            old += b"\n"
    new = generate_pem()
    _write_atomic(path, old + new)
    return parse_keys(new)[0]


def retire_keys(path: Path, keep: int) -> list[str]:
    """Keep only the ``keep`` newest keys in ``path``; return the retired kids."""
    if keep < 1:
        raise KeyFileError("keep at least one key (--keep N with N >= 1)")
    data = Path(path).read_bytes()
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(data) if b"PRIVATE KEY" in m.group(1)]
    keys = parse_keys(data, str(path))
    if len(keys) <= keep:
        return []
    retired = [k.kid for k in keys[:-keep]]
    kept = b"".join(b if b.endswith(b"\n") else b + b"\n" for b in blocks[-keep:])
    _write_atomic(Path(path), kept)
    return retired


class Keyring:
    """The keys of one key file, reloaded when the file changes."""

    def __init__(self, path: Path, check_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._keys: list[SigningKey] = []
        self._jwks: dict[str, Any] = {"keys": []}
        self._load()

    def _file_stamp(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> None:
        try:
            stamp = self._file_stamp()
            data = self.path.read_bytes()
        except OSError as exc:
            raise KeyFileError(
                f"cannot read key file {self.path}: {exc.strerror}; "
                "create it with `stateroom keys generate --key FILE`"
            ) from None
        self._keys = parse_keys(data, str(self.path))
        self._jwks = {"keys": [dict(k.jwk, alg="EdDSA", use="sig") for k in reversed(self._keys)]}
        self._stamp = stamp

    def maybe_reload(self) -> None:
        """Reload if the file changed; cheap (one stat) and rate-limited."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_interval
        try:
            if self._file_stamp() == self._stamp:
                return
            before = self.current.kid
            self._load()
        except (OSError, KeyFileError) as exc:
            log.error("key file %s not reloaded, keeping the previous keys: %s", self.path, exc)
            return
        log.info("key file reloaded: signing kid %s (was %s)", self.current.kid, before)

    @property
    def current(self) -> SigningKey:
        """The newest key: the one that signs."""
        return self._keys[-1]

    @property
    def keys(self) -> list[SigningKey]:
        return list(self._keys)

    def jwks(self) -> dict[str, Any]:
        """Public keys of every key in the file, newest first."""
        return self._jwks
