/**
 * The two encodings of the protocol (docs/protocol.md section 1), with its integer rules.
 *
 * Why this is more than `encode`/`JSON.stringify`: the server refuses a float where an
 * int is required, and JavaScript has one number type. `@msgpack/msgpack` writes a
 * safe integer >= 2^32 as uint 64 only while `useBigInt64` is off, and with it off
 * cannot write a `bigint` at all. So every integral number of a client message whose
 * magnitude needs 64 bits is turned into a `bigint` first and written with
 * `useBigInt64`: ints stay ints at any size (2^32 + 5 is `cf 00 00 00 01 00 00 00 05`),
 * floats stay float 64.
 *
 * Decoding keeps precision: an integer beyond 2^53 - 1 in magnitude becomes a `bigint`,
 * any other a number, in both encodings (JSON through a small exact parser, used only
 * when the text holds a digit run long enough to need it).
 */

import { Decoder, Encoder } from "@msgpack/msgpack";

import { SUBPROTOCOLS } from "./codes.js";
import { ProtocolError, StateroomError } from "./errors.js";

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const TWO_63 = 2 ** 63;
const MAX_DEPTH = 64;

function invalid(message) {
  return new StateroomError("invalid_message", message);
}

/** A copy of `value` fit for the msgpack encoder: integral numbers that need 64 bits as
 * bigint, undefined map values dropped (as JSON does), anything not in the protocol's
 * value model refused with a clear error. */
function toWire(value, depth) {
  switch (typeof value) {
    case "number":
      if (!Number.isFinite(value)) throw invalid("numbers must be finite (no NaN or Infinity)");
      if (Number.isInteger(value) && (value >= 2 ** 32 || value < -(2 ** 31))) {
        if (value >= TWO_63 || value < -TWO_63) return value; // beyond int 64: a float
        return BigInt(value);
      }
      return value;
    case "bigint":
      if (value < INT64_MIN || value > INT64_MAX) {
        throw invalid(`integer ${value} is outside the signed 64-bit range`);
      }
      return value;
    case "string":
    case "boolean":
      return value;
    case "object":
      break;
    default:
      throw invalid(`values of type ${typeof value} cannot be sent`);
  }
  if (value === null) return null;
  if (depth >= MAX_DEPTH) throw invalid(`a message may nest at most ${MAX_DEPTH} levels`);
  if (Array.isArray(value)) {
    return value.map((item) => (item === undefined ? null : toWire(item, depth + 1)));
  }
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) {
    throw invalid("binary values cannot be sent (the server refuses msgpack bin)");
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) {
    throw invalid(`values of type ${value.constructor?.name ?? "object"} cannot be sent`);
  }
  const out = {};
  for (const key of Object.keys(value)) {
    const item = value[key];
    if (item !== undefined) out[key] = toWire(item, depth + 1);
  }
  return out;
}

const encoder = new Encoder({ useBigInt64: true });

/** msgpack with the protocol's integer rules (see the module docstring). */
export function encodeMsgpack(value) {
  return encoder.encode(toWire(value, 0));
}

/** Turns 64-bit ints back into numbers where that loses nothing. */
class SafeIntDecoder extends Decoder {
  readU64AsBigInt() {
    const value = super.readU64AsBigInt();
    return value <= MAX_SAFE ? Number(value) : value;
  }

  readI64AsBigInt() {
    const value = super.readI64AsBigInt();
    return value >= -MAX_SAFE && value <= MAX_SAFE ? Number(value) : value;
  }
}

/** Safe bigints of a decoded value as numbers (the fallback when SafeIntDecoder does not
 * work with the installed @msgpack/msgpack: its hooks are not public API). */
function normalize(value) {
  if (typeof value === "bigint") {
    return value >= -MAX_SAFE && value <= MAX_SAFE ? Number(value) : value;
  }
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = normalize(value[i]);
  } else {
    for (const key of Object.keys(value)) value[key] = normalize(value[key]);
  }
  return value;
}

