"""Protocol errors: carry the ErrorCode a client sees."""

from __future__ import annotations

from server.protocol.codes import ErrorCode


class ProtocolError(Exception):
    """A message that cannot be accepted; ``code`` goes into the error message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DecodeError(ProtocolError):
    """Bytes that are not exactly one valid message in the negotiated encoding."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_MESSAGE, message)
