// The arena bench's load generator: N WebSocket players from ONE Node process.
//
// Why: one Python process saturates its core near N=200 (it decodes every state), so the
// bench measured itself, not the server. Here a few "probe" players decode every state and
// time input -> ack; the others ("drainers") read their sockets without decoding states.
// Everyone sends one input every --input-ms, spread evenly over the interval.
//
// Why a small WebSocket client of its own (wsclient.mjs) rather than the `ws` package: at
// N=800 in one room the server writes ~800 MB/s of states; with `ws` (which assembles and
// emits every message) and full decodes in the probes this process used 0.91 cores and
// fell 15% behind its input schedule, with 365 ms of event-loop delay at the p99. Here
// every socket reads into one shared buffer, a drainer's frame parser skips payloads
// without copying them, and probes find tick, ack and their own entry without building the
// state (walk.mjs): 0.36 cores for the same point, on schedule.
//
// Driven by bench/arena.py over stdin/stdout, one JSON object per stdout line:
//   stdout {"event":"joined", ...}   once every player is seated (or failed / timed out)
//   stdin  "window"                  start a measured window (counters and histograms reset)
//   stdin  "report"                  -> stdout {"event":"report", ...} for the window
//   stdin  "quit" or EOF             close every socket, print {"event":"done"}, exit 0
// Its own CPU (process.cpuUsage) and event-loop delay are in every report, so the driver can
// tell when the load generator, not the server, is the limit.

import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

import { findState, msgpackKey, walkState } from "./walk.mjs";
import { WsConn, msgpack } from "./wsclient.mjs";

const { values: opt } = parseArgs({
  options: {
    "auth-url": { type: "string" },
    "ws-url": { type: "string" },
    room: { type: "string", default: "bench" },
    count: { type: "string", default: "10" },
    "rooms-of": { type: "string", default: "0" },
    probes: { type: "string", default: "16" },
    protocol: { type: "string", default: "1" },
    "probe-decode": { type: "string", default: "find" },
    "input-ms": { type: "string", default: "50" },
    "login-concurrency": { type: "string", default: "32" },
    "connect-concurrency": { type: "string", default: "64" },
    "join-timeout-s": { type: "string", default: "90" },
  },
});

function fail(message, code = 2) {
  process.stderr.write(`loadgen: ${message}\n`);
  process.exit(code);
}

function intOpt(name, min) {
  const v = Number(opt[name]);
  if (!Number.isInteger(v) || v < min) fail(`--${name} must be an integer >= ${min}, got ${opt[name]}`);
  return v;
}

if (!opt["auth-url"] || !opt["ws-url"]) fail("--auth-url and --ws-url are required");
const COUNT = intOpt("count", 1);
const ROOMS_OF = intOpt("rooms-of", 0);
const PROBES = Math.min(intOpt("probes", 0), COUNT);
const PROTOCOL = intOpt("protocol", 1);
if (PROTOCOL !== 1 && PROTOCOL !== 2) fail("--protocol must be 1 or 2");
const INPUT_MS = intOpt("input-ms", 1);
const PROBE_DECODE = opt["probe-decode"];
if (!["find", "walk", "full"].includes(PROBE_DECODE)) fail("--probe-decode must be find, walk or full");
const LOGIN_CONCURRENCY = intOpt("login-concurrency", 1);
const CONNECT_CONCURRENCY = intOpt("connect-concurrency", 1);
const JOIN_TIMEOUT_MS = intOpt("join-timeout-s", 1) * 1000;
const SUBPROTOCOL = `stateroom.v${PROTOCOL}.msgpack`;
const SLOTS = 10; // inputs of one interval are sent in SLOTS bursts, INPUT_MS / SLOTS apart

const encoder = new msgpack.Encoder();
const decoder = new msgpack.Decoder();

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function bump(map, key) {
  map[key] = (map[key] || 0) + 1;
}

function percentile(sorted, q) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return Math.round(sorted[i] * 1000) / 1000;
}

