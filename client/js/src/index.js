/**
 * @stateroom/client — the JavaScript SDK of Stateroom, for browsers (no build step: an
 * import map names `@msgpack/msgpack`) and Node >= 20.
 *
 *     import { AuthClient, RoomClient } from "@stateroom/client";
 *     const auth = new AuthClient("http://127.0.0.1:8000");
 *     const tokens = await auth.guest("ann");
 *     const room = await RoomClient.fromAuth(auth, tokens, "lobby");
 *     room.on("state", (s) => render(s.state));
 *     await room.connect();
 *     room.sendInput({ dx: 1, dy: 0 });
 *
 * docs/browser.md is the guide; index.d.ts declares every type.
 */

export { AuthClient, RefreshingToken } from "./auth.js";
export { CloseCode, ErrorCode, PROTOCOL_V1, PROTOCOL_V2, RETRYABLE_CLOSES, SUBPROTOCOLS } from "./codes.js";
export { decodeJson, decodeMsgpack, encodeJson, encodeMsgpack, makeCodec } from "./codec.js";
export { DeltaDecoder, isKeyframe } from "./delta.js";
export {
  AuthError,
  DeltaBaseMismatch,
  DeltaError,
  ProtocolError,
  RoomError,
  StateroomError,
  TokenUnavailable,
} from "./errors.js";
export {
  RedirectPolicy,
  ServerRotation,
  backoffDelay,
  reauthDelay,
  reauthRetryDelay,
  redactUrl,
  refreshMargin,
} from "./policy.js";
export { RoomClient } from "./room.js";
export { resolveWebSocket } from "./websocket.js";
