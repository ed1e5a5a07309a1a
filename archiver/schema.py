"""The Arrow schema of each log's rows, and Graph rows to record batches.

Each kind has one schema, made from its declaration in `kinds.py`: the union of Graph's
v1.0 and beta properties (v1.0 first, then beta, then `additionalData`), so one table
serves both versions. It is declared, never inferred from a page.

`rows_to_batch` converts one page of rows, as `json.loads` gives them, in two ways:

- a fast path that converts whole columns with Arrow (a few microseconds a row); it
  raises `_Unclean` (or an Arrow error) the moment a value is not what Graph documents;
- a careful path, row by row, that sets each value it cannot convert to null **and**
  keeps the original, under its own name, in `additionalData`.

For clean data both give identical batches. Properties the schema does not know go to
`additionalData` as compact JSON text with sorted keys; no property is ever dropped.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import itertools
import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from archiver import kinds
from archiver.errors import WindowError
from archiver.kinds import Kind

STRING: Final = pa.string()
TIMESTAMP: Final = pa.timestamp("us", tz="UTC")
INT: Final = pa.int32()
MONEY: Final = pa.decimal128(38, 10)
BOOL: Final = pa.bool_()
ADMIN_UNITS: Final = pa.list_(pa.struct([("id", STRING)]))
ADDITIONAL_DATA: Final = "additionalData"

# Each declared column type (archiver.kinds names them) as Arrow stores it.
ARROW_TYPES: Final[dict[str, pa.DataType]] = {
    kinds.STRING: STRING,
    kinds.TIMESTAMP: TIMESTAMP,
    kinds.INT: INT,
    kinds.MONEY: MONEY,
    kinds.BOOL: BOOL,
    kinds.UNITS: ADMIN_UNITS,
}


def _declare(kind: Kind) -> pa.Schema:
    """The declared schema of `kind`: v1.0 properties, beta properties, `additionalData`;
    only the row key is never null."""
    fields = [
        pa.field(c.name, ARROW_TYPES[c.type], nullable=c.name != kind.key) for c in kind.log.columns
    ]
    return pa.schema([*fields, pa.field(ADDITIONAL_DATA, STRING)])


SCHEMAS: Final[dict[Kind, pa.Schema]] = {kind: _declare(kind) for kind in Kind}

# Columns whose values differ from row to row: a Parquet dictionary for them is built
# only to be abandoned (25 % of the write time) and makes the file larger, not smaller.
UNIQUE_PER_ROW: Final = frozenset({ADDITIONAL_DATA}).union(
    *(kind.log.unique_columns for kind in Kind)
)


def schema_for(kind: Kind) -> pa.Schema:
    """The declared Arrow schema of `kind`'s rows."""
    return SCHEMAS[kind]


def rows_to_batch(kind: Kind, rows: Sequence[dict[str, Any]]) -> pa.RecordBatch:
    """One page of Graph rows (as `json.loads` gives them) as a batch of `schema_for(kind)`.

    Raises WindowError when a row is not a JSON object or has no usable key (`id`, or the
    kind's own key).
    """
    try:
        return _fast(kind, rows)
    except (_Unclean, pa.ArrowException):
        return _careful(kind, rows)


# ---------------------------------------------------------------------------------------
# Shared rules


class _Unclean(Exception):
    """Raised by the fast path when the page holds a value it must leave to the careful path."""


# ISO-8601 as Graph writes it: 0-7 fractional digits, then `Z` or a `+hh:mm`/`-hh:mm` offset.
# `[0-9]`, not `\d`: Python's `\d` also matches non-ASCII digits, RE2's does not.
_TS_BODY: Final = (
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(?:\.([0-9]{1,7}))?"
    r"(?:Z|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))"
)
_TS_RE: Final = re.compile(_TS_BODY)
_TS_PATTERN_RE2: Final = "^" + _TS_BODY + "$"
# Graph's "no such time": any value on this date becomes null.
_SENTINEL_DATE: Final = "0001-01-01"
_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()
_MIN_MICROS: Final = (dt.date.min.toordinal() - _EPOCH_ORDINAL) * 86_400_000_000
_MAX_MICROS: Final = (dt.date.max.toordinal() + 1 - _EPOCH_ORDINAL) * 86_400_000_000 - 1

_NUMBER_RE: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_MONEY_QUANTUM: Final = decimal.Decimal(1).scaleb(-MONEY.scale)
# quantize() under this context raises unless the value fits decimal128(38, 10) exactly.
_MONEY_CONTEXT: Final = decimal.Context(
    prec=MONEY.precision, traps=[decimal.InvalidOperation, decimal.Inexact, decimal.Overflow]
)

