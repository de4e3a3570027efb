// Type declarations of @stateroom/client, the JavaScript SDK of Stateroom.
//
// The SDK is plain ES modules (src/*.js) that run in browsers without a build step and
// in Node >= 20. See docs/browser.md for a guided tour and docs/protocol.md for the wire
// protocol these types describe.

// -- values --------------------------------------------------------------------------

/**
 * A value on the wire: maps with string keys, arrays, strings, numbers, booleans, null.
 * Integers beyond 2^53 - 1 in magnitude arrive as `bigint` (never a rounded number), and
 * a `bigint` you send is written as a 64-bit integer.
 */
export type WireValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | WireValue[]
  | { [key: string]: WireValue };

/** Room options: a flat map of at most 8 keys (strings <= 64 chars, integers, booleans). */
export type RoomOptions = Record<string, string | number | boolean>;

// -- codes ---------------------------------------------------------------------------

export declare const PROTOCOL_V1: 1;
export declare const PROTOCOL_V2: 2;
export type ProtocolVersion = 1 | 2;
export type Encoding = "msgpack" | "json";

/** `stateroom.v2.msgpack`, `stateroom.v2.json`, `stateroom.v1.msgpack`, `stateroom.v1.json`. */
export declare const SUBPROTOCOLS: Readonly<{
  "msgpack:2": "stateroom.v2.msgpack";
  "json:2": "stateroom.v2.json";
  "msgpack:1": "stateroom.v1.msgpack";
  "json:1": "stateroom.v1.json";
}>;

/** WebSocket close codes of docs/protocol.md section 4. */
export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  INVALID_DATA: 1007;
  MESSAGE_TOO_BIG: 1009;
  PROTOCOL_ERROR: 4000;
  UNAUTHORIZED: 4001;
  AUTH_TIMEOUT: 4002;
  UNSUPPORTED_VERSION: 4004;
  ROOM_FULL: 4005;
  INVALID_ROOM: 4006;
  RATE_LIMITED: 4008;
  SLOW_CONSUMER: 4009;
  REPLACED: 4010;
  QUOTA_EXCEEDED: 4011;
  RECONNECT: 4020;
  REDIRECT: 4021;
  ROOM_CLOSED: 4030;
  INTERNAL_ERROR: 4500;
}>;
export type CloseCodeValue = (typeof CloseCode)[keyof typeof CloseCode];

/** `code` of an `error` message (docs/protocol.md section 4). */
export declare const ErrorCode: Readonly<{
  INVALID_MESSAGE: "invalid_message";
  UNKNOWN_TYPE: "unknown_type";
  NOT_JOINED: "not_joined";
  ALREADY_JOINED: "already_joined";
  ILLEGAL_INPUT: "illegal_input";
  SEQUENCE_GAP: "sequence_gap";
  RATE_LIMITED: "rate_limited";
  QUEUE_FULL: "queue_full";
  UNAUTHORIZED: "unauthorized";
  TOKEN_EXPIRED: "token_expired";
  SESSION_REVOKED: "session_revoked";
  ROOM_QUOTA: "room_quota";
  CONNECTION_QUOTA: "connection_quota";
  SERVER_FULL: "server_full";
  INVALID_OPTIONS: "invalid_options";
  UNSUPPORTED_VERSION: "unsupported_version";
  INVALID_ROOM: "invalid_room";
  UNKNOWN_GAME: "unknown_game";
  ROOM_FULL: "room_full";
  UNAVAILABLE: "unavailable";
}>;
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Close codes after which the SDK reconnects by itself (4009, 4020, 4021, 4500, 1001, 1006, 1011-1013). */
export declare const RETRYABLE_CLOSES: ReadonlySet<number>;

// -- errors --------------------------------------------------------------------------

/**
 * Root of the SDK's errors.
 *
 *     StateroomError            code: a documented error code (or the SDK's own)
 *     ├── AuthError             the login service refused (status: HTTP status, code: its error code)
 *     ├── TokenUnavailable      the token source failed (the room retries with backoff)
 *     ├── RoomError             the room server refused us or ended the session (closeCode)
 *     └── ProtocolError         a frame that breaks docs/protocol.md (code invalid_message)
 *         └── DeltaError        a delta payload that cannot be applied
 *             └── DeltaBaseMismatch  a delta of another tick or stream: ask for a keyframe
 */