// -- window counters ---------------------------------------------------------------------------

function freshWindow() {
  return {
    started: performance.now(),
    cpu: process.cpuUsage(),
    inputsSent: 0,
    statesReceived: 0,
    probeStatesDecoded: 0,
    probeInputsSeen: 0,
    bytesReceived: 0,
    latencies: [],
    lags: [],
    errors: {},
    closes: {},
    seqResets: 0,
    lateSlots: 0,
    inputsSkipped: 0,
    rollbacks: 0,
  };
}

let win = freshWindow();
const total = { inputsSent: 0, statesReceived: 0, errors: {}, closes: {}, rollbacks: 0 };

// Event-loop delay: how late a 10 ms timer fires (0 on an idle loop). perf_hooks'
// monitorEventLoopDelay reports the interval itself (~10 ms when idle) in Node 20.
const LAG_MS = 10;
let lagDue = performance.now() + LAG_MS;
function lagProbe() {
  const now = performance.now();
  win.lags.push(Math.max(0, now - lagDue));
  lagDue = now + LAG_MS;
  setTimeout(lagProbe, LAG_MS).unref();
}
setTimeout(lagProbe, LAG_MS).unref();

// -- players -----------------------------------------------------------------------------------

class Player {
  constructor(index) {
    this.index = index;
    this.probe = index < PROBES;
    this.room = ROOMS_OF ? `${opt.room}-${Math.floor(index / ROOMS_OF)}` : opt.room;
    this.token = null;
    this.playerId = null;
    this.conn = null;
    this.seated = false;
    this.closed = false;
    this.seq = 0; // last seq sent
    this.pending = []; // probes: [seq, sentAt] not yet acked
    this.lastTick = -1;
    this.lastAck = 0;
    this.lastInputs = null; // probes, v1: our `inputs` counter in the last state
    this.angle = index * 0.7;
    this.failed = null;
    this.onSeated = null;
    this.me = null; // our player id's UTF-8 bytes, for the state walk
    this.meKey = null; // and as a msgpack string
  }

  connect(url) {
    const conn = new WsConn(url, {
      subprotocol: SUBPROTOCOL,
      headers: { authorization: `Bearer ${this.token}` },
      keepStates: this.probe,
      onOpen: () => conn.send(encoder.encode({ t: "join", v: PROTOCOL, room: this.room })),
      onBytes: (n) => {
        win.bytesReceived += n;
      },
      onState: (payload) => {
        win.statesReceived += 1;
        total.statesReceived += 1;
        if (payload !== null) this.onState(this.readState(payload));
      },
      onMessage: (payload) => this.onMessage(payload),
      onClose: (code, why) => {
        if (conn !== this.conn) return; // the socket left for a redirect
        this.closed = true;
        bump(win.closes, String(code));
        bump(total.closes, String(code));
        if (!this.seated) this.failed = this.failed || `closed ${code} before welcome: ${why}`;
        this.seated = false;
        this.settle();
      },
    });
    this.conn = conn;
  }

  settle() {
    const done = this.onSeated;
    this.onSeated = null;
    if (done) done();
  }

  onMessage(payload) {
    let msg;
    try {
      msg = decoder.decode(payload);
    } catch {
      bump(win.errors, "undecodable");
      return;
    }
    switch (msg.t) {
      case "state": // a state the peek did not recognise (should not happen)
        bump(win.errors, "unpeeked_state");
        break;
      case "welcome":
        this.playerId = msg.player_id;
        this.me = Buffer.from(msg.player_id);
        this.meKey = msgpackKey(msg.player_id);
        this.seated = true;
        this.seq = msg.ack;
        this.lastAck = msg.ack;
        this.lastTick = msg.tick;
        this.settle();
        break;
      case "redirect": {
        const old = this.conn;
        this.connect(msg.url);
        old.destroy();
        break;
      }
      case "error":
        bump(win.errors, msg.code);
        bump(total.errors, msg.code);
        if (typeof msg.expected === "number") {
          // sequence_gap / queue_full: the server wants seqs from `expected` again.
          win.seqResets += 1;
          this.seq = msg.expected - 1;
          const p = this.pending;
          while (p.length && p[p.length - 1][0] >= msg.expected) p.pop();
        }
        if (!this.seated) this.failed = `error ${msg.code}: ${msg.message}`;
        break;
      default:
        break;
    }
  }

