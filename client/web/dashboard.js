// The live dashboard: polls the login service's /dashboard/api/* (auth/dashboard.py) and
// draws servers, rooms, one room in detail and, after a "kill owner", that room's
// recovery as the cluster recorded it (kill -> claim -> first tick -> each player back,
// in time order: a player may be back before the first tick).
//
// Every figure comes from the API, which reads Redis (infra/cluster_view.py): the
// timeline's durations are the records' Redis TIME stamps, never this page's clock.
//
// Access: on the dev cluster of `stateroom up` the API is open; elsewhere it wants the
// admin token, which the page asks for once and keeps in sessionStorage (this tab only).
//
// Hooks for tests: `button[data-kill-room=ROOM]` per room (only when the API says a kill
// is available), `#timeline[data-room=ROOM][data-complete=true|false]`, and one
// `[data-step=kill|claim|first_tick|player_back][data-ms=<ms since the kill>]` per step.

const POLL_MS = 400;
const TOKEN_KEY = "stateroom.adminToken";
const $ = (id) => document.getElementById(id);

const view = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  killAvailable: false,
  selected: new URLSearchParams(location.search).get("room") || "",
  // The kill this page asked for: {room, epoch, killedMs}. Its timeline is drawn only
  // once the room's kill record is that kill (an older recovery is not this one).
  kill: null,
  rows: new Map(), // room -> {tr, cells, button}
  serverRows: new Map(),
};
window.stateroomDashboard = view; // for the curious and for tests

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (view.token) headers.Authorization = `Bearer ${view.token}`;
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: "http_error", message: `HTTP ${response.status}` };
    throw new ApiError(response.status, error.code, error.message);
  }
  return body;
}

// ------------------------------------------------------------------ formatting

const dash = "-";
const fmt = {
  int: (v) => (v === null || v === undefined ? dash : String(v)),
  s: (v) => (v === null || v === undefined ? dash : `${Number(v).toFixed(1)} s`),
  ms: (v) => (v === null || v === undefined ? dash : `${Number(v).toFixed(2)} ms`),
  bytes: (v) => {
    if (v === null || v === undefined) return dash;
    if (v < 1024) return `${v} B`;
    if (v < 1024 * 1024) return `${(v / 1024).toFixed(1)} KiB`;
    return `${(v / 1024 / 1024).toFixed(1)} MiB`;
  },
  rate: (v) => (v === null || v === undefined ? dash : `${Number(v).toFixed(1)}/s`),
};

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  if (text) node.textContent = text;
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// One line of news: the outcome of a kill (kept MESSAGE_MS), or why the API cannot be
// read (kept until it can be again).
const MESSAGE_MS = 15000;
let messageTimer = null;
function showMessage(text, { bad = false, kind = "poll" } = {}) {
  const box = $("message");
  box.hidden = !text;
  box.className = bad ? "bad" : "";
  box.dataset.kind = kind;
  setText(box, text || "");
  clearTimeout(messageTimer);
  if (text && kind === "kill") messageTimer = setTimeout(() => showMessage(""), MESSAGE_MS);
}

function setConnection(state, text) {
  document.body.dataset.state = state;
  const pill = $("conn");
  pill.dataset.state = state;
  setText(pill, text);
}

// ------------------------------------------------------------------ tables

function renderServers(servers) {
  const body = $("servers").tBodies[0];
  const seen = new Set();
  for (const s of servers) {
    seen.add(s.id);
    let row = view.serverRows.get(s.id);
    if (!row) {
      const tr = el("tr", { "data-server": s.id });
      const cells = ["id", "live", "pid", "rooms", "players", "load", "heartbeat", "url"].map((name) =>
        tr.appendChild(el("td", { class: ["rooms", "players", "load", "heartbeat"].includes(name) ? "n" : "" })),
      );
      body.appendChild(tr);
      row = { tr, cells };
      view.serverRows.set(s.id, row);
    }
    const [id, live, pid, rooms, players, load, heartbeat, url] = row.cells;
    row.tr.dataset.live = String(s.live);
    setText(id, s.id);
    setText(live, s.live ? "live" : "DOWN");
    setText(pid, fmt.int(s.pid));
    setText(rooms, fmt.int(s.rooms));
    setText(players, fmt.int(s.players));
    setText(load, fmt.int(s.load));
    setText(heartbeat, s.heartbeat_age_s === null ? dash : `${s.heartbeat_age_s} s ago`);
    setText(url, s.ws_url || dash);
  }
  for (const [id, row] of view.serverRows) {
    if (!seen.has(id)) {
      row.tr.remove();
      view.serverRows.delete(id);
    }
  }
}

function recoveryText(room) {
  const r = room.recovery;
  if (!r.steps) return dash;
  if (r.unavailable_ms !== null && r.unavailable_ms !== undefined) {
    return `${r.unavailable_ms} ms${r.complete ? "" : " …"}`;
  }
  return r.complete ? "done" : "in progress";
}

