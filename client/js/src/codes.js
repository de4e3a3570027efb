/**
 * Every code a client can see: close codes (4000-4999 and the WebSocket ones it meets)
 * and error codes, as in docs/protocol.md section 4 and server/protocol/codes.py.
 * One table, so that the SDK and its users never disagree with the server.
 */

export const PROTOCOL_V1 = 1;
export const PROTOCOL_V2 = 2;

/** Subprotocol of each (encoding, version), keyed `encoding:version`. */
export const SUBPROTOCOLS = Object.freeze({
  "msgpack:2": "stateroom.v2.msgpack",
  "json:2": "stateroom.v2.json",
  "msgpack:1": "stateroom.v1.msgpack",
  "json:1": "stateroom.v1.json",
});

export const CloseCode = Object.freeze({
  NORMAL: 1000,
  INVALID_DATA: 1007,
  MESSAGE_TOO_BIG: 1009,
  PROTOCOL_ERROR: 4000,
  UNAUTHORIZED: 4001,
  AUTH_TIMEOUT: 4002,
  UNSUPPORTED_VERSION: 4004,
  ROOM_FULL: 4005,
  INVALID_ROOM: 4006,
  RATE_LIMITED: 4008,
  SLOW_CONSUMER: 4009,
  REPLACED: 4010,
  QUOTA_EXCEEDED: 4011,
  RECONNECT: 4020,
  REDIRECT: 4021,
  ROOM_CLOSED: 4030,
  INTERNAL_ERROR: 4500,
});

export const ErrorCode = Object.freeze({
  INVALID_MESSAGE: "invalid_message",
  UNKNOWN_TYPE: "unknown_type",
  NOT_JOINED: "not_joined",
  ALREADY_JOINED: "already_joined",
  ILLEGAL_INPUT: "illegal_input",
  SEQUENCE_GAP: "sequence_gap",
  RATE_LIMITED: "rate_limited",
  QUEUE_FULL: "queue_full",
  UNAUTHORIZED: "unauthorized",
  TOKEN_EXPIRED: "token_expired",
  SESSION_REVOKED: "session_revoked",
  ROOM_QUOTA: "room_quota",
  CONNECTION_QUOTA: "connection_quota",
  SERVER_FULL: "server_full",
  INVALID_OPTIONS: "invalid_options",
  UNSUPPORTED_VERSION: "unsupported_version",
  INVALID_ROOM: "invalid_room",
  UNKNOWN_GAME: "unknown_game",
  ROOM_FULL: "room_full",
  UNAVAILABLE: "unavailable",
});

/** The close codes after which the SDK reconnects: the protocol's retryable ones
 * (4009, 4020, 4021, 4500) and the WebSocket codes of a process or network that went away. */
export const RETRYABLE_CLOSES = Object.freeze(
  new Set([4009, 4020, 4021, 4500, 1001, 1006, 1011, 1012, 1013]),
);

/** Error codes that answer a token (at join, or an `auth` message). */
export const AUTH_ERRORS = Object.freeze(
  new Set([ErrorCode.UNAUTHORIZED, ErrorCode.TOKEN_EXPIRED, ErrorCode.SESSION_REVOKED]),
);

const CLOSE_NAMES = new Map(
  Object.entries(CloseCode).map(([name, code]) => [code, name.toLowerCase()]),
);

/** A close code's documented name (`room_full` for 4005), for errors without an error message. */
export function closeCodeName(code) {
  return CLOSE_NAMES.get(code) ?? (code === 1006 ? "connection_lost" : `close_${code}`);
}