  /** {tick, ack, inputs}, read as --probe-decode says (walk.mjs; full: a msgpack decode). */
  readState(payload) {
    if (PROBE_DECODE === "find") return findState(payload, this.me, this.meKey);
    if (PROBE_DECODE === "walk") return walkState(payload, this.me);
    const msg = decoder.decode(payload);
    const players = PROTOCOL === 1 && msg.state ? msg.state.players : undefined;
    const mine = players ? players[this.playerId] : undefined;
    return { tick: msg.tick, ack: msg.ack, inputs: mine ? mine.inputs : null };
  }

  onState(msg) {
    win.probeStatesDecoded += 1;
    if (msg.tick < this.lastTick) {
      win.rollbacks += 1;
      total.rollbacks += 1;
    }
    this.lastTick = msg.tick;
    const ack = msg.ack;
    if (ack > this.lastAck) {
      const now = performance.now();
      const pending = this.pending;
      let k = 0;
      while (k < pending.length && pending[k][0] <= ack) {
        if (pending[k][1] >= win.started) win.latencies.push(now - pending[k][1]);
        k += 1;
      }
      if (k) pending.splice(0, k);
      this.lastAck = ack;
    }
    if (msg.inputs !== null) {
      this.lastInputs = msg.inputs;
      win.probeInputsSeen += 1;
    }
  }

  sendInput() {
    if (!this.seated || this.closed) return;
    this.seq += 1;
    this.angle += 0.37;
    const data = {
      dx: Math.round(Math.cos(this.angle) * 100) / 100,
      dy: Math.round(Math.sin(this.angle) * 100) / 100,
    };
    this.conn.send(encoder.encodeSharedRef({ t: "input", seq: this.seq, data }));
    if (this.probe) this.pending.push([this.seq, performance.now()]);
    win.inputsSent += 1;
    total.inputsSent += 1;
  }
}

// -- login and join ----------------------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let loginRetries = 0;

async function guest(player) {
  const url = `${opt["auth-url"].replace(/\/$/, "")}/v1/guest`;
  for (let attempt = 0; attempt < 30; attempt++) {
    let res;
    try {
      res = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: `lg-${player.index}` }),
      });
    } catch {
      loginRetries += 1;
      await sleep(100 + Math.random() * 400);
      continue;
    }
    if (res.status === 200) {
      player.token = (await res.json()).access_token;
      return;
    }
    await res.text();
    if (res.status !== 503 && res.status !== 429) {
      throw new Error(`guest login refused with HTTP ${res.status}`);
    }
    loginRetries += 1;
    await sleep(100 + Math.random() * 400);
  }
  throw new Error("guest login kept failing (503/429)");
}

