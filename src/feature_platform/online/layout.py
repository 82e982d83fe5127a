"""Feast's online layout, planned once per feature view and encoded in bulk.

What Feast 0.67 writes to Redis for a feature view ``view`` (entity key serialization v3), and what this module
reproduces byte for byte (``tests/test_online_layout.py`` compares with Feast's own functions):

- key: ``serialize_entity_key(EntityKey(join_keys=[k, ...], entity_values=[v, ...]))`` followed by the project
  name; several join keys (a composite key) are serialized sorted by name, the names first, then the values;
- one hash per key, shared by every view of that entity; per view the fields ``mmh3("view:feature")`` (4 bytes,
  Feast's ``_mmh3``) holding a serialized ``feast.types.Value`` and ``_ts:view`` holding a serialized
  ``google.protobuf.Timestamp``;
- a null value is an empty ``Value`` (zero bytes); a timestamp feature is ``unix_timestamp_val`` in whole seconds.

Protobuf is encoded by hand here because per-value protobuf objects were most of Feast's materialization time;
the wire format of these few scalar fields is small and fixed (tag byte, then fixed-width or varint payload).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# feast.types.Value field numbers (Value.proto) and the tag bytes (field << 3 | wire type) they encode to.
TAG_STRING = b"\x12"     # string_val = 2, length-delimited
TAG_INT32 = 0x18         # int32_val = 3, varint
TAG_INT64 = 0x20         # int64_val = 4, varint
TAG_DOUBLE = 0x29        # double_val = 5, fixed64
TAG_FLOAT = 0x35         # float_val = 6, fixed32
TAG_BOOL = 0x38          # bool_val = 7, varint
TAG_UNIX_TS = 0x40       # unix_timestamp_val = 8, varint
# feast.types.ValueType enum values used by the entity key serialization.
VALUE_TYPE_STRING = 2
VALUE_TYPE_INT32 = 3
VALUE_TYPE_INT64 = 4

MICROS = 1_000_000
NULL_TIMESTAMP_SECONDS = -(1 << 63)  # Feast's NULL_TIMESTAMP_INT_VALUE: how Feast writes a null timestamp feature
NULL_TIMESTAMP_VALUE = bytes([TAG_UNIX_TS]) + b"\x80" * 9 + b"\x01"  # unix_timestamp_val = -2**63


def mmh3_field(view: str, feature: str) -> bytes:
    """Feast's ``_mmh3(f"{view}:{feature}")``: murmur3_32, little endian, 4 bytes."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def ts_field(view: str) -> bytes:
    return f"_ts:{view}".encode()


# ------------------------------------------------------------------------------------------------ entity keys


def key_prefix(join_keys: Sequence[str]) -> bytes:
    """Serialized entity key up to the values: the number of join keys and their names, sorted (Feast sorts
    several keys by name; the values follow in the same order)."""
    out = [struct.pack("<I", len(join_keys))]
    for name in sorted(join_keys):
        data = name.encode()
        out.append(struct.pack("<II", VALUE_TYPE_STRING, len(data)) + data)
    return b"".join(out)


def _value_pieces(dtype: str, values: Sequence[Any] | pa.Array | pa.ChunkedArray | np.ndarray) -> list[bytes]:
    """Each value of one join key as the serialized key holds it: value type, size, bytes."""
    if dtype == "int64":
        array = (values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array | pa.ChunkedArray)
                 else np.asarray(values, dtype=np.int64)).astype("<i8")
        packed = np.empty(len(array), dtype=[("type", "<u4"), ("size", "<u4"), ("value", "<i8")])
        packed["type"], packed["size"], packed["value"] = VALUE_TYPE_INT64, 8, array
        raw = packed.tobytes()
        return [raw[i:i + 16] for i in range(0, len(raw), 16)]
    if dtype == "int32":  # Feast packs an int32 key in 4 bytes ("<i"), type INT32
        int32 = struct.Struct("<IIi")
        return [int32.pack(VALUE_TYPE_INT32, 4, int(v)) for v in
                (values.to_pylist() if isinstance(values, pa.Array | pa.ChunkedArray) else values)]
    head = struct.Struct("<II")
    out = []
    for value in (values.to_pylist() if isinstance(values, pa.Array | pa.ChunkedArray) else values):
        data = str(value).encode()
        out.append(head.pack(VALUE_TYPE_STRING, len(data)) + data)
    return out


