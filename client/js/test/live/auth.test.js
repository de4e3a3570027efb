// AuthClient against the real login service: logins, rotation and reuse detection,
// logout, matchmaking, the live server list, and the documented error codes.
import assert from "node:assert/strict";

import { AuthError, RoomClient } from "../../src/index.js";
import { auth, cluster, liveTest, roomName, sleep, until, urls } from "../support/cluster.js";

const rejectsWith = (promise, status, code) =>
  assert.rejects(promise, (e) => e instanceof AuthError && e.status === status && e.code === code, `${status} ${code}`);

liveTest("guest, account, refresh with rotation, reuse detection, logout", async () => {
  const client = auth();
  const guest = await client.guest("js-ann");
  assert.match(guest.playerId, /^g_/);
  assert.equal(guest.name, "js-ann");
  assert.ok(guest.expiresIn > 0 && guest.expiresAt > Date.now() / 1000);
  const username = `js${Date.now().toString(36)}`;
  const account = await client.register(username, "correct horse battery");
  assert.match(account.playerId, /^u_/);
  await rejectsWith(client.register(username, "correct horse battery"), 409, "username_taken");
  await rejectsWith(client.login(username, "wrong password!"), 401, "invalid_credentials");
  await rejectsWith(client.register("x", "short"), 422, "validation_failed");
  const first = await client.login(username, "correct horse battery");
  assert.equal(first.playerId, account.playerId);
  const second = await client.refresh(first);
  assert.notEqual(second.refreshToken, first.refreshToken);
  assert.notEqual(second.accessToken, first.accessToken);
  await rejectsWith(client.refresh(first), 401, "invalid_grant"); // reuse: the family is revoked
  await rejectsWith(client.refresh(second), 401, "invalid_grant");
  const other = await client.login(username, "correct horse battery");
  await client.logout(other);
  await rejectsWith(client.refresh(other), 401, "invalid_grant");
});

liveTest("the token source refreshes a short token by itself", async () => {
  const client = auth();
  const tokens = await client.guest();
  const source = client.tokenSource(tokens);
  assert.equal(await source.token(), tokens.accessToken, "fresh: not refreshed");
  source.invalidate(tokens.accessToken);
  const fresh = await source.token();
  assert.notEqual(fresh, tokens.accessToken);
  assert.equal(source.refreshes, 1);
});

liveTest("matchmaking: quick-join, listing, private rooms, and their errors", async () => {
  const client = auth();
  const tokens = await client.guest("js-mm");
  const source = client.tokenSource(tokens);
  const quick = await client.quickJoin(source, "cards", { max_players: 3 });
  assert.equal(quick.game, "cards");
  assert.equal(quick.created, true);
  assert.ok(quick.reservedUntil > Date.now() / 1000);
  const room = new RoomClient({ urls: urls(), room: quick.room, token: source, game: "cards", options: quick.options, logger: null });
  await room.connect();
  assert.equal(room.options.max_players, 3);
  room.sendInput("draw"); // a room nobody played in closes at once
  await until(() => room.stats.acked === 1, 5000, "the draw acked");
  await until(async () => (await client.listRooms(tokens, "cards", { filters: { max_players: 3 } })).some((r) => r.room === quick.room), 8000, "the room listed");
  const listed = (await client.listRooms(tokens, "cards", { limit: 100 })).find((r) => r.room === quick.room);
  assert.equal(listed.players, 1);
  assert.equal(listed.maxPlayers, 3);
  await room.leave();

  const priv = await client.createPrivate(tokens, "cards");
  assert.match(priv.code, /^[A-Z2-9]{6}$/);
  assert.ok(priv.expiresIn > 0);
  const found = await client.privateRoom(tokens, priv.code.toLowerCase());
  assert.equal(found.room, priv.room);
  assert.equal(found.running, false);

  await rejectsWith(client.privateRoom(tokens, "ZZZZZ9"), 404, "unknown_code");
  await rejectsWith(client.quickJoin(tokens, "no-such-game"), 404, "unknown_game");
  await rejectsWith(client.quickJoin(tokens, "cards", { no_such_option: 1 }), 422, "invalid_options");
  await rejectsWith(client.listRooms("not-a-token", "cards"), 401, "token_malformed");
  await rejectsWith(client.listRooms("", "cards"), 401, "unauthorized");
});

liveTest("GET /v1/servers lists the live room servers", async (t) => {
  const client = auth();
  const tokens = await client.guest();
  let servers;
  try {
    servers = await client.servers(tokens);
  } catch (error) {
    if (error instanceof AuthError && error.status === 404 && error.code === "not_found") {
      t.skip("this login service does not serve GET /v1/servers yet");
      return;
    }
    throw error;
  }
  const expected = cluster.servers.map((s) => new URL(s.ws_url).host).sort();
  assert.deepEqual(servers.map((s) => new URL(s.wsUrl).host).sort(), expected);
  for (const server of servers) assert.ok(cluster.servers.some((s) => server.id.startsWith(`${s.id}-`)), server.id);
  const room = await RoomClient.fromAuth(client, tokens, roomName("js-from-auth"), { logger: null });
  await room.connect();
  assert.equal(room.urls.length, cluster.servers.length);
  await room.close();
  await sleep(0);
});
