// RoomClient against real room servers: both encodings and both protocol versions,
// integers >= 2^32 accepted by the server, redirects, views and events of protocol v2,
// and a session that outlives its 8 s tokens by renewing them on the open connection.
import assert from "node:assert/strict";

import { makeCodec, resolveWebSocket, RoomClient } from "../../src/index.js";
import { auth, liveTest, roomName, serverOf, sleep, until, urls } from "../support/cluster.js";

const quiet = { warn() {}, info() {} };

async function player(name, room, extra = {}) {
  const client = auth();
  const tokens = await client.guest(name);
  return new RoomClient({ urls: urls(), room, token: client.tokenSource(tokens), logger: quiet, ...extra });
}

for (const encoding of ["msgpack", "json"]) {
  for (const protocol of [2, 1]) {
    liveTest(`arena over ${encoding} v${protocol}: every input acked once, ticks forward`, async () => {
      const room = await player(`js-${encoding}-${protocol}`, roomName(`js-${encoding}${protocol}`), { encoding, protocol });
      const ticks = [];
      room.on("state", (s) => ticks.push(s.tick));
      const welcome = await room.connect();
      assert.equal(welcome.version, protocol);
      assert.equal(room.status.encoding, encoding);
      assert.ok(serverOf(room.status.url), "connected to a server of the cluster");
      assert.ok(welcome.serverId.startsWith(`${serverOf(room.status.url).id}-`));
      for (let i = 0; i < 30; i++) {
        room.sendInput({ dx: Math.cos(i), dy: Math.sin(i) });
        await sleep(10);
      }
      await until(() => room.unacked === 0, 5000, "every input acked");
      const me = room.lastState.state.players[room.playerId];
      assert.equal(room.lastState.ack, 30);
      assert.equal(me.inputs, 30, "each input applied exactly once");
      assert.ok(me.x >= 0 && me.x <= 64 && me.y >= 0 && me.y <= 32);
      assert.equal(room.stats.acked, 30);
      assert.equal(room.stats.lost, 0);
      assert.equal(room.stats.duplicated, 0);
      assert.ok(ticks.every((tick, i) => i === 0 || tick > ticks[i - 1]), "ticks only go forward");
      assert.ok(room.latency.p50Ms > 0 && room.latency.p99Ms < 1000);
      assert.ok((await room.ping()) >= 0);
      await room.leave();
      assert.equal(room.status.state, "closed");
    });
  }
}

async function rawSession(encoding, room) {
  const WS = await resolveWebSocket();
  const codec = makeCodec(encoding, 1);
  const tokens = await auth().guest("js-raw");
  const ws = new WS(urls()[0], [codec.subprotocol]);
  ws.binaryType = "arraybuffer";
  const inbox = [];
  let wake = null;
  ws.onmessage = (event) => {
    inbox.push(codec.decode(event.data));
    wake?.();
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  const next = async (t) => {
    const end = Date.now() + 5000;
    for (;;) {
      const index = inbox.findIndex((m) => m.t === t || m.t === "error" || m.t === "redirect");
      if (index >= 0) return inbox.splice(index, 1)[0];
      if (Date.now() > end) throw new Error(`no ${t}`);
      await new Promise((r) => {
        wake = r;
        setTimeout(r, 50);
      });
    }
  };
  return { ws, codec, tokens, next, send: (m) => ws.send(codec.encode(m)) };
}

for (const encoding of ["msgpack", "json"]) {
  liveTest(`the server reads our integers >= 2^32 as integers (${encoding})`, async () => {
    const room = roomName("js-ints");
    const session = await rawSession(encoding, room);
    // Find the owner (follow one redirect) so that the join is answered with a welcome.
    session.send({ t: "join", v: 1, room, token: session.tokens.accessToken });
    let answer = await session.next("welcome");
    let current = session;
    if (answer.t === "redirect") {
      session.ws.close();
      const WS = await resolveWebSocket();
      const ws = new WS(answer.url, [session.codec.subprotocol]);
      ws.binaryType = "arraybuffer";
      const inbox = [];
      ws.onmessage = (event) => inbox.push(session.codec.decode(event.data));
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = reject;
      });
      current = {
        ws,
        send: (m) => ws.send(session.codec.encode(m)),
        next: async (t) => {
          await until(() => inbox.some((m) => m.t === t || m.t === "error"), 5000, t);
          return inbox.splice(inbox.findIndex((m) => m.t === t || m.t === "error"), 1)[0];
        },
      };
      current.send({ t: "join", v: 1, room, token: session.tokens.accessToken });
      answer = await current.next("welcome");
    }
    assert.equal(answer.t, "welcome", JSON.stringify(answer));
    for (const id of [2 ** 32 + 5, 2 ** 53 - 1]) {
      current.send({ t: "ping", id });
      const pong = await current.next("pong");
      assert.equal(pong.t, "pong", JSON.stringify(pong));
      assert.equal(pong.id, id);
    }
    // an input seq of 2^32 + 5 is read as an int: it is a gap (1 expected), not a bad type
    current.send({ t: "input", seq: 2 ** 32 + 5, data: { dx: 0, dy: 0 } });
    const gap = await current.next("never");
    assert.equal(gap.code, "sequence_gap", JSON.stringify(gap));
    assert.equal(gap.expected, 1);
    // while a float where an int belongs is refused: the check above could fail
    current.send({ t: "ping", id: 2 ** 32 + 0.5 });
    const refused = await current.next("never");
    assert.equal(refused.code, "invalid_message");
    current.ws.close();
  });
}

