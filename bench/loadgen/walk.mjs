// What a probe reads from a state, without building the state: tick, ack and (v1) its own
// `inputs` counter. A full decode costs ~1.1 ms per state at N=800 in one room (16 probes:
// a third of the load generator's core); a structural walk of the msgpack bytes ~0.28 ms;
// `findState` ~0.01 ms: it reads `tick` from the head, `ack` from the tail (the server writes
// t, tick, state, ack in this order: protocol.md section 2) and finds its own entry with a
// native byte search for its id as a msgpack string, and checks each of these by parsing
// them. Anything unexpected falls back to the walk.

/** Offset just past the msgpack value at `o`. */
export function skip(b, o) {
  const c = b[o];
  if (c <= 0x7f || c >= 0xe0) return o + 1;
  if (c >= 0xa0 && c <= 0xbf) return o + 1 + (c & 0x1f);
  if (c >= 0x80 && c <= 0x8f) return skipMap(b, o + 1, c & 0x0f);
  if (c >= 0x90 && c <= 0x9f) return skipArray(b, o + 1, c & 0x0f);
  switch (c) {
    case 0xc0:
    case 0xc2:
    case 0xc3:
      return o + 1;
    case 0xcc:
    case 0xd0:
      return o + 2;
    case 0xcd:
    case 0xd1:
    case 0xd4:
      return o + 3;
    case 0xd5:
      return o + 4;
    case 0xce:
    case 0xd2:
    case 0xca:
      return o + 5;
    case 0xd6:
      return o + 6;
    case 0xcf:
    case 0xd3:
    case 0xcb:
      return o + 9;
    case 0xd7:
      return o + 10;
    case 0xd8:
      return o + 18;
    case 0xd9:
    case 0xc4:
      return o + 2 + b[o + 1];
    case 0xda:
    case 0xc5:
      return o + 3 + b.readUInt16BE(o + 1);
    case 0xdb:
    case 0xc6:
      return o + 5 + b.readUInt32BE(o + 1);
    case 0xc7:
      return o + 3 + b[o + 1];
    case 0xc8:
      return o + 4 + b.readUInt16BE(o + 1);
    case 0xc9:
      return o + 6 + b.readUInt32BE(o + 1);
    case 0xdc:
      return skipArray(b, o + 3, b.readUInt16BE(o + 1));
    case 0xdd:
      return skipArray(b, o + 5, b.readUInt32BE(o + 1));
    case 0xde:
      return skipMap(b, o + 3, b.readUInt16BE(o + 1));
    case 0xdf:
      return skipMap(b, o + 5, b.readUInt32BE(o + 1));
    default:
      throw new Error(`msgpack: bad byte 0x${c.toString(16)} at ${o}`);
  }
}

function skipMap(b, o, n) {
  for (let i = 0; i < n; i++) o = skip(b, skip(b, o));
  return o;
}

function skipArray(b, o, n) {
  for (let i = 0; i < n; i++) o = skip(b, o);
  return o;
}

/** [count, offset of the first entry] of the map at `o`. */
function mapHeader(b, o) {
  const c = b[o];
  if (c >= 0x80 && c <= 0x8f) return [c & 0x0f, o + 1];
  if (c === 0xde) return [b.readUInt16BE(o + 1), o + 3];
  if (c === 0xdf) return [b.readUInt32BE(o + 1), o + 5];
  return [-1, o];
}

/** [start, end) of the string's bytes at `o`, or null if it is not a string. */
function strBounds(b, o) {
  const c = b[o];
  if (c >= 0xa0 && c <= 0xbf) return [o + 1, o + 1 + (c & 0x1f)];
  if (c === 0xd9) return [o + 2, o + 2 + b[o + 1]];
  if (c === 0xda) return [o + 3, o + 3 + b.readUInt16BE(o + 1)];
  if (c === 0xdb) return [o + 5, o + 5 + b.readUInt32BE(o + 1)];
  return null;
}

function strEquals(b, o, bytes) {
  const s = strBounds(b, o);
  if (s === null || s[1] - s[0] !== bytes.length) return false;
  for (let i = 0; i < bytes.length; i++) if (b[s[0] + i] !== bytes[i]) return false;
  return true;
}

/** The integer at `o` (null if it is not one). */
export function readInt(b, o) {
  const c = b[o];
  if (c <= 0x7f) return c;
  if (c >= 0xe0) return c - 0x100;
  switch (c) {
    case 0xcc:
      return b[o + 1];
    case 0xcd:
      return b.readUInt16BE(o + 1);
    case 0xce:
      return b.readUInt32BE(o + 1);
    case 0xcf:
      return Number(b.readBigUInt64BE(o + 1));
    case 0xd0:
      return b.readInt8(o + 1);
    case 0xd1:
      return b.readInt16BE(o + 1);
    case 0xd2:
      return b.readInt32BE(o + 1);
    case 0xd3:
      return Number(b.readBigInt64BE(o + 1));
    default:
      return null;
  }
}

