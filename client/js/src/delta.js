/**
 * Delta sync, the client's side: apply keyframes and deltas of one stream and get the
 * full view back (docs/delta-format.md). A port of `DeltaDecoder` in
 * server/protocol/delta.py, checked against payloads that module encodes.
 *
 * Views are rebuilt copy-on-write: a view handed out is never changed afterwards, and
 * the parts that did not change are shared with the next one, so an application may
 * keep old views (for interpolation) at no cost. Treat them as read-only.
 *
 * JavaScript has one number type, so where the Python decoder tells 1 from 1.0 this one
 * cannot: a `float` field accepts any number, an `int` field any integral number (or a
 * bigint, for integers beyond 2^53 - 1, which the codecs decode exactly).
 */

import { DeltaBaseMismatch, DeltaError } from "./errors.js";

const SAFE_INT = Number.MAX_SAFE_INTEGER;
const MAX_VIEW_DEPTH = 32;
const MAX_RECORD_FIELDS = 31;
const MAX_SLOT = 1 << 24;
const KINDS = new Set(["int", "fixed", "float", "str", "bool", "any"]);
const hasOwn = Object.hasOwn ?? ((o, k) => Object.prototype.hasOwnProperty.call(o, k));

function isMap(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function isInt(value) {
  return Number.isInteger(value) || typeof value === "bigint";
}

/** `obj[key] = value`, also for a key named `__proto__`. */
function setKey(obj, key, value) {
  if (key === "__proto__") {
    Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
  } else {
    obj[key] = value;
  }
}

function copyMap(map) {
  return hasOwn(map, "__proto__") ? Object.defineProperties({}, Object.getOwnPropertyDescriptors(map)) : { ...map };
}

const BIG_SAFE = BigInt(SAFE_INT);

/** Exact integer addition: numbers while they are safe, bigint beyond. */
function addInt(a, b) {
  if (typeof a === "number" && typeof b === "number") {
    const sum = a + b;
    if (Number.isSafeInteger(sum)) return sum;
  }
  const exact = BigInt(a) + BigInt(b);
  return exact >= -BIG_SAFE && exact <= BIG_SAFE ? Number(exact) : exact;
}

/** The check of a received absolute wire value of a field's kind. */
function wireOk(kind, value) {
  switch (kind) {
    case "fixed":
      return Number.isSafeInteger(value);
    case "int":
      return isInt(value);
    case "float":
      return typeof value === "number";
    case "str":
      return typeof value === "string";
    case "bool":
      return typeof value === "boolean";
    default:
      return value !== undefined;
  }
}

function checkWire(field, value) {
  if (!wireOk(field.kind, value)) {
    const got = value === null ? "null" : Array.isArray(value) ? "list" : typeof value;
    throw new DeltaError(
      `field ${JSON.stringify(String(field.name).slice(0, 40))}: a ${field.kind} value was expected, not ${got}`,
    );
  }
  return value;
}

// -- schema ---------------------------------------------------------------------------

function checkNames(fields, where) {
  const names = new Set();
  for (const f of fields) {
    if (names.has(f.name)) throw new DeltaError(`keyframe 'schema' is not usable: ${where}: field names must be unique`);
    names.add(f.name);
  }
}

function checkName(name, what) {
  if (typeof name !== "string" || name.length < 1 || [...name].length > 64) {
    throw new DeltaError(`keyframe 'schema' is not usable: a ${what} name must be a string of 1-64 characters`);
  }
}

function fieldFromWire(item, top) {
  if (!isMap(item)) throw new DeltaError("a schema field must be a map");
  const { name, kind } = item;
  if (typeof name !== "string" || typeof kind !== "string") {
    throw new DeltaError("a schema field needs a string 'name' and 'kind'");
  }
  if (kind === "map" || kind === "list") {
    if (!top) throw new DeltaError("collections cannot nest in records");
    const { fields, record } = item;
    if (!Array.isArray(fields) || (record !== "obj" && record !== "tuple")) {
      throw new DeltaError("a schema collection needs 'fields' (list) and 'record'");
    }
    const inner = fields.map((g) => fieldFromWire(g, false));
    checkName(name, "collection");
    checkNames(inner, `collection ${JSON.stringify(name)}`);
    if (inner.length > MAX_RECORD_FIELDS) {
      throw new DeltaError(`keyframe 'schema' is not usable: at most ${MAX_RECORD_FIELDS} fields per record`);
    }
    const keyed = kind === "map";
    if (!keyed && inner.length === 0) {
      throw new DeltaError(`keyframe 'schema' is not usable: list collection ${JSON.stringify(name)} needs at least one field`);
    }
    return { name, collection: true, keyed, shape: new Shape(inner, record === "tuple") };
  }
  checkName(name, "field");
  if (!KINDS.has(kind)) {
    throw new DeltaError(`keyframe 'schema' is not usable: field ${JSON.stringify(name.slice(0, 40))}: unknown kind ${JSON.stringify(kind.slice(0, 20))}`);
  }
  if (kind !== "int" && kind !== "fixed") return { name, kind, scale: 0, diffed: false, collection: false };
  const diff = item.diff;
  if (typeof diff !== "boolean") {
    throw new DeltaError(`numeric field ${JSON.stringify(name.slice(0, 40))} needs a boolean 'diff'`);
  }
  if (kind === "int") return { name, kind, scale: 0, diffed: diff, collection: false };
  const scale = item.scale;
  if (!Number.isInteger(scale) || scale < 1 || scale > 1e15) {
    throw new DeltaError("a 'fixed' field needs an integer 'scale' >= 1");
  }
  return { name, kind, scale, diffed: diff, collection: false };
}

function schemaFromWire(data) {
  if (!Array.isArray(data)) throw new DeltaError("keyframe 'schema' must be a list");
  const fields = data.map((item) => fieldFromWire(item, true));
  checkNames(fields, "schema");
  return fields;
}

/** One record shape: how wire values become what the application sees. */
class Shape {
  constructor(fields, tuples) {
    this.fields = fields;
    this.n = fields.length;
    this.tuples = tuples;
    this.maskLimit = 2 ** this.n;
  }

  view(wire) {
    const fields = this.fields;
    if (this.tuples) {
      const out = new Array(this.n);
      for (let i = 0; i < this.n; i++) {
        const s = fields[i].scale;
        out[i] = s ? wire[i] / s : wire[i];
      }
      return out;
    }
    const out = {};
    for (let i = 0; i < this.n; i++) {
      const s = fields[i].scale;
      setKey(out, fields[i].name, s ? wire[i] / s : wire[i]);
    }
    return out;
  }

  rows(flat) {
    const n = this.n;
    if (flat.length % n) throw new DeltaError(`a list of records must hold a multiple of ${n} values`);
    const rows = [];
    for (let i = 0; i < flat.length; i += n) {
      const row = new Array(n);
      for (let j = 0; j < n; j++) row[j] = checkWire(this.fields[j], flat[i + j]);
      rows.push(row);
    }
    return rows;
  }

  /** Apply the `c` entry of a collection change: `skip, mask, values...` per record. */
  applyChanges(flat, wires, ids, records) {
    const fields = this.fields;
    const n = this.n;
    const size = flat.length;
    let i = 0;
    let last = -1;
    while (i < size) {
      const skip = flat[i];
      const mask = flat[i + 1];
      i += 2;
      if (!Number.isSafeInteger(skip) || skip < 0 || !Number.isInteger(mask) || !(mask > 0 && mask < this.maskLimit)) {
        throw new DeltaError("a changed record starts with a skip and a mask (ints)");
      }
      const slot = last + 1 + skip;
      last = slot;
      const old = slot < wires.length ? wires[slot] : null;
      if (old == null) throw new DeltaError(`a change names slot ${slot}, which holds no record`);
      const wire = old.slice();
      for (let j = 0; j < n; j++) {
        if (!(mask & (1 << j))) continue;
        const x = flat[i++];
        const f = fields[j];
        if (f.diffed) {
          if (!isInt(x)) throw new DeltaError(`field ${j}: a value of the wrong type`);
          wire[j] = addInt(old[j], x);
        } else {
          if (!wireOk(f.kind, x)) throw new DeltaError(`field ${j}: a value of the wrong type`);
          wire[j] = x;
        }
      }
      wires[slot] = wire;
      const view = this.view(wire);
      if (ids === null) records[slot] = view;
      else setKey(records, ids[slot], view);
    }
  }
}

/** Slots of one map collection: id and wire values per slot. */
class KeyedTable {
  constructor() {
    this.ids = [];
    this.wires = [];
    this.slotOf = new Map();
  }

  release(slot) {
    this.slotOf.delete(this.ids[slot]);
    this.ids[slot] = null;
    this.wires[slot] = null;
  }
}

// -- the generic layer ------------------------------------------------------------------

function applyPatch(old, patch, depth = 0) {
  if (!isMap(old)) throw new DeltaError("a map patch applies to a map only");
  if (!isMap(patch) || depth > 2 * MAX_VIEW_DEPTH) throw new DeltaError("a map patch must be a map");
  const out = copyMap(old);
  const removed = patch.r;
  if (removed !== undefined && removed !== null) {
    if (!Array.isArray(removed)) throw new DeltaError("patch 'r' must be a list of keys");
    for (const key of removed) {
      if (typeof key !== "string" || !hasOwn(out, key)) {
        throw new DeltaError(`patch removes a key that is not there: ${JSON.stringify(String(key).slice(0, 40))}`);
      }
      delete out[key];
    }
  }
  const sets = patch.s;
  if (sets !== undefined && sets !== null) {
    if (!isMap(sets)) throw new DeltaError("patch 's' must be a map");
    for (const key of Object.keys(sets)) setKey(out, key, sets[key]);
  }
  const patches = patch.p;
  if (patches !== undefined && patches !== null) {
    if (!isMap(patches)) throw new DeltaError("patch 'p' must be a map");
    for (const key of Object.keys(patches)) {
      if (!hasOwn(out, key)) {
        throw new DeltaError(`patch changes a key that is not there: ${JSON.stringify(key.slice(0, 40))}`);
      }
      setKey(out, key, applyPatch(out[key], patches[key], depth + 1));
    }
  }
  return out;
}

// -- decoder ------------------------------------------------------------------------------

/** A delta-sync payload that does not build on a previous one (it has no `base`). */
export function isKeyframe(payload) {
  return !(isMap(payload) && hasOwn(payload, "base"));
}

/**
 * The client's side of one stream: `apply` each payload, get the view back.
 *
 * A keyframe replaces everything held (view, schema, slots). A delta must name the tick
 * (`base`) and `stream` of the view held, else DeltaBaseMismatch and nothing changes: ask
 * the server for a keyframe. A malformed payload throws DeltaError and leaves the decoder
 * empty (it waits for a keyframe).
 */
export class DeltaDecoder {
  constructor() {
    this.tick = null;
    this.stream = null;
    this.view = undefined;
    this._schema = null;
  }

  get hasSchema() {
    return this._schema !== null;
  }

  /** Forget the view: the next payload must be a keyframe. */
  reset() {
    this.tick = null;
    this.view = undefined;
  }

  apply(payload) {
    if (!isMap(payload)) throw new DeltaError("a delta payload must be a map");
    const tick = payload.tick;
    if (!Number.isSafeInteger(tick) || tick < 0) {
      throw new DeltaError("payload 'tick' must be an int in [0, 2^53 - 1]");
    }
    const stream = payload.stream ?? null;
    let view;
    if (hasOwn(payload, "base")) {
      const base = payload.base;
      if (this.tick === null || base !== this.tick) {
        const held = this.tick === null ? "no view" : `the view of tick ${this.tick}`;
        throw new DeltaBaseMismatch(
          `this delta is based on tick ${String(base).slice(0, 20)}, but the decoder holds ${held}: ask for a keyframe`,
          base,
          this.tick,
        );
      }
      if (stream !== this.stream) {
        throw new DeltaBaseMismatch(
          "this delta belongs to another stream (the server restarted it): ask for a keyframe",
          base,
          this.tick,
        );
      }
      if (tick <= base) throw new DeltaError(`a delta's tick (${tick}) must follow its base (${base})`);
      view = this._guard("delta", () => this._delta(payload));
    } else {
      view = this._guard("keyframe", () => this._keyframe(payload));
      this.stream = stream;
    }
    this.tick = tick;
    this.view = view;
    return view;
  }

  _guard(what, apply) {
    try {
      return apply();
    } catch (error) {
      this.reset();
      if (error instanceof DeltaError) throw error;
      if (error instanceof TypeError || error instanceof RangeError) {
        throw new DeltaError(`malformed ${what}: ${error.name}`, { cause: error });
      }
      throw error;
    }
  }

  _keyframe(payload) {
    if (!hasOwn(payload, "view")) throw new DeltaError("a keyframe needs a 'view'");
    if (!hasOwn(payload, "schema")) {
      this._schema = null;
      return payload.view;
    }
    const schema = schemaFromWire(payload.schema);
    const body = payload.view;
    if (!isMap(body)) throw new DeltaError("a schema keyframe's 'view' must be a map");
    const rest = payload.rest ?? {};
    if (!isMap(rest)) throw new DeltaError("keyframe 'rest' must be a map");
    const scalars = new Map();
    const tables = new Map();
    const lists = new Map();
    const view = {};
    for (const f of schema) {
      if (!hasOwn(body, f.name)) {
        throw new DeltaError(`the keyframe lacks the declared field ${JSON.stringify(f.name.slice(0, 40))}`);
      }
      if (hasOwn(rest, f.name)) {
        throw new DeltaError(`'rest' repeats the declared field ${JSON.stringify(f.name.slice(0, 40))}`);
      }
      const value = body[f.name];
      if (!f.collection) {
        scalars.set(f.name, checkWire(f, value));
        setKey(view, f.name, f.scale ? value / f.scale : value);
        continue;
      }
      if (!Array.isArray(value)) {
        throw new DeltaError(`keyframe collection ${JSON.stringify(f.name.slice(0, 40))} must be a flat list`);
      }
      if (f.keyed) {
        const table = new KeyedTable();
        tables.set(f.name, table);
        setKey(view, f.name, addKeyed(table, f.shape, value, {}));
      } else {
        const rows = f.shape.rows(value);
        lists.set(f.name, rows);
        setKey(view, f.name, rows.map((row) => f.shape.view(row)));
      }
    }
    for (const key of Object.keys(rest)) setKey(view, key, rest[key]);
    this._schema = schema;
    this._scalars = scalars;
    this._tables = tables;
    this._lists = lists;
    return view;
  }

  _delta(payload) {
    if (this._schema === null) {
      if (hasOwn(payload, "view")) return payload.view;
      const patch = payload.patch;
      return patch === undefined || patch === null ? this.view : applyPatch(this.view, patch);
    }
    const patch = payload.patch ?? null;
    const rest = payload.rest ?? null;
    if (patch === null && rest === null) return this.view;
    if (patch !== null && !isMap(patch)) throw new DeltaError("a schema delta's 'patch' must be a map");
    let view = copyMap(this.view);
    if (patch !== null) {
      for (const f of this._schema) {
        if (!hasOwn(patch, f.name)) continue;
        const change = patch[f.name];
        if (!f.collection) {
          const before = this._scalars.get(f.name);
          let wire;
          if (f.diffed && Array.isArray(change) && change.length === 1) wire = checkWire(f, change[0]);
          else if (f.diffed) {
            if (!isInt(change)) {
              throw new DeltaError(`field ${JSON.stringify(f.name.slice(0, 40))}: a difference must be an int`);
            }
            wire = addInt(before, change);
          } else wire = checkWire(f, change);
          this._scalars.set(f.name, wire);
          setKey(view, f.name, f.scale ? wire / f.scale : wire);
        } else if (!isMap(change)) {
          throw new DeltaError(`the change of collection ${JSON.stringify(f.name.slice(0, 40))} must be a map`);
        } else if (f.keyed) {
          setKey(view, f.name, this._applyKeyed(f, view[f.name], change));
        } else {
          setKey(view, f.name, this._applyListed(f, view[f.name], change));
        }
      }
    }
    if (rest !== null) {
      const declared = {};
      for (const f of this._schema) {
        setKey(declared, f.name, view[f.name]);
        delete view[f.name];
      }
      view = applyPatch(view, rest);
      for (const key of Object.keys(view)) {
        if (hasOwn(declared, key)) throw new DeltaError("'rest' sets a declared field");
        setKey(declared, key, view[key]);
      }
      view = declared;
    }
    return view;
  }

  _applyKeyed(f, records, change) {
    const table = this._tables.get(f.name);
    records = copyMap(records);
    const removed = change.r ?? [];
    if (!Array.isArray(removed)) throw new DeltaError("'r' must be a list of slots");
    for (const slot of removed) {
      if (!Number.isInteger(slot) || slot < 0 || slot >= table.ids.length || table.ids[slot] === null) {
        throw new DeltaError(`'r' names slot ${String(slot).slice(0, 20)}, which holds no record`);
      }
      delete records[table.ids[slot]];
      table.release(slot);
    }
    if (hasOwn(change, "c")) {
      if (!Array.isArray(change.c)) throw new DeltaError("'c' must be a flat list");
      f.shape.applyChanges(change.c, table.wires, table.ids, records);
    }
    if (hasOwn(change, "a")) {
      if (!Array.isArray(change.a)) throw new DeltaError("'a' must be a flat list");
      addKeyed(table, f.shape, change.a, records);
    }
    return records;
  }

  _applyListed(f, records, change) {
    const rows = this._lists.get(f.name);
    records = records.slice();
    if (hasOwn(change, "n")) {
      const n = change.n;
      if (!Number.isInteger(n) || n < 0 || n >= rows.length) {
        throw new DeltaError("'n' must be the number of records kept (fewer than held)");
      }
      rows.length = n;
      records.length = n;
    }
    if (hasOwn(change, "c")) {
      if (!Array.isArray(change.c)) throw new DeltaError("'c' must be a flat list");
      f.shape.applyChanges(change.c, rows, null, records);
    }
    if (hasOwn(change, "a")) {
      if (!Array.isArray(change.a)) throw new DeltaError("'a' must be a flat list");
      for (const row of f.shape.rows(change.a)) {
        rows.push(row);
        records.push(f.shape.view(row));
      }
    }
    return records;
  }
}

function addKeyed(table, shape, flat, records) {
  const step = shape.n + 2;
  if (flat.length % step) throw new DeltaError(`added records must hold a multiple of ${step} values`);
  for (let i = 0; i < flat.length; i += step) {
    const slot = flat[i];
    const key = flat[i + 1];
    if (!Number.isInteger(slot) || slot < 0 || slot > MAX_SLOT || typeof key !== "string") {
      throw new DeltaError("an added record needs a slot (int) and an id (string)");
    }
    if (table.slotOf.has(key)) {
      throw new DeltaError(`record id ${JSON.stringify(key.slice(0, 40))} is already in the collection`);
    }
    while (table.ids.length <= slot) {
      table.ids.push(null);
      table.wires.push(null);
    }
    if (table.ids[slot] !== null) throw new DeltaError(`slot ${slot} is taken`);
    const wire = new Array(shape.n);
    for (let j = 0; j < shape.n; j++) wire[j] = checkWire(shape.fields[j], flat[i + 2 + j]);
    table.ids[slot] = key;
    table.wires[slot] = wire;
    table.slotOf.set(key, slot);
    setKey(records, key, shape.view(wire));
  }
  return records;
}
