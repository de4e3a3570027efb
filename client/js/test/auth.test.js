// AuthClient and RefreshingToken against a scripted HTTP server on loopback.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, test } from "node:test";

import { AuthClient, AuthError, RefreshingToken } from "../src/index.js";

let server;
let base;
const seen = [];
let refreshes = 0;
let refreshStatus = 200;

before(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", async () => {
      seen.push({ method: req.method, url: req.url, headers: req.headers, body: body ? JSON.parse(body) : null });
      const send = (status, payload) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(payload === undefined ? "" : JSON.stringify(payload));
      };
      const pair = (n) => ({ access_token: `at-${n}`, refresh_token: `rt-${n}`, token_type: "Bearer", expires_in: 600, player_id: "g_1", name: "ann" });
      const path = req.url.split("?")[0];
      if (path === "/v1/guest") return send(200, pair(0));
      if (path === "/v1/login") return send(401, { error: { code: "invalid_credentials", message: "wrong username or password" } });
      if (path === "/v1/accounts") return send(201, { player_id: "u_1", username: "alice" });
      if (path === "/v1/refresh") {
        refreshes++;
        await new Promise((r) => setTimeout(r, 30));
        if (refreshStatus !== 200) return send(refreshStatus, { error: { code: "invalid_grant", message: "spent" } });
        return send(200, pair(refreshes));
      }
      if (path === "/v1/logout") {
        res.writeHead(204);
        return res.end();
      }
      if (path === "/v1/rooms") return send(200, { game: "arena", rooms: [{ room: "r1", game: "arena", players: 2, max_players: 8, options: { mode: "ffa" }, metadata: {}, joinable: true }] });
      if (path === "/v1/rooms/quick-join") return send(200, { room: "arena.x", game: "arena", created: true, running: false, options: { mode: "ffa" }, players: 0, max_players: 8, reserved_until: 12.5, ws_url: null });
      if (path === "/v1/servers") return send(200, { servers: [{ id: "s1-abc", ws_url: "ws://127.0.0.1:1/v1/ws" }] });
      if (path === "/teapot") {
        res.writeHead(500, { "content-type": "text/html" });
        return res.end("<html>oops</html>");
      }
      send(404, { error: { code: "not_found", message: "no such path" } });
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${server.address().port}/`;
});

after(() => new Promise((r) => server.close(r)));

test("logins give token pairs with an absolute expiry", async () => {
  const auth = new AuthClient(base);
  const before = Date.now() / 1000;
  const tokens = await auth.guest("ann");
  assert.equal(tokens.accessToken, "at-0");
  assert.equal(tokens.refreshToken, "rt-0");
  assert.equal(tokens.playerId, "g_1");
  assert.equal(tokens.expiresIn, 600);
  assert.ok(tokens.expiresAt >= before + 600 && tokens.expiresAt <= Date.now() / 1000 + 600);
  assert.deepEqual(seen.at(-1).body, { name: "ann" });
  assert.deepEqual(await auth.register("alice", "correct horse"), { playerId: "u_1", username: "alice" });
  await auth.logout(tokens);
  assert.deepEqual(seen.at(-1).body, { refresh_token: "rt-0" });
});

test("refusals are AuthErrors with the service's status and code", async () => {
  const auth = new AuthClient(base);
  await assert.rejects(auth.login("alice", "nope"), (e) => e instanceof AuthError && e.status === 401 && e.code === "invalid_credentials" && /wrong username/.test(e.message));
  await assert.rejects(auth._request("GET", "/teapot"), (e) => e.status === 500 && e.code === "http_error" && /oops/.test(e.message));
  await assert.rejects(auth.privateRoom("t", "  "), (e) => e.code === "unknown_code" && e.status === 404);
  await assert.rejects(new AuthClient("http://127.0.0.1:1").guest(), (e) => e instanceof AuthError && e.status === 0 && e.code === "network_error");
  await assert.rejects(new AuthClient(base, { timeoutMs: 5 })._request("POST", "/v1/refresh", { body: {} }), (e) => e.status === 0 && e.code === "timeout");
  assert.throws(() => new AuthClient("ws://nope"), TypeError);
});

test("the rooms calls send the bearer token and read the answers", async () => {
  const auth = new AuthClient(base);
  const tokens = await auth.guest();
  const rooms = await auth.listRooms(tokens, "arena", { limit: 5, filters: { mode: "ffa", ranked: true, size: 4 } });
  assert.equal(seen.at(-1).url, "/v1/rooms?game=arena&limit=5&mode=ffa&ranked=true&size=4");
  assert.equal(seen.at(-1).headers.authorization, "Bearer at-0");
  assert.deepEqual(rooms, [{ room: "r1", game: "arena", players: 2, maxPlayers: 8, options: { mode: "ffa" }, metadata: {}, joinable: true }]);
  const quick = await auth.quickJoin(() => "from-a-function", "arena", { mode: "ffa" });
  assert.equal(seen.at(-1).headers.authorization, "Bearer from-a-function");
  assert.deepEqual(seen.at(-1).body, { game: "arena", options: { mode: "ffa" } });
  assert.equal(quick.reservedUntil, 12.5);
  assert.equal(quick.wsUrl, null);
  assert.deepEqual(await auth.servers("raw"), [{ id: "s1-abc", wsUrl: "ws://127.0.0.1:1/v1/ws" }]);
  await assert.rejects(auth.listRooms(tokens, "arena", { filters: { bad: 1.5 } }), TypeError);
});

test("RefreshingToken refreshes only when due, one refresh at a time", async () => {
  const auth = new AuthClient(base);
  let now = 1000;
  const tokens = { accessToken: "old", refreshToken: "rt-old", playerId: "g_1", name: "", expiresAt: 1600, expiresIn: 600 };
  const source = new RefreshingToken(auth, tokens, { clock: () => now });
  assert.equal(source.margin, 150);
  refreshes = 0;
  assert.equal(await source.token(), "old");
  now = 1451; // within 150 s of expiry
  const stored = [];
  source.onRefresh = (t) => stored.push(t.refreshToken);
  const all = await Promise.all([source.token(), source.token(), source.token()]);
  assert.deepEqual(all, ["at-1", "at-1", "at-1"]);
  assert.equal(refreshes, 1, "concurrent callers wait for the one refresh");
  assert.deepEqual(stored, ["rt-1"]);
  assert.equal(source.refreshes, 1);
  source.invalidate("at-1");
  assert.ok(source.due());
  assert.equal(await source.token(), "at-2");
});

test("a failed refresh keeps a valid token and throws for an expired one", async () => {
  const auth = new AuthClient(base);
  let now = 1500;
  const source = new RefreshingToken(auth, { accessToken: "still", refreshToken: "rt", playerId: "g", name: "", expiresAt: 1600, expiresIn: 600 }, { clock: () => now });
  refreshStatus = 401;
  try {
    assert.equal(await source.token(), "still");
    assert.match(source.lastError, /invalid_grant/);
    now = 1601;
    await assert.rejects(source.token(), (e) => e instanceof AuthError && e.status === 401);
  } finally {
    refreshStatus = 200;
  }
});