const K_TICK = Buffer.from("tick");
const K_ACK = Buffer.from("ack");
const K_STATE = Buffer.from("state");
const K_PLAYERS = Buffer.from("players");
const K_INPUTS = Buffer.from("inputs");

/** Our player's `inputs` in a v1 arena state at `o` (null if absent). */
function inputsOf(b, o, me) {
  let [n, p] = mapHeader(b, o);
  for (let i = 0; i < n; i++) {
    if (!strEquals(b, p, K_PLAYERS)) {
      p = skip(b, skip(b, p));
      continue;
    }
    p = skip(b, p);
    let [m, q] = mapHeader(b, p);
    for (let j = 0; j < m; j++) {
      const mine = strEquals(b, q, me);
      q = skip(b, q);
      if (!mine) {
        q = skip(b, q);
        continue;
      }
      let [f, r] = mapHeader(b, q);
      for (let k = 0; k < f; k++) {
        const hit = strEquals(b, r, K_INPUTS);
        r = skip(b, r);
        if (hit) return readInt(b, r);
        r = skip(b, r);
      }
      return null;
    }
    return null;
  }
  return null;
}

/**
 * {tick, ack, inputs} of a state message (v1 or v2) for player `me` (a Buffer of its id's
 * UTF-8 bytes); inputs is null in v2 (no full state) or when we are not in it.
 */
export function walkState(b, me) {
  let [n, p] = mapHeader(b, 0);
  if (n < 0) throw new Error("msgpack: a state is not a map");
  let tick = null;
  let ack = null;
  let inputs = null;
  for (let i = 0; i < n; i++) {
    if (strEquals(b, p, K_TICK)) {
      p = skip(b, p);
      tick = readInt(b, p);
    } else if (strEquals(b, p, K_ACK)) {
      p = skip(b, p);
      ack = readInt(b, p);
    } else if (strEquals(b, p, K_STATE)) {
      p = skip(b, p);
      inputs = inputsOf(b, p, me);
    } else {
      p = skip(b, p);
    }
    p = skip(b, p);
  }
  if (p !== b.length) throw new Error(`msgpack: ${b.length - p} bytes after the state`);
  return { tick, ack, inputs };
}

function intSize(c) {
  if (c <= 0x7f || c >= 0xe0) return 1;
  if (c === 0xcc || c === 0xd0) return 2;
  if (c === 0xcd || c === 0xd1) return 3;
  if (c === 0xce || c === 0xd2) return 5;
  if (c === 0xcf || c === 0xd3) return 9;
  return 0;
}

function strHeader(bytes) {
  const n = bytes.length;
  if (n < 32) return Buffer.from([0xa0 | n]);
  if (n < 256) return Buffer.from([0xd9, n]);
  return Buffer.from([0xda, n >> 8, n & 0xff]);
}

/** The msgpack string `s` (header and UTF-8 bytes), to search a state for. */
export function msgpackKey(s) {
  const bytes = Buffer.from(s);
  return Buffer.concat([strHeader(bytes), bytes]);
}

const TAIL_ACK = msgpackKey("ack");
const HEAD = Buffer.concat([msgpackKey("t"), msgpackKey("state"), msgpackKey("tick")]);

/**
 * walkState's answer the quick way (see the top of this file); `meKey` is msgpackKey(id).
 * The one guess it makes is that the byte string of our key found in the state is our entry
 * of `players`: ids are random, so another value spelling the same bytes is not a concern.
 */
export function findState(b, me, meKey) {
  // head: fixmap, "t": "state", "tick": int
  if ((b[0] & 0xf0) !== 0x80 || b.compare(HEAD, 0, HEAD.length, 1, 1 + HEAD.length) !== 0) {
    return walkState(b, me);
  }
  const tick = readInt(b, 1 + HEAD.length);
  // tail: "ack": int, ending the message
  let ack = null;
  for (let size = 1; size <= 9; size++) {
    const at = b.length - size;
    if (at - TAIL_ACK.length < 0) break;
    if (intSize(b[at]) === size && b.compare(TAIL_ACK, 0, TAIL_ACK.length, at - TAIL_ACK.length, at) === 0) {
      ack = readInt(b, at);
      break;
    }
  }
  if (tick === null || ack === null) return walkState(b, me);
  let inputs = null;
  const at = b.indexOf(meKey);
  if (at > 0) {
    let [f, r] = mapHeader(b, at + meKey.length);
    if (f < 0) return walkState(b, me);
    for (let k = 0; k < f; k++) {
      const hit = strEquals(b, r, K_INPUTS);
      r = skip(b, r);
      if (hit) {
        inputs = readInt(b, r);
        break;
      }
      r = skip(b, r);
    }
  }
  return { tick, ack, inputs };
}
