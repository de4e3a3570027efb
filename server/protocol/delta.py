"""Delta sync, pure: keyframes and deltas of a view, generic or by a declared schema.

A *view* is what ``Game.tick`` returns (or one player's private part): maps with
string keys, lists, strings, ints (signed 64-bit), finite floats, bools and None.
A *stream* is the sequence of one view's values, one per tick: the room's shared
public part is one stream, each player's private part another. One
``DeltaEncoder`` per stream on the server, one ``DeltaDecoder`` per stream on
the client. The wire format is in ``docs/delta-format.md``; payloads are plain
maps, lists, strings and numbers, encoded by the caller with either codec.

    enc = DeltaEncoder(ARENA_SCHEMA, stream=epoch)    # or DeltaEncoder() for any view
    payload = enc.delta(tick, view)       # once per tick, the same for every player
    payload = enc.current_keyframe()      # for a player that joins / resumes / asks
    dec = DeltaDecoder()                  # learns generic vs schema from the keyframe
    view = dec.apply(payload)             # raises DeltaBaseMismatch: ask for a keyframe

Two layers:

- **generic**: a recursive map patch (``s`` set, ``r`` removed, ``p`` patched);
  lists and scalars that change are replaced whole. Used when a game declares nothing.
- **schema**: the game declares its state's shape (``Schema``, ``Field``,
  ``Collection``). Entity maps travel as small integer slots, records as values
  in field order with a bitmask of changed fields, floats as integers at a
  declared precision, numbers as differences. The client sees the *quantized*
  view: ``quantize_view(schema, view)`` is exactly what a decoder reconstructs.

Errors::

    ProtocolError (server.protocol.errors)
    └── DeltaError                 a payload this decoder cannot apply (code invalid_message)
        └── DeltaBaseMismatch      a delta not based on the decoder's tick or stream:
                                   the client asks the server for a keyframe
    ValueError
    ├── ViewError                  the server's view is outside the value model or does
    │                              not match its schema (a bug in the game); the encoder
    │                              starts over: its next payload is a keyframe
    └── SchemaError                a schema that cannot be used (bad kind, precision, names)

Views handed out by a decoder are never mutated afterwards (copy on write; parts that
did not change are shared between successive views): treat them as read-only. The
encoder keeps its own copy of what it sent, so a game may mutate its view in place.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from server.protocol.codes import ErrorCode
from server.protocol.errors import ProtocolError

__all__ = [
    "MAX_RECORD_FIELDS",
    "MAX_VIEW_DEPTH",
    "SAFE_INT",
    "Collection",
    "DeltaBaseMismatch",
    "DeltaDecoder",
    "DeltaEncoder",
    "DeltaError",
    "Field",
    "Kind",
    "Schema",
    "SchemaError",
    "ViewError",
    "quantize_view",
    "same_view",
]

#: Largest magnitude of every integer the format itself introduces (ticks, slots, masks,
#: quantized values and their differences): exact in JavaScript numbers.
SAFE_INT = 2**53 - 1
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: A view may nest at most this many maps/lists deep (a patch nests about twice as deep).
MAX_VIEW_DEPTH = 32
#: A record has at most this many fields, so its change mask fits a 32-bit signed int.
MAX_RECORD_FIELDS = 31


# -- errors ----------------------------------------------------------------------------------


class DeltaError(ProtocolError):
    """A payload this decoder cannot apply. The decoder then holds no view: ask for a
    keyframe (every later delta raises DeltaBaseMismatch until one arrives)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_MESSAGE, message)


class DeltaBaseMismatch(DeltaError):
    """A delta whose ``base`` (or ``stream``) is not what the decoder holds: a delta was
    missed, or the stream was restarted. Nothing was changed; ask for a keyframe."""

    def __init__(self, message: str, *, base: Any, held: int | None) -> None:
        super().__init__(message)
        self.base = base
        self.held = held


class ViewError(ValueError):
    """A view outside the value model (NaN, a 65-bit int, a non-string key, …) or one
    that does not match the encoder's schema. A bug in the game, not in the client."""


class SchemaError(ValueError):
    """A schema that cannot be used: unknown kind, bad precision, duplicate names, …"""


# -- schema ----------------------------------------------------------------------------------


class Kind(StrEnum):
    """The kind of a field's values, and how they travel."""

    INT = "int"  # an int; a change is sent as the difference when ``diff``
    FIXED = "fixed"  # a number sent as round(value / precision), an int; the client sees floats
    FLOAT = "float"  # a finite float, sent as is
    STR = "str"
    BOOL = "bool"
    ANY = "any"  # any view value, replaced whole when it changes


