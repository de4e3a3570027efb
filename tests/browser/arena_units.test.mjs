// Unit tests of the browser arena's pure modules (client/web/arena-*.js), with Node's
// own test runner: interpolation and its render clock, the guarantee checks, the
// controls' headings and pace, colours and fitting. Run by tests/test_browser.py.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Guarantees } from "../../client/web/arena-checks.js";
import { Held, InputPace, headingOf, unit } from "../../client/web/arena-input.js";
import { Timeline, blend } from "../../client/web/arena-interp.js";
import { colourOf, fit } from "../../client/web/arena-render.js";

const world = (players, pickups = [[1, 1]]) => ({ w: 64, h: 32, players, pickups });
const p = (x, y, extra = {}) => ({ name: "ann", x, y, score: 0, inputs: 0, ...extra });

test("blend lerps players in both states, shows joiners, drops leavers", () => {
  const from = world({ a: p(0, 0), gone: p(5, 5) }, [[1, 1]]);
  const to = world({ a: p(10, 20), new: p(3, 4) }, [[9, 9]]);
  const half = blend(from, to, 0.5);
  const byId = Object.fromEntries(half.players.map((q) => [q.id, q]));
  assert.deepEqual([byId.a.x, byId.a.y], [5, 10]);
  assert.deepEqual([byId.new.x, byId.new.y], [3, 4]);
  assert.equal(byId.gone, undefined);
  assert.deepEqual(blend(from, to, 0.25).pickups, [[1, 1]]);
  assert.deepEqual(blend(from, to, 0.75).pickups, [[9, 9]]);
});

test("timeline renders one tick behind, lerping between the two states around it", () => {
  const tl = new Timeline({ tickMs: 50, delayTicks: 1 });
  assert.equal(tl.sample(0), null);
  assert.equal(tl.push(10, world({ a: p(0, 0) }), 0), true);
  assert.equal(tl.push(11, world({ a: p(0.6, 0) }), 50), true);
  let s = tl.sample(50); // newest 11 just arrived: draw tick 10
  assert.equal(s.tick, 10);
  assert.equal(s.world.players[0].x, 0);
  s = tl.sample(75); // half a tick later: half way to 11
  assert.equal(s.tick, 10.5);
  assert.ok(Math.abs(s.world.players[0].x - 0.3) < 1e-9);
  s = tl.sample(500); // no new state: never past the newest (no extrapolation)
  assert.equal(s.tick, 11);
  assert.equal(s.world.players[0].x, 0.6);
});

test("timeline refuses old ticks and its clock never goes back", () => {
  const tl = new Timeline({ tickMs: 50 });
  tl.push(20, world({}), 0);
  assert.equal(tl.push(20, world({}), 10), false);
  assert.equal(tl.push(19, world({}), 10), false);
  let last = -Infinity;
  let now = 0;
  // Jittery arrivals, a stall (failover) and a jump ahead.
  const arrivals = [[21, 40], [22, 130], [23, 140], [24, 150], [25, 1400], [40, 1450], [41, 1500]];
  for (const [tick, at] of arrivals) {
    for (; now < at; now += 7) {
      const s = tl.sample(now);
      assert.ok(s.tick >= last, `render tick went from ${last} to ${s.tick}`);
      last = s.tick;
    }
    tl.push(tick, world({}), at);
  }
  const s = tl.sample(1500);
  assert.ok(s.tick >= 39 && s.tick <= 41, `after a jump it catches up: ${s.tick}`);
  assert.equal(tl.wentBack, false);
});

test("guarantees: inputs == ack passes, a repeat is duplicated, a hole is lost", () => {
  const ok = new Guarantees();
  ok.observe(1, 0, undefined);
  ok.observe(2, 1, 1);
  ok.observe(3, 3, 3);
  assert.deepEqual([ok.lost, ok.duplicated, ok.tickWentBack, ok.maxTick], [0, 0, false, 3]);

  const twice = new Guarantees();
  twice.observe(1, 2, 2);
  twice.observe(2, 3, 4); // one input applied twice
  assert.equal(twice.duplicated, 1);
  assert.equal(twice.lost, 0);

  const forgot = new Guarantees();
  forgot.observe(1, 5, 5);
  forgot.observe(2, 3, 3); // the ack went back: two acked inputs forgotten
  assert.equal(forgot.lost, 2);
  assert.equal(forgot.ackRegressions, 1);

  const unapplied = new Guarantees();
  unapplied.observe(1, 4, 2); // acked 4, applied 2
  assert.equal(unapplied.lost, 2);

  const back = new Guarantees();
  back.observe(5, 0, 0);
  back.observe(5, 0, 0);
  assert.equal(back.tickWentBack, true);
});

test("headings: arrows and WASD, diagonals of length 1, opposites cancel", () => {
  assert.deepEqual(headingOf([[1, 0]]), { dx: 1, dy: 0 });
  assert.deepEqual(headingOf([[1, 0], [0, -1]]), { dx: 0.7071, dy: -0.7071 });
  assert.deepEqual(headingOf([[1, 0], [-1, 0]]), { dx: 0, dy: 0 });
  assert.ok(!Object.is(unit(-0, 0).dx, -0));
  const held = new Held();
  assert.equal(held.press("KeyD"), true);
  assert.equal(held.press("KeyD"), false); // auto-repeat is not a new press
  assert.equal(held.press("KeyQ"), false);
  held.press("ArrowUp");
  assert.deepEqual(held.heading(), { dx: 0.7071, dy: -0.7071 });
  held.drag = { dx: -30, dy: 0 };
  assert.deepEqual(held.heading(), { dx: -1, dy: 0 }); // a drag wins
  held.clear();
  assert.equal(held.active, false);
});

test("pace: at most one input per 50 ms while held, one stop on release", () => {
  const pace = new InputPace(50);
  const right = { dx: 1, dy: 0 };
  const sent = [];
  for (let t = 0; t <= 200; t += 10) {
    const input = pace.poll(right, t < 120, t);
    if (input) sent.push([t, input]);
  }
  assert.deepEqual(sent, [
    [0, right],
    [50, right],
    [100, right],
    [150, { dx: 0, dy: 0 }],
  ]);
  assert.equal(pace.poll(right, false, 1000), null); // already stopped
});

test("colours are stable per id and fit keeps the world's aspect", () => {
  assert.equal(colourOf("g_abc"), colourOf("g_abc"));
  assert.notEqual(colourOf("g_abc"), colourOf("g_abd"));
  const f = fit(800, 600, 64, 32, 0);
  assert.equal(f.scale, 12.5);
  assert.equal(f.left, 0);
  assert.equal(f.top, 100);
});