_INT_MIN: Final = -(2**31)
_INT_MAX: Final = 2**31 - 1

_ONLY_ID: Final = frozenset({"id"})


# Compact JSON text with sorted keys and non-ASCII kept, for `additionalData`.
_to_json: Final[Callable[[Any], str]] = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":")
).encode


def _key_problem(kind: Kind, index: int, row: object) -> str | None:
    """Why row `index` cannot be archived, or None when it is a JSON object with its key
    (`id`; `remediationId` for the blocked-users log)."""
    key = kind.key
    if not isinstance(row, dict):
        return f"{kind.value} row {index} is not a JSON object but {type(row).__name__}"
    if key not in row:
        return f"{kind.value} row {index} has no {key!r} property; every row needs its {key}"
    value = row[key]
    if not isinstance(value, str) or not value:
        shown = repr(value)[:80]
        return f"{kind.value} row {index} has {key!r} {shown}: expected a non-empty string"
    return None


@dataclass(frozen=True)
class _Spec:
    """What the converters need to know about one kind, worked out once."""

    schema: pa.Schema
    names: tuple[str, ...]  # Graph properties with a column of their own, in schema order
    known: frozenset[str]  # the same, as a set
    raw: pa.StructType  # as Graph sends them: timestamps text, money float64
    timestamps: tuple[str, ...]
    ints: tuple[str, ...]
    money: tuple[str, ...]
    units: tuple[str, ...]


def _spec(kind: Kind) -> _Spec:
    """The conversion plan for `kind`, derived from its declared schema."""
    schema = SCHEMAS[kind]
    graph = [f for f in schema if f.name != ADDITIONAL_DATA]
    raw_types = {TIMESTAMP: STRING, MONEY: pa.float64()}

    def named(type_: pa.DataType) -> tuple[str, ...]:
        return tuple(f.name for f in graph if f.type == type_)

    return _Spec(
        schema=schema,
        names=tuple(f.name for f in graph),
        known=frozenset(f.name for f in graph),
        raw=pa.struct([(f.name, raw_types.get(f.type, f.type)) for f in graph]),
        timestamps=named(TIMESTAMP),
        ints=named(INT),
        money=named(MONEY),
        units=named(ADMIN_UNITS),
    )


_SPECS: Final[dict[Kind, _Spec]] = {kind: _spec(kind) for kind in Kind}


# ---------------------------------------------------------------------------------------
# Fast path: whole columns through Arrow

_NONE: Final = type(None)
_NS: Final = pa.timestamp("ns", tz="UTC")
_NULL_STRING: Final = pa.scalar(None, STRING)


def _fast(kind: Kind, rows: Sequence[dict[str, Any]]) -> pa.RecordBatch:
    """Convert clean rows column-wise; raises _Unclean or an Arrow error on anything else."""
    spec = _SPECS[kind]
    if not set(map(type, rows)) <= {dict}:
        raise _Unclean("a row is not a JSON object")
    present, values, additional = _values(spec, rows)
    where = {name: i for i, name in enumerate(present)}
    # Arrow would silently truncate 1.5 to 1 in an int column and take True as 1.0 money.
    for names, allowed in ((spec.ints, {int, _NONE}), (spec.money, {int, float, _NONE})):
        for name in names:
            if name in where:
                column = map(operator.itemgetter(where[name]), values)
                if not set(map(type, column)) <= allowed:
                    raise _Unclean(f"{name} holds a value of an unexpected type")
    for name in spec.units:
        if name in where:
            _check_units(list(map(operator.itemgetter(where[name]), values)))

    count = len(rows)
    try:
        raw = pa.array(values, type=_struct_of(spec, present))
    except OverflowError as exc:  # an integer beyond int64: Arrow lets Python's error through
        raise _Unclean("an integer is out of range") from exc
    if count:
        keys = raw.field(kind.key) if kind.key in where else None
        if keys is None or keys.null_count or pc.min(pc.binary_length(keys)).as_py() == 0:
            raise _Unclean("a row has no usable key")

    columns = []
    for field in spec.schema:
        if field.name == ADDITIONAL_DATA:
            columns.append(pa.nulls(count, STRING) if additional is None else additional)
            continue
        if field.name not in where:  # no row has it
            columns.append(pa.nulls(count, field.type))
            continue
        column = raw.field(field.name)
        if field.type == TIMESTAMP:
            column = _fast_timestamps(column)
        elif field.type == MONEY:
            # float64 -> decimal directly is inexact (1234567.891 -> ...8910000001); Arrow
            # prints floats in their shortest round-trip form, which parses back exactly
            # and fails, rather than rounds, when more than 10 decimals are needed.
            column = column.cast(STRING).cast(MONEY)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=spec.schema)