_NUMERIC = frozenset({Kind.INT, Kind.FIXED})


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a record (or of the top-level view).

    ``precision`` (``fixed`` only) is the quantum, ``1/k`` for an integer ``k``: 0.01
    sends hundredths. ``diff`` (``int`` and ``fixed``): send a change as the difference
    from the previous value, usually one byte for things that move a little each tick.
    """

    name: str
    kind: Kind | str = Kind.ANY
    precision: float | None = None
    diff: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 64:
            raise SchemaError(f"a field name must be a string of 1-64 characters: {self.name!r}")
        try:
            kind = Kind(self.kind)
        except ValueError:
            raise SchemaError(
                f"field {self.name!r}: unknown kind {self.kind!r};"
                f" use one of {', '.join(k.value for k in Kind)}"
            ) from None
        object.__setattr__(self, "kind", kind)
        if kind is Kind.FIXED:
            if self.precision is None or not 0 < self.precision <= 1:
                raise SchemaError(f"field {self.name!r}: 'fixed' needs a precision in (0, 1]")
        elif self.precision is not None:
            raise SchemaError(f"field {self.name!r}: only 'fixed' fields take a precision")
        _ = self.scale  # validates 1/precision

    @property
    def scale(self) -> int:
        """``1 / precision`` as an integer (0 when not ``fixed``): wire value = value * scale."""
        if self.precision is None:
            return 0
        scale = round(1 / self.precision)
        if scale < 1 or scale > 10**15 or abs(scale * self.precision - 1) > 1e-9:
            raise SchemaError(
                f"field {self.name!r}: precision must be 1/k for an integer k (0.01, 0.5, …),"
                f" not {self.precision!r}"
            )
        return scale

    @property
    def diffed(self) -> bool:
        return self.diff and self.kind in _NUMERIC


@dataclass(frozen=True, slots=True)
class Collection:
    """Records of declared fields: a map id → record (``keyed``, ids become slots on the
    wire) or a list of records (``keyed=False``, by index). A record is a map of its field
    names, or (``tuples=True``) a list of its values in field order, like ``[x, y]``."""

    name: str
    fields: tuple[Field, ...]
    keyed: bool = True
    tuples: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 64:
            raise SchemaError(
                f"a collection name must be a string of 1-64 characters: {self.name!r}"
            )
        _check_names(self.fields, f"collection {self.name!r}")
        if len(self.fields) > MAX_RECORD_FIELDS:
            raise SchemaError(
                f"collection {self.name!r}: at most {MAX_RECORD_FIELDS} fields per record"
            )
        if not self.keyed and not self.fields:
            raise SchemaError(f"list collection {self.name!r} needs at least one field")
        for f in self.fields:
            if not isinstance(f, Field):
                raise SchemaError(f"collection {self.name!r}: fields must be Field objects")


@dataclass(frozen=True, slots=True)
class Schema:
    """The declared shape of a view: a map whose keys ``fields`` names (values of a
    ``Field``'s kind, or a ``Collection``). Keys of the view that the schema does not
    name travel with the generic patch."""

    fields: tuple[Field | Collection, ...]
    _wire: list[dict[str, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        for f in self.fields:
            if not isinstance(f, Field | Collection):
                raise SchemaError("schema fields must be Field or Collection objects")
        _check_names(self.fields, "schema")
        object.__setattr__(self, "_wire", [_field_to_wire(f) for f in self.fields])

    def to_wire(self) -> list[dict[str, Any]]:
        """The schema as it travels in a keyframe (docs/delta-format.md §4)."""
        return self._wire

    @classmethod
    def from_wire(cls, data: Any) -> Schema:
        """The inverse of ``to_wire``; raises DeltaError on anything malformed."""
        if not isinstance(data, list):
            raise DeltaError("keyframe 'schema' must be a list")
        try:
            return cls(tuple(_field_from_wire(item, top=True) for item in data))
        except SchemaError as exc:
            raise DeltaError(f"keyframe 'schema' is not usable: {exc}") from None


def _check_names(fields: Sequence[Field | Collection], where: str) -> None:
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise SchemaError(f"{where}: field names must be unique")


def _field_to_wire(f: Field | Collection) -> dict[str, Any]:
    if isinstance(f, Collection):
        return {
            "name": f.name,
            "kind": "map" if f.keyed else "list",
            "record": "tuple" if f.tuples else "obj",
            "fields": [_field_to_wire(g) for g in f.fields],
        }
    out: dict[str, Any] = {"name": f.name, "kind": str(f.kind)}
    if f.kind is Kind.FIXED:
        out["scale"] = f.scale
    if f.kind in _NUMERIC:
        out["diff"] = f.diff
    return out


def _field_from_wire(item: Any, *, top: bool) -> Field | Collection:
    if not isinstance(item, dict):
        raise DeltaError("a schema field must be a map")
    name, kind = item.get("name"), item.get("kind")
    if not isinstance(name, str) or not isinstance(kind, str):
        raise DeltaError("a schema field needs a string 'name' and 'kind'")
    if kind in ("map", "list"):
        if not top:
            raise DeltaError("collections cannot nest in records")
        fields = item.get("fields")
        record = item.get("record")
        if not isinstance(fields, list) or record not in ("obj", "tuple"):
            raise DeltaError("a schema collection needs 'fields' (list) and 'record'")
        inner = tuple(_field_from_wire(g, top=False) for g in fields)
        return Collection(name, inner, keyed=kind == "map", tuples=record == "tuple")  # type: ignore[arg-type]
    if kind not in ("int", "fixed"):
        return Field(name, kind)
    diff = item.get("diff")
    if not isinstance(diff, bool):
        raise DeltaError(f"numeric field {name[:40]!r} needs a boolean 'diff'")
    if kind == "int":
        return Field(name, Kind.INT, None, diff)
    scale = item.get("scale")
    if type(scale) is not int or not 1 <= scale <= 10**15:
        raise DeltaError("a 'fixed' field needs an integer 'scale' >= 1")
    return Field(name, Kind.FIXED, 1 / scale, diff)


# -- the value model: validate, copy, compare ------------------------------------------------


def _copy(value: Any, depth: int = 0) -> Any:
    """A plain, validated copy of a view value (tuples become lists, subclasses plain)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    if t is int:
        if not INT_MIN <= value <= INT_MAX:
            raise ViewError(f"integer {value} is outside the signed 64-bit range")
        return value
    if t is float:
        if value != value or value in (math.inf, -math.inf):
            raise ViewError("views never hold NaN or infinite floats")
        return value
    if depth >= MAX_VIEW_DEPTH:
        raise ViewError(f"a view may nest at most {MAX_VIEW_DEPTH} levels")
    if t is dict or isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise ViewError(f"map keys must be strings, not {type(key).__name__}")
            out[key] = _copy(item, depth + 1)
        return out
    if t is list or t is tuple:
        return [_copy(item, depth + 1) for item in value]
    # subclasses of the plain types (IntEnum, str enums, numpy-free float subclasses)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _copy(int(value), depth)
    if isinstance(value, float):
        return _copy(float(value), depth)
    if isinstance(value, str):
        return str(value)
    raise ViewError(f"values of type {t.__name__} cannot be in a view")


def _same(old: Any, new: Any) -> bool:
    """Strict equality: 1, 1.0 and True differ, and so do 0.0 and -0.0. ``old`` is plain
    (one of our copies); ``new`` may hold tuples, which equal lists. Key order is ignored."""
    t = type(old)
    if type(new) is not t:
        if t is list and type(new) is tuple:
            return len(old) == len(new) and all(map(_same, old, new))
        return False
    if t is float:
        return old == new and (old != 0.0 or math.copysign(1.0, old) == math.copysign(1.0, new))
    if t is dict:
        if len(old) != len(new):
            return False
        return all(key in old and _same(old[key], item) for key, item in new.items())
    if t is list:
        return len(old) == len(new) and all(map(_same, old, new))
    return bool(old == new)


def same_view(a: Any, b: Any) -> bool:
    """Strict equality of two views (types matter, ``-0.0 != 0.0``, map order does not)."""
    return _same(_copy(a), b)


# -- the generic layer -----------------------------------------------------------------------


def _diff_map(old: dict[str, Any], new: Mapping[str, Any], depth: int) -> tuple[Any, Any]:
    """(patch or None, our copy of ``new``), sharing ``old``'s unchanged parts."""
    if depth >= MAX_VIEW_DEPTH:
        raise ViewError(f"a view may nest at most {MAX_VIEW_DEPTH} levels")
    sets: dict[str, Any] = {}
    patches: dict[str, Any] = {}
    out: dict[str, Any] = {}
    kept = 0
    for key, value in new.items():
        if key in old:
            kept += 1
            before = old[key]
            if type(before) is dict and (type(value) is dict or isinstance(value, Mapping)):
                sub, copied = _diff_map(before, value, depth + 1)
                if sub is not None:
                    patches[key] = sub
                out[key] = copied
                continue
            if _same(before, value):
                out[key] = before
                continue
        elif type(key) is not str:
            raise ViewError(f"map keys must be strings, not {type(key).__name__}")
        copied = _copy(value, depth + 1)
        sets[key] = copied
        out[key] = copied
    removed = [key for key in old if key not in out] if kept < len(old) else []
    if not (sets or patches or removed):
        return None, old
    patch: dict[str, Any] = {}
    if sets:
        patch["s"] = sets
    if removed:
        patch["r"] = removed
    if patches:
        patch["p"] = patches
    return patch, out


def _apply_patch(old: Any, patch: Any, depth: int = 0) -> dict[str, Any]:
    """A new map: ``old`` with ``patch`` applied (``old`` is not changed)."""
    if type(old) is not dict:
        raise DeltaError("a map patch applies to a map only")
    if type(patch) is not dict or depth > 2 * MAX_VIEW_DEPTH:
        raise DeltaError("a map patch must be a map")
    new = dict(old)
    removed = patch.get("r")
    if removed is not None:
        if type(removed) is not list:
            raise DeltaError("patch 'r' must be a list of keys")
        for key in removed:
            if new.pop(key, _MISSING) is _MISSING:
                raise DeltaError(f"patch removes a key that is not there: {str(key)[:40]!r}")
    sets = patch.get("s")
    if sets is not None:
        if type(sets) is not dict:
            raise DeltaError("patch 's' must be a map")
        new.update(sets)
    patches = patch.get("p")
    if patches is not None:
        if type(patches) is not dict:
            raise DeltaError("patch 'p' must be a map")
        for key, sub in patches.items():
            if key not in new:
                raise DeltaError(f"patch changes a key that is not there: {str(key)[:40]!r}")
            new[key] = _apply_patch(new[key], sub, depth + 1)
    return new


_MISSING = object()


# -- the schema layer: per-field conversions ------------------------------------------------------


def _wire_value(f: Field, value: Any) -> Any:
    """A field's value as it travels (absolute): validated, quantized for ``fixed``."""
    kind = f.kind
    t = type(value)
    if kind is Kind.FIXED:
        if t is float:
            if value != value or value in (math.inf, -math.inf):
                raise ViewError(f"field {f.name!r}: views never hold NaN or infinite floats")
            q = round(value * f.scale)
        elif t is int:
            q = value * f.scale
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return _wire_value(f, float(value))
        else:
            raise ViewError(f"field {f.name!r} is 'fixed': a number, not {t.__name__}")
        if not -SAFE_INT <= q <= SAFE_INT:
            raise ViewError(f"field {f.name!r}: {value!r} is too large at its precision")
        return q
    if kind is Kind.INT:
        if t is not int:
            if isinstance(value, int) and not isinstance(value, bool):
                value = int(value)
            else:
                raise ViewError(f"field {f.name!r} is 'int', not {t.__name__}")
        if not INT_MIN <= value <= INT_MAX:
            raise ViewError(f"field {f.name!r}: {value} is outside the signed 64-bit range")
        return value
    if kind is Kind.FLOAT:
        if t is not float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                try:
                    value = float(value)
                except OverflowError:
                    raise ViewError(f"field {f.name!r}: {value} does not fit a float") from None
            else:
                raise ViewError(f"field {f.name!r} is 'float', not {t.__name__}")
        if value != value or value in (math.inf, -math.inf):
            raise ViewError(f"field {f.name!r}: views never hold NaN or infinite floats")
        return value
    if kind is Kind.STR:
        if t is not str:
            if isinstance(value, str):
                return str(value)
            raise ViewError(f"field {f.name!r} is 'str', not {t.__name__}")
        return value
    if kind is Kind.BOOL:
        if t is not bool:
            raise ViewError(f"field {f.name!r} is 'bool', not {t.__name__}")
        return value
    return _copy(value, 2)


def _check_wire(f: Field, value: Any) -> Any:
    """Decoder side: a received absolute wire value of ``f``'s kind, or DeltaError."""
    kind = Kind(f.kind)
    t = type(value)
    ok = (
        (t is int and -SAFE_INT <= value <= SAFE_INT)
        if kind is Kind.FIXED
        else t is int
        if kind is Kind.INT
        else t is float
        if kind is Kind.FLOAT
        else t is str
        if kind is Kind.STR
        else t is bool
        if kind is Kind.BOOL
        else True
    )
    if not ok:
        raise DeltaError(f"field {f.name!r}: a {kind.value} value was expected, not {t.__name__}")
    return value


class _Shape:
    """Precomputed per-record code, used on every tick.

    ``step`` and ``apply_changes`` are generated once per record shape (the way
    ``dataclasses`` generates ``__init__``): straight-line code per field is about
    four times faster than a loop over the fields calling a converter per value.
    Only field names (as ``repr`` literals) and numbers enter the generated source.
    """

    __slots__ = ("apply_changes", "fields", "n", "names", "scales", "step", "tuples")

    def __init__(self, fields: tuple[Field, ...], tuples: bool) -> None:
        self.fields = fields
        self.n = len(fields)
        self.names = tuple(f.name for f in fields)
        self.scales = tuple(f.scale for f in fields)
        self.tuples = tuples
        self.step, self.apply_changes = _generate(self)

    def wire(self, record: Any) -> list[Any]:
        """A record's absolute wire values, in field order (validated, quantized)."""
        fields = self.fields
        if self.tuples:
            if type(record) not in (list, tuple) or len(record) != self.n:
                raise ViewError(f"a record must be a list of {self.n} values {list(self.names)}")
            return [_wire_value(f, v) for f, v in zip(fields, record, strict=True)]
        if type(record) is not dict and not isinstance(record, Mapping):
            raise ViewError(f"a record must be a map of {list(self.names)}")
        if len(record) != self.n:
            raise ViewError(f"a record must have exactly the fields {list(self.names)}")
        try:
            return [_wire_value(f, record[f.name]) for f in fields]
        except KeyError as exc:
            raise ViewError(f"a record lacks the field {exc.args[0]!r}") from None

    def view(self, wire: list[Any]) -> Any:
        """What the client sees of a record (dequantized ``fixed`` fields)."""
        values = [v / s if s else v for v, s in zip(wire, self.scales, strict=True)]
        if self.tuples:
            return values
        return dict(zip(self.names, values, strict=True))


@functools.lru_cache(maxsize=256)
def _shape(fields: tuple[Field, ...], tuples: bool) -> _Shape:
    """The compiled shape of a record (cached: a keyframe's schema recompiles nothing)."""
    return _Shape(fields, tuples)


def _generate(shape: _Shape) -> tuple[Any, Any]:
    """Source of ``step(record, old, changed, skip) -> (wire, mask)`` (mask 0: unchanged,
    -1: a difference too large, nothing appended) and ``apply_changes(flat, wires, ids,
    records) -> None`` (``ids`` None for a list collection), compiled for ``shape``."""
    n = shape.n
    names = [f"v{i}" for i in range(n)]
    olds = [f"o{i}" for i in range(n)]
    env: dict[str, Any] = {
        "_same": _same,
        "_copysign": math.copysign,
        "_ViewError": ViewError,
        "_DeltaError": DeltaError,
        "_slow": shape.wire,
        "_Mapping": Mapping,
    }
    enc = ["def step(record, old, changed, skip):"]
    if shape.tuples:
        enc += [
            f"    if type(record) not in (list, tuple) or len(record) != {n}:",
            "        return _slow(record), 0",  # raises ViewError
            _unpack(names, "record", 4),
        ]
    else:
        enc += [
            f"    if type(record) is not dict or len(record) != {n}:",
            "        _slow(record)",  # raises ViewError, unless a Mapping of the right fields
            "        record = dict(record)",
            "    try:",
            "        pass",
            *[
                f"        {v} = record[{f.name!r}]"
                for v, f in zip(names, shape.fields, strict=True)
            ],
            "    except KeyError:",
            "        _slow(record)",  # raises ViewError: a field is missing
        ]
    enc.append(_unpack(olds, "old", 4))
    enc.append("    m = 0")
    for i, f in enumerate(shape.fields):
        v, o, bit = names[i], olds[i], 1 << i
        env[f"_conv{i}"] = _converter(f)
        kind = f.kind
        if kind is Kind.FIXED:
            limit = SAFE_INT / f.scale / 2
            enc.append(f"    if type({v}) is float and -{limit!r} < {v} < {limit!r}:")
            enc.append(f"        {v} = round({v} * {f.scale})")
            enc.append("    else:")
            enc.append(f"        {v} = _conv{i}({v})")
        elif kind is Kind.INT:
            enc.append(f"    if type({v}) is not int or not {INT_MIN} <= {v} <= {INT_MAX}:")
            enc.append(f"        {v} = _conv{i}({v})")
        elif kind is Kind.FLOAT:
            enc.append(f"    if type({v}) is not float or not -1.8e308 < {v} < 1.8e308:")
            enc.append(f"        {v} = _conv{i}({v})")
        elif kind is Kind.STR:
            enc.append(f"    if type({v}) is not str:")
            enc.append(f"        {v} = _conv{i}({v})")
        elif kind is Kind.BOOL:
            enc.append(f"    if type({v}) is not bool:")
            enc.append(f"        {v} = _conv{i}({v})")
        else:
            enc.append(f"    {v} = _conv{i}({v})")
        if f.diffed:
            enc.append(f"    d{i} = {v} - {o}")
            enc.append(f"    if d{i}:")
            enc.append(f"        m |= {bit}")
        elif kind is Kind.FLOAT:
            enc.append(
                f"    if {v} != {o} or ({v} == 0.0 and _copysign(1.0, {v}) != _copysign(1.0, {o})):"
            )
            enc.append(f"        m |= {bit}")
        elif kind is Kind.ANY:
            enc.append(f"    if not _same({o}, {v}):")
            enc.append(f"        m |= {bit}")
        elif kind is Kind.BOOL:
            enc.append(f"    if {v} is not {o}:")
            enc.append(f"        m |= {bit}")
        else:
            enc.append(f"    if {v} != {o}:")
            enc.append(f"        m |= {bit}")
    enc.append(f"    new = [{', '.join(names)}]")
    enc.append("    if not m:")
    enc.append("        return new, 0")
    diffed = [i for i, f in enumerate(shape.fields) if f.diffed]
    if diffed:
        over = " or ".join(f"not -{SAFE_INT} <= d{i} <= {SAFE_INT}" for i in diffed)
        enc.append(f"    if {over}:")
        enc.append("        return new, -1")
    enc.append("    changed.append(skip)")
    enc.append("    changed.append(m)")
    for i, f in enumerate(shape.fields):
        enc.append(f"    if m & {1 << i}:")
        enc.append(f"        changed.append({f'd{i}' if f.diffed else names[i]})")
    enc.append("    return new, m")

    dec = [
        "def apply_changes(flat, wires, ids, records):",
        "    i = 0",
        "    last = -1",
        "    size = len(flat)",
        "    limit = len(wires)",
        "    while i < size:",
        "        skip = flat[i]",
        "        m = flat[i + 1]",
        "        i += 2",
        "        if type(skip) is not int or skip < 0 or type(m) is not int"
        f" or not 0 < m < {1 << n}:",
        "            raise _DeltaError('a changed record starts with a skip and a mask (ints)')",
        "        slot = last + 1 + skip",
        "        last = slot",
        "        w = wires[slot] if slot < limit else None",
        "        if w is None:",
        "            raise _DeltaError(f'a change names slot {slot}, which holds no record')",
        _unpack(names, "w", 8),
    ]
    for i, f in enumerate(shape.fields):
        v = names[i]
        dec.append(f"        if m & {1 << i}:")
        dec.append("            x = flat[i]")
        dec.append("            i += 1")
        if f.diffed:
            check, value = "type(x) is not int", f"{v} + x"
        else:
            check = {
                Kind.FIXED: f"type(x) is not int or not -{SAFE_INT} <= x <= {SAFE_INT}",
                Kind.INT: "type(x) is not int",
                Kind.FLOAT: "type(x) is not float",
                Kind.STR: "type(x) is not str",
                Kind.BOOL: "type(x) is not bool",
                Kind.ANY: "False",
            }[Kind(f.kind)]
            value = "x"
        dec.append(f"            if {check}:")
        dec.append(f"                raise _DeltaError('field {i}: a value of the wrong type')")
        dec.append(f"            {v} = {value}")
    dec.append(f"        wires[slot] = [{', '.join(names)}]")
    shown = [f"{v} / {s}" if s else v for v, s in zip(names, shape.scales, strict=True)]
    if shape.tuples:
        made = f"[{', '.join(shown)}]"
    else:
        made = (
            "{"
            + ", ".join(f"{f.name!r}: {x}" for f, x in zip(shape.fields, shown, strict=True))
            + "}"
        )
    dec.append(f"        records[slot if ids is None else ids[slot]] = {made}")
    source = "\n".join(enc) + "\n\n" + "\n".join(dec) + "\n"
    exec(compile(source, f"<delta shape {list(shape.names)}>", "exec"), env)  # noqa: S102
    return env["step"], env["apply_changes"]


def _unpack(names: list[str], source: str, indent: int) -> str:
    """``a, b = source`` (``a, = source`` for one name, nothing for none)."""
    pad = " " * indent
    if not names:
        return f"{pad}pass"
    return f"{pad}{', '.join(names)}{',' if len(names) == 1 else ''} = {source}"


def _converter(f: Field) -> Any:
    def convert(value: Any) -> Any:
        return _wire_value(f, value)

    return convert


class _KeyedTable:
    """Encoder and decoder state of one map collection: slots, ids, wire values."""

    __slots__ = ("free", "ids", "slot_of", "wires")

    def __init__(self) -> None:
        self.ids: list[str | None] = []
        self.wires: list[list[Any] | None] = []
        self.slot_of: dict[str, int] = {}
        self.free: list[int] = []  # a heap: the lowest free slot is reused first

    def take(self, key: str) -> int:
        if self.free:
            slot = heapq.heappop(self.free)
        else:
            slot = len(self.ids)
            self.ids.append(None)
            self.wires.append(None)
        self.ids[slot] = key
        self.slot_of[key] = slot
        return slot

    def release(self, slot: int, *, reuse: bool = True) -> None:
        key = self.ids[slot]
        assert key is not None
        del self.slot_of[key]
        self.ids[slot] = None
        self.wires[slot] = None
        if reuse:  # the encoder hands slots out again; a decoder just follows
            heapq.heappush(self.free, slot)


# -- encoder ---------------------------------------------------------------------------------


def _check_tick(tick: Any) -> int:
    if type(tick) is not int or not 0 <= tick <= SAFE_INT:
        raise ValueError(f"a tick must be an int in [0, {SAFE_INT}], not {tick!r}")
    return tick


class DeltaEncoder:
    """The server's side of one stream. ``delta`` each tick; ``current_keyframe`` for any
    client that needs the whole view of the last tick (same slots, so the next delta
    applies to it as well). Payloads hold no per-client state: encode one once and send
    the same bytes to every client of the stream.

    ``stream`` (an int or a string) names this encoder's life: every payload carries it
    and a decoder refuses a delta of another stream. Give two encoders whose deltas one
    client could mix up different values (e.g. the owner's fencing epoch and a counter).
    """

    def __init__(self, schema: Schema | None = None, *, stream: int | str | None = None) -> None:
        if schema is not None and not isinstance(schema, Schema):
            raise TypeError("schema must be a Schema or None")
        if stream is not None and (
            isinstance(stream, bool)
            or not isinstance(stream, int | str)
            or (isinstance(stream, int) and not 0 <= stream <= SAFE_INT)
        ):
            raise ValueError(f"stream must be an int in [0, {SAFE_INT}] or a string")
        self.schema = schema
        self.stream = stream
        self.tick: int | None = None
        self._keyframe: dict[str, Any] | None = None
        self._reset()

    def _reset(self) -> None:
        self.tick = None
        self._keyframe = None
        self._view: Any = None  # generic: our copy of the last view
        self._rest: dict[str, Any] = {}  # schema: our copy of the undeclared keys
        self._scalars: dict[str, Any] = {}  # schema: wire values of top-level fields
        self._tables: dict[str, _KeyedTable] = {}
        self._lists: dict[str, list[list[Any]]] = {}
        if self.schema is not None:
            self._plan = [
                (f, _shape(f.fields, f.tuples) if isinstance(f, Collection) else None)
                for f in self.schema.fields
            ]
            self._declared = frozenset(f.name for f in self.schema.fields)

    # public API

    def delta(self, tick: int, view: Any) -> dict[str, Any]:
        """Advance the stream to ``view`` at ``tick``; the delta from the previous tick
        (a keyframe when there is none yet)."""
        _check_tick(tick)
        if self.tick is None:
            return self.keyframe(tick, view)
        if tick <= self.tick:
            raise ValueError(f"tick {tick} does not follow the last encoded tick {self.tick}")
        base = self.tick
        body = self._advance(tick, view)
        out: dict[str, Any] = {"tick": tick, "base": base}
        if self.stream is not None:
            out["stream"] = self.stream
        out.update(body)
        return out

    def keyframe(self, tick: int, view: Any) -> dict[str, Any]:
        """Advance the stream to ``view`` at ``tick`` and return its keyframe. Slots are
        kept, so clients that got the delta of this tick instead stay in step."""
        _check_tick(tick)
        if self.tick is not None and tick <= self.tick:
            raise ValueError(f"tick {tick} does not follow the last encoded tick {self.tick}")
        self._advance(tick, view)
        return self.current_keyframe()

    def current_keyframe(self) -> dict[str, Any]:
        """The keyframe of the last encoded tick (cached; the stream does not move)."""
        if self.tick is None:
            raise ValueError("nothing encoded yet: call delta() or keyframe() first")
        if self._keyframe is None:
            out: dict[str, Any] = {"tick": self.tick}
            if self.stream is not None:
                out["stream"] = self.stream
            if self.schema is None:
                out["view"] = self._view
            else:
                out["schema"] = self.schema.to_wire()
                out["view"] = self._compact_keyframe()
                if self._rest:
                    out["rest"] = self._rest
            self._keyframe = out
        return self._keyframe

    # the stream's state

    def _advance(self, tick: int, view: Any) -> dict[str, Any]:
        first = self.tick is None
        try:
            body = (
                self._advance_generic(view) if self.schema is None else self._advance_schema(view)
            )
        except ViewError:
            self._reset()
            raise
        except (RecursionError, TypeError, ValueError) as exc:
            self._reset()
            raise ViewError(f"the view cannot be encoded: {exc}") from None
        self.tick = tick
        self._keyframe = None
        return {} if first else body

    def _advance_generic(self, view: Any) -> dict[str, Any]:
        old = self._view
        if self.tick is not None and type(old) is dict and isinstance(view, Mapping):
            patch, self._view = _diff_map(old, view, 0)
            return {} if patch is None else {"patch": patch}
        if self.tick is not None and _same(old, view):
            return {}
        self._view = _copy(view)
        return {"view": self._view}

    def _advance_schema(self, view: Any) -> dict[str, Any]:
        if not isinstance(view, Mapping):
            raise ViewError("a view with a schema must be a map")
        patch: dict[str, Any] = {}
        scalars = self._scalars
        for f, shape in self._plan:
            try:
                value = view[f.name]
            except KeyError:
                raise ViewError(f"the view lacks the declared field {f.name!r}") from None
            if shape is None:
                assert isinstance(f, Field)
                wire = _wire_value(f, value)
                if f.name in scalars:
                    before = scalars[f.name]
                    if wire == before and (
                        f.kind not in (Kind.FLOAT, Kind.ANY) or _same(before, wire)
                    ):
                        continue
                    if f.diffed:
                        d = wire - before
                        # a difference too large travels as [absolute value]
                        patch[f.name] = d if -SAFE_INT <= d <= SAFE_INT else [wire]
                    else:
                        patch[f.name] = wire
                scalars[f.name] = wire
            elif isinstance(f, Collection) and f.keyed:
                change = self._keyed(f.name, value, shape)
                if change:
                    patch[f.name] = change
            else:
                change = self._listed(f.name, value, shape)
                if change:
                    patch[f.name] = change
        body: dict[str, Any] = {"patch": patch} if patch else {}
        rest = {k: v for k, v in view.items() if k not in self._declared}
        if rest or self._rest:
            rest_patch, self._rest = _diff_map(self._rest, rest, 0)
            if rest_patch is not None:
                body["rest"] = rest_patch
        return body

    def _keyed(self, name: str, records: Any, shape: _Shape) -> dict[str, Any]:
        if type(records) is not dict and not isinstance(records, Mapping):
            raise ViewError(f"collection {name!r} must be a map of id -> record")
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = _KeyedTable()
        ids, wires = table.ids, table.wires
        removed: list[int] = []
        replaced: set[int] = set()
        changed: list[Any] = []
        added: list[Any] = []
        found = 0
        last = -1
        get = records.get
        step = shape.step
        for slot in range(len(ids)):
            key = ids[slot]
            if key is None:
                continue
            record = get(key, _MISSING)
            if record is _MISSING:
                removed.append(slot)
                continue
            found += 1
            new, mask = step(record, wires[slot], changed, slot - last - 1)
            wires[slot] = new
            if mask > 0:
                last = slot
            elif mask < 0:  # a difference too large: replace the record whole
                removed.append(slot)
                replaced.add(slot)
                added.append(slot)
                added.append(key)
                added.extend(new)
        for slot in removed:
            if slot not in replaced:  # a replaced record keeps its slot
                table.release(slot)
        if found < len(records):
            for key, record in records.items():
                if key in table.slot_of:
                    continue
                if type(key) is not str:
                    raise ViewError(f"collection {name!r}: ids must be strings")
                new = shape.wire(record)
                slot = table.take(key)
                wires[slot] = new
                added.append(slot)
                added.append(key)
                added.extend(new)
        out: dict[str, Any] = {}
        if removed:
            out["r"] = removed
        if changed:
            out["c"] = changed
        if added:
            out["a"] = added
        return out

    def _listed(self, name: str, records: Any, shape: _Shape) -> dict[str, Any]:
        if type(records) not in (list, tuple):
            raise ViewError(f"collection {name!r} must be a list of records")
        old = self._lists.get(name)
        if old is None:
            self._lists[name] = [shape.wire(record) for record in records]
            return {}
        rows: list[list[Any]] = []
        changed: list[Any] = []
        last = -1
        kept = min(len(old), len(records))
        overflow = False
        step = shape.step
        for index in range(kept):
            new, mask = step(records[index], old[index], changed, index - last - 1)
            rows.append(new)
            if mask > 0:
                last = index
            elif mask < 0:
                overflow = True
        rows.extend(shape.wire(record) for record in records[kept:])
        self._lists[name] = rows
        if overflow:  # a difference too large: resend the whole list
            kept = 0
            changed = []
        out: dict[str, Any] = {}
        if kept < len(old):
            out["n"] = kept
        if changed:
            out["c"] = changed
        if len(rows) > kept:
            out["a"] = [v for wire in rows[kept:] for v in wire]
        return out

    def _compact_keyframe(self) -> dict[str, Any]:
        assert self.schema is not None
        out: dict[str, Any] = {}
        for f in self.schema.fields:
            if isinstance(f, Field):
                out[f.name] = self._scalars[f.name]
            elif f.keyed:
                flat: list[Any] = []
                table = self._tables[f.name]
                for slot, key in enumerate(table.ids):
                    if key is not None:
                        flat.append(slot)
                        flat.append(key)
                        flat.extend(table.wires[slot])  # type: ignore[arg-type]
                out[f.name] = flat
            else:
                out[f.name] = [v for wire in self._lists[f.name] for v in wire]
        return out


# -- decoder ---------------------------------------------------------------------------------


class DeltaDecoder:
    """The client's side of one stream: ``apply`` each payload, get the view back.

    A keyframe replaces everything held (view, schema, slots). A delta must name the
    tick (``base``) and ``stream`` of the view held, else DeltaBaseMismatch and nothing
    changes: ask the server for a keyframe. A malformed payload raises DeltaError and
    leaves the decoder empty (it waits for a keyframe).
    """

    def __init__(self) -> None:
        self.tick: int | None = None
        self.stream: int | str | None = None
        self.schema: Schema | None = None
        self.view: Any = None

    def reset(self) -> None:
        """Forget the view: the next payload must be a keyframe."""
        self.tick = None
        self.view = None

    def apply(self, payload: Any) -> Any:
        """Apply one keyframe or delta; return the view it describes (read-only)."""
        if type(payload) is not dict:
            raise DeltaError("a delta payload must be a map")
        tick = payload.get("tick")
        if type(tick) is not int or not 0 <= tick <= SAFE_INT:
            raise DeltaError("payload 'tick' must be an int in [0, 2^53 - 1]")
        stream = payload.get("stream")
        if "base" in payload:
            base = payload["base"]
            if self.tick is None or base != self.tick or type(base) is not int:
                held = "no view" if self.tick is None else f"the view of tick {self.tick}"
                raise DeltaBaseMismatch(
                    f"this delta is based on tick {str(base)[:20]}, but the decoder holds"
                    f" {held}: ask for a keyframe",
                    base=base,
                    held=self.tick,
                )
            if stream != self.stream:
                raise DeltaBaseMismatch(
                    "this delta belongs to another stream (the server restarted it):"
                    " ask for a keyframe",
                    base=base,
                    held=self.tick,
                )
            if tick <= base:
                raise DeltaError(f"a delta's tick ({tick}) must follow its base ({base})")
            try:
                view = self._delta(payload)
            except DeltaError:
                self.reset()
                raise
            except (
                KeyError,
                IndexError,
                TypeError,
                ValueError,
                AttributeError,
                ZeroDivisionError,
            ) as exc:
                self.reset()
                raise DeltaError(f"malformed delta: {type(exc).__name__}") from None
        else:
            try:
                view = self._keyframe(payload)
            except DeltaError:
                self.reset()
                raise
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                self.reset()
                raise DeltaError(f"malformed keyframe: {type(exc).__name__}") from None
            self.stream = stream
        self.tick = tick
        self.view = view
        return view

    # keyframes

    def _keyframe(self, payload: dict[str, Any]) -> Any:
        if "view" not in payload:
            raise DeltaError("a keyframe needs a 'view'")
        if "schema" not in payload:
            self.schema = None
            return payload["view"]
        schema = Schema.from_wire(payload["schema"])
        body = payload["view"]
        if type(body) is not dict:
            raise DeltaError("a schema keyframe's 'view' must be a map")
        self._plan = [
            (f, _shape(f.fields, f.tuples) if isinstance(f, Collection) else None)
            for f in schema.fields
        ]
        self._scalars: dict[str, Any] = {}
        self._tables: dict[str, _KeyedTable] = {}
        self._lists: dict[str, list[list[Any]]] = {}
        rest = payload.get("rest", {})
        if type(rest) is not dict:
            raise DeltaError("keyframe 'rest' must be a map")
        view: dict[str, Any] = {}
        for f, shape in self._plan:
            if f.name not in body:
                raise DeltaError(f"the keyframe lacks the declared field {f.name!r}")
            if f.name in rest:
                raise DeltaError(f"'rest' repeats the declared field {f.name!r}")
            value = body[f.name]
            if shape is None:
                assert isinstance(f, Field)
                self._scalars[f.name] = _check_wire(f, value)
                view[f.name] = value / f.scale if f.scale else value
                continue
            if type(value) is not list:
                raise DeltaError(f"keyframe collection {f.name!r} must be a flat list")
            if isinstance(f, Collection) and f.keyed:
                table = self._tables[f.name] = _KeyedTable()
                view[f.name] = self._add_keyed(table, shape, value, {})
            else:
                rows = self._lists[f.name] = self._rows(shape, value)
                view[f.name] = [shape.view(row) for row in rows]
        view.update(rest)
        self.schema = schema
        return view

    @staticmethod
    def _rows(shape: _Shape, flat: list[Any]) -> list[list[Any]]:
        n = shape.n
        if len(flat) % n:
            raise DeltaError(f"a list of records must hold a multiple of {n} values")
        fields = shape.fields
        return [
            [_check_wire(f, v) for f, v in zip(fields, flat[i : i + n], strict=True)]
            for i in range(0, len(flat), n)
        ]

    @staticmethod
    def _add_keyed(
        table: _KeyedTable, shape: _Shape, flat: list[Any], records: dict[str, Any]
    ) -> dict[str, Any]:
        step = shape.n + 2
        if len(flat) % step:
            raise DeltaError(f"added records must hold a multiple of {step} values")
        fields = shape.fields
        ids, wires = table.ids, table.wires
        for i in range(0, len(flat), step):
            slot, key = flat[i], flat[i + 1]
            if type(slot) is not int or not 0 <= slot <= 1 << 24 or type(key) is not str:
                raise DeltaError("an added record needs a slot (int) and an id (string)")
            if key in table.slot_of:
                raise DeltaError(f"record id {key[:40]!r} is already in the collection")
            while len(ids) <= slot:
                ids.append(None)
                wires.append(None)
            if ids[slot] is not None:
                raise DeltaError(f"slot {slot} is taken")
            wire = [_check_wire(f, v) for f, v in zip(fields, flat[i + 2 : i + step], strict=True)]
            ids[slot] = key
            wires[slot] = wire
            table.slot_of[key] = slot
            records[key] = shape.view(wire)
        return records

    # deltas

    def _delta(self, payload: dict[str, Any]) -> Any:
        if self.schema is None:
            if "view" in payload:
                return payload["view"]
            patch = payload.get("patch")
            return self.view if patch is None else _apply_patch(self.view, patch)
        patch = payload.get("patch")
        rest = payload.get("rest")
        if patch is None and rest is None:
            return self.view
        if patch is not None and type(patch) is not dict:
            raise DeltaError("a schema delta's 'patch' must be a map")
        view = dict(self.view)
        if patch:
            for f, shape in self._plan:
                change = patch.get(f.name, _MISSING)
                if change is _MISSING:
                    continue
                if shape is None:
                    assert isinstance(f, Field)
                    before = self._scalars[f.name]
                    if f.diffed and type(change) is list and len(change) == 1:
                        wire = _check_wire(f, change[0])
                    elif f.diffed:
                        if type(change) is not int:
                            raise DeltaError(f"field {f.name!r}: a difference must be an int")
                        wire = before + change
                    else:
                        wire = _check_wire(f, change)
                    self._scalars[f.name] = wire
                    view[f.name] = wire / f.scale if f.scale else wire
                elif type(change) is not dict:
                    raise DeltaError(f"the change of collection {f.name!r} must be a map")
                elif isinstance(f, Collection) and f.keyed:
                    view[f.name] = self._apply_keyed(f.name, shape, view[f.name], change)
                else:
                    view[f.name] = self._apply_listed(f.name, shape, view[f.name], change)
        if rest is not None:
            declared = {f.name: view.pop(f.name) for f in self.schema.fields}
            view = _apply_patch(view, rest)
            if declared.keys() & view.keys():
                raise DeltaError("'rest' sets a declared field")
            declared.update(view)
            view = declared
        return view

    def _apply_keyed(
        self, name: str, shape: _Shape, records: dict[str, Any], change: dict[str, Any]
    ) -> dict[str, Any]:
        table = self._tables[name]
        records = dict(records)
        removed = change.get("r", ())
        if type(removed) not in (list, tuple):
            raise DeltaError("'r' must be a list of slots")
        for slot in removed:
            if type(slot) is not int or not 0 <= slot < len(table.ids) or table.ids[slot] is None:
                raise DeltaError(f"'r' names slot {str(slot)[:20]}, which holds no record")
            del records[table.ids[slot]]  # type: ignore[arg-type]
            table.release(slot, reuse=False)
        if "c" in change:
            flat = change["c"]
            if type(flat) is not list:
                raise DeltaError("'c' must be a flat list")
            shape.apply_changes(flat, table.wires, table.ids, records)
        if "a" in change:
            added = change["a"]
            if type(added) is not list:
                raise DeltaError("'a' must be a flat list")
            self._add_keyed(table, shape, added, records)
        return records

    def _apply_listed(
        self, name: str, shape: _Shape, records: list[Any], change: dict[str, Any]
    ) -> list[Any]:
        rows = self._lists[name]
        records = list(records)
        if "n" in change:
            n = change["n"]
            if type(n) is not int or not 0 <= n < len(rows):
                raise DeltaError("'n' must be the number of records kept (fewer than held)")
            del rows[n:]
            del records[n:]
        if "c" in change:
            flat = change["c"]
            if type(flat) is not list:
                raise DeltaError("'c' must be a flat list")
            shape.apply_changes(flat, rows, None, records)
        if "a" in change:
            new_rows = self._rows(shape, change["a"])
            rows.extend(new_rows)
            records.extend(shape.view(row) for row in new_rows)
        return records


# -- what the client sees --------------------------------------------------------------------


def quantize_view(schema: Schema | None, view: Any) -> Any:
    """The view a decoder reconstructs from ``view``: ``fixed`` fields rounded to their
    precision (as floats), ints and floats of typed fields normalized, tuples as lists.
    Without a schema, a plain copy of ``view``. Raises ViewError like the encoder."""
    if schema is None:
        return _copy(view)
    if not isinstance(view, Mapping):
        raise ViewError("a view with a schema must be a map")
    out: dict[str, Any] = {}
    for f in schema.fields:
        if f.name not in view:
            raise ViewError(f"the view lacks the declared field {f.name!r}")
        value = view[f.name]
        if isinstance(f, Field):
            wire = _wire_value(f, value)
            out[f.name] = wire / f.scale if f.scale else wire
        else:
            shape = _shape(f.fields, f.tuples)
            if f.keyed:
                if not isinstance(value, Mapping):
                    raise ViewError(f"collection {f.name!r} must be a map of id -> record")
                out[f.name] = {key: shape.view(shape.wire(r)) for key, r in value.items()}
            else:
                if type(value) not in (list, tuple):
                    raise ViewError(f"collection {f.name!r} must be a list of records")
                out[f.name] = [shape.view(shape.wire(r)) for r in value]
    declared = {f.name for f in schema.fields}
    out.update({k: _copy(v) for k, v in view.items() if k not in declared})
    return out
