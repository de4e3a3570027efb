/**
 * The SDK's errors: data carrying the documented codes, never a bare string.
 *
 *     StateroomError            code: a documented error code (or the SDK's own)
 *     ├── AuthError             the login service refused (status: HTTP status)
 *     ├── TokenUnavailable      the token source failed (the room retries with backoff)
 *     ├── RoomError             the room server refused us or ended the session (closeCode)
 *     └── ProtocolError         a frame that breaks docs/protocol.md (invalid_message)
 *         └── DeltaError        a delta payload that cannot be applied
 *             └── DeltaBaseMismatch  a delta of another tick or stream: ask for a keyframe
 */

export class StateroomError extends Error {
  constructor(code, message, extra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = new.target.name;
    this.code = code;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.seq !== undefined) this.seq = extra.seq;
  }
}

/** The login service refused: `status` is the HTTP status, `code` its error code. */
export class AuthError extends StateroomError {
  constructor(status, code, message, extra = {}) {
    super(code, `${status} ${code}: ${message}`, { ...extra, status });
  }
}

/** The token source failed; the room session retries with backoff. */
export class TokenUnavailable extends StateroomError {
  constructor(message, extra = {}) {
    super("token_unavailable", message, extra);
  }
}

/** The room server closed the session for good (`closeCode`), or sent an `error`
 * message (`code`, `seq`), or the SDK refused to go on (4000, 4004). */
export class RoomError extends StateroomError {
  constructor(code, message, extra = {}) {
    super(code, message, extra);
    this.reason = extra.reason ?? "";
  }
}

/** A server frame that breaks the protocol (the session ends, like close 4000). */
export class ProtocolError extends StateroomError {
  constructor(message, extra = {}) {
    super("invalid_message", message, extra);
  }
}

/** A delta payload this decoder cannot apply; the decoder then holds no view. */
export class DeltaError extends ProtocolError {}

/** A delta whose base (or stream) is not what the decoder holds: nothing changed. */
export class DeltaBaseMismatch extends DeltaError {
  constructor(message, base, held) {
    super(message);
    this.base = base;
    this.held = held;
  }
}
