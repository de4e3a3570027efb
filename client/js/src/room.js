/**
 * RoomClient: one player's session in one room, across any number of WebSocket
 * connections. The behaviour is the Python SDK's (client/sdk.py), with JS idioms:
 *
 * - authenticates with the `token` field of `join` (browsers cannot set headers);
 * - follows a redirect only into the cluster (RedirectPolicy), never from wss to ws;
 * - on a drop reconnects with jittered exponential backoff (50 ms doubling, capped at
 *   250 ms for the first 5 s of an outage, 1 s after), rotating over the servers and
 *   skipping for 3 s one that stalled or failed its handshake;
 * - resumes: rejoins its seat and resends, in order, every input not acked yet (paced:
 *   at most 24 unacked inputs on the wire, 40 messages a second), resending from the
 *   seq a `sequence_gap` names;
 * - never hands the application a tick older than (or as old as) one it delivered;
 * - protocol v2: applies the shared and private delta streams (fresh decoders on each
 *   connection), sends one `sync` when a delta cannot be applied and skips states until
 *   keyframes come (reconnecting if none within 2 s), delivers every event exactly once
 *   (a resume's `since` is the last tick delivered; events of skipped states are carried
 *   into the next state delivered);
 * - renews its token on the open connection (`auth` -> `authed`) before `token_exp`, and
 *   answers a close 4001 `token_expired` with one reconnect on a fresh token.
 *
 * Timing (stall 1 s with a ping at 0.5 s, handshake 1 s, join 2 s, suspect 3 s) is tuned
 * to the server's 3 s lease, as in the Python SDK: see its module docstring for why.
 */

import { AUTH_ERRORS, CloseCode, ErrorCode, PROTOCOL_V1, PROTOCOL_V2, RETRYABLE_CLOSES, closeCodeName } from "./codes.js";
import { makeCodec } from "./codec.js";
import { DeltaDecoder, isKeyframe } from "./delta.js";
import { Emitter } from "./emitter.js";
import { AuthError, DeltaError, ProtocolError, RoomError, StateroomError, TokenUnavailable } from "./errors.js";
import {
  BACKOFF_BASE_MS,
  BACKOFF_MAX_MS,
  FAST_RETRY_WINDOW_MS,
  JOIN_TIMEOUT_MS,
  OPEN_TIMEOUT_MS,
  REAUTH_HARD_MIN_INTERVAL,
  REAUTH_REPLY_TIMEOUT_MS,
  RESYNC_TIMEOUT_MS,
  RETRY_BACKOFF_MAX_MS,
  RedirectPolicy,
  STALL_TIMEOUT_MS,
  SUSPECT_MS,
  ServerRotation,
  backoffDelay,
  endpoint,
  reauthDelay,
  reauthRetryDelay,
  redactUrl,
} from "./policy.js";
import { isWsPackage, resolveWebSocket } from "./websocket.js";

// Flow control (why: client/sdk.py). The server applies inputs strictly in seq order and
// drops every later seq after one it dropped, so the client paces itself.
const WINDOW = 24;
const SEND_RATE = 40; // messages per second
const SEND_BURST = 40;
const LATENCY_SAMPLES = 1024;
const ROOM_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

const monotonic = () => (globalThis.performance?.now ? performance.now() : Date.now());
const nowS = () => Date.now() / 1000;

function isMap(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** The arena's (and any game's that keeps one) count of a player's applied inputs. */
export function defaultCountApplied(state, playerId) {
  const inputs = state.state?.players?.[playerId]?.inputs;
  return typeof inputs === "number" ? inputs : undefined;
}