def entity_keys(join_key: str, dtype: str, values: Sequence[Any] | pa.Array | np.ndarray, project: str
                ) -> list[bytes]:
    """Redis keys of ``values`` (one join key) exactly as Feast's ``_redis_key`` makes them (v3 serialization)."""
    prefix, suffix = key_prefix([join_key]), project.encode()
    if dtype == "int64":
        array = (values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array | pa.ChunkedArray)
                 else np.asarray(values, dtype=np.int64)).astype("<i8")
        # Every key has the same width: one byte matrix (prefix, type, size, value, project), cut into rows.
        packed = np.empty(len(array), dtype=[("type", "<u4"), ("size", "<u4"), ("value", "<i8")])
        packed["type"], packed["size"], packed["value"] = VALUE_TYPE_INT64, 8, array
        width = len(prefix) + 16 + len(suffix)
        matrix = np.empty((len(array), width), dtype=np.uint8)
        matrix[:, :len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
        matrix[:, len(prefix):len(prefix) + 16] = packed.view(np.uint8).reshape(len(array), 16)
        matrix[:, len(prefix) + 16:] = np.frombuffer(suffix, dtype=np.uint8)
        raw = matrix.tobytes()
        return [raw[i:i + width] for i in range(0, len(raw), width)]
    return [prefix + piece + suffix for piece in _value_pieces(dtype, values)]


def composite_keys(join_keys: Sequence[str], dtypes: Sequence[str], columns: Sequence[Any], project: str
                   ) -> list[bytes]:
    """Redis keys of rows given as one column per join key (in ``join_keys`` order), as Feast's ``_redis_key``
    makes them for an entity key of several join keys: the names sorted, then the values in that order."""
    if len(join_keys) == 1:
        return entity_keys(join_keys[0], dtypes[0], columns[0], project)
    order = sorted(range(len(join_keys)), key=lambda i: join_keys[i])
    prefix, suffix = key_prefix(join_keys), project.encode()
    pieces = [_value_pieces(dtypes[i], columns[i]) for i in order]
    return [b"".join((prefix, *row, suffix)) for row in zip(*pieces, strict=True)]


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INTEGER_RANGES = {"int64": (INT64_MIN, INT64_MAX), "int32": (-(2**31), 2**31 - 1)}


def parse_entity_values(dtype: str, values: list[Any]) -> list[Any]:
    """Many keys at once; the common case (ints for integer keys, strings for string) passes through untouched."""
    wanted = int if dtype in INTEGER_RANGES else str
    if all(type(v) is wanted for v in values):
        if wanted is int and values:
            low, high = INTEGER_RANGES[dtype]
            if min(values) < low or max(values) > high:
                raise ValueError(f"{next(v for v in values if not low <= v <= high)} is outside the {dtype} range")
        return values
    return [parse_entity_value(dtype, v) for v in values]


def parse_entity_value(dtype: str, value: Any) -> Any:
    """A key as a caller sends it (JSON number, CLI string) -> the join key's Python type."""
    if dtype in INTEGER_RANGES:
        if isinstance(value, bool) or not isinstance(value, int | str | float):
            raise ValueError(f"{value!r} is not an integer")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an integer") from None
        low, high = INTEGER_RANGES[dtype]
        if not low <= number <= high:
            raise ValueError(f"{value!r} is outside the {dtype} range")
        return number
    if not isinstance(value, str | int):
        raise ValueError(f"{value!r} is not a string")
    return str(value)


# ----------------------------------------------------------------------------------------------- encoding


def _varint_matrix(values: np.ndarray, tag: int) -> tuple[bytes, np.ndarray, int]:
    """Tag + protobuf varint of each int64 (two's complement, so negatives take 10 bytes), as one buffer of
    fixed-width rows and the used length of each row."""
    rest = values.astype(np.int64).view(np.uint64).copy()
    width = 11
    matrix = np.zeros((len(rest), width), dtype=np.uint8)
    matrix[:, 0] = tag
    lengths = np.full(len(rest), 2, dtype=np.int64)
    for i in range(1, width):
        matrix[:, i] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
        more = rest != 0
        if not more.any():
            break
        matrix[more, i] |= 0x80
        lengths += more
    return matrix.tobytes(), lengths, width


def _rows(raw: bytes, lengths: np.ndarray, width: int) -> list[bytes]:
    return [raw[i * width:i * width + n] for i, n in enumerate(lengths.tolist())]


def _fixed(values: np.ndarray, tag: int, fmt: str) -> list[bytes]:
    packed = np.empty(len(values), dtype=[("tag", "u1"), ("value", fmt)])
    packed["tag"], packed["value"] = tag, values
    raw = packed.tobytes()
    step = packed.itemsize
    return [raw[i:i + step] for i in range(0, len(raw), step)]


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _strings(array: pa.Array) -> list[bytes]:
    out = []
    for value in array.to_pylist():
        if value is None:
            out.append(b"")
            continue
        data = value.encode()
        out.append(TAG_STRING + (bytes((len(data),)) if len(data) < 128 else _varint(len(data))) + data)
    return out


def _epoch_micros(array: pa.Array) -> np.ndarray:
    if array.type == _MICROS_UTC and not array.null_count:  # the usual column: a zero-copy view
        return array.to_numpy(zero_copy_only=False).view(np.int64)
    return pc.cast(pc.cast(array, pa.timestamp("us", tz="UTC")), pa.int64()).fill_null(0).to_numpy(
        zero_copy_only=False)


_MICROS_UTC = pa.timestamp("us", tz="UTC")


def _unix_seconds(array: pa.Array) -> np.ndarray:
    """Whole seconds as Feast computes them (``int(dt.timestamp())``: truncated toward zero)."""
    micros = _epoch_micros(array)
    seconds = micros // MICROS
    seconds[(micros % MICROS != 0) & (micros < 0)] += 1
    return seconds


# Value's list fields (string_list_val = 12 ... bool_list_val = 17) as field keys of wire type 2, per element.
LIST_KEYS = {"string": b"\x62", "int32": b"\x6a", "int64": b"\x72", "float64": b"\x7a", "float32": b"\x82\x01",
             "bool": b"\x8a\x01"}
_PACKED = {"float32": "<f4", "float64": "<f8"}


def _length_delimited(key: bytes, payload: bytes) -> bytes:
    return key + (bytes((len(payload),)) if len(payload) < 128 else _varint(len(payload))) + payload


def _element_bytes(element: str, values: pa.Array) -> list[bytes]:
    """Each element of a list column's values as it appears inside the list message: fixed width for floats, a
    varint for integers and bools (packed, no tags), and for strings a field of its own."""
    if element == "string":
        return [_length_delimited(b"\x0a", (v or "").encode()) for v in values.to_pylist()]  # Feast: None -> ""
    if element in _PACKED:
        raw = pc.cast(values, pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False).astype(
            _PACKED[element]).tobytes()
        width = 4 if element == "float32" else 8
        return [raw[i:i + width] for i in range(0, len(raw), width)]
    numbers = pc.cast(values, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    return [row[1:] for row in _rows(*_varint_matrix(numbers, 0x00))]


def encode_list_values(dtype: str, array: pa.Array) -> list[bytes]:
    """Serialized ``feast.types.Value`` of each array (``array<element>``) as Feast's writer makes it: the list
    field of the element type holding one packed field 1 (strings: one field 1 each); an empty array is the
    empty list message; a null array the empty Value; null elements as the comment below says."""
    element = dtype[len("array<"):-1]
    key = LIST_KEYS[element]
    offsets = array.offsets.to_numpy(zero_copy_only=False)
    values = array.values  # indexed by the offsets (the whole child, even for a slice)
    valid = array.is_valid().to_numpy(zero_copy_only=False) if array.null_count else None
    out: list[bytes] = []
    if element in _PACKED and not values.null_count:  # embeddings: one buffer, cut per row
        width = 4 if element == "float32" else 8
        # A view of the little-endian buffer (no copy on this machine's byte order): each row is copied once,
        # into its Value.
        numbers = np.ascontiguousarray(pc.cast(values, pa.float32() if width == 4 else pa.float64()).to_numpy(
            zero_copy_only=False), dtype=_PACKED[element])
        raw = numbers.view(np.uint8).data
        heads: dict[int, bytes] = {}
        for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            size = (end - start) * width
            head = heads.get(size)
            if head is None:
                inner_head = b"\x0a" + _varint(size) if size else b""
                head = heads[size] = key + _varint(len(inner_head) + size) + inner_head
            out.append(head + raw[start * width:end * width])
    else:
        pieces = _element_bytes(element, values)
        # Null elements as Feast's writer leaves them: NaN for floats, False for bools, "" for strings; an
        # integer array cannot hold one (Feast's own writer refuses it), so it is left out.
        present = (values.is_valid().to_numpy(zero_copy_only=False)
                   if values.null_count and element in ("int32", "int64") else None)
        for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            row = pieces[start:end] if present is None else [
                piece for piece, ok in zip(pieces[start:end], present[start:end], strict=True) if ok]
            payload = b"".join(row)
            inner = payload if element == "string" else (_length_delimited(b"\x0a", payload) if payload else b"")
            out.append(_length_delimited(key, inner))
    if valid is not None:
        for index in np.flatnonzero(~valid).tolist():
            out[index] = b""
    return out


def encode_values(dtype: str, array: pa.Array) -> list[bytes]:
    """Serialized ``feast.types.Value`` of each element; nulls are the empty Value (b"")."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if dtype.startswith("array<"):
        return encode_list_values(dtype, array)
    if dtype == "string":
        return _strings(array)
    valid = array.is_valid().to_numpy(zero_copy_only=False) if array.null_count else None
    if dtype in ("int64", "int32", "bool", "timestamp"):
        if dtype == "timestamp":
            numbers = _unix_seconds(array)
        else:
            numbers = pc.cast(array, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        tag = {"int64": TAG_INT64, "int32": TAG_INT32, "bool": TAG_BOOL, "timestamp": TAG_UNIX_TS}[dtype]
        out = _rows(*_varint_matrix(numbers, tag))
    elif dtype in ("float64", "float32"):
        wanted = pa.float64() if dtype == "float64" else pa.float32()
        numbers = (array.to_numpy() if array.type == wanted and not array.null_count  # zero copy
                   else pc.cast(array, wanted).fill_null(0).to_numpy(zero_copy_only=False))
        out = _fixed(numbers, *((TAG_DOUBLE, "<f8") if dtype == "float64" else (TAG_FLOAT, "<f4")))
        nan = np.isnan(numbers)
        if nan.any():  # Feast writes NaN as null (an empty Value); so does the platform
            valid = ~nan if valid is None else valid & ~nan
    else:
        raise ValueError(f"no encoder for dtype {dtype!r}")
    if valid is not None:
        # Feast's Arrow path writes a null timestamp as its NULL_TIMESTAMP_INT_VALUE sentinel, other nulls empty.
        null = NULL_TIMESTAMP_VALUE if dtype == "timestamp" else b""
        for index in np.flatnonzero(~valid).tolist():
            out[index] = null
    return out


def encode_event_timestamps(array: pa.Array) -> list[bytes]:
    """Serialized ``google.protobuf.Timestamp`` (seconds = 1, nanos = 2; zero fields are omitted)."""
    micros = _epoch_micros(array)
    seconds, rest = np.divmod(micros, MICROS)
    nanos = rest * 1000
    with_seconds = _rows(*_varint_matrix(seconds, 0x08))
    if not nanos.any() and seconds.all():  # whole seconds after 1970, the usual event time: the seconds alone
        return with_seconds
    out = []
    for index, (sec, nano) in enumerate(zip(seconds.tolist(), nanos.tolist(), strict=True)):
        head = with_seconds[index] if sec else b""
        out.append(head + (b"\x10" + _varint(nano) if nano else b""))
    return out


# ----------------------------------------------------------------------------------------------- decoding


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _signed(value: int, bits: int = 64) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value




def decode_value(data: bytes | None) -> Any:
    """A serialized ``feast.types.Value`` of a contract dtype -> Python value (None for null; arrays: lists).

    Timestamps come back as whole epoch seconds (int); callers format them.
    """
    if not data:
        return None
    tag = data[0]
    if tag == TAG_DOUBLE:
        return struct.unpack_from("<d", data, 1)[0]
    if tag == TAG_FLOAT:
        return struct.unpack_from("<f", data, 1)[0]
    if tag == 0x12:
        size, pos = _read_varint(data, 1)
        return data[pos:pos + size].decode()
    if tag in (TAG_INT64, TAG_INT32, TAG_BOOL, TAG_UNIX_TS):
        raw, _ = _read_varint(data, 1)
        if tag == TAG_BOOL:
            return bool(raw)
        value = _signed(raw)
        if tag == TAG_UNIX_TS and value == NULL_TIMESTAMP_SECONDS:
            return None
        return value
    if tag in _LIST_FIELDS and (tag < 0x80 or data[1:2] == b"\x01"):  # fields 12-15; 16, 17 take two bytes
        decoded = _decode_list(data)
        if decoded is not None:
            return decoded
    return _decode_with_protobuf(data)


# The first byte of each list field's key -> the element's packed layout (strings: None, one field each).
_LIST_FIELDS = {0x62: "string", 0x6A: "varint", 0x72: "varint", 0x7A: "<f8", 0x82: "<f4", 0x8A: "bool"}


def _decode_list(data: bytes) -> list[Any] | None:
    """An array written as Feast writes it (one packed field 1; strings one field 1 each) -> a list; None for
    another layout (protobuf reads it)."""
    kind = _LIST_FIELDS[data[0]]
    size, pos = _read_varint(data, 2 if data[0] & 0x80 else 1)
    end = pos + size
    if end != len(data):
        return None
    if kind == "string":
        out = []
        while pos < end:
            if data[pos] != 0x0A:
                return None
            length, pos = _read_varint(data, pos + 1)
            out.append(data[pos:pos + length].decode())
            pos += length
        return out
    if pos == end:
        return []
    if data[pos] != 0x0A:
        return None
    length, pos = _read_varint(data, pos + 1)
    if pos + length != end:
        return None
    payload = data[pos:end]
    if kind in ("<f4", "<f8"):
        return np.frombuffer(payload, dtype=kind).tolist()
    numbers = []
    while pos < end:
        raw, pos = _read_varint(data, pos)
        numbers.append(_signed(raw))
    return [bool(n) for n in numbers] if kind == "bool" else numbers


def _decode_with_protobuf(data: bytes) -> Any:
    """Anything not written by a scalar encoder above (another writer, a new Feast): let protobuf read it."""
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value.FromString(data)
    which = value.WhichOneof("val")
    if which in (None, "null_val"):
        return None
    found = getattr(value, which)
    return list(found.val) if which.endswith("_list_val") else found


_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")


def _decode_double(data: bytes | None) -> Any:
    if data and len(data) == 9 and data[0] == TAG_DOUBLE:
        return _DOUBLE.unpack_from(data, 1)[0]
    return decode_value(data)


def _decode_float(data: bytes | None) -> Any:
    if data and len(data) == 5 and data[0] == TAG_FLOAT:
        return _FLOAT.unpack_from(data, 1)[0]
    return decode_value(data)


def _decode_string(data: bytes | None) -> Any:
    if data and data[0] == 0x12 and len(data) > 1 and data[1] < 0x80 and len(data) == 2 + data[1]:  # short
        return data[2:].decode()
    return decode_value(data)


# One decoder per contract dtype: the common encoding fast, anything else through decode_value.
DECODERS = {"float64": _decode_double, "float32": _decode_float, "string": _decode_string}


def decoder(dtype: str) -> Any:
    return DECODERS.get(dtype, decode_value)


_FIXED = {"float64": (TAG_DOUBLE, np.dtype([("tag", "u1"), ("value", "<f8")])),
          "float32": (TAG_FLOAT, np.dtype([("tag", "u1"), ("value", "<f4")]))}


def decode_column(dtype: str, raws: list[bytes | None]) -> list[Any]:
    """Decode one feature for many entities: a column of plain doubles/floats in one numpy call, else one by one."""
    fixed = _FIXED.get(dtype)
    if fixed is not None and raws and None not in raws:
        tag, layout = fixed
        joined = b"".join(raws)  # type: ignore[arg-type]
        if len(joined) == layout.itemsize * len(raws):
            packed = np.frombuffer(joined, dtype=layout)
            if (packed["tag"] == tag).all():
                return packed["value"].tolist()
    decode = decoder(dtype)
    return [decode(raw) for raw in raws]


def decode_arrow(dtype: str, raws: list[bytes | None]) -> pa.Array:
    """One feature for many entities as an Arrow array of the contract's type (None: null). Float arrays
    (embeddings) go from their packed bytes to one Arrow buffer without a Python float each."""
    from feature_platform.build import ARROW_TYPES

    if dtype in ("array<float32>", "array<float64>"):
        packed = _packed_floats(dtype, raws)
        if packed is not None:
            return packed
    values = decode_column(dtype, raws)
    if dtype == "timestamp":  # whole epoch seconds, as Feast stores them
        values = [None if v is None else v * MICROS for v in values]
        return pa.array(values, pa.int64()).cast(ARROW_TYPES[dtype])
    return pa.array(values, ARROW_TYPES[dtype])


def _packed_floats(dtype: str, raws: list[bytes | None]) -> pa.Array | None:
    """Float arrays as Feast writes them (the list field holding one packed field 1) -> a list array over one
    buffer; None if any value has another layout (the general decoder reads it)."""
    element = dtype[len("array<"):-1]
    key, width = LIST_KEYS[element], 4 if element == "float32" else 8
    payloads: list[bytes] = []
    offsets = [0]
    valid = []
    for raw in raws:
        if not raw:
            valid.append(False)
            offsets.append(offsets[-1])
            continue
        if not raw.startswith(key):
            return None
        size, pos = _read_varint(raw, len(key))
        if pos + size != len(raw):
            return None
        if size:
            if raw[pos] != 0x0A:
                return None
            length, pos = _read_varint(raw, pos + 1)
            if pos + length != len(raw) or length % width:
                return None
            payloads.append(raw[pos:])
        valid.append(True)
        offsets.append(offsets[-1] + (len(payloads[-1]) // width if size else 0))
    values = pa.array(np.frombuffer(b"".join(payloads), dtype=_PACKED[element]))
    mask = None if all(valid) else pa.array([not v for v in valid])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, mask=mask)


def decode_timestamp_micros(data: bytes | None) -> int | None:
    """A serialized ``google.protobuf.Timestamp`` -> epoch microseconds; None when the field is absent."""
    if data is None:
        return None
    seconds = nanos = 0
    pos = 0
    while pos < len(data):
        tag = data[pos]
        raw, pos = _read_varint(data, pos + 1)
        if tag == 0x08:
            seconds = _signed(raw)
        elif tag == 0x10:
            nanos = _signed(raw, 32)
    return seconds * MICROS + nanos // 1000


# ---------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class FeaturePlan:
    name: str
    dtype: str
    field: bytes  # mmh3("view:feature")


@dataclass(frozen=True)
class ViewPlan:
    """Everything the hot loops need for one feature view, computed once."""

    view: str
    project: str
    join_keys: tuple[str, ...]   # the entity key's columns (several: a composite key)
    key_dtypes: tuple[str, ...]  # per join key
    timestamp_field: str
    ttl_seconds: int
    features: tuple[FeaturePlan, ...]

    @property
    def ts_field(self) -> bytes:
        return ts_field(self.view)

    @property
    def fields(self) -> list[bytes]:
        """Every hash field this view owns: its features, then its timestamp."""
        return [f.field for f in self.features] + [self.ts_field]

    @property
    def composite(self) -> bool:
        return len(self.join_keys) > 1

    def keys(self, columns: Sequence[Any]) -> list[bytes]:
        """Redis keys of rows given as one column per join key (lists, Arrow or numpy arrays); with one join
        key, its column of values may also be given alone."""
        if not self.composite and not _one_column_list(columns):
            columns = [columns]
        return composite_keys(self.join_keys, self.key_dtypes, columns, self.project)

    def keys_of(self, table: pa.Table | pa.RecordBatch) -> list[bytes]:
        """Redis keys of a table's rows (it holds the join key columns)."""
        return self.keys([table.column(k) for k in self.join_keys])

    def entity_ids(self, columns: Sequence[Sequence[Any]]) -> list[Any]:
        """One hashable id per row: the value for one join key, a tuple of values for several."""
        return list(columns[0]) if len(columns) == 1 else list(zip(*columns, strict=True))

    def id_columns(self, ids: Sequence[Any]) -> list[list[Any]]:
        """The inverse of :meth:`entity_ids`: one column per join key."""
        if not self.composite:
            return [list(ids)]
        return [list(column) for column in zip(*ids, strict=True)] if ids else [[] for _ in self.join_keys]

    def feature(self, name: str) -> FeaturePlan:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)


def _one_column_list(value: Any) -> bool:
    """``[column]`` rather than a column of values (keys are numbers or strings, never sequences)."""
    return (isinstance(value, list | tuple) and len(value) == 1
            and isinstance(value[0], list | tuple | pa.Array | pa.ChunkedArray | np.ndarray))


def plan_view(project: str, view: str, keys: dict[str, str], timestamp_field: str, ttl_seconds: int,
              features: Sequence[tuple[str, str]]) -> ViewPlan:
    """``keys``: join key -> dtype, in the contract's order."""
    return ViewPlan(view=view, project=project, join_keys=tuple(keys), key_dtypes=tuple(keys.values()),
                    timestamp_field=timestamp_field, ttl_seconds=ttl_seconds,
                    features=tuple(FeaturePlan(name, dtype, mmh3_field(view, name)) for name, dtype in features))


def plan_contract(project: str, contract: Any) -> ViewPlan:
    """The plan of one contract version (a ``FeatureSetContract``)."""
    return plan_view(project, contract.feature_view_name, contract.key_dtypes, contract.timestamp_field,
                     contract.ttl_seconds, [(f.name, f.dtype) for f in contract.features])


