/**
 * Pure policies of a room session, the same as the Python SDK's (client/sdk.py): retry
 * backoff, when to renew a token, which redirects to trust, which server to try next.
 * No I/O and no clock of their own, so tests drive them with numbers.
 */

// -- timing (why: see client/sdk.py's module docstring; tuned to a 3 s room lease) -----
export const STALL_TIMEOUT_MS = 1000; // without any frame: the connection is taken for dead
export const OPEN_TIMEOUT_MS = 1000; // TCP connect + WebSocket handshake
export const JOIN_TIMEOUT_MS = 2000; // handshake -> welcome (a peer may hold a join 1.5 s)
export const SUSPECT_MS = 3000; // a URL that stalled or failed its handshake is skipped
export const BACKOFF_BASE_MS = 50; // first retry within 50 ms
export const BACKOFF_MAX_MS = 1000; // cap once an outage lasts longer than the fast window
export const RETRY_BACKOFF_MAX_MS = 250; // cap during the first FAST_RETRY_WINDOW_MS
export const FAST_RETRY_WINDOW_MS = 5000;
export const RESYNC_TIMEOUT_MS = 2000; // no keyframe this long after a sync: reconnect
export const REAUTH_MARGIN = 60; // s before token_exp (at most half the remaining life)
export const REAUTH_FRACTION = 0.8; // of the remaining lifetime
export const REAUTH_MIN_INTERVAL = 5; // s between two auth messages (unless the token would expire)
export const REAUTH_HARD_MIN_INTERVAL = 1; // s between two auth messages, always
export const REAUTH_REPLY_TIMEOUT_MS = 10000; // to wait for authed before trying again

/** The wait before retry `attempt` (1, 2, ...), ms: uniform in [d/2, d],
 * d = min(cap, base * 2^(attempt-1)). */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  const d = Math.min(capMs, baseMs * 2 ** Math.min(Math.max(attempt, 1) - 1, 30));
  return d / 2 + random() * (d / 2);
}

/**
 * Seconds from `now` until the client should present a fresh token: the earlier of 80 %
 * of the remaining lifetime and 60 s before `tokenExp` (half the remaining lifetime when
 * that is shorter), but not within 5 s of the previous auth message (`sinceLastSend` s
 * ago, null if none) unless waiting that long would leave less than half the remaining
 * lifetime: then down to 1 s. 0 when the token has expired and nothing was sent.
 */
export function reauthDelay(tokenExp, now, sinceLastSend = null) {
  const remaining = tokenExp - now;
  let delay;
  let floor;
  if (remaining <= 0) {
    delay = 0;
    floor = sinceLastSend === null ? 0 : REAUTH_MIN_INTERVAL - sinceLastSend;
  } else {
    delay = Math.min(remaining - Math.min(REAUTH_MARGIN, remaining / 2), REAUTH_FRACTION * remaining);
    floor = 0;
    if (sinceLastSend !== null) {
      floor = Math.max(
        REAUTH_HARD_MIN_INTERVAL - sinceLastSend,
        Math.min(REAUTH_MIN_INTERVAL - sinceLastSend, remaining / 2),
      );
    }
  }
  return Math.max(0, delay, floor);
}

/** Wait (s) after `failures` failed renewals in a row: 1, 2, 4, ... s, at most half the
 * time left before `tokenExp` (at least 1 s, at most 60 s). */
export function reauthRetryDelay(failures, tokenExp, now) {
  return Math.max(1, Math.min(2 ** Math.max(failures - 1, 0), (tokenExp - now) / 2, 60));
}

/** How long (s) before expiry RefreshingToken refreshes a token of this lifetime: a
 * quarter of it, at least 90 s, at most 60 % of it — always more than what is left when
 * a RoomClient renews, so a renewal gets a new token. */
export function refreshMargin(lifetime) {
  if (!(lifetime > 0)) return REAUTH_MARGIN;
  return Math.min(Math.max(90, lifetime / 4), 0.6 * lifetime);
}

function parse(url) {
  try {
    return new URL(url);
  } catch {
    return null;
  }
}

function hostOf(parts) {
  let host = parts.hostname;
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  return host.replace(/\.$/, "").toLowerCase();
}

/** A URL fit for a log: scheme, host, port and path only (no credentials, query or
 * fragment, which may carry a token), at most 200 characters. */
