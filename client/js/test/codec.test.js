// The codecs and the protocol's integer rules (docs/protocol.md sections 3 and 8).
import assert from "node:assert/strict";
import { test } from "node:test";

import { decode } from "@msgpack/msgpack";

import { decodeJson, decodeMsgpack, encodeJson, encodeMsgpack, makeCodec, ProtocolError, StateroomError } from "../src/index.js";
import { safeIntDecoderWorks } from "../src/codec.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const unhex = (text) => Uint8Array.from(Buffer.from(text.replace(/\s+/g, ""), "hex"));

test("the client frames of docs/protocol.md section 8, byte for byte", () => {
  assert.equal(
    hex(encodeMsgpack({ t: "join", v: 1, room: "lobby", game: "arena" })),
    "84a174a46a6f696ea17601a4726f6f6da56c6f626279a467616d65a56172656e61",
  );
  assert.equal(
    hex(encodeMsgpack({ t: "input", seq: 1, data: { dx: 1, dy: 0 } })),
    "83a174a5696e707574a373657101a46461746182a2647801a2647900",
  );
  assert.equal(hex(encodeMsgpack({ t: "ping", id: 7 })), "82a174a470696e67a26964" + "07");
  assert.equal(hex(encodeMsgpack({ t: "leave" })), "81a174a56c65617665");
});

test("integers >= 2^32 are msgpack ints, never float 64", () => {
  // 2^32 + 5: uint 64 (cf), not float 64 (cb)
  assert.equal(hex(encodeMsgpack(2 ** 32 + 5)), "cf0000000100000005");
  assert.equal(hex(encodeMsgpack(2 ** 53 - 1)), "cf001fffffffffffff");
  assert.equal(hex(encodeMsgpack({ seq: 2 ** 53 - 1 })), "81a3736571cf001fffffffffffff");
  assert.equal(hex(encodeMsgpack(-(2 ** 40))), "d3ffffff0000000000");
  assert.equal(hex(encodeMsgpack(-(2 ** 31) - 1)), "d3ffffffff7fffffff");
  // below 2^32 the smallest int encoding, as the server's own encoder writes
  assert.equal(hex(encodeMsgpack(2 ** 32 - 1)), "ceffffffff");
  assert.equal(hex(encodeMsgpack(-(2 ** 31))), "d280000000");
  assert.equal(hex(encodeMsgpack(300)), "cd012c");
  // an integral number beyond 2^53 is still an integer (exactly representable)
  assert.equal(hex(encodeMsgpack(2 ** 60)), "cf1000000000000000");
  // bigint: int 64 / uint 64
  assert.equal(hex(encodeMsgpack(2n ** 63n - 1n)), "cf7fffffffffffffff");
  assert.equal(hex(encodeMsgpack(-(2n ** 63n))), "d38000000000000000");
  // floats stay float 64
  assert.equal(hex(encodeMsgpack(0.5)), "cb3fe0000000000000");
  assert.equal(hex(encodeMsgpack(2 ** 64)), "cb43f0000000000000"); // beyond int 64: a float
  // and the other library reads them back as the same values
  assert.equal(decode(encodeMsgpack(2 ** 32 + 5)), 2 ** 32 + 5);
});

test("what the protocol cannot carry is refused before it is sent", () => {
  for (const bad of [NaN, Infinity, -Infinity, 2n ** 63n, -(2n ** 63n) - 1n, new Uint8Array(2), new Date(), new Map(), () => 1, Symbol("s")]) {
    for (const encode of [encodeMsgpack, encodeJson]) {
      assert.throws(() => encode({ data: bad }), (error) => error instanceof StateroomError && error.code === "invalid_message", String(bad));
    }
  }
  // undefined map values are left out, as JSON.stringify does; in arrays they are null
  assert.deepEqual(decode(encodeMsgpack({ a: 1, b: undefined, c: [undefined] })), { a: 1, c: [null] });
  assert.equal(encodeJson({ a: 1, b: undefined, c: [undefined] }), '{"a":1,"c":[null]}');
});

