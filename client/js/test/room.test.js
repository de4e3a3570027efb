// RoomClient against scripted WebSocket servers on loopback (test/support/fake-server.js):
// what it sends, and what it does with every kind of answer.
import assert from "node:assert/strict";
import { test } from "node:test";

import { RoomClient, RoomError } from "../src/index.js";
import { startFake, state, until, welcome } from "./support/fake-server.js";

const quiet = { warn() {}, info() {} };
const fast = { stallTimeoutMs: 400, openTimeoutMs: 500, joinTimeoutMs: 500, backoffBaseMs: 10, retryBackoffMaxMs: 30, logger: quiet };

function client(fake, extra = {}) {
  const urls = Array.isArray(fake) ? fake.map((f) => f.url) : fake.url;
  return new RoomClient({ urls, room: "r", token: "tok", ...fast, ...extra });
}

test("join carries the token, v2 is offered first, inputs go out in seq order", async (t) => {
  const fake = await startFake({
    onMessage(conn, m) {
      if (m.t === "join") {
        conn.send(welcome(conn));
        conn.send(state(conn, 1, 0));
      }
    },
  });
  t.after(() => fake.close());
  const room = client(fake, { game: "arena", options: { mode: "ffa" } });
  const welcomed = await room.connect();
  const conn = fake.connections[0];
  assert.equal(conn.ws.protocol, "stateroom.v2.msgpack");
  const join = await conn.next("join");
  assert.deepEqual({ ...join, _taken: undefined }, { t: "join", v: 2, room: "r", token: "tok", game: "arena", options: { mode: "ffa" }, since: 0, _taken: undefined });
  assert.equal(welcomed.serverId, "fake-1");
  assert.equal(welcomed.version, 2);
  assert.deepEqual(room.options, {});
  assert.equal(room.sendInput({ dx: 1, dy: 0 }), 1);
  assert.equal(room.sendInput({ dx: 0, dy: 1 }), 2);
  assert.deepEqual((await conn.next("input")).seq, 1);
  assert.deepEqual((await conn.next("input")).data, { dx: 0, dy: 1 });
  assert.equal(room.status.state, "open");
  await room.close();
  assert.equal(room.status.state, "closed");
});

test("states never go back; acks free inputs and give latencies", async (t) => {
  const fake = await startFake({ onMessage: (conn, m) => m.t === "join" && conn.send(welcome(conn)) });
  t.after(() => fake.close());
  for (const encoding of ["msgpack", "json"]) {
    const room = client(fake, { protocol: 1, encoding });
    await room.connect();
    const conn = fake.connections.at(-1);
    assert.equal(conn.ws.protocol, `stateroom.v1.${encoding}`);
    room.sendInput("a");
    room.sendInput("b");
    const ticks = [];
    room.on("state", (s) => ticks.push(s.tick));
    for (const [tick, ack] of [[5, 0], [6, 1], [4, 1], [6, 1], [7, 2]]) conn.send(state(conn, tick, ack, { w: tick }));
    await until(() => ticks.length === 3, 2000, "states");
    assert.deepEqual(ticks, [5, 6, 7]);
    assert.equal(room.stats.rollbacks, 2);
    assert.equal(room.stats.acked, 2);
    assert.equal(room.unacked, 0);
    assert.equal(room.lastState.state.w, 7);
    assert.equal(room.latency.samples, 2);
    assert.ok(room.latency.p50Ms >= 0 && room.latency.p99Ms >= room.latency.p50Ms);
    await room.close();
  }
});