export function redactUrl(url) {
  const parts = parse(url);
  if (parts === null) return `<unparseable URL of ${String(url).length} characters>`;
  let text = `${parts.protocol}//${parts.host}${parts.pathname}`;
  if (parts.search || parts.hash) text += "?…";
  return text.length <= 200 ? text : `${text.slice(0, 199)}…`;
}

/** A URL's host and port as one key: the same server however its URL is spelt. */
export function endpoint(url) {
  const parts = parse(url);
  if (parts === null || !parts.hostname) return String(url);
  const port = parts.port || (parts.protocol === "wss:" || parts.protocol === "https:" ? "443" : "80");
  return `${hostOf(parts)}:${port}`;
}

/**
 * Which redirect URLs a client may follow (and so send its token to).
 *
 * Trusted: the hosts of the client's own URLs (any port), plus `allowedHosts`: exact
 * host names or addresses, or `*.example.com` for any name below example.com. Only
 * ws/wss URLs without credentials, never wss -> ws.
 */
export class RedirectPolicy {
  constructor(urls, allowedHosts = []) {
    this.hosts = new Set();
    for (const url of urls) {
      const parts = parse(url);
      if (parts !== null && parts.hostname) this.hosts.add(hostOf(parts));
    }
    this.suffixes = [];
    for (let pattern of allowedHosts) {
      pattern = String(pattern).trim().replace(/\.$/, "").toLowerCase();
      if (pattern.startsWith("*.")) this.suffixes.push(pattern.slice(1));
      else if (pattern) this.hosts.add(pattern.replace(/^\[|\]$/g, ""));
    }
  }

  hostAllowed(host) {
    host = String(host).replace(/\.$/, "").toLowerCase();
    return this.hosts.has(host) || this.suffixes.some((s) => host.endsWith(s) && host.length > s.length);
  }

  /** Why `url` (a redirect received on a connection to `current`) must not be
   * followed, or null if it may be. */
  refusal(url, current) {
    const parts = typeof url === "string" ? parse(url) : null;
    if (parts === null) return "unparseable URL";
    const scheme = parts.protocol.slice(0, -1);
    if (scheme !== "ws" && scheme !== "wss") return `scheme ${JSON.stringify(scheme)} is not ws or wss`;
    if (!parts.hostname) return "no host";
    if (parts.username || parts.password || /^wss?:\/\/[^/?#]*@/i.test(url)) return "credentials in the URL";
    if (scheme === "ws" && parse(current)?.protocol === "wss:") return "downgrade from wss to ws";
    const host = hostOf(parts);
    if (!this.hostAllowed(host)) return `host ${JSON.stringify(host)} is not a known server or an allowed host`;
    return null;
  }
}

/**
 * Round-robin over the client's URLs that skips suspect ones. A URL whose handshake
 * failed, or whose connection stalled, is suspect for `suspectMs` (by host and port, so a
 * redirect URL of the same server counts). `next` returns the next URL that is not
 * suspect; when all are, the one whose suspicion ends first.
 */
export class ServerRotation {
  constructor(urls, start = 0, suspectMs = SUSPECT_MS) {
    if (!urls.length) throw new TypeError("no server URL");
    this.urls = [...urls];
    this.index = ((start % urls.length) + urls.length) % urls.length;
    this.suspectMs = suspectMs;
    this._until = new Map();
  }

  suspect(url, nowMs) {
    this._until.set(endpoint(url), nowMs + this.suspectMs);
  }

  clear(url) {
    this._until.delete(endpoint(url));
  }

  isSuspect(url, nowMs) {
    return (this._until.get(endpoint(url)) ?? 0) > nowMs;
  }

  allSuspect(nowMs) {
    return this.urls.every((url) => this.isSuspect(url, nowMs));
  }

  next(nowMs) {
    const count = this.urls.length;
    for (let step = 0; step < count; step++) {
      const url = this.urls[(this.index + step) % count];
      if (!this.isSuspect(url, nowMs)) {
        this.index = (this.index + step + 1) % count;
        return url;
      }
    }
    let best = 0;
    for (let i = 1; i < count; i++) {
      if ((this._until.get(endpoint(this.urls[i])) ?? 0) < (this._until.get(endpoint(this.urls[best])) ?? 0)) best = i;
    }
    this.index = (best + 1) % count;
    return this.urls[best];
  }
}