function renderRooms(rooms, total) {
  const body = $("rooms").tBodies[0];
  const seen = new Set();
  for (const r of rooms) {
    seen.add(r.room);
    let row = view.rows.get(r.room);
    if (!row) {
      const tr = el("tr", { "data-room": r.room, tabindex: "0" });
      const names = ["room", "game", "owner", "epoch", "tick", "players", "ckpt", "tick_ms", "recovery", "actions"];
      const numeric = new Set(["epoch", "tick", "players", "ckpt", "tick_ms", "recovery"]);
      const cells = names.map((name) => tr.appendChild(el("td", { class: numeric.has(name) ? "n" : "" })));
      tr.addEventListener("click", (event) => {
        if (event.target.closest("button")) return;
        select(r.room);
      });
      tr.addEventListener("keydown", (event) => {
        if (event.key === "Enter") select(r.room);
      });
      body.appendChild(tr);
      row = { tr, cells, button: null };
      view.rows.set(r.room, row);
    }
    const [name, game, owner, epoch, tick, players, ckpt, tickMs, recovery, actions] = row.cells;
    row.tr.classList.toggle("selected", r.room === view.selected);
    row.tr.dataset.ownerLive = String(r.owner_live);
    setText(name, r.room);
    setText(game, r.game || dash);
    setText(owner, r.owner ? `${r.owner}${r.owner_live ? "" : " (down)"}` : "(none)");
    setText(epoch, fmt.int(r.epoch));
    setText(tick, fmt.int(r.tick));
    setText(players, fmt.int(r.players));
    setText(ckpt, fmt.s(r.checkpoint_age_s));
    setText(tickMs, fmt.ms(r.tick_ms));
    setText(recovery, recoveryText(r));
    if (view.killAvailable && !row.button) {
      row.button = el("button", { type: "button", "data-kill-room": r.room, class: "kill" }, "kill owner");
      row.button.addEventListener("click", () => killOwner(r.room, row.button));
      actions.appendChild(row.button);
    } else if (!view.killAvailable && row.button) {
      row.button.remove();
      row.button = null;
    }
    if (row.button && !row.button.dataset.busy) row.button.disabled = !r.owner;
  }
  for (const [room, row] of view.rows) {
    if (!seen.has(room)) {
      row.tr.remove();
      view.rows.delete(room);
    }
  }
  const more = total > rooms.length ? ` (first ${rooms.length} of ${total})` : "";
  setText($("rooms-count"), `${total}${more}`);
}

// ------------------------------------------------------------------ detail and timeline

function select(room) {
  view.selected = room;
  const url = new URL(location.href);
  url.searchParams.set("room", room);
  history.replaceState(null, "", url);
  for (const [name, row] of view.rows) row.tr.classList.toggle("selected", name === room);
  refreshDetail();
}

function renderDetail(d) {
  $("detail").hidden = false;
  setText($("detail-name"), d.room);
  const fields = [
    ["game", d.game || dash],
    ["owner", d.owner ? `${d.owner} ${d.owner_live ? "(live)" : "(down)"} ${d.owner_ws_url || ""}` : "(none)"],
    ["epoch", fmt.int(d.epoch)],
    ["tick", fmt.int(d.tick)],
    ["players", fmt.int(d.players)],
    ["state size", d.state_bytes === 0 ? "- (no checkpoint of this owner yet)" : fmt.bytes(d.state_bytes)],
    ["inputs per second", fmt.rate(d.inputs_per_s)],
    ["tick time", fmt.ms(d.tick_ms)],
    ["checkpoint", d.checkpoint_tick === null ? dash : `tick ${d.checkpoint_tick}, ${fmt.s(d.checkpoint_age_s)} ago`],
    ["lease", d.lease_ttl_ms === null ? "none" : `${d.lease_ttl_ms} ms left`],
    ["journal", `${d.journal_length} entries`],
    ["options", d.options ? JSON.stringify(d.options) : dash],
  ];
  const list = $("detail-fields");
  list.replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  renderTimeline(d);
}

const STEP_LABELS = {
  kill: (s) => `kill of ${s.server || "the owner"}${s.epoch !== null && s.epoch !== undefined ? ` (epoch ${s.epoch})` : ""}`,
  claim: (s) => `claim by ${s.server} (epoch ${s.epoch})`,
  first_tick: (s) => `first tick${s.tick !== null && s.tick !== undefined ? ` ${s.tick}` : ""} of the new owner`,
  player_back: (s) => `player ${s.player} back`,
  player_gone: (s) => `player ${s.player} gone (grace period over)`,
};

