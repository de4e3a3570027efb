// Two browser players in one arena room, the owner killed from the dashboard, both carry on.
//
// Run by tests/test_browser.py against a real `stateroom up`, with Debian's chromium
// driven by playwright-core (client/js/node_modules; never a browser download):
//
//   node tests/browser/play_and_kill.mjs '<json config>'
//
// config: {baseUrl, room, chromium, artifacts, timeoutMs}
//
// 1. Two pages open the arena (`/?room=ROOM`): one holds arrow keys (msgpack), the other,
//    a touch screen, holds the on-screen pad's buttons and drags on the world (JSON,
//    `&encoding=json`), changing direction every 400 ms, so each sends an input every
//    50 ms while something is held (client/web/arena-input.js).
// 2. A third page opens `/dashboard` and clicks the room's "kill owner" button
//    (`button[data-kill-room=ROOM]`): the launcher SIGKILLs the owning room server.
// 3. Both players see "reconnecting" (a screenshot of each if caught while it lasts),
//    then states again from another owner (the page records the change: server, epoch,
//    gap), and keep playing for a second; then they let go and wait until every input
//    they sent is acked.
// 4. The dashboard's timeline for the room appears (`#timeline[data-room][data-complete]`).
// 5. A page asked for a room name the protocol refuses shows why (and connects nowhere).
//
// Prints `screenshot: PATH` lines, then one line `RESULT {json}` with each page's
// counts (window.stateroom, see client/web/arena.js), the timeline's steps, and the
// screenshots. The checks (0 lost, 0 duplicated, no tick back, ...) are the pytest's;
// this script fails (exit 1) only when a step cannot be done in time.
import { mkdirSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "../../client/js/node_modules/playwright-core/index.mjs";

const config = JSON.parse(process.argv[2]);
const started = Date.now();
const deadline = started + config.timeoutMs;
const left = () => Math.max(1000, deadline - Date.now());
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (...args) => console.error(`[${((Date.now() - started) / 1000).toFixed(2)}s]`, ...args);
const screenshots = [];
mkdirSync(config.artifacts, { recursive: true });

async function shot(page, name, options = {}) {
  const path = join(config.artifacts, `${name}.png`);
  await page.screenshot({ path, timeout: 5000, ...options });
  screenshots.push(path);
  console.log(`screenshot: ${path}`);
  return path;
}

/** Pids of this process's children that run Chromium (Linux: /proc/PID/task/TID/children). */
function chromiumChildren() {
  const pids = [];
  for (const task of readdirSync(`/proc/${process.pid}/task`)) {
    let children = "";
    try {
      children = readFileSync(`/proc/${process.pid}/task/${task}/children`, "utf8");
    } catch {
      continue;
    }
    for (const pid of children.split(/\s+/).filter(Boolean)) {
      try {
        if (readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("chrom")) pids.push(Number(pid));
      } catch {
        // gone already
      }
    }
  }
  return pids;
}

const hookOf = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.stateroom)));

/** Plays until `stop()`: holds `press(i)` for 400 ms, lets go, next i (directions cycle). */
function play(press) {
  let running = true;
  const done = (async () => {
    for (let i = 0; running; i += 1) {
      const release = await press(i);
      await sleep(400);
      await release();
    }
  })();
  return async () => {
    running = false;
    await done;
  };
}

const DIRECTIONS = ["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp"];

/** The keyboard: arrow keys held down (no auto-repeat: the page keeps sending by itself). */
const keys = (page) => async (i) => {
  const key = DIRECTIONS[i % 4];
  await page.keyboard.down(key);
  return () => page.keyboard.up(key);
};

/** Touch-style controls: the on-screen pad's buttons pressed and held, every third turn a
 * drag on the world instead (pointer events, as a finger gives them). */
const touch = (page) => async (i) => {
  if (i % 3 === 2) {
    const box = await page.locator("#world").boundingBox();
    const x = box.x + box.width / 2;
    const y = box.y + box.height / 2;
    await page.mouse.move(x, y);
    await page.mouse.down();
    await page.mouse.move(x - 80, y + 40, { steps: 4 });
    return () => page.mouse.up();
  }
  const button = await page.locator(`#pad button[data-dir="${DIRECTIONS[(i + 2) % 4]}"]`).boundingBox();
  await page.mouse.move(button.x + button.width / 2, button.y + button.height / 2);
  await page.mouse.down();
  return () => page.mouse.up();
};

/** What the always-visible status bar shows. */
const bar = (page) =>
  page.evaluate(() =>
    Object.fromEntries(
      ["status", "server", "epoch", "tick", "latency", "reconnects", "sent", "acked", "lost", "duplicated"].map(
        (id) => [id, document.getElementById(id).textContent],
      ),
    ),
  );

// A fresh profile: Playwright gives the browser a new temporary user-data dir (under
// TMPDIR, which the test points at its own folder) and removes it on close.
const browser = await chromium.launch({
  executablePath: config.chromium,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
  ],
  timeout: 20000,
});
// The test kills this process group by PID if the script dies without closing it:
// Playwright spawns Chromium from this process as the leader of a group of its own.
for (const pid of chromiumChildren()) console.log(`chromium-pid: ${pid}`);
const newPage = async (options = {}) =>
  (await browser.newContext({ viewport: { width: 1100, height: 640 }, ...options })).newPage();