/** Whether SafeIntDecoder decodes 64-bit ints as it should with this @msgpack/msgpack. */
export function safeIntDecoderWorks() {
  try {
    const probe = new SafeIntDecoder({ useBigInt64: true }).decode(
      // [2^32 + 5 (uint 64), 2^63 - 1 (uint 64), -2^40 (int 64)]
      Uint8Array.of(
        0x93,
        ...[0xcf, 0, 0, 0, 1, 0, 0, 0, 5],
        ...[0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ...[0xd3, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0],
      ),
    );
    return probe[0] === 2 ** 32 + 5 && probe[1] === INT64_MAX && probe[2] === -(2 ** 40);
  } catch {
    return false;
  }
}

const FAST_DECODE = safeIntDecoderWorks();
const decoder = FAST_DECODE
  ? new SafeIntDecoder({ useBigInt64: true })
  : new Decoder({ useBigInt64: true });

/** msgpack decoding: integers beyond 2^53 - 1 in magnitude as bigint, others as numbers. */
export function decodeMsgpack(bytes, { fallback = !FAST_DECODE } = {}) {
  if (!fallback) return decoder.decode(bytes);
  return normalize(new Decoder({ useBigInt64: true }).decode(bytes));
}

// -- JSON ---------------------------------------------------------------------------

function jsonValue(value, depth, parts) {
  switch (typeof value) {
    case "number":
      if (!Number.isFinite(value)) throw invalid("numbers must be finite (no NaN or Infinity)");
      parts.push(String(value));
      return;
    case "bigint":
      if (value < INT64_MIN || value > INT64_MAX) {
        throw invalid(`integer ${value} is outside the signed 64-bit range`);
      }
      parts.push(value.toString());
      return;
    case "string":
      parts.push(JSON.stringify(value));
      return;
    case "boolean":
      parts.push(value ? "true" : "false");
      return;
    case "object":
      break;
    default:
      throw invalid(`values of type ${typeof value} cannot be sent`);
  }
  if (value === null) {
    parts.push("null");
    return;
  }
  if (depth >= MAX_DEPTH) throw invalid(`a message may nest at most ${MAX_DEPTH} levels`);
  if (Array.isArray(value)) {
    parts.push("[");
    value.forEach((item, i) => {
      if (i) parts.push(",");
      if (item === undefined) parts.push("null");
      else jsonValue(item, depth + 1, parts);
    });
    parts.push("]");
    return;
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) {
    throw invalid(`values of type ${value.constructor?.name ?? "object"} cannot be sent`);
  }
  parts.push("{");
  let first = true;
  for (const key of Object.keys(value)) {
    const item = value[key];
    if (item === undefined) continue;
    if (!first) parts.push(",");
    first = false;
    parts.push(JSON.stringify(key), ":");
    jsonValue(item, depth + 1, parts);
  }
  parts.push("}");
}

/** JSON text of `value`; bigints are written as integers, NaN and infinities refused. */
export function encodeJson(value) {
  const parts = [];
  jsonValue(value, 0, parts);
  return parts.join("");
}

const LONG_DIGITS = /\d{16}/;

/** JSON where integers beyond 2^53 - 1 in magnitude become bigint (exact). */
export function decodeJson(text) {
  if (!LONG_DIGITS.test(text)) return JSON.parse(text);
  return new ExactJsonParser(text).parse();
}

const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;

/** A strict JSON parser (RFC 8259) that keeps big integers exact. Only used for texts
 * with a long digit run, so speed matters less than being right. */
class ExactJsonParser {
  constructor(text) {
    this.text = text;
    this.pos = 0;
  }

  parse() {
    const value = this.value(0);
    this.space();
    if (this.pos !== this.text.length) this.fail("extra data after the value");
    return value;
  }

  fail(what) {
    throw new SyntaxError(`JSON: ${what} at position ${this.pos}`);
  }

  space() {
    const text = this.text;
    while (this.pos < text.length) {
      const c = text.charCodeAt(this.pos);
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      this.pos++;
    }
  }

  value(depth) {
    if (depth > 512) this.fail("too deeply nested");
    this.space();
    const text = this.text;
    const c = text[this.pos];
    if (c === "{") {
      this.pos++;
      const out = {};
      this.space();
      if (text[this.pos] === "}") {
        this.pos++;
        return out;
      }
      for (;;) {
        this.space();
        if (text[this.pos] !== '"') this.fail("expected a string key");
        const key = this.string();
        this.space();
        if (text[this.pos] !== ":") this.fail("expected ':'");
        this.pos++;
        const item = this.value(depth + 1);
        Object.defineProperty(out, key, {
          value: item,
          writable: true,
          enumerable: true,
          configurable: true,
        });
        this.space();
        if (text[this.pos] === ",") {
          this.pos++;
          continue;
        }
        if (text[this.pos] === "}") {
          this.pos++;
          return out;
        }
        this.fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      this.pos++;
      const out = [];
      this.space();
      if (text[this.pos] === "]") {
        this.pos++;
        return out;
      }
      for (;;) {
        out.push(this.value(depth + 1));
        this.space();
        if (text[this.pos] === ",") {
          this.pos++;
          continue;
        }
        if (text[this.pos] === "]") {
          this.pos++;
          return out;
        }
        this.fail("expected ',' or ']'");
      }
    }
    if (c === '"') return this.string();
    for (const [word, result] of [
      ["true", true],
      ["false", false],
      ["null", null],
    ]) {
      if (text.startsWith(word, this.pos)) {
        this.pos += word.length;
        return result;
      }
    }
    NUMBER.lastIndex = this.pos;
    const match = NUMBER.exec(text);
    if (!match) this.fail("unexpected character");
    this.pos = NUMBER.lastIndex;
    const spelt = match[0];
    if (match[1] === undefined && match[2] === undefined) {
      const number = Number(spelt);
      if (Number.isSafeInteger(number)) return number;
      return BigInt(spelt);
    }
    return Number(spelt);
  }

  string() {
    const text = this.text;
    let end = this.pos + 1;
    for (;;) {
      const i = text.indexOf('"', end);
      if (i < 0) this.fail("unterminated string");
      let backslashes = 0;
      for (let j = i - 1; text[j] === "\\"; j--) backslashes++;
      end = i + 1;
      if (backslashes % 2 === 0) break;
    }
    const raw = text.slice(this.pos, end);
    this.pos = end;
    return JSON.parse(raw); // strict about escapes and control characters
  }
}

// -- codecs -------------------------------------------------------------------------

const textDecoder = new TextDecoder("utf-8", { fatal: true });

function asBytes(frame) {
  if (frame instanceof ArrayBuffer) return new Uint8Array(frame);
  if (ArrayBuffer.isView(frame)) {
    return new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength);
  }
  return null;
}

function undecodable(error) {
  return new ProtocolError(`undecodable server frame: ${error?.message ?? error}`, {
    cause: error,
  });
}

/** The codec of one connection: how its frames are written and read. */
export function makeCodec(encoding, version) {
  const subprotocol = SUBPROTOCOLS[`${encoding}:${version}`];
  if (subprotocol === undefined) {
    throw new TypeError(`no codec for encoding ${String(encoding)} and version ${version}`);
  }
  const json = encoding === "json";
  return Object.freeze({
    encoding,
    version,
    subprotocol,
    text: json,
    encode: json ? encodeJson : encodeMsgpack,
    decode(frame) {
      let message;
      if (json) {
        let text = frame;
        if (typeof frame !== "string") {
          const bytes = asBytes(frame);
          if (bytes === null) throw new ProtocolError("server sent a frame of an unknown type");
          try {
            text = textDecoder.decode(bytes);
          } catch (error) {
            throw undecodable(error);
          }
        }
        try {
          message = decodeJson(text);
        } catch (error) {
          throw undecodable(error);
        }
      } else {
        const bytes = typeof frame === "string" ? null : asBytes(frame);
        if (bytes === null) {
          throw new ProtocolError("server sent a text frame on a msgpack connection");
        }
        try {
          message = decodeMsgpack(bytes);
        } catch (error) {
          throw undecodable(error);
        }
      }
      if (message === null || typeof message !== "object" || Array.isArray(message)) {
        throw new ProtocolError("server sent a non-map message");
      }
      return message;
    },
  });
}