async function pool(items, concurrency, fn) {
  let next = 0;
  async function worker() {
    while (next < items.length) await fn(items[next++]);
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}

const players = Array.from({ length: COUNT }, (_, i) => new Player(i));
const startedAt = performance.now();

async function joinAll() {
  await pool(players, LOGIN_CONCURRENCY, async (p) => {
    try {
      await guest(p);
    } catch (err) {
      p.failed = `login: ${err.message}`;
    }
  });
  const loginS = (performance.now() - startedAt) / 1000;
  // Joins go in index order, so a room of 4's first joiner creates it.
  await pool(
    players.filter((p) => !p.failed),
    CONNECT_CONCURRENCY,
    (p) =>
      new Promise((resolve) => {
        const timer = setTimeout(() => {
          p.failed = p.failed || "no welcome in time";
          p.settle();
        }, JOIN_TIMEOUT_MS);
        p.onSeated = () => {
          clearTimeout(timer);
          resolve();
        };
        p.connect(opt["ws-url"]);
      }),
  );
  const failed = players.filter((p) => p.failed || !p.seated);
  const reasons = {};
  for (const p of failed) bump(reasons, p.failed || "not seated");
  out({
    event: "joined",
    seated: COUNT - failed.length,
    failed: failed.length,
    failures: reasons,
    login_s: Math.round(loginS * 100) / 100,
    join_s: Math.round(((performance.now() - startedAt) / 1000) * 100) / 100,
    login_retries: loginRetries,
    probes: PROBES,
    protocol: PROTOCOL,
  });
}

// -- the input schedule ------------------------------------------------------------------------

const slotMs = INPUT_MS / SLOTS;
let nextSlotAt = performance.now();
let slot = 0;
let pumping = true;

function pump() {
  if (!pumping) return;
  const now = performance.now();
  if (now - nextSlotAt > INPUT_MS) {
    // Far behind (the process was starved): do not burst a backlog at the server's rate
    // limit; count the slots missed and go on from now.
    const missed = Math.floor((now - nextSlotAt) / slotMs);
    win.lateSlots += missed;
    win.inputsSkipped += Math.round((missed * players.filter((p) => p.seated).length) / SLOTS);
    nextSlotAt = now;
  }
  while (nextSlotAt <= now) {
    for (let i = slot; i < players.length; i += SLOTS) players[i].sendInput();
    slot = (slot + 1) % SLOTS;
    nextSlotAt += slotMs;
  }
  setTimeout(pump, Math.max(0, nextSlotAt - performance.now()));
}

// -- reports -----------------------------------------------------------------------------------

function summary(values) {
  const sorted = values.sort((a, b) => a - b);
  if (sorted.length === 0) return null;
  return {
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    max: percentile(sorted, 1),
    mean: Math.round((sorted.reduce((a, b) => a + b, 0) / sorted.length) * 1000) / 1000,
    n: sorted.length,
  };
}

function report() {
  const wall = (performance.now() - win.started) / 1000;
  const cpu = process.cpuUsage(win.cpu);
  let lost = 0;
  let dup = 0;
  for (const p of players) {
    if (p.probe && p.lastInputs !== null) {
      if (p.lastInputs < p.lastAck) lost += p.lastAck - p.lastInputs;
      if (p.lastInputs > p.lastAck) dup += p.lastInputs - p.lastAck;
    }
  }
  out({
    event: "report",
    window_s: Math.round(wall * 1000) / 1000,
    cpu_cores: Math.round(((cpu.user + cpu.system) / 1e6 / wall) * 10000) / 10000,
    event_loop_delay_ms: summary(win.lags),
    latency_ms: summary(win.latencies),
    inputs_sent: win.inputsSent,
    states_received: win.statesReceived,
    probe_states_decoded: win.probeStatesDecoded,
    probe_inputs_seen: win.probeInputsSeen,
    bytes_received: win.bytesReceived,
    seated: players.filter((p) => p.seated).length,
    errors: win.errors,
    closes: win.closes,
    seq_resets: win.seqResets,
    late_slots: win.lateSlots,
    inputs_skipped: win.inputsSkipped,
    closes_total: total.closes,
    errors_total: total.errors,
    rollbacks: win.rollbacks,
    lost_acked_inputs: lost,
    duplicate_inputs: dup,
  });
}

function quit() {
  pumping = false;
  for (const p of players) if (p.conn) p.conn.destroy();
  out({
    event: "done",
    inputs_sent: total.inputsSent,
    states_received: total.statesReceived,
    errors: total.errors,
    closes: total.closes,
    rollbacks: total.rollbacks,
  });
  process.exit(0);
}

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = line.trim();
  if (cmd === "window") win = freshWindow();
  else if (cmd === "report") report();
  else if (cmd === "quit") quit();
});
rl.on("close", quit);

joinAll().then(
  () => {
    nextSlotAt = performance.now();
    pump();
  },
  (err) => fail(err.stack || String(err), 1),
);
