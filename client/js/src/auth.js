/**
 * The login service's HTTP API over `fetch` (docs/api.md): logins, refresh with
 * rotation, logout, and finding a room (listing, quick-join, private rooms, servers).
 * Every refusal is an AuthError carrying the service's HTTP status and error code; a
 * request that gets no answer is an AuthError with status 0 and code `network_error`
 * (or `timeout`), which a RoomClient retries like any token source failure.
 */

import { AuthError } from "./errors.js";
import { refreshMargin } from "./policy.js";

const nowS = () => Date.now() / 1000;

function tokensFrom(body) {
  const expiresIn = Number(body.expires_in);
  if (typeof body.access_token !== "string" || typeof body.refresh_token !== "string" || !(expiresIn > 0)) {
    throw new AuthError(200, "invalid_response", "the login service's answer lacks a token pair");
  }
  return Object.freeze({
    accessToken: body.access_token,
    refreshToken: body.refresh_token,
    playerId: String(body.player_id ?? ""),
    name: String(body.name ?? ""),
    expiresAt: nowS() + expiresIn,
    expiresIn,
  });
}

function queryValue(value) {
  if (typeof value === "boolean") return value ? "true" : "false";
  if ((typeof value === "number" && Number.isInteger(value)) || typeof value === "string" || typeof value === "bigint") {
    return String(value);
  }
  throw new TypeError(`an option filter is a string, an integer or a boolean, not ${typeof value}`);
}

const listing = (r) =>
  Object.freeze({
    room: String(r.room),
    game: String(r.game),
    players: Number(r.players),
    maxPlayers: Number(r.max_players),
    options: r.options ?? {},
    metadata: r.metadata ?? {},
    joinable: r.joinable ?? true,
  });

const quickJoinResult = (r) =>
  Object.freeze({
    room: String(r.room),
    game: String(r.game),
    created: Boolean(r.created),
    running: Boolean(r.running),
    options: r.options ?? {},
    players: Number(r.players ?? 0),
    maxPlayers: Number(r.max_players ?? 0),
    reservedUntil: Number(r.reserved_until ?? 0),
    wsUrl: r.ws_url ?? null,
  });

const privateRoom = (r) =>
  Object.freeze({
    code: String(r.code),
    room: String(r.room),
    game: String(r.game),
    options: r.options ?? {},
    maxPlayers: Number(r.max_players ?? 0),
    players: Number(r.players ?? 0),
    metadata: r.metadata ?? {},
    joinable: r.joinable ?? true,
    running: Boolean(r.running ?? false),
    wsUrl: r.ws_url ?? null,
    expiresIn: r.expires_in === undefined || r.expires_in === null ? null : Number(r.expires_in),
  });

async function bearer(token) {
  let value;
  if (typeof token === "string") value = token;
  else if (token && typeof token.accessToken === "string") value = token.accessToken;
  else if (typeof token === "function") value = await token();
  else if (token && typeof token.token === "function") value = await token.token();
  else throw new TypeError("an access token is a Tokens pair, a string, or a token source");
  value = String(value).trim();
  // No token, no header: the service answers 401 unauthorized, with its hint.
  return value ? { authorization: `Bearer ${value}` } : {};
}

export class AuthClient {
  constructor(baseUrl, { timeoutMs = 10000, fetch: fetchImpl } = {}) {
    if (typeof baseUrl !== "string" || !/^https?:\/\//i.test(baseUrl)) {
      throw new TypeError(`the login service URL must be http(s)://..., not ${JSON.stringify(String(baseUrl).slice(0, 80))}`);
    }
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.timeoutMs = timeoutMs;
    this._fetch = fetchImpl ?? globalThis.fetch?.bind(globalThis);
    if (typeof this._fetch !== "function") throw new TypeError("no fetch in this runtime: pass options.fetch");
  }

  async _request(method, path, { body, headers = {}, params } = {}) {
    let url = this.baseUrl + path;
    if (params && params.length) url += `?${new URLSearchParams(params)}`;
    const init = { method, headers: { accept: "application/json", ...headers } };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    if (typeof AbortSignal !== "undefined" && AbortSignal.timeout) init.signal = AbortSignal.timeout(this.timeoutMs);
    let response;
    try {
      response = await this._fetch(url, init);
    } catch (error) {
      const timeout = error?.name === "TimeoutError" || error?.name === "AbortError";
      throw new AuthError(
        0,
        timeout ? "timeout" : "network_error",
        timeout ? `no answer from ${this.baseUrl} within ${this.timeoutMs} ms` : `cannot reach ${this.baseUrl}: ${error?.message ?? error}`,
        { cause: error },
      );
    }
    const text = await response.text();
    if (response.status >= 400) {
      let error;
      try {
        error = JSON.parse(text).error;
      } catch {
        error = null;
      }
      if (error && typeof error.code === "string") {
        throw new AuthError(response.status, error.code, String(error.message ?? ""));
      }
      throw new AuthError(response.status, "http_error", text.slice(0, 200));
    }
    if (response.status === 204 || text === "") return {};
    try {
      return JSON.parse(text);
    } catch {
      throw new AuthError(response.status, "invalid_response", `the login service sent no JSON: ${text.slice(0, 80)}`);
    }
  }