def _values(
    spec: _Spec, rows: Sequence[dict[str, Any]]
) -> tuple[tuple[str, ...], list[tuple[Any, ...]], pa.Array | None]:
    """The declared properties some row has (in schema order), each row's values of them,
    and the `additionalData` column (None: no row has an unknown property).

    Graph writes every row of a page with the same keys: the declared ones the first row
    has are taken from every row in one C call per row (with the first row's own key
    objects, which orjson shares between rows: a lookup then compares no text), and only
    rows with more keys than that are looked at one by one. When a row lacks one of them,
    or holds a declared property the first row lacks, every declared property is looked
    up in every row instead.
    """
    if not rows:
        return (), [], None
    keys = {key: key for key in rows[0]}
    present = tuple(keys[name] for name in spec.names if name in keys)
    width = len(present)
    if not width:
        return _every_value(spec, rows)
    take = operator.itemgetter(*present)
    try:
        values = list(map(take, rows)) if width > 1 else [(v,) for v in map(take, rows)]
    except KeyError:
        return _every_value(spec, rows)
    if set(map(len, rows)) == {width}:
        return present, values, None
    texts: list[str | None] = [None] * len(rows)
    for i, size in enumerate(map(len, rows)):
        if size != width:
            row = rows[i]
            unknown = [k for k in row if k not in spec.known]
            if size - len(unknown) != width:  # a declared property the first row lacks
                return _every_value(spec, rows)
            texts[i] = _to_json({k: row[k] for k in unknown})
    return present, values, pa.array(texts, STRING)


def _every_value(
    spec: _Spec, rows: Sequence[dict[str, Any]]
) -> tuple[tuple[str, ...], list[tuple[Any, ...]], pa.Array | None]:
    """`_values` for rows whose keys differ: every declared property of every row."""
    columns = [map(dict.get, rows, itertools.repeat(name)) for name in spec.names]
    return spec.names, list(zip(*columns, strict=True)), _fast_additional(spec.known, rows)


@functools.lru_cache(maxsize=64)
def _struct_of(spec: _Spec, names: tuple[str, ...]) -> pa.StructType:
    """The raw struct of these declared properties (a row's values, in this order)."""
    return pa.struct([spec.raw.field(name) for name in names])


def _check_units(values: Sequence[Any]) -> None:
    """Raise _Unclean unless every value is null or a list of nulls and exactly-{id} objects."""
    if not set(map(type, values)) <= {list, _NONE}:
        raise _Unclean("administrativeUnitInfos is not a list")
    elements = [e for e in itertools.chain.from_iterable(filter(None, values)) if e is not None]
    if not set(map(type, elements)) <= {dict}:
        raise _Unclean("administrativeUnitInfos holds something other than objects")
    if not all(map(operator.eq, map(dict.keys, elements), itertools.repeat(_ONLY_ID))):
        raise _Unclean("administrativeUnitInfos holds an object with other keys than id")


def _fast_timestamps(column: pa.Array) -> pa.Array:
    """Graph's timestamp text as timestamp[us, UTC], truncated; the 0001-01-01 sentinel null."""
    sentinel = pc.starts_with(column, _SENTINEL_DATE)
    valid = pc.match_substring_regex(column, _TS_PATTERN_RE2)
    if not pc.all(pc.or_(sentinel, valid), min_count=0).as_py():
        raise _Unclean("a timestamp is not in Graph's ISO-8601 form")
    if sentinel.true_count:
        column = pc.if_else(sentinel, _NULL_STRING, column)  # year 1 is outside the ns range
    nanos = column.cast(_NS)  # 7 digits and offsets; raises outside years 1677-2262
    earliest = pc.min(nanos).value
    if earliest is not None and earliest < 0:  # before 1970, truncating is not flooring
        nanos = pc.floor_temporal(nanos, unit="microsecond")
    return nanos.cast(TIMESTAMP, safe=False)  # after 1970, dropping digits floors