liveTest("a player given only the other server is redirected to the owner", async () => {
  const room = roomName("js-redirect");
  const first = await player("js-first", room);
  await first.connect();
  first.sendInput({ dx: 1, dy: 0 });
  const owner = serverOf(first.status.url);
  const other = urls().find((url) => serverOf(url) !== owner);
  const second = await player("js-second", room, { urls: [other] });
  await second.connect();
  assert.equal(second.serverId, first.serverId);
  assert.equal(second.stats.redirects, 1);
  assert.equal(serverOf(second.status.url), owner);
  await until(() => second.lastState && Object.keys(second.lastState.state.players).length === 2, 3000, "both seated");
  await Promise.all([first.leave(), second.leave()]);
});

liveTest("protocol v2 (tests.games:Cards): private hands, events exactly once, renewal of 8 s tokens", async () => {
  const room = roomName("js-cards");
  const players = [await player("js-a", room, { game: "cards", options: { max_players: 4 } }), await player("js-b", room, { game: "cards", encoding: "json" })];
  const seen = players.map(() => ({ drew: [], who: [], privateN: [], publicN: [] }));
  players.forEach((p, i) => {
    p.countApplied = (state, me) => state.state.counts?.[me];
    p.on("event", ({ data }) => {
      if (data.drew) seen[i].drew.push(data.drew) && seen[i].privateN.push(data.n);
      else seen[i].publicN.push(data.n) && seen[i].who.push(data.who);
    });
  });
  for (const p of players) await p.connect();
  assert.deepEqual(players[1].options, { max_players: 4 }, "the room's options, from the welcome");
  const started = Date.now();
  let draws = 0;
  while (Date.now() - started < 11000) {
    for (const p of players) p.sendInput("draw");
    draws++;
    await sleep(150);
  }
  await until(() => players.every((p) => p.unacked === 0), 5000, "every draw acked");
  await sleep(150);
  players.forEach((p, i) => {
    const ns = seen[i].privateN;
    assert.equal(ns.length, draws, `player ${i} got one private event per draw`);
    assert.deepEqual(ns, ns.map((_, k) => k + 1), "private events in order, none twice");
    const pub = seen[i].publicN;
    assert.deepEqual(pub, pub.map((_, k) => pub[0] + k), "public events in order, none twice");
    assert.deepEqual(p.lastState.private.hand, seen[i].drew, "the private hand is the drawn cards");
    assert.ok(p.lastState.private.hand.every((card) => card.startsWith(`secret-${p.playerId}-`)), "no other player's card");
    assert.equal(p.lastState.state.counts[p.playerId], draws);
    assert.equal(p.stats.duplicated, 0);
    assert.equal(p.stats.lost, 0);
    assert.ok(p.stats.reauths >= 1, `player ${i} renewed its token on the open connection`);
    assert.equal(p.stats.reconnects, 0, "and never had to reconnect");
    assert.equal(p.stats.tokenResumes, 0);
  });
  await Promise.all(players.map((p) => p.leave()));
});

liveTest("a join with options the game refuses is a RoomError 4006 invalid_options", async () => {
  const room = await player("js-bad-options", roomName("js-badopt"), { game: "cards", options: { max_players: 99 } });
  await assert.rejects(room.connect(), (e) => e.code === "invalid_options" && e.closeCode === 4006);
  const unknown = await player("js-bad-game", roomName("js-badgame"), { game: "no-such-game" });
  await assert.rejects(unknown.connect(), (e) => e.code === "unknown_game" && e.closeCode === 4006);
});