function percentile(sorted, q) {
  if (!sorted.length) return null;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

function freshStats() {
  return {
    sent: 0,
    acked: 0,
    resent: 0,
    reconnects: 0,
    lost: 0,
    duplicated: 0,
    redirects: 0,
    redirectsRefused: 0,
    redirectsDeferred: 0,
    fallbacks: 0,
    reauths: 0,
    reauthFailures: 0,
    tokenResumes: 0,
    rollbacks: 0,
    seatResets: 0,
    resyncs: 0,
    droppedStates: 0,
    conflatedStates: 0,
    events: 0,
    maxAck: 0,
    lastTick: 0,
    errors: {},
  };
}

function makeState(tick, ack, state, serverId, epoch, priv, events) {
  return Object.freeze({ tick, ack, state, private: priv ?? null, events: Object.freeze(events), serverId, epoch });
}

function withEvents(state, events) {
  return makeState(state.tick, state.ack, state.state, state.serverId, state.epoch, state.private, events);
}

/** A bounded queue of states for one async iterator: when a slow reader lets it fill
 * up, the oldest state is dropped and its events are carried into the next one. */
class Mailbox {
  constructor(size, onConflate) {
    this.size = Math.max(1, size);
    this.states = [];
    this.waiters = [];
    this.error = null;
    this.done = false;
    this.onConflate = onConflate;
  }

  put(state) {
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter.resolve({ value: state, done: false });
      return;
    }
    if (this.states.length >= this.size) {
      const dropped = this.states.shift();
      this.onConflate();
      if (dropped.events.length) {
        if (this.states.length) this.states[0] = withEvents(this.states[0], [...dropped.events, ...this.states[0].events]);
        else state = withEvents(state, [...dropped.events, ...state.events]);
      }
    }
    this.states.push(state);
  }

  end(error) {
    if (this.done) return;
    this.done = true;
    this.error = error;
    for (const waiter of this.waiters.splice(0)) {
      if (error) waiter.reject(error);
      else waiter.resolve({ value: undefined, done: true });
    }
  }

  next() {
    if (this.states.length) return Promise.resolve({ value: this.states.shift(), done: false });
    if (this.done) return this.error ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
}

function checkOptions(options) {
  if (!isMap(options)) throw new TypeError("RoomClient needs an options object");
  const urls = typeof options.urls === "string" ? [options.urls] : [...(options.urls ?? [])];
  if (!urls.length) throw new TypeError("RoomClient needs at least one server URL (options.urls)");
  for (const url of urls) {
    if (typeof url !== "string" || !/^wss?:\/\//i.test(url)) {
      throw new TypeError(`a room server URL must be ws:// or wss://, not ${JSON.stringify(String(url).slice(0, 80))}`);
    }
  }
  if (typeof options.room !== "string" || !ROOM_NAME.test(options.room)) {
    throw new TypeError("a room name is 1-64 characters of A-Z a-z 0-9 _ . -");
  }
  const token = options.token;
  const tokenOk =
    (typeof token === "string" && token) || typeof token === "function" || (token && typeof token.token === "function");
  if (!tokenOk) throw new TypeError("RoomClient needs a token: a string, a function, or a token source");
  const encoding = options.encoding ?? "msgpack";
  if (encoding !== "msgpack" && encoding !== "json") {
    throw new TypeError(`encoding must be "msgpack" or "json", not ${JSON.stringify(encoding)}`);
  }
  const protocol = options.protocol ?? PROTOCOL_V2;
  if (protocol !== PROTOCOL_V1 && protocol !== PROTOCOL_V2) throw new TypeError("protocol must be 1 or 2");
  if (options.options !== undefined && options.options !== null && !isMap(options.options)) {
    throw new TypeError("room options must be a flat object");
  }
  return { urls, encoding, protocol };
}

export class RoomClient extends Emitter {
  /** A RoomClient for a logged-in player: servers from GET /v1/servers (unless
   * `options.urls`), and a token source that refreshes `tokens` by itself. */
  static async fromAuth(auth, tokens, room, options = {}) {
    const source = auth.tokenSource(tokens);
    let urls = options.urls;
    if (urls === undefined) {
      urls = (await auth.servers(tokens)).map((s) => s.wsUrl);
      if (!urls.length) throw new StateroomError("no_servers", "the login service lists no live room server yet: retry in a moment");
    }
    return new RoomClient({ ...options, urls, room, token: source });
  }

  constructor(options) {
    super();
    const { urls, encoding, protocol } = checkOptions(options);
    this.urls = Object.freeze(urls);
    this.room = options.room;
    this.game = options.game ?? null;
    this.encoding = encoding;
    this.protocol = protocol;
    this._tokenSource = options.token;
    this._offered = protocol === PROTOCOL_V2 ? [makeCodec(encoding, 2), makeCodec(encoding, 1)] : [makeCodec(encoding, 1)];
    this.codec = this._offered[0];
    this.requestedOptions = options.options ? { ...options.options } : null;
    this.options = null;
    this.redirectPolicy = new RedirectPolicy(urls, options.allowedHosts ?? []);
    this._WebSocket = options.WebSocket ?? null;
    this.countApplied = options.countApplied === undefined ? defaultCountApplied : options.countApplied;
    this.logger = options.logger ?? console;
    this.stallTimeoutMs = options.stallTimeoutMs ?? STALL_TIMEOUT_MS;
    this.openTimeoutMs = options.openTimeoutMs ?? OPEN_TIMEOUT_MS;
    this.joinTimeoutMs = options.joinTimeoutMs ?? JOIN_TIMEOUT_MS;
    this.backoffBaseMs = options.backoffBaseMs ?? BACKOFF_BASE_MS;
    this.backoffMaxMs = options.backoffMaxMs ?? BACKOFF_MAX_MS;
    this.retryBackoffMaxMs = options.retryBackoffMaxMs ?? RETRY_BACKOFF_MAX_MS;
    this.fastRetryWindowMs = options.fastRetryWindowMs ?? FAST_RETRY_WINDOW_MS;
    this.maxPending = options.maxPending ?? 4096;
    this.queueSize = options.queueSize ?? 64;
    this.stats = freshStats();
    this.connectionState = "connecting";
    this.welcome = null;
    this.playerId = "";
    this.serverId = "";
    this.url = "";
    this.epoch = 0;
    this.tickRate = 20;
    this.tokenExp = null;
    this.lastState = null;
    this.error = null;
    this._latencies = [];
    this._latencySorted = null;
    this._lastLatency = null;
    this._seq = 0;
    this._pending = []; // {seq, data, sentAt, sent}
    this._sentUpto = 0;
    this._sendTokens = SEND_BURST;
    this._sendTokensAt = monotonic();
    this._conn = null;
    this._mailboxes = new Set();
    this._shared = new DeltaDecoder();
    this._private = new DeltaDecoder();
    this._resyncAt = null;
    this._carry = [];
    this._runner = null;
    this._joined = false;
    this._closing = false;
    this._ended = false;
    this._joinWaiters = [];
    this._wake = null;
    this._welcomedThisSession = false;
    this._opened = false;
    this._stalled = false;
    this._lastError = null;
    this._nextUrl = null;
    // The welcome's `fallback`: the server that takes the room over if its owner dies,
    // asked first after a dropped connection (null: the rotation decides).
    this._fallbackUrl = null;
    this._rotation = new ServerRotation(urls, Math.floor(Math.random() * urls.length), options.suspectMs ?? SUSPECT_MS);
    this._presentedToken = "";
    this._authInFlight = "";
    this._authReply = null;
    this._authSentAt = null;
    this._expiredResumeUsed = false;
    this._pingId = 0;
    this._pings = new Map();
  }

  // -- public API -------------------------------------------------------------------

  get version() {
    return this.codec.version;
  }

  get unacked() {
    return this._pending.length;
  }

  get latency() {
    if (this._latencySorted === null) this._latencySorted = [...this._latencies].sort((a, b) => a - b);
    const sorted = this._latencySorted;
    return Object.freeze({
      lastMs: this._lastLatency,
      p50Ms: percentile(sorted, 0.5),
      p99Ms: percentile(sorted, 0.99),
      samples: sorted.length,
    });
  }

  get status() {
    return Object.freeze({
      state: this.connectionState,
      room: this.room,
      game: this.welcome?.game ?? this.game,
      playerId: this.playerId,
      serverId: this.serverId,
      url: this.url,
      epoch: this.epoch,
      tick: this.stats.lastTick,
      version: this.codec.version,
      encoding: this.encoding,
      tokenExp: this.tokenExp,
      unacked: this._pending.length,
      reconnects: this.stats.reconnects,
      latency: this.latency,
      stats: Object.freeze({ ...this.stats, errors: Object.freeze({ ...this.stats.errors }) }),
      error: this.error,
    });
  }

  /** Start the session and wait for the first welcome. */
  connect(timeoutMs = 15000) {
    if (this._ended) return Promise.reject(this.error ?? new StateroomError("closed", "this RoomClient was closed; make a new one"));
    if (this._runner === null) this._runner = this._run();
    if (this._joined) return Promise.resolve(this.welcome);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._joinWaiters = this._joinWaiters.filter((w) => w.resolve !== resolve);
        const error = new StateroomError("timeout", `could not join room ${JSON.stringify(this.room)} within ${timeoutMs} ms`);
        this.close().finally(() => reject(error));
      }, timeoutMs);
      this._joinWaiters.push({
        resolve: (welcome) => {
          clearTimeout(timer);
          resolve(welcome);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
    });
  }

  /** Queue an input; it is (re)sent until a state acks it. Returns its sequence number. */
  sendInput(data) {
    if (this._ended) throw new StateroomError("closed", "the session has ended; make a new RoomClient");
    if (this._pending.length >= this.maxPending) {
      throw new StateroomError("too_many_pending", "too many unacknowledged inputs; is the connection down?");
    }
    this.codec.encode({ t: "input", seq: 1, data }); // refuse what cannot be sent, now
    this._seq += 1;
    this._pending.push({ seq: this._seq, data, sentAt: monotonic(), sent: false });
    this.stats.sent += 1;
    this._flush();
    return this._seq;
  }

  /** Round trip of an application ping, ms (also tells the server's current tick). */
  ping(timeoutMs = 5000) {
    const conn = this._conn;
    if (conn === null || this.connectionState !== "open") {
      return Promise.reject(new StateroomError("not_connected", "no open connection to ping"));
    }
    const id = ++this._pingId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pings.delete(id);
        reject(new StateroomError("timeout", `no pong within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pings.set(id, { sentAt: monotonic(), resolve, timer });
      this._send(conn, { t: "ping", id });
    });
  }

  states() {
    const mailbox = new Mailbox(this.queueSize, () => {
      this.stats.conflatedStates += 1;
    });
    if (this._ended) mailbox.end(this.error);
    else this._mailboxes.add(mailbox);
    const self = this;
    return {
      next: () => mailbox.next(),
      return(value) {
        self._mailboxes.delete(mailbox);
        mailbox.end(null);
        return Promise.resolve({ value, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  [Symbol.asyncIterator]() {
    return this.states();
  }

  async nextState(timeoutMs) {
    const iterator = this.states();
    let timer;
    try {
      const next = iterator.next();
      const result = await (timeoutMs === undefined
        ? next
        : Promise.race([
            next,
            new Promise((_, reject) => {
              timer = setTimeout(() => reject(new StateroomError("timeout", `no state within ${timeoutMs} ms`)), timeoutMs);
            }),
          ]));
      if (result.done) throw this.error ?? new StateroomError("closed", "the session has ended");
      return result.value;
    } finally {
      clearTimeout(timer);
      iterator.return();
    }
  }

  /** Give up the seat for good (no grace period) and close. */
  async leave() {
    const conn = this._conn;
    if (conn !== null) this._send(conn, { t: "leave" });
    await this.close();
  }

  /** Close the connection; the seat waits out its grace period on the server. */
  async close() {
    if (this._closing) {
      await this._runner;
      return;
    }
    this._closing = true;
    const conn = this._conn;
    if (conn !== null) conn.finish({ code: 1000, reason: "closed by the client" }, false, 1000);
    this._wake?.();
    await this._runner;
    this._end(null);
  }

  // -- session lifecycle -------------------------------------------------------------

  _setState(state) {
    if (this.connectionState === state) return;
    this.connectionState = state;
    this.emit("status", this.status);
  }

  _end(error) {
    if (this._ended) return;
    this._ended = true;
    this.error = error;
    this.connectionState = "closed";
    for (const mailbox of this._mailboxes) mailbox.end(error);
    this._mailboxes.clear();
    const finalError = error ?? new StateroomError("closed", "the session was closed before joining");
    for (const waiter of this._joinWaiters.splice(0)) waiter.reject(finalError);
    for (const ping of this._pings.values()) clearTimeout(ping.timer);
    this._pings.clear();
    this.emit("status", this.status);
    this.emit("close", error);
  }

  _fail(closeCode, reason, errorCode, cause) {
    const code = errorCode ?? closeCodeName(closeCode);
    const detail = errorCode ? ` (${errorCode})` : "";
    this._end(new RoomError(code, `room closed the session: ${closeCode} ${reason}${detail}`, { closeCode, reason, cause }));
  }

  async _token() {
    const source = this._tokenSource;
    try {
      if (typeof source === "string") return source;
      const token = typeof source === "function" ? await source() : await source.token();
      if (typeof token !== "string" || !token) throw new TypeError("the token source returned no token");
      return token;
    } catch (error) {
      if (error instanceof AuthError && (error.status === 401 || error.status === 403)) throw error;
      throw new TokenUnavailable(`token source failed: ${error?.message ?? error}`, { cause: error });
    }
  }

  /**
   * Where to reconnect first after the seated connection to `url` dropped: the welcome's
   * fallback, when it is another server this client trusts (the redirect rules) and not
   * suspect; else null (the rotation's next server).
   */
  _fallbackTarget(url, now) {
    const target = this._fallbackUrl;
    if (!target || endpoint(target) === endpoint(url)) return null;
    if (this.redirectPolicy.refusal(target, url) !== null) return null;
    if (this._rotation.isSuspect(target, now)) return null;
    this.stats.fallbacks += 1;
    return target;
  }

  _pickUrl() {
    if (this._nextUrl) {
      const url = this._nextUrl;
      this._nextUrl = null;
      return url;
    }
    return this._rotation.next(monotonic());
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        if (self._wake === done) self._wake = null;
        resolve();
      }
      this._wake = done;
    });
  }

  async _run() {
    let attempt = 0;
    let outageSince = null;
    while (!this._closing) {
      const url = this._pickUrl();
      this._welcomedThisSession = false;
      this._opened = false;
      this._stalled = false;
      this._lastError = null;
      let code;
      let reason;
      let cause;
      try {
        ({ code, reason } = await this._session(url));
      } catch (error) {
        if (error instanceof AuthError) {
          // 401/403 from the token refresh: the login is gone.
          this._end(
            new RoomError(error.code, `token refresh refused: ${error.message}`, {
              closeCode: CloseCode.UNAUTHORIZED,
              reason: "token refresh refused",
              cause: error,
            }),
          );
          return;
        }
        if (error instanceof ProtocolError) {
          code = CloseCode.PROTOCOL_ERROR; // the server broke the protocol: final, as 4000
          reason = error.message;
          cause = error;
        } else if (error instanceof TokenUnavailable) {
          code = 1013;
          reason = error.message;
        } else if (error instanceof RoomError) {
          this._end(error);
          return;
        } else {
          code = 1006;
          reason = String(error?.message ?? error);
        }
      }
      if (this._closing) return;
      const now = monotonic();
      const errorCode = this._lastError;
      if (this._welcomedThisSession) {
        attempt = 0; // it worked: the next drop starts afresh
        outageSince = null;
        this._expiredResumeUsed = false;
        this._rotation.clear(url);
      }
      if (code !== 1013 && (!this._opened || this._stalled)) this._rotation.suspect(url, now);
      if (code === CloseCode.REDIRECT && this._nextUrl) {
        const target = this._nextUrl;
        const refusal = this.redirectPolicy.refusal(target, url);
        if (refusal !== null) {
          this._nextUrl = null;
          this.stats.redirectsRefused += 1;
          const message = `refused a redirect to ${redactUrl(target)} (${refusal}); reconnecting to a known server`;
          this.logger?.warn?.(`stateroom: room ${this.room}: ${message}`);
          this.emit("error", new RoomError("redirect_refused", message, { closeCode: code }));
        } else if (this._rotation.isSuspect(target, now) && !this._rotation.allSuspect(now)) {
          this._nextUrl = null; // it just failed us: ask another server first
          this.stats.redirectsDeferred += 1;
        } else {
          this.stats.redirects += 1;
          continue;
        }
      }
      if (
        code === CloseCode.UNAUTHORIZED &&
        (errorCode === ErrorCode.TOKEN_EXPIRED || reason === ErrorCode.TOKEN_EXPIRED) &&
        typeof this._tokenSource !== "string" &&
        !this._expiredResumeUsed
      ) {
        // Our token ran out (a renewal failed or came too late): resume once with a
        // fresh one, on the same server.
        this._expiredResumeUsed = true;
        this.stats.tokenResumes += 1;
        if (typeof this._tokenSource?.invalidate === "function" && this._presentedToken) {
          this._tokenSource.invalidate(this._presentedToken);
        }
        this._nextUrl = url;
        continue;
      }
      if (!RETRYABLE_CLOSES.has(code)) {
        this._fail(code, reason, errorCode, cause);
        return;
      }
      if (this._welcomedThisSession && !this._nextUrl) this._nextUrl = this._fallbackTarget(url, now);
      this._setState("reconnecting");
      attempt += 1;
      if (outageSince === null) outageSince = now;
      const fast = now - outageSince < this.fastRetryWindowMs;
      const cap = fast ? Math.min(this.backoffMaxMs, this.retryBackoffMaxMs) : this.backoffMaxMs;
      await this._sleep(backoffDelay(attempt, this.backoffBaseMs, cap));
    }
  }

  /** One WebSocket connection; resolves with its close code and reason. */
  async _session(url) {
    const token = await this._token();
    this._presentedToken = token;
    const WS = this._WebSocket ?? (await resolveWebSocket());
    if (this._closing) return { code: 1000, reason: "closed by the client" };
    this.url = url;
    return new Promise((resolve, reject) => {
      let ws;
      try {
        const protocols = this._offered.map((c) => c.subprotocol);
        ws = isWsPackage(WS)
          ? new WS(url, protocols, { perMessageDeflate: false, handshakeTimeout: this.openTimeoutMs, maxPayload: 64 << 20 })
          : new WS(url, protocols);
      } catch (error) {
        resolve({ code: 1006, reason: String(error?.message ?? error) });
        return;
      }
      ws.binaryType = "arraybuffer";
      let timer = null;
      let pinged = false;
      const conn = {
        ws,
        url,
        open: false,
        done: false,
        reauthTimer: null,
        finish: (result, isError, closeCode) => {
          if (conn.done) return;
          conn.done = true;
          clearTimeout(timer);
          clearTimeout(conn.reauthTimer);
          conn.authWake?.();
          ws.onopen = ws.onmessage = ws.onclose = null;
          ws.onerror = () => {};
          try {
            if (closeCode !== undefined && ws.readyState === 1) ws.close(closeCode);
            else if (typeof ws.terminate === "function") ws.terminate();
            else ws.close();
          } catch {
            // already closed
          }
          if (this._conn === conn) this._conn = null;
          this._authInFlight = "";
          if (this.connectionState === "open") this._setState("reconnecting");
          if (isError) reject(result);
          else resolve(result);
        },
      };
      const arm = () => {
        clearTimeout(timer);
        const joined = this._welcomedThisSession;
        // Half the stall timeout without a frame: ping (a live server answers).
        timer = setTimeout(
          () => {
            if (conn.done) return;
            if (joined && !pinged) {
              pinged = true;
              this._send(conn, { t: "ping", id: ++this._pingId });
              arm();
              return;
            }
            // A joined connection gone silent is a frozen or cut-off process: suspect. A
            // join left unanswered is not (a peer may hold a join 1.5 s for a lease).
            this._stalled = joined;
            conn.finish({ code: 1006, reason: `no ${joined ? "frame" : "answer to join"} within the timeout` });
          },
          joined ? this.stallTimeoutMs / 2 : this.joinTimeoutMs,
        );
      };
      timer = setTimeout(() => {
        conn.finish({ code: 1006, reason: `no WebSocket handshake within ${this.openTimeoutMs} ms` });
      }, this.openTimeoutMs);
      ws.onopen = () => {
        if (conn.done) return;
        clearTimeout(timer);
        this._opened = true;
        conn.open = true;
        this._conn = conn;
        // The version the server picked; a server that negotiates none speaks v1.
        const chosen = this._offered.find((c) => c.subprotocol === ws.protocol);
        this.codec = chosen ?? this._offered[this._offered.length - 1];
        this._shared = new DeltaDecoder();
        this._private = new DeltaDecoder();
        this._resyncAt = null;
        this._carry = []; // the server resends them: they are after `since`
        const version = this.codec.version;
        if (version < PROTOCOL_V2 && this.requestedOptions !== null && !this._joined) {
          // Creating the room without its options would be worse than not joining.
          this._lastError = ErrorCode.UNSUPPORTED_VERSION;
          conn.finish(
            { code: CloseCode.UNSUPPORTED_VERSION, reason: "room options need protocol v2; this server speaks only v1" },
            false,
            1000,
          );
          return;
        }
        const join = { t: "join", v: version, room: this.room, token };
        if (this.game) join.game = this.game;
        if (version >= PROTOCOL_V2) {
          if (this.requestedOptions !== null) join.options = this.requestedOptions;
          // The last tick delivered: the server resends the events of later ones.
          join.since = this.stats.lastTick;
        }
        this._send(conn, join);
        arm();
      };
      ws.onmessage = (event) => {
        if (conn.done) return;
        pinged = false;
        try {
          const message = this.codec.decode(event.data);
          checkServerMessage(message, this.codec.version);
          this._handle(conn, message);
        } catch (error) {
          conn.finish(error, true);
          return;
        }
        if (conn.done) return;
        if (this._resyncAt !== null && monotonic() - this._resyncAt > RESYNC_TIMEOUT_MS) {
          // The server did not answer our sync with keyframes: a new connection starts with them.
          conn.finish({ code: 1013, reason: "no keyframe after sync" }, false, 1000);
          return;
        }
        arm();
      };
      ws.onclose = (event) => {
        conn.finish({ code: event.code || 1006, reason: event.reason || "connection lost" });
      };
      ws.onerror = () => {}; // a close event follows
    });
  }

  _send(conn, message) {
    if (conn.done || conn.ws.readyState !== 1) return false;
    try {
      conn.ws.send(this.codec.encode(message));
      return true;
    } catch {
      return false;
    }
  }

  // -- token renewal on the open connection --------------------------------------------

  _startReauth(conn) {
    let failures = 0;
    const schedule = () => {
      if (conn.done || this.tokenExp === null) return;
      const now = nowS();
      const since = this._authSentAt === null ? null : (monotonic() - this._authSentAt) / 1000;
      let delay;
      if (failures) {
        delay = reauthRetryDelay(failures, this.tokenExp, now);
        if (since !== null) delay = Math.max(delay, REAUTH_HARD_MIN_INTERVAL - since);
      } else {
        delay = reauthDelay(this.tokenExp, now, since);
      }
      conn.reauthTimer = setTimeout(async () => {
        const accepted = await this._reauthOnce(conn);
        if (conn.done) return;
        if (accepted) failures = 0;
        else {
          failures += 1;
          this.stats.reauthFailures += 1;
        }
        schedule();
      }, Math.min(delay * 1000, 2 ** 31 - 1));
    };
    schedule();
  }

  async _reauthOnce(conn) {
    let token;
    try {
      token = await this._token();
    } catch (error) {
      this.logger?.warn?.(`stateroom: room ${this.room}: cannot renew the session's token: ${error.message}`);
      return false;
    }
    if (conn.done) return false;
    if (token === this._presentedToken) return false; // the source has nothing newer yet
    this._authInFlight = token;
    this._authSentAt = monotonic();
    const replied = new Promise((resolve) => {
      const timer = setTimeout(resolve, REAUTH_REPLY_TIMEOUT_MS);
      const wake = () => {
        clearTimeout(timer);
        resolve();
      };
      this._authReply = wake;
      conn.authWake = wake;
    });
    if (!this._send(conn, { t: "auth", token })) return false;
    await replied;
    const accepted = this._presentedToken === token;
    this._authInFlight = "";
    if (!accepted && !conn.done) {
      this.logger?.warn?.(`stateroom: room ${this.room}: the server did not accept the renewed token`);
    }
    return accepted;
  }

  _onAuthed(message) {
    if (Number.isSafeInteger(message.token_exp)) this.tokenExp = message.token_exp;
    if (this._authInFlight) this._presentedToken = this._authInFlight;
    this.stats.reauths += 1;
    this._authReply?.();
  }

  // -- inputs and messages -------------------------------------------------------------

  /** Send the pending inputs not yet sent on this connection, within the flow limits. */
  _flush() {
    const conn = this._conn;
    if (conn === null || this.connectionState !== "open") return;
    const now = monotonic();
    this._sendTokens = Math.min(SEND_BURST, this._sendTokens + ((now - this._sendTokensAt) / 1000) * SEND_RATE);
    this._sendTokensAt = now;
    for (const pending of this._pending) {
      if (pending.seq <= this._sentUpto) continue;
      if (pending.seq - this.stats.maxAck > WINDOW || this._sendTokens < 1) break;
      this._sendTokens -= 1;
      this._sentUpto = pending.seq;
      if (pending.sent) this.stats.resent += 1;
      pending.sent = true;
      this._send(conn, { t: "input", seq: pending.seq, data: pending.data });
    }
  }

  _handle(conn, message) {
    switch (message.t) {
      case "state":
        this._onState(message);
        return;
      case "welcome":
        this._onWelcome(conn, message);
        return;
      case "redirect":
        this._nextUrl = typeof message.url === "string" ? message.url : null;
        return;
      case "authed":
        this._onAuthed(message);
        return;
      case "pong": {
        const ping = this._pings.get(message.id);
        if (ping !== undefined) {
          this._pings.delete(message.id);
          clearTimeout(ping.timer);
          ping.resolve(monotonic() - ping.sentAt);
        }
        return;
      }
      case "error":
        this._onError(message);
        return;
      default:
        return; // unknown server messages are ignored (room for minor versions)
    }
  }

  _onError(message) {
    const code = String(message.code);
    this._lastError = code;
    this.stats.errors[code] = (this.stats.errors[code] ?? 0) + 1;
    if (AUTH_ERRORS.has(code) && this._authInFlight) this._authReply?.(); // refused (a close may follow)
    const seq = Number.isSafeInteger(message.seq) ? message.seq : undefined;
    const expected = message.expected;
    if (Number.isSafeInteger(expected) && expected - 1 < this._sentUpto) {
      this._sentUpto = expected - 1; // resend from there, paced by _flush
    }
    if (code === ErrorCode.ILLEGAL_INPUT && seq !== undefined) this._dropIllegal(seq);
    this.emit("error", new RoomError(code, String(message.message ?? code), { seq }));
  }

  /** The game refused input `seq`: that seq is not consumed, so the later inputs move
   * down by one (they were refused with sequence_gap, or will be) and are resent. */
  _dropIllegal(seq) {
    const index = this._pending.findIndex((p) => p.seq === seq);
    if (index < 0) return;
    this._pending.splice(index, 1);
    for (let i = index; i < this._pending.length; i++) this._pending[i].seq -= 1;
    this._seq -= 1;
    this._sentUpto = Math.min(this._sentUpto, seq - 1);
    this._flush();
  }

  _onWelcome(conn, message) {
    const version = this.codec.version;
    if ((message.v ?? PROTOCOL_V1) !== version) {
      throw new ProtocolError(
        `the server's welcome says protocol ${String(message.v).slice(0, 20)}, but the connection negotiated ${this.codec.subprotocol}`,
      );
    }
    for (const [name, ok] of [
      ["player_id", typeof message.player_id === "string"],
      ["server", typeof message.server === "string"],
      ["epoch", Number.isSafeInteger(message.epoch)],
      ["ack", Number.isSafeInteger(message.ack)],
    ]) {
      if (!ok) throw new ProtocolError(`a welcome needs a valid '${name}'`);
    }
    let options = null;
    if (version >= PROTOCOL_V2) {
      if (!isMap(message.options)) throw new ProtocolError("a v2 welcome needs the room's 'options' (a map)");
      options = message.options;
      this.options = options;
    }
    if (this._joined) this.stats.reconnects += 1; // a resumed session, not a failed attempt
    this._welcomedThisSession = true;
    this._fallbackUrl = typeof message.fallback === "string" && message.fallback ? message.fallback : null;
    this.playerId = message.player_id;
    this.serverId = message.server;
    this.epoch = message.epoch;
    this.tickRate = Number.isSafeInteger(message.tick_rate) ? message.tick_rate : this.tickRate;
    this.tokenExp = Number.isSafeInteger(message.token_exp) ? message.token_exp : null;
    const ack = message.ack;
    if (!message.resumed && this._joined) this._newSeat();
    this.welcome = Object.freeze({
      version,
      room: String(message.room ?? this.room),
      game: String(message.game ?? this.game ?? ""),
      playerId: this.playerId,
      serverId: this.serverId,
      epoch: this.epoch,
      tick: Number(message.tick ?? 0),
      tickRate: this.tickRate,
      ack,
      resumed: Boolean(message.resumed),
      tokenExp: this.tokenExp,
      options,
    });
    const first = !this._joined;
    this._joined = true;
    this.connectionState = "open";
    this._applyAck(ack);
    if (this.tokenExp !== null && typeof this._tokenSource !== "string") this._startReauth(conn);
    // A new connection: resend every input the server has not applied, in order.
    this._sentUpto = 0;
    this._sendTokens = SEND_BURST;
    this._sendTokensAt = monotonic();
    this._flush();
    this.emit("welcome", this.welcome);
    this.emit("status", this.status);
    if (first) for (const waiter of this._joinWaiters.splice(0)) waiter.resolve(this.welcome);
  }

  /** The room gave us a fresh seat (ours expired): sequences start again at 1. */
  _newSeat() {
    this.stats.seatResets += 1;
    this.stats.maxAck = 0;
    this._seq = 0;
    for (const pending of this._pending) pending.seq = ++this._seq;
  }

  _onState(message) {
    const { tick, ack } = message;
    if (tick <= this.stats.lastTick) {
      // Older than (or as old as) a state delivered: its events were delivered too.
      this.stats.rollbacks += 1;
      return;
    }
    this._applyAck(ack);
    this._flush();
    let state;
    if (this.codec.version >= PROTOCOL_V2) {
      state = this._stateV2(message);
      if (state === null) return;
    } else {
      state = makeState(tick, ack, message.state, this.serverId, this.epoch, null, []);
    }
    // Only now is the tick applied: the next join's `since`.
    this.stats.lastTick = tick;
    this.stats.events += state.events.length;
    this.lastState = state;
    this._checkDuplicates(state);
    for (const mailbox of this._mailboxes) mailbox.put(state);
    this.emit("state", state);
    if (state.events.length && this.listenerCount("event")) {
      for (const data of state.events) this.emit("event", Object.freeze({ tick, data }));
    }
  }

  _checkDuplicates(state) {
    if (typeof this.countApplied !== "function" || !this.playerId) return;
    let applied;
    try {
      applied = this.countApplied(state, this.playerId);
    } catch {
      return;
    }
    if (typeof applied === "number" && applied - state.ack > this.stats.duplicated) {
      this.stats.duplicated = applied - state.ack;
    }
  }

  /** Apply a v2 state's payloads; null when it is dropped while waiting for keyframes
   * (its events are kept for the next state delivered). */
  _stateV2(message) {
    const shared = message.shared;
    const priv = message.private;
    const events = message.events ?? [];
    if (this._resyncAt !== null && !isKeyframe(shared)) {
      this.stats.droppedStates += 1;
      this._carry.push(...events);
      return null;
    }
    let view;
    let mine = null;
    try {
      view = this._shared.apply(shared);
      if (priv !== undefined && priv !== null) mine = this._private.apply(priv);
    } catch (error) {
      if (!(error instanceof DeltaError)) throw error;
      if (isKeyframe(shared) && (priv === undefined || priv === null || isKeyframe(priv))) {
        throw error; // a keyframe we cannot read: a bad server, not a missed frame
      }
      // A delta we cannot apply (one was missed, or the stream restarted): ask for
      // keyframes once, and skip states until they come.
      this.logger?.info?.(`stateroom: room ${this.room}: ${error.message}; asking for a keyframe`);
      this.stats.resyncs += 1;
      this.stats.droppedStates += 1;
      this._carry.push(...events);
      if (this._resyncAt === null) {
        this._resyncAt = monotonic();
        if (this._conn !== null) this._send(this._conn, { t: "sync" });
      }
      return null;
    }
    this._resyncAt = null;
    let all = events;
    if (this._carry.length) {
      all = [...this._carry, ...events];
      this._carry = [];
    }
    return makeState(message.tick, message.ack, view, this.serverId, this.epoch, mine, all);
  }

  _applyAck(ack) {
    if (ack < this.stats.maxAck) {
      this.stats.lost += this.stats.maxAck - ack;
      this.logger?.warn?.(`stateroom: room ${this.room}: ack went back from ${this.stats.maxAck} to ${ack}`);
    }
    const now = monotonic();
    let n = 0;
    while (n < this._pending.length && this._pending[n].seq <= ack) {
      const pending = this._pending[n++];
      if (pending.seq > this.stats.maxAck) {
        const latency = now - pending.sentAt;
        this._latencies.push(latency);
        if (this._latencies.length > LATENCY_SAMPLES) this._latencies.shift();
        this._latencySorted = null;
        this._lastLatency = latency;
        this.stats.acked += 1;
      }
    }
    if (n) this._pending.splice(0, n);
    this.stats.maxAck = Math.max(this.stats.maxAck, ack);
  }
}

/** The shape checks of a server message the client relies on (as the Python SDK's
 * `_decode_server_frame`): a state's tick and ack are ints, v2 has `shared` and a list
 * of `events`, v1 a `state`. */
function checkServerMessage(message, version) {
  if (message.t !== "state") return;
  for (const name of ["tick", "ack"]) {
    if (!Number.isSafeInteger(message[name])) throw new ProtocolError(`state message without an integer '${name}'`);
  }
  if (version >= PROTOCOL_V2) {
    if (!Object.hasOwn(message, "shared")) throw new ProtocolError("v2 state message without a 'shared'");
    if (message.events !== undefined && !Array.isArray(message.events)) {
      throw new ProtocolError("a state's 'events' must be a list");
    }
  } else if (!Object.hasOwn(message, "state")) {
    throw new ProtocolError("state message without a 'state'");
  }
}
