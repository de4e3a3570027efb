// The browser arena: log in as a guest on this origin (the login service serves this
// page), join the room of `?room=` through the JavaScript SDK, draw the world on a canvas
// and send the player's heading.
//
// Query parameters: `room` (default "lobby", the room of `stateroom up`'s examples),
// `name` (the guest's display name; default: the service picks one), `encoding`
// ("msgpack", the default, or "json"). Protocol v2 (deltas), falling back to v1.
//
// Drawing: one tick behind the newest state, positions blended between the two states
// around that moment (arena-interp.js). The local player is not predicted: it is drawn
// like everyone else, where the server has it, so what you see is what the room decided;
// the latency shown (input -> ack) is what a key press costs.
//
// For tests and the curious, `window.stateroom` holds what the page measured (see
// `hook` below): its own counts of inputs sent and acked and of acked inputs lost or
// applied twice (arena-checks.js), the newest tick, whether any tick went back, the
// connection status, server and epoch, and each change of owner the page lived through.
import { AuthClient, RoomClient } from "/sdk/index.js";
import { Guarantees } from "./arena-checks.js";
import { Held, InputPace, KEY_DIRECTIONS } from "./arena-input.js";
import { Timeline } from "./arena-interp.js";
import { colourOf, draw } from "./arena-render.js";

const ROOM_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const HUD_EVERY_MS = 100;
const $ = (id) => document.getElementById(id);

const params = new URLSearchParams(location.search);
const roomName = params.get("room") || "lobby";
const encoding = params.get("encoding") === "json" ? "json" : "msgpack";
const guestName = params.get("name") || undefined;

const guarantees = new Guarantees();
const timeline = new Timeline();
const held = new Held();
const pace = new InputPace();

/** What the page measured; read by tests/browser/*.mjs. */
const hook = {
  room: roomName,
  encoding,
  status: "connecting",
  server: "",
  epoch: 0,
  playerId: "",
  error: "",
  stats: { sent: 0, acked: 0, lost: 0, duplicated: 0, reconnects: 0, maxTick: 0, tickWentBack: false, states: 0 },
  renderTick: 0,
  latency: null, // the SDK's LatencyStats
  sdk: null, // the SDK's ClientStats
  statuses: [], // [{status, at}] each change of connection state (at: performance.now())
  owners: [], // [{fromServer, fromEpoch, toServer, toEpoch, lastTick, firstTick, gapMs}]
  maxStateGapMs: 0,
};
window.stateroom = hook;

let room = null;
let lastState = null;
let lastStateAt = 0;

function setStatus(status) {
  if (status === hook.status && hook.statuses.length) return;
  hook.status = status;
  hook.statuses.push({ status, at: performance.now() });
  document.body.dataset.status = status;
  const pill = $("status");
  pill.dataset.status = status;
  pill.textContent = status;
  const banner = $("banner");
  if (status === "open" || status === "closed") {
    banner.hidden = status === "open";
  } else {
    banner.hidden = false;
    banner.className = "";
    banner.textContent = status === "reconnecting" ? "reconnecting… the room is moving" : "connecting…";
  }
}

function fail(message) {
  hook.error = message;
  setStatus("closed");
  const banner = $("banner");
  banner.hidden = false;
  banner.className = "bad";
  banner.textContent = message;
}

function onState(state) {
  const now = performance.now();
  const world = state.state;
  const me = world && world.players ? world.players[hook.playerId] : undefined;
  guarantees.observe(state.tick, state.ack, me && typeof me.inputs === "number" ? me.inputs : undefined);
  if (lastState) {
    const gap = now - lastStateAt;
    hook.maxStateGapMs = Math.max(hook.maxStateGapMs, gap);
    if (state.serverId !== lastState.serverId || state.epoch !== lastState.epoch) {
      hook.owners.push({
        fromServer: lastState.serverId,
        fromEpoch: lastState.epoch,
        toServer: state.serverId,
        toEpoch: state.epoch,
        lastTick: lastState.tick,
        firstTick: state.tick,
        gapMs: Math.round(gap),
      });
      $("notice").textContent =
        `the room moved from ${lastState.serverId} to ${state.serverId} (epoch ${state.epoch}); ` +
        `${Math.round(gap)} ms without a tick, nothing lost`;
    }
  }
  lastState = state;
  lastStateAt = now;
  hook.server = state.serverId;
  hook.epoch = state.epoch;
  const s = hook.stats;
  s.acked = guarantees.highestAck; // seqs go 1, 2, 3, ...: the highest acked is the count
  s.lost = guarantees.lost;
  s.duplicated = guarantees.duplicated;
  s.maxTick = guarantees.maxTick;
  s.states = guarantees.states;
  s.tickWentBack = guarantees.tickWentBack || timeline.wentBack;
  readClient(); // here too, not only in the drawing loop: a hidden page draws nothing
  timeline.push(state.tick, world, now);
}

/** The SDK's own view of the session: its counters, reconnects and latency. */
function readClient() {
  if (!room) return;
  hook.latency = room.latency;
  hook.sdk = room.stats;
  hook.stats.reconnects = room.stats.reconnects;
}

function sendHeading() {
  if (!room || hook.status === "closed") return;
  const input = pace.poll(held.heading(), held.active, performance.now());
  if (!input) return;
  room.sendInput(input); // queued and resent by the SDK until acked, also across failovers
  hook.stats.sent += 1;
}