export declare class StateroomError extends Error {
  constructor(code: string, message: string, extra?: { closeCode?: number; status?: number; seq?: number; cause?: unknown });
  /** An error code of docs/protocol.md or docs/api.md (`room_full`, `invalid_grant`, ...). */
  readonly code: string;
  /** The WebSocket close code that ended the session, when there was one (4000-4999, 1xxx). */
  readonly closeCode?: number;
  /** The HTTP status, for errors of the login service. */
  readonly status?: number;
  /** The `seq` of the input an `error` message was about. */
  readonly seq?: number;
}
export declare class AuthError extends StateroomError {
  readonly status: number;
}
export declare class TokenUnavailable extends StateroomError {}
export declare class RoomError extends StateroomError {
  /** The close reason sent by the server (English; do not parse it, use `code`). */
  readonly reason: string;
}
export declare class ProtocolError extends StateroomError {}
export declare class DeltaError extends ProtocolError {}
export declare class DeltaBaseMismatch extends DeltaError {
  readonly base: unknown;
  readonly held: number | null;
}

// -- login service -------------------------------------------------------------------

/** A token pair from /v1/guest, /v1/login or /v1/refresh. */
export interface Tokens {
  readonly accessToken: string;
  readonly refreshToken: string;
  readonly playerId: string;
  readonly name: string;
  /** Unix seconds when the access token expires (computed from `expires_in` on receipt). */
  readonly expiresAt: number;
  /** The access token's lifetime when issued, s. */
  readonly expiresIn: number;
}

/** Something that gives the current access token: a string, a function, or a RefreshingToken. */
export type TokenSource = string | (() => string | Promise<string>) | { token(): Promise<string> };
/** What the rooms calls take as the player's access token. */
export type AccessToken = Tokens | TokenSource;

export interface RoomListing {
  readonly room: string;
  readonly game: string;
  readonly players: number;
  readonly maxPlayers: number;
  readonly options: RoomOptions;
  readonly metadata: Record<string, WireValue>;
  readonly joinable: boolean;
}

export interface QuickJoinResult {
  readonly room: string;
  readonly game: string;
  readonly created: boolean;
  readonly running: boolean;
  /** Pass these in the room's `options`: whichever join creates the room creates it with them. */
  readonly options: RoomOptions;
  readonly players: number;
  readonly maxPlayers: number;
  /** Unix seconds: join before this, or the reserved seat may go to someone else. */
  readonly reservedUntil: number;
  readonly wsUrl: string | null;
}

export interface PrivateRoom {
  readonly code: string;
  readonly room: string;
  readonly game: string;
  readonly options: RoomOptions;
  readonly maxPlayers: number;
  readonly players: number;
  readonly metadata: Record<string, WireValue>;
  readonly joinable: boolean;
  readonly running: boolean;
  readonly wsUrl: string | null;
  /** s the code waits for the room to be created (createPrivate only). */
  readonly expiresIn: number | null;
}

/** A live room server, from GET /v1/servers. */
export interface ServerInfo {
  readonly id: string;
  readonly wsUrl: string;
}

export interface AuthClientOptions {
  /** Per-request timeout, ms (default 10000). */
  timeoutMs?: number;
  /** The fetch to use (default: globalThis.fetch). */
  fetch?: typeof fetch;
}

export interface ListRoomsOptions {
  /** 1-100 (default 50). */
  limit?: number;
  /** Keep the rooms whose options have these values (`{mode: "ffa", ranked: true}`). */
  filters?: Record<string, string | number | boolean>;
}

/** The login service's HTTP API (docs/api.md). Every failure is an AuthError with the service's code. */
export declare class AuthClient {
  constructor(baseUrl: string, options?: AuthClientOptions);
  readonly baseUrl: string;
  guest(name?: string): Promise<Tokens>;
  register(username: string, password: string): Promise<{ playerId: string; username: string }>;
  login(username: string, password: string): Promise<Tokens>;
  /** Rotates: the old refresh token is spent (using it again revokes the whole family). */
  refresh(tokens: Tokens): Promise<Tokens>;
  logout(tokens: Tokens): Promise<void>;
  /** A token source that refreshes `tokens` through this client when they near expiry. */
  tokenSource(tokens: Tokens, options?: { marginS?: number }): RefreshingToken;
  listRooms(token: AccessToken, game: string, options?: ListRoomsOptions): Promise<RoomListing[]>;
  quickJoin(token: AccessToken, game: string, options?: RoomOptions): Promise<QuickJoinResult>;
  createPrivate(token: AccessToken, game: string, options?: RoomOptions): Promise<PrivateRoom>;
  privateRoom(token: AccessToken, code: string): Promise<PrivateRoom>;
  /** The live room servers (GET /v1/servers). */
  servers(token: AccessToken): Promise<ServerInfo[]>;
}