function renderTimeline(d) {
  const box = $("timeline");
  let steps = d.timeline || [];
  let complete = Boolean(d.recovery && d.recovery.complete);
  const mine = view.kill && view.kill.room === d.room ? view.kill : null;
  if (mine) {
    // Until the room's kill record is the kill this page asked for, it shows that kill
    // (from the launcher's answer) alone: the records on file are of an older recovery.
    const recorded = d.kill && d.kill.epoch === mine.epoch;
    if (!recorded) {
      steps = [{ step: "kill", at_ms: mine.killedMs, since_kill_ms: 0, server: mine.server, epoch: mine.epoch }];
      complete = false;
    } else {
      complete = complete && Boolean(d.recovery.of_kill);
    }
  }
  $("timeline-empty").hidden = steps.length > 0;
  box.hidden = steps.length === 0;
  box.dataset.room = d.room;
  box.dataset.complete = String(complete && steps.length > 0);
  if (!steps.length) return;

  const base = steps[0].since_kill_ms !== null && steps[0].since_kill_ms !== undefined ? null : steps[0].at_ms;
  const since = (s) => (base === null ? s.since_kill_ms : s.at_ms - base);
  const total = Math.max(1, ...steps.map(since));
  const key = JSON.stringify([d.room, complete, steps.map((s) => [s.step, s.at_ms, s.player || ""])]);
  if (box.dataset.key === key) return; // unchanged: keep the nodes (and any selection)
  box.dataset.key = key;

  const track = box.querySelector(".track");
  const list = box.querySelector(".steps");
  const marks = [];
  const items = [];
  let previous = null;
  for (const s of steps) {
    const ms = since(s);
    const pct = (100 * ms) / total;
    if (previous !== null && ms > previous.ms) {
      const bar = el("div", { class: `bar to-${s.step}`, title: `${previous.step} → ${s.step}: ${ms - previous.ms} ms` });
      bar.style.left = `${previous.pct}%`;
      bar.style.width = `${pct - previous.pct}%`;
      marks.push(bar);
    }
    const mark = el("div", { class: `mark ${s.step}`, "data-mark": s.step, title: `${s.step} +${ms} ms` });
    mark.style.left = `${pct}%`;
    marks.push(mark);
    const delta = previous === null ? "" : ` (+${ms - previous.ms} ms)`;
    const item = el("li", { class: s.step, "data-step": s.step, "data-ms": String(ms) });
    item.appendChild(el("span", { class: "at" }, `${ms} ms`));
    item.appendChild(el("span", { class: "what" }, STEP_LABELS[s.step] ? STEP_LABELS[s.step](s) : s.step));
    if (delta) item.appendChild(el("span", { class: "delta" }, delta));
    items.push(item);
    previous = { step: s.step, ms, pct };
  }
  track.replaceChildren(...marks);
  list.replaceChildren(...items);
  const r = d.recovery || {};
  if (r.players_expected !== null && r.players_expected !== undefined) {
    const note = el("li", { class: "note" }, `${r.players_back} of ${r.players_expected} players back${complete ? "" : " so far"}`);
    list.appendChild(note);
  }
}

async function refreshDetail() {
  const room = view.selected;
  if (!room) return;
  try {
    const detail = await api(`/dashboard/api/rooms/${encodeURIComponent(room)}`);
    if (view.selected === room) renderDetail(detail);
  } catch (error) {
    if (error.status === 404) {
      $("detail").hidden = false;
      setText($("detail-name"), `${room} (not in the cluster)`);
      $("detail-fields").replaceChildren();
      if (!view.kill || view.kill.room !== room) $("timeline").hidden = true;
    } else {
      throw error;
    }
  }
}

async function killOwner(room, button) {
  button.dataset.busy = "1";
  button.disabled = true;
  setText(button, "killing…");
  try {
    const killed = await api(`/dashboard/api/rooms/${encodeURIComponent(room)}/kill`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    view.kill = { room, epoch: killed.old_epoch, killedMs: killed.killed_ms, server: killed.old_server };
    showMessage(`killed ${killed.old_server} (pid ${killed.killed_pid}, epoch ${killed.old_epoch}) that ran ${room}`, {
      kind: "kill",
    });
    select(room);
  } catch (error) {
    showMessage(`kill owner of ${room}: ${error.message}`, { bad: true, kind: "kill" });
  } finally {
    delete button.dataset.busy;
    button.disabled = false;
    setText(button, "kill owner");
  }
}

// ------------------------------------------------------------------ polling

function askForToken(message) {
  $("token-form").hidden = false;
  setConnection("locked", "locked");
  showMessage(message, { bad: true });
}

async function poll() {
  try {
    const cluster = await api("/dashboard/api/cluster");
    view.killAvailable = Boolean(cluster.kill_available);
    setConnection("live", "live");
    $("token-form").hidden = !view.token;
    if ($("message").dataset.kind !== "kill") showMessage("");
    const live = cluster.servers.filter((s) => s.live).length;
    setText($("summary"), `${live}/${cluster.servers.length} servers live, ${cluster.rooms_total} rooms`);
    setText($("mode"), cluster.kill_available ? "dev cluster: kill available" : "");
    renderServers(cluster.servers);
    renderRooms(cluster.rooms, cluster.rooms_total);
    await refreshDetail();
  } catch (error) {
    if (error.status === 401 || (error.status === 403 && error.code === "forbidden")) {
      askForToken(`${error.message}`);
    } else {
      setConnection("error", "error");
      showMessage(error.message || String(error), { bad: true });
    }
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  view.token = $("token").value.trim();
  if (view.token) sessionStorage.setItem(TOKEN_KEY, view.token);
  $("token").value = "";
  showMessage("");
});
$("forget").addEventListener("click", () => {
  view.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  showMessage("");
});

poll();