test("a drop is resumed: rejoin, resend every unacked input in order", async (t) => {
  let connections = 0;
  const fake = await startFake({
    onMessage(conn, m) {
      if (m.t !== "join") return;
      connections++;
      conn.send(welcome(conn, { resumed: connections > 1, ack: connections > 1 ? 1 : 0, epoch: connections }));
    },
  });
  t.after(() => fake.close());
  const room = client(fake);
  const statuses = [];
  room.on("status", (s) => statuses.push(s.state));
  await room.connect();
  room.sendInput("one");
  room.sendInput("two");
  room.sendInput("three");
  const first = fake.connections[0];
  await first.next("input");
  first.send(state(first, 3, 0));
  await until(() => room.stats.lastTick === 3);
  first.ws.terminate(); // the process died
  await until(() => fake.connections.length === 2 && room.epoch === 2, 3000, "the resume");
  const second = fake.connections[1];
  const rejoin = await second.next("join");
  assert.equal(rejoin.since, 3, "the last tick delivered");
  const resent = [await second.next("input"), await second.next("input")];
  assert.deepEqual(resent.map((m) => [m.seq, m.data]), [[2, "two"], [3, "three"]]);
  assert.equal(room.stats.reconnects, 1);
  assert.equal(room.stats.resent, 2);
  assert.equal(room.unacked, 2);
  assert.ok(statuses.includes("reconnecting"));
  await room.close();
});

test("a dropped client goes first to the welcome's fallback server", async (t) => {
  const heir = await startFake({ onMessage: (conn, m) => m.t === "join" && conn.send(welcome(conn, { server: "heir", resumed: true })) });
  const owner = await startFake({
    onMessage: (conn, m) => m.t === "join" && conn.send(welcome(conn, { server: "owner", fallback: heir.url })),
  });
  t.after(() => Promise.all([owner.close(), heir.close()]));
  const room = client(owner); // the only URL it knows: the fallback is its way to the heir
  await room.connect();
  owner.connections[0].ws.terminate(); // the owner's process died
  await until(() => room.serverId === "heir", 3000, "the resume on the heir");
  assert.equal(room.stats.fallbacks, 1);
  assert.equal(heir.connections.length, 1);
  assert.equal(room.stats.redirects, 0);
  await room.close();
});

test("a redirect outside the cluster is refused; one inside is followed", async (t) => {
  const owner = await startFake({ onMessage: (conn, m) => m.t === "join" && conn.send(welcome(conn, { server: "owner" })) });
  let target = "ws://evil.example.org:1/v1/ws";
  const entry = await startFake({
    onMessage(conn, m) {
      if (m.t !== "join") return;
      conn.send({ t: "redirect", room: "r", url: target, server: "x" });
      conn.close(4021, "redirect");
    },
  });
  t.after(() => Promise.all([owner.close(), entry.close()]));
  const errors = [];
  const room = client(entry);
  room.on("error", (e) => errors.push(e.code));
  const joined = room.connect(3000);
  await until(() => room.stats.redirectsRefused >= 1, 3000, "a refusal");
  assert.deepEqual(errors.slice(0, 1), ["redirect_refused"]);
  assert.ok(entry.connections.length >= 1);
  target = `${owner.url}?placed=1`; // same host, another port: a server of the cluster
  const welcomed = await joined;
  assert.equal(welcomed.serverId, "owner");
  assert.equal(room.stats.redirects, 1);
  assert.equal(room.status.url, target);
  assert.equal((await owner.connections[0].next("join")).token, "tok");
  await room.close();
});

test("a final close is a RoomError with the error code and the close code", async (t) => {
  const fake = await startFake({
    onMessage(conn, m) {
      if (m.t !== "join") return;
      conn.send({ t: "error", code: "room_full", message: "no free seat" });
      conn.close(4005, "room full");
    },
  });
  t.after(() => fake.close());
  const room = client(fake);
  let closed;
  room.on("close", (e) => (closed = e));
  await assert.rejects(room.connect(), (e) => e instanceof RoomError && e.code === "room_full" && e.closeCode === 4005 && e.reason === "room full");
  assert.equal(closed.code, "room_full");
  assert.equal(room.status.state, "closed");
  assert.equal(room.status.error, closed);
  assert.equal(fake.connections.length, 1, "no retry");
  assert.throws(() => room.sendInput(1), /ended/);
  const iterator = room.states();
  await assert.rejects(iterator.next(), RoomError);
});

test("room options asked of a v1-only server end the join with 4004", async (t) => {
  const fake = await startFake({ protocols: ["stateroom.v1.msgpack"], onMessage: (conn, m) => m.t === "join" && conn.send(welcome(conn)) });
  t.after(() => fake.close());
  await assert.rejects(client(fake, { options: { mode: "ffa" } }).connect(), (e) => e.code === "unsupported_version" && e.closeCode === 4004);
  const room = client(fake);
  const welcomed = await room.connect();
  assert.equal(welcomed.version, 1, "without options, v1 is the fallback");
  await room.close();
});