let hudAt = 0;
function updateHud(now) {
  if (now - hudAt < HUD_EVERY_MS) return;
  hudAt = now;
  const s = hook.stats;
  readClient();
  $("server").textContent = hook.server || "-";
  $("epoch").textContent = String(hook.epoch);
  $("tick").textContent = String(s.maxTick);
  const lat = hook.latency;
  $("latency").textContent =
    lat && lat.lastMs !== null ? `${Math.round(lat.lastMs)} ms (p50 ${Math.round(lat.p50Ms)})` : "-";
  $("reconnects").textContent = String(s.reconnects);
  $("sent").textContent = String(s.sent);
  $("acked").textContent = String(s.acked);
  $("lost").textContent = String(s.lost);
  $("duplicated").textContent = String(s.duplicated);
  $("checks").classList.toggle("bad", s.lost > 0 || s.duplicated > 0 || s.tickWentBack);
  updateScores();
}

function updateScores() {
  const world = lastState && lastState.state;
  const players = world && world.players ? Object.entries(world.players) : [];
  players.sort(([ia, a], [ib, b]) => b.score - a.score || String(a.name).localeCompare(String(b.name)) || (ia < ib ? -1 : 1));
  $("count").textContent = `(${players.length} playing)`;
  const list = $("scoreboard");
  const items = players.slice(0, 20).map(([id, p]) => {
    const li = document.createElement("li");
    if (id === hook.playerId) li.className = "me";
    const who = document.createElement("span");
    who.className = "who";
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.style.background = colourOf(id);
    who.append(dot, document.createTextNode(String(p.name))); // text, never HTML: names are user input
    const score = document.createElement("b");
    score.textContent = String(p.score);
    li.append(who, score);
    return li;
  });
  list.replaceChildren(...items);
}

const canvas = $("world");
const ctx = canvas.getContext("2d");
function frame() {
  const now = performance.now();
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const sample = timeline.sample(now);
  if (sample) {
    hook.renderTick = sample.tick;
    hook.stats.tickWentBack = hook.stats.tickWentBack || timeline.wentBack;
    draw(ctx, sample.world, hook.playerId, { width, height, dpr });
  }
  updateHud(now);
  requestAnimationFrame(frame);
}

function bindControls() {
  window.addEventListener("keydown", (event) => {
    if (!(event.code in KEY_DIRECTIONS)) return;
    event.preventDefault(); // arrows would scroll the page
    if (held.press(event.code)) sendHeading();
  });
  window.addEventListener("keyup", (event) => {
    if (held.release(event.code)) sendHeading();
  });
  window.addEventListener("blur", () => held.clear()); // a key let go elsewhere would stick
  for (const button of document.querySelectorAll("#pad button")) {
    const dir = button.dataset.dir;
    const down = (event) => {
      event.preventDefault();
      button.setPointerCapture?.(event.pointerId);
      held.pad.add(dir);
      button.classList.add("held");
      sendHeading();
    };
    const up = () => {
      held.pad.delete(dir);
      button.classList.remove("held");
      sendHeading();
    };
    button.addEventListener("pointerdown", down);
    button.addEventListener("pointerup", up);
    button.addEventListener("pointercancel", up);
    button.addEventListener("lostpointercapture", up);
  }
  // Drag on the world: the heading points from where the finger went down to where it is.
  let origin = null;
  canvas.addEventListener("pointerdown", (event) => {
    origin = { x: event.clientX, y: event.clientY, id: event.pointerId };
    canvas.setPointerCapture?.(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!origin || event.pointerId !== origin.id) return;
    const dx = event.clientX - origin.x;
    const dy = event.clientY - origin.y;
    held.drag = Math.hypot(dx, dy) >= 12 ? { dx, dy } : null;
  });
  const endDrag = (event) => {
    if (!origin || event.pointerId !== origin.id) return;
    origin = null;
    held.drag = null;
    sendHeading();
  };
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  setInterval(sendHeading, 10); // the pace itself keeps it to one input per 50 ms
}

async function main() {
  $("room").textContent = roomName;
  setStatus("connecting");
  if (!ROOM_NAME.test(roomName)) {
    fail(`bad room name ${JSON.stringify(roomName.slice(0, 40))}: use 1-64 of A-Z a-z 0-9 _ . -`);
    return;
  }
  bindControls();
  requestAnimationFrame(frame);
  const auth = new AuthClient(location.origin);
  let tokens;
  try {
    tokens = await auth.guest(guestName);
  } catch (error) {
    fail(`guest login failed: ${error.message} (${error.code || "network"})`);
    return;
  }
  hook.playerId = tokens.playerId;
  try {
    room = await RoomClient.fromAuth(auth, tokens, roomName, { encoding, game: "arena" });
  } catch (error) {
    fail(`no room server: ${error.message} (${error.code || "network"})`);
    return;
  }
  room.on("state", onState);
  room.on("status", (status) => {
    setStatus(status.state);
    if (status.state === "closed" && status.error) fail(`session ended: ${status.error.message} (${status.error.code})`);
  });
  room.on("close", (error) => {
    if (error) fail(`session ended: ${error.message} (${error.code})`);
    else setStatus("closed");
  });
  try {
    const welcome = await room.connect();
    hook.playerId = welcome.playerId;
    hook.server = welcome.serverId;
    hook.epoch = welcome.epoch;
    setStatus(room.connectionState);
  } catch (error) {
    fail(`could not join ${roomName}: ${error.message} (${error.code || "error"})`);
  }
}

main();