test("decoding keeps integers exact: beyond 2^53 as bigint, the others as numbers", () => {
  for (const fallback of [false, true]) {
    const decodeIt = (bytes) => decodeMsgpack(unhex(bytes), { fallback });
    assert.equal(decodeIt("cf0000000100000005"), 2 ** 32 + 5);
    assert.equal(decodeIt("cf001fffffffffffff"), 2 ** 53 - 1);
    assert.equal(decodeIt("cf0020000000000000"), 2n ** 53n);
    assert.equal(decodeIt("cf7fffffffffffffff"), 2n ** 63n - 1n);
    assert.equal(decodeIt("d38000000000000000"), -(2n ** 63n));
    assert.equal(decodeIt("d3ffffff0000000000"), -(2 ** 40));
    assert.deepEqual(decodeIt("92cf7fffffffffffffff01"), [2n ** 63n - 1n, 1]);
  }
  assert.ok(safeIntDecoderWorks(), "the fast path works with the installed @msgpack/msgpack");
  assert.deepEqual(decodeJson('{"a": 12345678901234567890, "b": 9007199254740991, "c": -9223372036854775808, "d": 1.5e300, "e": 1.0}'), {
    a: 12345678901234567890n,
    b: 9007199254740991,
    c: -9223372036854775808n,
    d: 1.5e300,
    e: 1,
  });
  assert.equal(encodeJson({ a: 10n ** 18n, b: -0.5, s: 'q"\\\n' }), '{"a":1000000000000000000,"b":-0.5,"s":"q\\"\\\\\\n"}');
});

test("the exact JSON parser agrees with JSON.parse and is as strict", () => {
  const long = "1234567890123456";
  const texts = [
    `{"s": "a \\" quote, a \\\\ backslash \\u00e9 ${long}", "n": [${long}, -0.0, 1e2, 0.5], "o": {}, "l": [], "t": true, "f": false, "z": null}`,
    `  [ {"k\\"ey": "v\\\\"} , ${long}.5 ]  `,
    `"just a string ${long}"`,
  ];
  for (const text of texts) assert.deepEqual(decodeJson(text), JSON.parse(text), text);
  for (const bad of [`[${long},]`, `{"a":${long}} x`, `[${long}`, `{'a': ${long}}`, `[NaN, ${long}]`, `["\t${long}"]`, `[01${long}]`]) {
    assert.throws(() => decodeJson(bad), SyntaxError, bad);
  }
});

test("a connection's codec checks frames and their type", () => {
  const msgpack = makeCodec("msgpack", 2);
  assert.equal(msgpack.subprotocol, "stateroom.v2.msgpack");
  assert.equal(msgpack.text, false);
  const pong = unhex("83 a1 74 a4 70 6f 6e 67 a2 69 64 07 a4 74 69 63 6b 03");
  assert.deepEqual(msgpack.decode(pong.buffer), { t: "pong", id: 7, tick: 3 });
  assert.deepEqual(msgpack.decode(Buffer.from(pong)), { t: "pong", id: 7, tick: 3 });
  assert.throws(() => msgpack.decode('{"t":"pong"}'), ProtocolError);
  assert.throws(() => msgpack.decode(unhex("93010203")), /non-map/);
  assert.throws(() => msgpack.decode(unhex("c1")), /undecodable/);
  const json = makeCodec("json", 1);
  assert.equal(json.subprotocol, "stateroom.v1.json");
  assert.equal(json.text, true);
  assert.deepEqual(json.decode('{"t":"pong","id":7,"tick":3}'), { t: "pong", id: 7, tick: 3 });
  assert.deepEqual(json.decode(new TextEncoder().encode('{"t":"x"}')), { t: "x" });
  assert.throws(() => json.decode(Uint8Array.of(0x7b, 0xff, 0x7d)), /undecodable/);
  assert.throws(() => json.decode("[1]"), /non-map/);
  assert.throws(() => json.decode("{"), /undecodable/);
  assert.throws(() => makeCodec("xml", 1), TypeError);
});

test("the state example of docs/protocol.md section 8 decodes as documented", () => {
  const frame = unhex(`84 a1 74 a5 73 74 61 74 65 a4 74 69 63 6b 03 a5 73 74 61 74 65 84 a1 77 40 a1 68 20
    a7 70 6c 61 79 65 72 73 81 a2 70 31 85 a4 6e 61 6d 65 a3 41 6e 6e a1 78 cb 40 25 33 33 33 33 33 33
    a1 79 cb 40 14 00 00 00 00 00 00 a5 73 63 6f 72 65 00 a6 69 6e 70 75 74 73 01
    a7 70 69 63 6b 75 70 73 91 92 cb 3f f8 00 00 00 00 00 00 cb 40 02 00 00 00 00 00 00 a3 61 63 6b 01`);
  assert.deepEqual(makeCodec("msgpack", 1).decode(frame), {
    t: "state",
    tick: 3,
    state: { w: 64, h: 32, players: { p1: { name: "Ann", x: 10.6, y: 5, score: 0, inputs: 1 } }, pickups: [[1.5, 2.25]] },
    ack: 1,
  });
});