test("a welcome of another version is a protocol error", async (t) => {
  const fake = await startFake({ onMessage: (conn, m) => m.t === "join" && conn.send({ ...welcome(conn), v: 1 }) });
  t.after(() => fake.close());
  await assert.rejects(client(fake).connect(), (e) => e instanceof RoomError && e.closeCode === 4000 && /welcome says protocol 1/.test(e.message) && e.cause?.code === "invalid_message");
});

test("v2: a delta that does not apply costs one sync, and no event", async (t) => {
  const fake = await startFake({ onMessage: (conn, m) => m.t === "join" && conn.send(welcome(conn)) });
  t.after(() => fake.close());
  const room = client(fake);
  await room.connect();
  const conn = fake.connections[0];
  const got = [];
  room.on("state", (s) => got.push([s.tick, s.state, [...s.events], s.private]));
  conn.send({ t: "state", tick: 1, shared: { tick: 1, view: { n: 1 } }, ack: 0, private: { tick: 1, view: { hand: [1] } }, events: ["e1"] });
  conn.send({ t: "state", tick: 2, shared: { tick: 2, base: 1, patch: { s: { n: 2 } } }, ack: 0, private: { tick: 2, base: 1 } });
  conn.send({ t: "state", tick: 4, shared: { tick: 4, base: 3, patch: { s: { n: 4 } } }, ack: 0, events: ["e4"] }); // 3 was lost
  conn.send({ t: "state", tick: 5, shared: { tick: 5, base: 4 }, ack: 0, events: ["e5"] });
  assert.deepEqual(await conn.next("sync"), { t: "sync", _taken: true });
  conn.send({ t: "state", tick: 6, shared: { tick: 6, view: { n: 6 } }, ack: 0, private: { tick: 6, view: { hand: [] } }, events: ["e6"] });
  await until(() => got.length === 3);
  assert.deepEqual(got, [
    [1, { n: 1 }, ["e1"], { hand: [1] }],
    [2, { n: 2 }, [], { hand: [1] }],
    [6, { n: 6 }, ["e4", "e5", "e6"], { hand: [] }],
  ]);
  assert.equal(room.stats.resyncs, 1);
  assert.equal(room.stats.droppedStates, 2);
  assert.equal(room.stats.events, 4);
  assert.equal(conn.received.filter((m) => m.t === "sync").length, 1, "one sync");
  await room.close();
});

test("events reach listeners and async iterators once, in order", async (t) => {
  const fake = await startFake({ onMessage: (conn, m) => m.t === "join" && conn.send(welcome(conn)) });
  t.after(() => fake.close());
  const room = client(fake, { queueSize: 2 });
  await room.connect();
  const conn = fake.connections[0];
  const events = [];
  room.on("event", (e) => events.push([e.tick, e.data]));
  const iterator = room[Symbol.asyncIterator]();
  for (let tick = 1; tick <= 5; tick++) conn.send(state(conn, tick, 0, { tick }, { events: [`e${tick}`] }));
  await until(() => events.length === 5);
  assert.deepEqual(events, [[1, "e1"], [2, "e2"], [3, "e3"], [4, "e4"], [5, "e5"]]);
  // a slow reader gets the latest states, and the events of those it missed
  const seen = [(await iterator.next()).value, (await iterator.next()).value];
  assert.deepEqual(seen.map((s) => s.tick), [4, 5]);
  assert.deepEqual(seen.map((s) => [...s.events]), [["e1", "e2", "e3", "e4"], ["e5"]]);
  assert.equal(room.stats.conflatedStates, 3);
  await room.close();
  assert.deepEqual(await iterator.next(), { value: undefined, done: true });
});

