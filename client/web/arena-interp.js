// Interpolation between ticks for the browser arena.
//
// The server sends one state per tick (20 Hz). Drawing each state as it arrives makes
// players jump 0.6 units every 50 ms and stutter with network jitter, so the page draws
// the world about one tick behind the newest state and blends positions between the two
// states around that moment. The render clock only moves forward: a state older than one
// already held is refused, and after a stall (a failover) the clock waits at the last
// state, then carries on from there or skips ahead, never back.

/** The value at `alpha` (0..1) of the way from `a` to `b`. */
export function lerp(a, b, alpha) {
  return a + (b - a) * alpha;
}

/**
 * The world at `alpha` between two arena states (`from` at tick t, `to` at a later tick):
 * players in both are blended, players only in `to` (just joined) are drawn where `to`
 * has them, players only in `from` (just left) are dropped. Pickups jump (they respawn
 * elsewhere rather than move), so they come from the nearer state.
 */
export function blend(from, to, alpha) {
  const players = [];
  const before = (from && from.players) || {};
  const after = (to && to.players) || {};
  for (const [id, p] of Object.entries(after)) {
    const q = before[id];
    players.push({
      id,
      name: String(p.name ?? "?"),
      score: Number(p.score ?? 0),
      inputs: Number(p.inputs ?? 0),
      x: q ? lerp(Number(q.x), Number(p.x), alpha) : Number(p.x),
      y: q ? lerp(Number(q.y), Number(p.y), alpha) : Number(p.y),
    });
  }
  const near = alpha < 0.5 && from ? from : to;
  return {
    w: Number(to?.w ?? 64),
    h: Number(to?.h ?? 32),
    players,
    pickups: Array.isArray(near?.pickups) ? near.pickups : [],
  };
}

/**
 * The states the page holds and the render clock over them, in tick units.
 *
 * `push(tick, world, nowMs)` keeps a state newer than every one held (an older or
 * equal tick is refused and reported with `false`). `sample(nowMs)` says what to draw:
 * the render tick goes as the newest tick's arrival says the server's clock goes, less
 * `delayTicks`, never past the newest state (no extrapolation), never backwards, and
 * snaps forward when it lags by more than `maxLagTicks` (after a stall or a jump).
 */
export class Timeline {
  constructor({ tickMs = 50, delayTicks = 1, maxLagTicks = 4, capacity = 16 } = {}) {
    this.tickMs = tickMs;
    this.delayTicks = delayTicks;
    this.maxLagTicks = maxLagTicks;
    this.capacity = capacity;
    this.states = []; // [{tick, world}], ticks increasing
    this.newestAt = 0; // when the newest state arrived (ms)
    this.renderTick = -Infinity;
    this.wentBack = false; // the render clock never goes back; a test reads this
  }

  get newest() {
    return this.states.length ? this.states[this.states.length - 1] : null;
  }

  push(tick, world, nowMs) {
    const newest = this.newest;
    if (newest && tick <= newest.tick) return false;
    this.states.push({ tick, world });
    if (this.states.length > this.capacity) this.states.shift();
    this.newestAt = nowMs;
    return true;
  }

  sample(nowMs) {
    const newest = this.newest;
    if (!newest) return null;
    const estimate = newest.tick + Math.max(0, nowMs - this.newestAt) / this.tickMs;
    const target = Math.min(estimate - this.delayTicks, newest.tick);
    const oldest = this.states[0].tick;
    let next = Math.max(this.renderTick, target, oldest);
    if (newest.tick - next > this.maxLagTicks) next = newest.tick - this.delayTicks;
    if (next < this.renderTick) this.wentBack = true;
    this.renderTick = next;
    // The two states around the render tick; drop what is older than the first.
    let i = 0;
    while (i + 1 < this.states.length && this.states[i + 1].tick <= next) i += 1;
    if (i > 0) this.states.splice(0, i);
    const a = this.states[0];
    const b = this.states.length > 1 ? this.states[1] : a;
    const alpha = b.tick > a.tick ? Math.min(1, Math.max(0, (next - a.tick) / (b.tick - a.tick))) : 1;
    return { tick: next, from: a, to: b, alpha, world: blend(a.world, b.world, alpha) };
  }
}
