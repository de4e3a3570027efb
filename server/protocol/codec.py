"""Two encodings of the same messages: msgpack (default) and JSON.

Decoding is strict and bounded: a message is one value, a map with string
keys, at most ``MAX_DEPTH`` deep, with bounded strings, arrays and maps, only
finite floats and 64-bit integers, and nothing after it. Anything else raises
DecodeError, which the server turns into an error message or a close code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from server.protocol.codes import (
    JSON_SUBPROTOCOL,
    JSON_V2_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    MSGPACK_V2_SUBPROTOCOL,
)
from server.protocol.errors import DecodeError

MAX_MESSAGE_BYTES = 16 * 1024
MAX_DEPTH = 8
MAX_STR_LEN = 4096 + 64  # an access token fits
MAX_ARRAY_LEN = 256
MAX_MAP_LEN = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError("msgpack ext types are not allowed")


def check_value(value: Any, depth: int = 0) -> None:
    """Walk a decoded value; raise DecodeError on anything outside the limits."""
    if depth > MAX_DEPTH:
        raise DecodeError(f"nesting deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise DecodeError("integer out of the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError("NaN and infinite numbers are not allowed")
    elif isinstance(value, str):
        if len(value) > MAX_STR_LEN:
            raise DecodeError(f"string longer than {MAX_STR_LEN}")
    elif isinstance(value, list):
        if len(value) > MAX_ARRAY_LEN:
            raise DecodeError(f"array longer than {MAX_ARRAY_LEN}")
        for item in value:
            check_value(item, depth + 1)
    elif isinstance(value, dict):
        if len(value) > MAX_MAP_LEN:
            raise DecodeError(f"map larger than {MAX_MAP_LEN}")
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > 64:
                raise DecodeError("map keys must be strings of at most 64 characters")
            check_value(item, depth + 1)
    else:
        raise DecodeError(f"values of type {type(value).__name__} are not allowed")


@dataclass(frozen=True)
class Codec:
    """One encoding of one protocol version: its subprotocol name, whether frames are
    text, and which version of the messages it carries."""

    name: str
    subprotocol: str
    text: bool
    version: int = 1

    def encode(self, message: dict[str, Any]) -> bytes:
        if self.text:
            return orjson.dumps(message)
        return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]

    def decode(self, frame: bytes | str) -> dict[str, Any]:
        """Decode one frame into a message map, or raise DecodeError."""
        if len(frame) > MAX_MESSAGE_BYTES:
            raise DecodeError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
        value = self._decode_json(frame) if self.text else self._decode_msgpack(frame)
        if not isinstance(value, dict):
            raise DecodeError("a message must be a map")
        check_value(value)
        return value

    @staticmethod
    def _decode_json(frame: bytes | str) -> Any:
        try:
            return orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc.msg}") from None

    @staticmethod
    def _decode_msgpack(frame: bytes | str) -> Any:
        if isinstance(frame, str):
            raise DecodeError("msgpack messages must be binary frames")
        try:
            return msgpack.unpackb(
                frame,
                raw=False,
                strict_map_key=True,
                # msgpack counts bytes; the limit is in characters (check_value), as
                # for JSON, so allow the UTF-8 bytes of MAX_STR_LEN characters here.
                max_str_len=4 * MAX_STR_LEN,
                max_bin_len=0,
                max_array_len=MAX_ARRAY_LEN,
                max_map_len=MAX_MAP_LEN,
                max_ext_len=0,
                ext_hook=_reject_ext,
            )
        except DecodeError:
            raise
        except msgpack.ExtraData:
            raise DecodeError("trailing bytes after the message") from None
        except msgpack.StackError:  # its message is empty
            raise DecodeError(f"nesting deeper than {MAX_DEPTH}") from None
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise DecodeError(f"invalid msgpack: {str(exc) or type(exc).__name__}") from None


MSGPACK = Codec(name="msgpack", subprotocol=MSGPACK_SUBPROTOCOL, text=False)
JSON = Codec(name="json", subprotocol=JSON_SUBPROTOCOL, text=True)
MSGPACK_V2 = Codec(name="msgpack", subprotocol=MSGPACK_V2_SUBPROTOCOL, text=False, version=2)
JSON_V2 = Codec(name="json", subprotocol=JSON_V2_SUBPROTOCOL, text=True, version=2)
_BY_SUBPROTOCOL = {c.subprotocol: c for c in (MSGPACK, JSON, MSGPACK_V2, JSON_V2)}


def codec_for_subprotocol(subprotocol: str | None) -> Codec:
    """The codec a connection negotiated; msgpack when the client offered none."""
    if subprotocol is None:
        return MSGPACK
    return _BY_SUBPROTOCOL[subprotocol]
