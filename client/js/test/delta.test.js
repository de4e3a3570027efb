// The delta decoder against the Python encoder's payloads (fixtures/delta-vectors.json,
// written by `python -m tests.test_js_sdk`), and its refusals (docs/delta-format.md §6).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { DeltaBaseMismatch, DeltaDecoder, DeltaError, decodeJson, isKeyframe, makeCodec } from "../src/index.js";

const vectors = JSON.parse(readFileSync(new URL("./fixtures/delta-vectors.json", import.meta.url), "utf8"));
const msgpack = makeCodec("msgpack", 2);
const json = makeCodec("json", 2);

function payloadOf(step, encoding) {
  return encoding === "json" ? json.decode(step.json).p : msgpack.decode(Buffer.from(step.msgpack, "hex")).p;
}

for (const stream of vectors.streams) {
  for (const encoding of ["msgpack", "json"]) {
    test(`${stream.name} stream (${encoding}): every payload gives the encoder's view`, () => {
      const decoder = new DeltaDecoder();
      const late = [];
      let keyframes = 0;
      let previous = null;
      let previousCopy = null;
      for (const step of stream.steps) {
        const payload = payloadOf(step, encoding);
        if (isKeyframe(payload)) keyframes++;
        const expected = decodeJson(step.view).v;
        const view = decoder.apply(payload);
        assert.deepEqual(view, expected, `tick ${step.tick}`);
        assert.equal(decoder.tick, step.tick);
        // copy on write: the previous view was not changed by this payload
        if (previous !== null) assert.deepEqual(previous, previousCopy, `tick ${step.tick - 1} kept`);
        previous = view;
        previousCopy = structuredClone(view);
        for (const joiner of late) assert.deepEqual(joiner.apply(payload), expected, `late joiner at tick ${step.tick}`);
        if (step.late) {
          const joiner = new DeltaDecoder();
          assert.deepEqual(joiner.apply(json.decode(step.late).p), expected);
          late.push(joiner);
        }
      }
      assert.ok(keyframes >= 3, "the vectors hold keyframes mid-stream");
      assert.ok(late.length >= 3);
    });
  }
}

test("the vectors exercise what JavaScript numbers make hard", () => {
  const views = vectors.streams.flatMap((s) => s.steps.map((step) => decodeJson(step.view).v));
  const walk = (v, found) => {
    if (typeof v === "bigint") found.bigint = true;
    if (Object.is(v, -0)) found.negativeZero = true;
    if (v && typeof v === "object") for (const x of Object.values(v)) walk(x, found);
    return found;
  };
  const found = walk(views, {});
  assert.ok(found.bigint && found.negativeZero);
  const kitchen = vectors.streams.find((s) => s.name === "kitchen").steps.map((step) => json.decode(step.json).p);
  assert.ok(kitchen.some((p) => Array.isArray(p.patch?.big)), "a difference too large travels as [value]");
  assert.ok(kitchen.some((p) => p.patch?.log?.n === 0), "a list resent whole");
});

const ARENA_KEYFRAME = {
  tick: 3,
  stream: 2,
  schema: [
    { name: "w", kind: "int", diff: true },
    { name: "h", kind: "int", diff: true },
    {
      name: "players",
      kind: "map",
      record: "obj",
      fields: [
        { name: "name", kind: "str" },
        { name: "x", kind: "fixed", scale: 100, diff: true },
        { name: "y", kind: "fixed", scale: 100, diff: true },
        { name: "score", kind: "int", diff: true },
        { name: "inputs", kind: "int", diff: true },
      ],
    },
    {
      name: "pickups",
      kind: "list",
      record: "tuple",
      fields: [
        { name: "x", kind: "fixed", scale: 100, diff: true },
        { name: "y", kind: "fixed", scale: 100, diff: true },
      ],
    },
  ],
  view: { w: 64, h: 32, players: [0, "g_ann", "Ann", 1060, 500, 0, 41, 1, "g_bob", "Bob", 6001, 3000, 2, 7], pickups: [150, 225] },
};

test("the worked example of docs/delta-format.md section 5", () => {
  const decoder = new DeltaDecoder();
  assert.deepEqual(decoder.apply(ARENA_KEYFRAME), {
    w: 64,
    h: 32,
    players: {
      g_ann: { name: "Ann", x: 10.6, y: 5, score: 0, inputs: 41 },
      g_bob: { name: "Bob", x: 60.01, y: 30, score: 2, inputs: 7 },
    },
    pickups: [[1.5, 2.25]],
  });
  const tick4 = decoder.apply({
    tick: 4,
    base: 3,
    stream: 2,
    patch: { players: { r: [1], c: [0, 18, 60, 1], a: [1, "g_cy", "Cy", 300, 450, 0, 0] }, pickups: { c: [0, 1, 3850] } },
  });
  assert.deepEqual(tick4.players, {
    g_ann: { name: "Ann", x: 11.2, y: 5, score: 0, inputs: 42 },
    g_cy: { name: "Cy", x: 3, y: 4.5, score: 0, inputs: 0 },
  });
  assert.deepEqual(tick4.pickups, [[40, 2.25]]);
  const tick5 = decoder.apply({ tick: 5, base: 4, stream: 2, patch: { players: { c: [0, 30, -42, -42, 1, 1] } } });
  assert.deepEqual(tick5.players.g_ann, { name: "Ann", x: 10.78, y: 4.58, score: 1, inputs: 43 });
  assert.equal(tick5.players.g_cy, tick4.players.g_cy, "an unchanged record is shared");
  assert.deepEqual(decoder.apply({ tick: 6, base: 5, stream: 2 }), tick5, "no change");
});