const consoleErrors = [];
try {
  // Player 1: a desktop, keyboard, msgpack. Player 2: a touch screen (the pad shows),
  // pad and drag, JSON. One browser context each: two players who share nothing.
  const arenaUrl = `${config.baseUrl}/?room=${encodeURIComponent(config.room)}`;
  const urls = [arenaUrl, `${arenaUrl}&encoding=json`];
  const players = [await newPage(), await newPage({ hasTouch: true })];
  for (const [i, page] of players.entries()) {
    // A connection attempt to the killed server is logged by Chromium and is expected.
    const expected = /^WebSocket connection to .* failed/;
    page.on("console", (msg) => {
      if (msg.type() === "error" && !expected.test(msg.text())) consoleErrors.push(`player${i + 1}: ${msg.text()}`);
    });
    page.on("pageerror", (err) => consoleErrors.push(`player${i + 1}: ${err.message}`));
  }
  await Promise.all(players.map((page, i) => page.goto(urls[i], { timeout: left() })));
  // Both seated and each sees the other.
  await Promise.all(
    players.map((page) =>
      page.waitForFunction(
        () => window.stateroom?.status === "open" && window.stateroom.stats.states > 0
          && document.querySelectorAll("#scoreboard li").length >= 2,
        null,
        { timeout: Math.min(left(), 15000) },
      ),
    ),
  );
  log("both players in the room");
  const before = await Promise.all(players.map(hookOf));
  const padShown = await players[1].locator("#pad").isVisible();
  const releases = [play(keys(players[0])), play(touch(players[1]))];
  // Interpolation at work: the tick drawn is a fraction behind the newest state held.
  const rendering = [];
  for (let i = 0; i < 20; i += 1) {
    await sleep(37);
    rendering.push(await players[0].evaluate(() => [window.stateroom.renderTick, window.stateroom.stats.maxTick]));
  }
  await sleep(700);
  const playing = await Promise.all(players.map(hookOf));

  const dashboard = await newPage();
  dashboard.on("pageerror", (err) => consoleErrors.push(`dashboard: ${err.message}`));
  dashboard.on("console", (msg) => msg.type() === "error" && consoleErrors.push(`dashboard: ${msg.text()}`));
  await dashboard.goto(`${config.baseUrl}/dashboard`, { timeout: left() });
  const kill = dashboard.locator(`button[data-kill-room="${config.room}"]`);
  await kill.waitFor({ timeout: Math.min(left(), 15000) });
  await kill.click({ timeout: 5000 });
  log("clicked kill owner");

  // Catch each page while it is reconnecting (if the recovery is not too quick for it).
  const caught = await Promise.all(
    players.map(async (page, i) => {
      try {
        await page.waitForFunction(() => window.stateroom.status !== "open", null, { timeout: 3000, polling: 10 });
        await shot(page, `player${i + 1}-reconnecting`);
        return true;
      } catch {
        return false;
      }
    }),
  );
  // Both back, with states from the new owner.
  await Promise.all(
    players.map((page) =>
      page.waitForFunction(
        () => window.stateroom.status === "open" && window.stateroom.owners.length > 0,
        null,
        { timeout: Math.min(left(), 15000), polling: 20 },
      ),
    ),
  );
  log("both players back");
  await sleep(1000); // keep playing on the new owner
  await Promise.all(releases.map((release) => release()));
  // Let go, and wait until the new owner acked every input each page sent.
  await Promise.all(
    players.map((page) =>
      page.waitForFunction(
        () => {
          const s = window.stateroom.stats;
          return s.sent > 0 && s.acked === s.sent && window.stateroom.sdk && window.stateroom.sdk.acked === s.sent;
        },
        null,
        { timeout: Math.min(left(), 10000), polling: 50 },
      ),
    ),
  );
  for (const [i, page] of players.entries()) await shot(page, `player${i + 1}-after`);

  const timeline = dashboard.locator(`#timeline[data-room="${config.room}"][data-complete="true"]`);
  await timeline.waitFor({ timeout: Math.min(left(), 15000) });
  const steps = await timeline.locator("[data-step]").evaluateAll((nodes) =>
    nodes.map((n) => ({ step: n.dataset.step, ms: Number(n.dataset.ms), text: n.textContent.trim() })),
  );
  await shot(dashboard, "dashboard-timeline", { fullPage: true });
  const after = await Promise.all(players.map(hookOf));
  const bars = await Promise.all(players.map(bar));
  // Bad input: a room name the protocol refuses is a clear error on the page, not a hang.
  const bad = await newPage();
  bad.on("console", (msg) => msg.type() === "error" && consoleErrors.push(`bad room page: ${msg.text()}`));
  bad.on("pageerror", (err) => consoleErrors.push(`bad room page: ${err.message}`));
  await bad.goto(`${config.baseUrl}/?room=${encodeURIComponent("no spaces!")}`, { timeout: left() });
  await bad.waitForFunction(() => window.stateroom?.status === "closed", null, { timeout: 5000 });
  const badRoom = { error: (await hookOf(bad)).error, banner: await bad.locator("#banner").textContent() };
  const result = {
    ok: true,
    room: config.room,
    caughtReconnecting: caught,
    before: before.map((h) => h.stats),
    playing: playing.map((h) => h.stats),
    rendering,
    players: after,
    bars,
    padShown,
    badRoom,
    timeline: steps,
    screenshots,
    consoleErrors,
    seconds: (Date.now() - started) / 1000,
  };
  console.log(`RESULT ${JSON.stringify(result)}`);
} catch (error) {
  // What each page was doing: its URL and its window.stateroom (null: its script never ran).
  const pages = [];
  for (const [i, page] of browser.contexts().flatMap((c) => c.pages()).entries()) {
    try {
      await shot(page, `failure-page${i + 1}`);
      pages.push({ url: page.url(), hook: await page.evaluate(() => window.stateroom ?? null) });
    } catch (e) {
      pages.push({ url: page.url(), hook: `unreadable: ${e}` });
    }
  }
  const failure = { ok: false, error: String((error && error.stack) || error), consoleErrors, pages, screenshots };
  console.log(`RESULT ${JSON.stringify(failure)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