def _fast_additional(known: frozenset[str], rows: Sequence[dict[str, Any]]) -> pa.Array:
    """The `additionalData` column: each row's unknown properties as JSON, else null."""
    # Graph writes every row of a page with the same keys in the same order, so the unknown
    # keys are worked out once per key sequence; this is cheaper than a set test per row
    # (and than comparing each row's key tuple with the first row's).
    unknown_by_keys: dict[tuple[str, ...], tuple[str, ...]] = {}
    texts: list[str | None] = []
    for row in rows:
        keys = tuple(row)
        unknown = unknown_by_keys.get(keys)
        if unknown is None:
            unknown = unknown_by_keys[keys] = tuple(k for k in keys if k not in known)
        texts.append(_to_json({k: row[k] for k in unknown}) if unknown else None)
    return pa.array(texts, STRING)


# ---------------------------------------------------------------------------------------
# Careful path: value by value; what cannot be converted is nulled and kept aside

_BAD: Final = object()  # a converter's answer for "cannot convert: keep the original"


def _to_string(value: Any) -> Any:
    """A JSON string as itself."""
    return value if isinstance(value, str) else _BAD


def _to_int(value: Any) -> Any:
    """A JSON integer within int32."""
    if isinstance(value, int) and not isinstance(value, bool) and _INT_MIN <= value <= _INT_MAX:
        return value
    return _BAD


def _to_bool(value: Any) -> Any:
    """A JSON true or false."""
    return value if isinstance(value, bool) else _BAD


def _to_money(value: Any) -> Any:
    """A JSON number or numeric string as the Decimal it was written as, if it fits (38, 10)."""
    if isinstance(value, bool):
        return _BAD
    if isinstance(value, float):
        if not math.isfinite(value):
            return _BAD
        number = decimal.Decimal(repr(value))  # shortest round-trip form: as written
    elif isinstance(value, int) or (isinstance(value, str) and _NUMBER_RE.fullmatch(value)):
        number = decimal.Decimal(value)
    else:
        return _BAD
    try:
        return number.quantize(_MONEY_QUANTUM, context=_MONEY_CONTEXT)
    except decimal.DecimalException:
        return _BAD


def _to_micros(value: Any) -> Any:
    """Graph's timestamp text as UTC microseconds since 1970 (truncated); 0001-01-01 is None."""
    if not isinstance(value, str):
        return _BAD
    if value.startswith(_SENTINEL_DATE):
        return None
    match = _TS_RE.fullmatch(value)
    if match is None:
        return _BAD
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    try:
        days = dt.date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:  # 30 February, year 0
        return _BAD
    seconds = days * 86400 + int(hour) * 3600 + int(minute) * 60 + int(second)
    if sign is not None:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    micros = seconds * 1_000_000 + int((fraction or "")[:6].ljust(6, "0"))
    return micros if _MIN_MICROS <= micros <= _MAX_MICROS else _BAD  # years 1 to 9999 only


def _to_units(value: Any) -> Any:
    """A JSON array of {"id": string-or-null} objects (or nulls), nothing else in them."""
    if not isinstance(value, list):
        return _BAD
    units: list[dict[str, Any] | None] = []
    for element in value:
        if element is None:
            units.append(None)
        elif (
            isinstance(element, dict)
            and element.keys() == _ONLY_ID
            and (element["id"] is None or isinstance(element["id"], str))
        ):
            units.append({"id": element["id"]})
        else:
            return _BAD
    return units


_CONVERTERS: Final[dict[pa.DataType, Callable[[Any], Any]]] = {
    STRING: _to_string,
    TIMESTAMP: _to_micros,
    INT: _to_int,
    MONEY: _to_money,
    BOOL: _to_bool,
    ADMIN_UNITS: _to_units,
}


def _careful(kind: Kind, rows: Sequence[dict[str, Any]]) -> pa.RecordBatch:
    """Convert rows one value at a time: a value that does not convert is null in its column
    and kept, under its own name, in `additionalData` beside the unknown properties."""
    spec = _SPECS[kind]
    fields = [f for f in spec.schema if f.name != ADDITIONAL_DATA]
    plan = [(f.name, _CONVERTERS[f.type]) for f in fields]
    values: list[list[Any]] = [[] for _ in fields]
    additional: list[str | None] = []
    for index, row in enumerate(rows):
        problem = _key_problem(kind, index, row)
        if problem is not None:
            raise WindowError(problem)
        kept = {k: v for k, v in row.items() if k not in spec.known}
        for (name, convert), column in zip(plan, values, strict=True):
            value = row.get(name)
            converted = None if value is None else convert(value)
            if converted is _BAD:
                kept[name] = value
                converted = None
            column.append(converted)
        additional.append(_to_json(kept) if kept else None)
    arrays = [pa.array(column, f.type) for f, column in zip(fields, values, strict=True)]
    arrays.append(pa.array(additional, STRING))
    return pa.RecordBatch.from_arrays(arrays, schema=spec.schema)