/** How long before expiry RefreshingToken refreshes a token of this lifetime (s). */
export declare function refreshMargin(lifetimeS: number): number;

/**
 * A token source that keeps a Tokens pair fresh: returns the cached access token until it
 * is within `margin` of expiry, then refreshes it (one refresh in flight at a time). When
 * a refresh fails the cached token is returned while still valid; after that, the error.
 */
export declare class RefreshingToken {
  constructor(auth: AuthClient, tokens: Tokens, options?: { marginS?: number; clock?: () => number });
  tokens: Tokens;
  readonly refreshes: number;
  readonly lastError: string;
  /** s before expiry at which the token is refreshed. */
  readonly margin: number;
  due(): boolean;
  /** A server refused this token as expired: refresh on the next call. */
  invalidate(accessToken: string): void;
  token(): Promise<string>;
  /** Called with the new pair after each successful refresh (e.g. to store it). */
  onRefresh: ((tokens: Tokens) => void) | null;
}

// -- room sessions -------------------------------------------------------------------

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** What a `welcome` said (the current connection's). */
export interface Welcome {
  readonly version: ProtocolVersion;
  readonly room: string;
  readonly game: string;
  readonly playerId: string;
  /** Id of the server process that owns the room. */
  readonly serverId: string;
  /** The owner's fencing epoch: grows each time the room changes owner. */
  readonly epoch: number;
  readonly tick: number;
  readonly tickRate: number;
  readonly ack: number;
  readonly resumed: boolean;
  readonly tokenExp: number | null;
  /** The room's options (protocol v2; null on v1). */
  readonly options: RoomOptions | null;
}

/** One tick of the room as this player sees it (frozen; treat `state`/`private` as read-only). */
export interface State<S = any, P = any, E = any> {
  readonly tick: number;
  /** Seq of this player's last input applied at or before `tick`. */
  readonly ack: number;
  /** The room's full public state at `tick` (v2: rebuilt from keyframes and deltas). */
  readonly state: S;
  /** This player's private view (v2, games that have one; null otherwise). */
  readonly private: P | null;
  /** Game events addressed to this player, delivered exactly once, oldest first. */
  readonly events: readonly E[];
  readonly serverId: string;
  readonly epoch: number;
}

/** One game event, as emitted by `room.on("event", ...)`. */
export interface GameEvent<E = any> {
  readonly tick: number;
  readonly data: E;
}

export interface LatencyStats {
  /** The last input -> ack latency, ms (null before the first ack). */
  readonly lastMs: number | null;
  readonly p50Ms: number | null;
  readonly p99Ms: number | null;
  /** How many acks the percentiles are over (the last 1024 at most). */
  readonly samples: number;
}

/** Counters of one RoomClient's life. */
export interface ClientStats {
  /** Inputs queued with sendInput. */
  sent: number;
  /** Inputs acknowledged by a state. */
  acked: number;
  /** Input messages written again (after a reconnect or a sequence_gap). */
  resent: number;
  /** Sessions resumed on a new connection after the first welcome. */
  reconnects: number;
  /** Acked inputs the server later forgot (the ack went back): must stay 0. */
  lost: number;
  /** Inputs applied more than once, as far as `countApplied` can tell (arena: `inputs`): must stay 0. */
  duplicated: number;
  redirects: number;
  redirectsRefused: number;
  redirectsDeferred: number;
  /** Reconnects that went first to the welcome's `fallback` server. */
  fallbacks: number;
  reauths: number;
  reauthFailures: number;
  tokenResumes: number;
  /** States dropped because their tick was not newer than one delivered. */
  rollbacks: number;
  seatResets: number;
  resyncs: number;
  droppedStates: number;
  conflatedStates: number;
  events: number;
  maxAck: number;
  lastTick: number;
  /** Count of `error` messages per code. */
  errors: Record<string, number>;
}

/** Everything a UI shows about the session (a snapshot). */
export interface RoomStatus {
  readonly state: ConnectionState;
  readonly room: string;
  readonly game: string | null;
  readonly playerId: string;
  readonly serverId: string;
  /** The WebSocket URL of the current (or last) connection. */
  readonly url: string;
  readonly epoch: number;
  readonly tick: number;
  readonly version: ProtocolVersion;
  readonly encoding: Encoding;
  readonly tokenExp: number | null;
  readonly unacked: number;
  readonly reconnects: number;
  readonly latency: LatencyStats;
  readonly stats: Readonly<ClientStats>;
  /** The error that ended the session (state "closed"), if any. */
  readonly error: StateroomError | null;
}

export interface RoomClientOptions {
  /** Room servers to try (cluster.json's ws_url, or AuthClient.servers()); their hosts are trusted for redirects. */
  urls: string | readonly string[];
  room: string;
  token: TokenSource;
  /** Game to create the room with (default: the server's, "arena"); must match an existing room's game. */
  game?: string;
  encoding?: Encoding;
  /** 2 (default) offers v2 then v1; 1 offers v1 only. */
  protocol?: ProtocolVersion;
  /** Room options, used only by the join that creates the room (v2). */
  options?: RoomOptions;
  /** More redirect targets: exact hosts or `*.example.com`. */
  allowedHosts?: readonly string[];
  /** A WebSocket constructor (default: globalThis.WebSocket, else the `ws` package). */
  WebSocket?: unknown;
  /** Gets `warn` (refused redirects, an ack that went back) and `info` (resyncs); default console, null: silent. */
  logger?: { warn?(message: string): void; info?(message: string): void } | null;
  /** How many inputs applied this state shows for this player (default: `state.players[me].inputs` when a number). */
  countApplied?: ((state: State, playerId: string) => number | undefined) | null;
  stallTimeoutMs?: number;
  openTimeoutMs?: number;
  joinTimeoutMs?: number;
  suspectMs?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  retryBackoffMaxMs?: number;
  fastRetryWindowMs?: number;
  maxPending?: number;
  /** States kept for a slow async iterator (older ones are dropped, their events carried over). */
  queueSize?: number;
}

export interface RoomEvents {
  welcome: (welcome: Welcome) => void;
  state: (state: State) => void;
  /** Each game event once, in order (also in `state.events`). */
  event: (event: GameEvent) => void;
  status: (status: RoomStatus) => void;
  /** A server `error` message (the session goes on) or a refused redirect. */
  error: (error: StateroomError) => void;
  /** The session ended: null after close()/leave(), else the final error. */
  close: (error: StateroomError | null) => void;
}

/**
 * One player's session in one room, across any number of WebSocket connections: follows
 * redirects (into the cluster only), reconnects with jittered backoff, resumes and resends
 * unacked inputs, applies v2 deltas, never hands out a tick older than one delivered.
 */
export declare class RoomClient implements AsyncIterable<State> {
  constructor(options: RoomClientOptions);
  /** Build one from a login: the servers come from GET /v1/servers, the token refreshes itself. */
  static fromAuth(
    auth: AuthClient,
    tokens: Tokens,
    room: string,
    options?: Omit<RoomClientOptions, "urls" | "room" | "token"> & { urls?: string | readonly string[] },
  ): Promise<RoomClient>;
  readonly room: string;
  /** The game asked for (options.game), or null. */
  readonly game: string | null;
  readonly encoding: Encoding;
  readonly urls: readonly string[];
  /** The WebSocket URL of the current (or last) connection. */
  readonly url: string;
  readonly tickRate: number;
  /** Unix seconds when the server ends the session unless the token is renewed (the SDK renews it). */
  readonly tokenExp: number | null;
  /** The error that ended the session, once closed. */
  readonly error: StateroomError | null;
  /** Replaceable: how many inputs a state shows applied for this player (see RoomClientOptions). */
  countApplied: ((state: State, playerId: string) => number | undefined) | null;
  readonly stats: ClientStats;
  readonly status: RoomStatus;
  readonly connectionState: ConnectionState;
  readonly welcome: Welcome | null;
  readonly playerId: string;
  readonly serverId: string;
  readonly epoch: number;
  readonly version: ProtocolVersion;
  /** The room's options from the v2 welcome (null before, and on v1). */
  readonly options: RoomOptions | null;
  /** The last state delivered. */
  readonly lastState: State | null;
  readonly unacked: number;
  readonly latency: LatencyStats;
  /** Start the session; resolves at the first welcome, rejects with the final error or a timeout. */
  connect(timeoutMs?: number): Promise<Welcome>;
  /** Queue an input; it is (re)sent until a state acks it. Returns its seq. */
  sendInput(data: WireValue): number;
  /** Round trip of an application ping, ms. */
  ping(timeoutMs?: number): Promise<number>;
  on<K extends keyof RoomEvents>(event: K, listener: RoomEvents[K]): () => void;
  off<K extends keyof RoomEvents>(event: K, listener: RoomEvents[K]): void;
  once<K extends keyof RoomEvents>(event: K, listener: RoomEvents[K]): () => void;
  /** States in tick order; ends after close(), throws the final error. */
  states(): AsyncIterableIterator<State>;
  [Symbol.asyncIterator](): AsyncIterator<State>;
  /** The next state to arrive (states delivered before the call are not queued for it). */
  nextState(timeoutMs?: number): Promise<State>;
  /** Give up the seat now (no grace period) and close. */
  leave(): Promise<void>;
  /** Close the connection; the seat waits out its grace period. */
  close(): Promise<void>;
}

// -- pure policies -------------------------------------------------------------------

/** Wait before retry `attempt` (1, 2, ...), ms: uniform in [d/2, d], d = min(cap, base * 2^(attempt-1)). */
export declare function backoffDelay(attempt: number, baseMs: number, capMs: number, random?: () => number): number;
/** s from `now` until a fresh token should be presented (docs/protocol.md section 1). */
export declare function reauthDelay(tokenExp: number, now: number, sinceLastSend?: number | null): number;
export declare function reauthRetryDelay(failures: number, tokenExp: number, now: number): number;
/** A URL fit for a log: scheme, host, port and path only. */
export declare function redactUrl(url: string): string;

/** Which redirect URLs may be followed (and so receive the token). */
export declare class RedirectPolicy {
  constructor(urls: readonly string[], allowedHosts?: readonly string[]);
  readonly hosts: ReadonlySet<string>;
  hostAllowed(host: string): boolean;
  /** Why `url` (received on a connection to `current`) must not be followed, or null. */
  refusal(url: string, current: string): string | null;
}

/** Round-robin over the client's URLs that skips suspect ones. */
export declare class ServerRotation {
  constructor(urls: readonly string[], start?: number, suspectMs?: number);
  suspect(url: string, nowMs: number): void;
  clear(url: string): void;
  isSuspect(url: string, nowMs: number): boolean;
  allSuspect(nowMs: number): boolean;
  next(nowMs: number): string;
}

// -- codecs and delta sync -----------------------------------------------------------

export interface Codec {
  readonly encoding: Encoding;
  readonly version: ProtocolVersion;
  readonly subprotocol: string;
  /** Text frames (JSON) or binary (msgpack). */
  readonly text: boolean;
  encode(message: Record<string, WireValue>): string | Uint8Array;
  decode(frame: string | ArrayBuffer | ArrayBufferView): Record<string, any>;
}
export declare function makeCodec(encoding: Encoding, version: ProtocolVersion): Codec;
/** msgpack with the protocol's integer rules: every integer as a msgpack int (also >= 2^32), bigint as int 64. */
export declare function encodeMsgpack(value: WireValue): Uint8Array;
/** msgpack decoding: integers beyond 2^53 - 1 as bigint, the others as numbers. */
export declare function decodeMsgpack(bytes: ArrayBuffer | ArrayBufferView): any;
/** JSON with bigint support (written as integers); refuses NaN and infinities. */
export declare function encodeJson(value: WireValue): string;
/** JSON where integers beyond 2^53 - 1 become bigint. */
export declare function decodeJson(text: string): any;

/** The client's side of one delta-sync stream (docs/delta-format.md). */
export declare class DeltaDecoder {
  tick: number | null;
  stream: number | string | null;
  view: any;
  readonly hasSchema: boolean;
  reset(): void;
  /** Apply a keyframe or delta; returns the view (read-only; unchanged parts are shared). */
  apply(payload: unknown): any;
}
export declare function isKeyframe(payload: unknown): boolean;

/** Resolves the WebSocket constructor: the platform's, else `ws` (Node 20). */
export declare function resolveWebSocket(): Promise<unknown>;