test("an illegal input is dropped and its seq reused", async (t) => {
  const fake = await startFake({
    onMessage(conn, m) {
      if (m.t === "join") conn.send(welcome(conn));
      if (m.t === "input" && m.data === "bad") conn.send({ t: "error", code: "illegal_input", message: "no", seq: m.seq });
      if (m.t === "input" && m.data !== "bad" && m.seq === 2) conn.send({ t: "error", code: "sequence_gap", message: "gap", seq: 2, expected: 1 });
    },
  });
  t.after(() => fake.close());
  const room = client(fake);
  const errors = [];
  room.on("error", (e) => errors.push([e.code, e.seq]));
  await room.connect();
  const conn = fake.connections[0];
  room.sendInput("bad");
  room.sendInput("good");
  await until(() => conn.received.filter((m) => m.t === "input" && m.data === "good" && m.seq === 1).length >= 1, 2000, "the resend at seq 1");
  assert.deepEqual(errors.slice(0, 1), [["illegal_input", 1]]);
  assert.equal(room.unacked, 1);
  assert.equal(room.sendInput("next"), 2);
  await room.close();
});

test("a silent server is pinged, then left for another", async (t) => {
  const silent = await startFake({ onMessage: (conn, m) => m.t === "join" && conn.send(welcome(conn, { server: "silent" })) });
  const alive = await startFake({ onMessage: (conn, m) => m.t === "join" && conn.send(welcome(conn, { server: "alive", resumed: true })) });
  t.after(() => Promise.all([silent.close(), alive.close()]));
  const room = new RoomClient({ urls: [silent.url], room: "r", token: "tok", ...fast, allowedHosts: [] });
  room._rotation.urls.push(alive.url);
  room._rotation.index = 0;
  await room.connect();
  assert.equal(room.serverId, "silent");
  assert.equal((await silent.connections[0].next("ping", 1000)).t, "ping");
  await until(() => room.serverId === "alive", 3000, "the move to the live server");
  assert.ok(room._rotation.isSuspect(silent.url, performance.now()), "the stalled server is suspect");
  assert.equal(room.stats.reconnects, 1);
  await room.close();
});

test("the token is renewed on the open connection; an expiry is resumed once", async (t) => {
  let issued = 0;
  const token = async () => `tok-${++issued}`;
  let joins = 0;
  const fake = await startFake({
    onMessage(conn, m) {
      if (m.t === "join") {
        joins++;
        const exp = Math.floor(Date.now() / 1000) + (joins === 1 ? 2 : 600);
        conn.send(welcome(conn, { token_exp: exp, resumed: joins > 1 }));
      }
      if (m.t === "auth") {
        conn.send({ t: "authed", token_exp: Math.floor(Date.now() / 1000) + 600 });
        setTimeout(() => {
          conn.send({ t: "error", code: "token_expired", message: "expired" });
          conn.close(4001, "token_expired");
        }, 50);
      }
    },
  });
  t.after(() => fake.close());
  const room = client(fake, { token, stallTimeoutMs: 10000 });
  await room.connect();
  const auth = await fake.connections[0].next("auth", 3000);
  assert.equal(auth.token, "tok-2");
  await until(() => room.stats.reauths === 1, 2000, "authed");
  await until(() => joins === 2 && room.connectionState === "open", 3000, "the resume after token_expired");
  assert.equal(room.stats.tokenResumes, 1);
  assert.equal((await fake.connections[1].next("join")).token, "tok-3");
  await room.close();
});

test("bad arguments are refused with clear errors", () => {
  assert.throws(() => new RoomClient({ urls: [], room: "r", token: "t" }), /at least one server URL/);
  assert.throws(() => new RoomClient({ urls: "http://x", room: "r", token: "t" }), /ws:\/\/ or wss:\/\//);
  assert.throws(() => new RoomClient({ urls: "ws://x", room: "bad room!", token: "t" }), /room name/);
  assert.throws(() => new RoomClient({ urls: "ws://x", room: "r" }), /needs a token/);
  assert.throws(() => new RoomClient({ urls: "ws://x", room: "r", token: "t", encoding: "xml" }), /encoding/);
  assert.throws(() => new RoomClient({ urls: "ws://x", room: "r", token: "t", protocol: 3 }), /protocol/);
  const room = new RoomClient({ urls: "ws://x", room: "r", token: "t" });
  assert.throws(() => room.sendInput(NaN), /finite/);
  assert.equal(room.unacked, 0, "a refused input is not queued");
});
