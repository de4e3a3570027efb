// Controls of the browser arena: keys and touch to a heading, and the pace of inputs.
//
// An arena input is a heading {dx, dy} of length at most 1 that stays in force until the
// next one (docs/protocol.md, section 7). The page sends the current heading at most
// every 50 ms while a key (or the touch pad) is held, so that a held key keeps a steady
// stream of inputs (and latency samples), and one stop {0, 0} when everything is let go.

export const SEND_PERIOD_MS = 50;

/** KeyboardEvent.code -> the direction it pushes (arrows and WASD, by key position). */
export const KEY_DIRECTIONS = {
  ArrowUp: [0, -1],
  ArrowDown: [0, 1],
  ArrowLeft: [-1, 0],
  ArrowRight: [1, 0],
  KeyW: [0, -1],
  KeyS: [0, 1],
  KeyA: [-1, 0],
  KeyD: [1, 0],
};

const round = (v) => Math.round(v * 1e4) / 1e4 + 0; // + 0: no -0 on the wire

/** The sum of `directions` as a heading of length 1, or {0, 0} when they cancel out. */
export function headingOf(directions) {
  let dx = 0;
  let dy = 0;
  for (const [x, y] of directions) {
    dx += x;
    dy += y;
  }
  return unit(dx, dy);
}

/** (dx, dy) scaled to length 1 (rounded to 4 decimals), or {0, 0} for a zero vector. */
export function unit(dx, dy) {
  const length = Math.hypot(dx, dy);
  if (!(length > 0)) return { dx: 0, dy: 0 };
  return { dx: round(dx / length), dy: round(dy / length) };
}

/**
 * What the player holds: keys (by code), the on-screen pad's buttons, and a drag on
 * the world (a vector from where the touch started). A drag wins over keys.
 */
export class Held {
  constructor() {
    this.keys = new Set();
    this.pad = new Set();
    this.drag = null; // {dx, dy} or null
  }

  press(code) {
    if (!(code in KEY_DIRECTIONS) || this.keys.has(code)) return false;
    this.keys.add(code);
    return true;
  }

  release(code) {
    return this.keys.delete(code);
  }

  clear() {
    this.keys.clear();
    this.pad.clear();
    this.drag = null;
  }

  get active() {
    return this.keys.size > 0 || this.pad.size > 0 || this.drag !== null;
  }

  heading() {
    if (this.drag) return unit(this.drag.dx, this.drag.dy);
    return headingOf([...this.keys, ...this.pad].map((code) => KEY_DIRECTIONS[code]));
  }
}

/**
 * Decides when to send: `poll(heading, active, nowMs)` returns the input to send now or
 * null. While `active`, the heading goes out at most every `periodMs` (at once when it
 * changes, if the period allows); when it stops being active, one stop goes out.
 */
export class InputPace {
  constructor(periodMs = SEND_PERIOD_MS) {
    this.periodMs = periodMs;
    this.lastAt = -Infinity;
    this.last = { dx: 0, dy: 0 };
  }

  poll(heading, active, nowMs) {
    const target = active ? heading : { dx: 0, dy: 0 };
    const changed = target.dx !== this.last.dx || target.dy !== this.last.dy;
    if (!active && !changed) return null; // stopped, and the server knows it
    if (nowMs - this.lastAt < this.periodMs) return null;
    this.lastAt = nowMs;
    this.last = target;
    return { dx: target.dx, dy: target.dy };
  }
}
