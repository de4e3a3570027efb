// The owner of a room is SIGKILLed while JS clients play in it (the PID comes from the
// cluster file of the cluster the harness started: tests/test_js_sdk.py). Two rooms, so
// that every client path is covered: an arena with a msgpack v2 and a JSON v1 player, and
// a tests.games:Cards room (private hands, events) with a v2 player. Each room's owner is
// killed once (with three servers, one kill can move both). Then: no acked input lost,
// none applied twice, no tick back, every event once; and the recovery as each client
// saw it (last state before the kill to first state after), written to
// STATEROOM_JS_REPORT.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";

import { RoomClient } from "../../src/index.js";
import { auth, cluster, liveTest, roomName, serverOf, sleep, until, urls } from "../support/cluster.js";

const quiet = { warn() {}, info() {} };

async function player(name, room, extra) {
  const client = auth();
  const tokens = await client.guest(name);
  const p = new RoomClient({ urls: urls(), room, token: client.tokenSource(tokens), logger: quiet, ...extra });
  p.track = { ticksBack: 0, last: null, states: [], events: [] };
  p.on("state", (s) => {
    const at = performance.now();
    if (p.track.last !== null && s.tick <= p.track.last.tick) p.track.ticksBack++;
    p.track.last = { at, tick: s.tick, epoch: s.epoch, serverId: s.serverId };
    p.track.states.push(p.track.last);
  });
  p.on("event", ({ data }) => p.track.events.push(data));
  return p;
}

/** Kill the owner of `players`' room; resolves with each player's recovery. */
async function killOwner(players) {
  const owner = serverOf(players[0].status.url);
  assert.ok(players.every((p) => serverOf(p.status.url) === owner), "every player is on the owner");
  const before = players.map((p) => ({ ...p.track.last, index: p.track.states.length }));
  const killedAt = performance.now();
  process.kill(owner.pid, "SIGKILL");
  owner.killed = true;
  await until(() => players.every((p, i) => p.track.states.slice(before[i].index).some((s) => s.epoch > before[i].epoch)), 15000, "a state from the new owner");
  return players.map((p, i) => {
    const after = p.track.states.slice(before[i].index).find((s) => s.at > killedAt);
    const moved = p.track.states.slice(before[i].index).find((s) => s.epoch > before[i].epoch);
    return {
      encoding: p.encoding,
      protocol: p.version,
      killed: owner.id,
      new_owner: moved.serverId,
      epoch: [before[i].epoch, moved.epoch],
      last_tick_before: before[i].tick,
      first_tick_after: after.tick,
      recovery_ms: Math.round(moved.at - before[i].at),
      from_kill_ms: Math.round(moved.at - killedAt),
    };
  });
}

liveTest("SIGKILL of the owner: no acked input lost or applied twice, no tick back, events once", async () => {
  assert.ok(cluster.servers.length >= 3, "three servers: a room's owner is killed once per room");
  const arena = roomName("js-kill-arena");
  const cards = roomName("js-kill-cards");
  const arenaPlayers = [await player("js-k1", arena, { encoding: "msgpack", protocol: 2 }), await player("js-k2", arena, { encoding: "json", protocol: 1 })];
  const cardsPlayer = await player("js-k3", cards, { game: "cards" });
  cardsPlayer.countApplied = (state, me) => state.state.counts?.[me];
  const all = [...arenaPlayers, cardsPlayer];
  for (const p of all) await p.connect();
  let playing = true;
  const loop = (async () => {
    let i = 0;
    while (playing) {
      for (const p of arenaPlayers) p.sendInput({ dx: Math.cos(i / 7), dy: Math.sin(i / 5) });
      cardsPlayer.sendInput("draw");
      i++;
      await sleep(50);
    }
  })();
  await sleep(1500);
  const recoveries = await killOwner(arenaPlayers);
  if (serverOf(cardsPlayer.status.url).killed) {
    // the same process owned both rooms: the cards room moved with the same kill
    await until(() => cardsPlayer.track.last.epoch > 1, 15000, "the cards room moved");
  } else {
    await sleep(1000);
    recoveries.push(...(await killOwner([cardsPlayer])));
  }
  await sleep(1500);
  playing = false;
  await loop;
  await until(() => all.every((p) => p.unacked === 0), 10000, "every input acked");
  await sleep(200);

  const stats = all.map((p) => p.stats);
  for (const p of arenaPlayers) {
    const me = p.lastState.state.players[p.playerId];
    assert.equal(me.inputs, p.lastState.ack, "arena: inputs applied = inputs acked");
  }
  assert.equal(cardsPlayer.lastState.state.counts[cardsPlayer.playerId], cardsPlayer.lastState.ack);
  const drew = cardsPlayer.track.events.filter((e) => e.drew);
  assert.deepEqual(drew.map((e) => e.n), drew.map((_, k) => k + 1), "private events once, in order, across the takeover");
  assert.equal(drew.length, cardsPlayer.stats.acked);
  assert.deepEqual(cardsPlayer.lastState.private.hand, drew.map((e) => e.drew), "the hand survived intact");
  const publicN = cardsPlayer.track.events.filter((e) => !e.drew).map((e) => e.n);
  assert.deepEqual(publicN, publicN.map((_, k) => publicN[0] + k), "public events once, in order");
  for (const p of all) {
    assert.equal(p.track.ticksBack, 0, "no tick went back");
    assert.equal(p.stats.lost, 0);
    assert.equal(p.stats.duplicated, 0);
    assert.equal(p.stats.acked, p.stats.sent);
    assert.ok(p.stats.reconnects >= 1);
  }
  const sum = (key) => stats.reduce((n, s) => n + s[key], 0);
  const report = {
    clients: all.length,
    sent: sum("sent"),
    acked: sum("acked"),
    resent: sum("resent"),
    lost: sum("lost"),
    duplicated: sum("duplicated"),
    ticks_back: all.reduce((n, p) => n + p.track.ticksBack, 0),
    rollbacks_dropped: sum("rollbacks"),
    reconnects: sum("reconnects"),
    events: cardsPlayer.track.events.length,
    recovery_ms_max: Math.max(...recoveries.map((r) => r.recovery_ms)),
    recoveries,
  };
  console.log(`STATEROOM_JS_FAILOVER ${JSON.stringify(report)}`);
  if (process.env.STATEROOM_JS_REPORT) writeFileSync(process.env.STATEROOM_JS_REPORT, JSON.stringify(report, null, 1));
  await Promise.all(all.map((p) => p.leave()));
});