test("the generic example of docs/delta-format.md section 3.4", () => {
  const decoder = new DeltaDecoder();
  decoder.apply({ tick: 7, view: { w: 64, players: { p1: { x: 1.5, hp: 3 }, p2: { x: 0.0, hp: 3 } }, log: ["hi"] } });
  const view = decoder.apply({
    tick: 8,
    base: 7,
    patch: { s: { log: ["hi", "yo"] }, p: { players: { s: { p3: { x: 5.0, hp: 3 } }, r: ["p2"], p: { p1: { s: { x: 2.0 } } } } } },
  });
  assert.deepEqual(view, { w: 64, players: { p1: { x: 2, hp: 3 }, p3: { x: 5, hp: 3 } }, log: ["hi", "yo"] });
});

test("a delta of another tick or stream is refused and changes nothing", () => {
  const decoder = new DeltaDecoder();
  assert.throws(() => decoder.apply({ tick: 4, base: 3, stream: 2 }), DeltaBaseMismatch, "no view held");
  const view = decoder.apply(ARENA_KEYFRAME);
  assert.throws(() => decoder.apply({ tick: 5, base: 4, stream: 2 }), (e) => e instanceof DeltaBaseMismatch && e.base === 4 && e.held === 3);
  assert.throws(() => decoder.apply({ tick: 4, base: 3, stream: 9 }), DeltaBaseMismatch);
  assert.throws(() => decoder.apply({ tick: 4, base: 3 }), DeltaBaseMismatch, "no stream is not stream 2");
  assert.equal(decoder.tick, 3);
  assert.equal(decoder.view, view);
  assert.deepEqual(decoder.apply({ tick: 4, base: 3, stream: 2 }), view);
});

test("a malformed payload is a DeltaError and empties the decoder", () => {
  const bad = [
    { tick: 4, base: 3, stream: 2, patch: { players: { c: [5, 1, 1] } } }, // slot 5 holds nothing
    { tick: 4, base: 3, stream: 2, patch: { players: { r: [7] } } },
    { tick: 4, base: 3, stream: 2, patch: { players: { c: [0, 64, 1] } } }, // mask beyond 5 fields
    { tick: 4, base: 3, stream: 2, patch: { players: { c: [0, 2, "far"] } } },
    { tick: 4, base: 3, stream: 2, patch: { players: { a: [0, "g_new", "N", 1, 1, 0, 0] } } }, // slot taken
    { tick: 4, base: 3, stream: 2, patch: { players: { a: [2, "g_ann", "N", 1, 1, 0, 0] } } }, // id present
    { tick: 4, base: 3, stream: 2, patch: { pickups: { n: 5 } } },
    { tick: 4, base: 3, stream: 2, patch: { pickups: { a: [1] } } }, // not a whole record
    { tick: 4, base: 3, stream: 2, patch: { w: 1.5 } },
    { tick: 4, base: 3, stream: 2, patch: [] },
    { tick: 4, base: 3, stream: 2, rest: { s: { w: 1 } } }, // rest sets a declared field
  ];
  for (const payload of bad) {
    const decoder = new DeltaDecoder();
    decoder.apply(ARENA_KEYFRAME);
    assert.throws(() => decoder.apply(payload), DeltaError, JSON.stringify(payload));
    assert.equal(decoder.tick, null, "the decoder waits for a keyframe");
    assert.throws(() => decoder.apply({ tick: 5, base: 4, stream: 2 }), DeltaBaseMismatch);
    decoder.apply(ARENA_KEYFRAME);
  }
  const decoder = new DeltaDecoder();
  for (const payload of [null, [], { view: 1 }, { tick: -1, view: 1 }, { tick: 1.5, view: 1 }, { tick: 1 }]) {
    assert.throws(() => decoder.apply(payload), DeltaError, JSON.stringify(payload));
  }
  for (const schema of [{}, [{ name: "a", kind: "blob" }], [{ name: "a", kind: "int" }], [{ name: "a", kind: "fixed", diff: true, scale: 0 }], [{ name: "c", kind: "map", record: "obj", fields: [{ name: "d", kind: "list", record: "obj", fields: [] }] }], [{ name: "a", kind: "str" }, { name: "a", kind: "str" }]]) {
    assert.throws(() => decoder.apply({ tick: 1, schema, view: {} }), DeltaError, JSON.stringify(schema));
  }
  decoder.apply({ tick: 1, view: { a: 1 } });
  assert.throws(() => decoder.apply({ tick: 1, base: 1, patch: {} }), /must follow its base/);
  assert.throws(() => decoder.apply({ tick: 2, base: 1, patch: { r: ["zz"] } }), /not there/);
});

test("int fields hold 64-bit integers exactly, across differences", () => {
  const decoder = new DeltaDecoder();
  const schema = [{ name: "n", kind: "int", diff: true }];
  assert.equal(decoder.apply({ tick: 1, schema, view: { n: 2 ** 53 - 2 } }).n, 2 ** 53 - 2);
  assert.equal(decoder.apply({ tick: 2, base: 1, patch: { n: 5 } }).n, 2n ** 53n + 3n);
  assert.equal(decoder.apply({ tick: 3, base: 2, patch: { n: -10 } }).n, 2 ** 53 - 7);
  assert.equal(decoder.apply({ tick: 4, base: 3, patch: { n: [2n ** 62n] } }).n, 2n ** 62n);
});