  async guest(name) {
    return tokensFrom(await this._request("POST", "/v1/guest", { body: name ? { name } : {} }));
  }

  async register(username, password) {
    const body = await this._request("POST", "/v1/accounts", { body: { username, password } });
    return Object.freeze({ playerId: String(body.player_id), username: String(body.username) });
  }

  async login(username, password) {
    return tokensFrom(await this._request("POST", "/v1/login", { body: { username, password } }));
  }

  async refresh(tokens) {
    return tokensFrom(await this._request("POST", "/v1/refresh", { body: { refresh_token: tokens.refreshToken } }));
  }

  async logout(tokens) {
    await this._request("POST", "/v1/logout", { body: { refresh_token: tokens.refreshToken } });
  }

  tokenSource(tokens, options = {}) {
    return new RefreshingToken(this, tokens, options);
  }

  async listRooms(token, game, { limit, filters = {} } = {}) {
    const params = [["game", game]];
    if (limit !== undefined) params.push(["limit", String(limit)]);
    for (const [key, value] of Object.entries(filters)) params.push([key, queryValue(value)]);
    const body = await this._request("GET", "/v1/rooms", { headers: await bearer(token), params });
    return (body.rooms ?? []).map(listing);
  }

  async quickJoin(token, game, options) {
    const body = { game };
    if (options !== undefined) body.options = { ...options };
    return quickJoinResult(await this._request("POST", "/v1/rooms/quick-join", { headers: await bearer(token), body }));
  }

  async createPrivate(token, game, options) {
    const body = { game };
    if (options !== undefined) body.options = { ...options };
    return privateRoom(await this._request("POST", "/v1/rooms/private", { headers: await bearer(token), body }));
  }

  async privateRoom(token, code) {
    const quoted = encodeURIComponent(String(code).trim());
    if (!quoted) throw new AuthError(404, "unknown_code", "a join code is 6 letters and digits");
    return privateRoom(await this._request("GET", `/v1/rooms/private/${quoted}`, { headers: await bearer(token) }));
  }

  async servers(token) {
    const body = await this._request("GET", "/v1/servers", { headers: await bearer(token) });
    return (body.servers ?? []).map((s) => Object.freeze({ id: String(s.id), wsUrl: String(s.ws_url) }));
  }
}

/**
 * A token source that refreshes its Tokens when due (the Python SDK's RefreshingToken).
 *
 * Returns the cached access token until it is within `margin` s of expiry (default
 * `refreshMargin` of its lifetime), then refreshes it (POST /v1/refresh, which rotates the
 * refresh token; one refresh in flight at a time: concurrent callers wait for it, since a
 * second use of a rotated refresh token is reuse and revokes the family). When a refresh
 * fails, the cached token is returned while it is still valid; once it has expired the
 * error is thrown (AuthError 401 is final for a RoomClient; anything else is retried).
 */
export class RefreshingToken {
  constructor(auth, tokens, { marginS, clock = nowS } = {}) {
    this.auth = auth;
    this.tokens = tokens;
    this._margin = marginS;
    this.clock = clock;
    this.refreshes = 0;
    this.lastError = "";
    this.onRefresh = null;
    this._rejected = "";
    this._lock = Promise.resolve();
  }

  get margin() {
    return this._margin ?? refreshMargin(this.tokens.expiresIn);
  }

  due() {
    const tokens = this.tokens;
    return tokens.accessToken === this._rejected || this.clock() >= tokens.expiresAt - this.margin;
  }

  invalidate(accessToken) {
    this._rejected = accessToken;
  }

  token() {
    const run = this._lock.then(() => this._get());
    this._lock = run.catch(() => {});
    return run;
  }

  async _get() {
    if (this.due()) {
      const error = await this._refresh();
      if (error !== null && this.clock() >= this.tokens.expiresAt) throw error;
    }
    return this.tokens.accessToken;
  }

  async _refresh() {
    try {
      this.tokens = await this.auth.refresh(this.tokens);
    } catch (error) {
      this.lastError = `token refresh failed: ${error?.message ?? error}`;
      return error;
    }
    this.refreshes += 1;
    this.lastError = "";
    this._rejected = "";
    if (typeof this.onRefresh === "function") {
      try {
        this.onRefresh(this.tokens);
      } catch (error) {
        setTimeout(() => {
          throw error;
        }, 0);
      }
    }
    return null;
  }
}
