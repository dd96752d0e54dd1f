"""Events on the wire: served impressions, user actions, joined examples, dead letters.

Three event kinds flow through the logs (the wire format is documented, with examples, in
`docs/wire-format.md`):

- `FeatureEvent`: one served impression = one (request, item) pair with the features the model
  saw. A request that serves several items gives each its own `request_id`; the convention is
  `"<request>:<position>"` (e.g. `"r81f2:0"`, `"r81f2:1"`), so an action names exactly the
  impression it acts on.
- `ActionEvent`: a user action on one impression (`"click"`, `"like"`, ...), with a value
  (1.0 for a click; a duration for a watch) and its data time.
- `Example`: the joiner's output, one per impression whose join windows have closed: the
  impression's features plus one label per configured action type (the max value of the actions
  that joined; 0.0 when none did) and the negative-sampling rate in force (`sample_rate`, see
  `freshrec.stream.sampling`).

Each is encoded as one compact UTF-8 JSON object. `decode_*` either returns the event or raises
`EventError` whose message names the field and what is wrong with it; no other exception ever
escapes a decoder, whatever the bytes (fuzzed with hypothesis in `tests/test_events.py`).
Unknown fields are ignored (forward compatibility); missing or ill-typed ones are refused.

Validation rules (shared by every kind):

- ids (`user_id`, `item_id`, sparse values) are JSON integers within int64; booleans and floats
  are refused, even `1.0`.
- `ts` is data time in seconds since the epoch, a finite number in [0, 1e11).
- floats (`dense` values, `value`, labels) are finite; `NaN`/`Infinity` literals are refused.
- strings (`request_id`, `action`, map keys) are valid Unicode (no lone surrogates); `request_id`
  and `action` are 1..256 characters.

The joiner decodes a whole poll at once (`feature_wires`, `action_fields_many`): a numba kernel
walks every record of the poll in one pass and accepts those written in the canonical layout
(fields in `encode_*` order, no spaces, printable ASCII strings without escapes, ids of at most
18 digits); every other record goes through the full decoder, so the result, error messages
included, is the same as decoding record by record.

A record that fails to decode becomes a `DeadLetter` (reason, source log, partition, offset,
original bytes) on the dead-letter log, and the pipeline goes on.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

import msgspec
import numpy as np

from freshrec.errors import EventError
from freshrec.stream._wire_kernels import check_actions, check_features

__all__ = [
    "ActionEvent",
    "action_fields",
    "DeadLetter",
    "Example",
    "FeatureEvent",
    "decode_action",
    "decode_dead_letter",
    "decode_example",
    "decode_examples",
    "decode_feature",
    "encode_action",
    "encode_dead_letter",
    "encode_example",
    "encode_examples",
    "encode_feature",
    "action_fields_many",
    "example_from_feature_bytes",
    "feature_wire",
    "feature_wires",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
TS_MAX = 1e11
MAX_NAME = 256
_FMAX = 1.7976931348623157e308
_INT_SET = {int}
_LIST_SET = {list}
_FLOAT_SET = {float}


@dataclass(frozen=True, slots=True)
class FeatureEvent:
    """A served impression: one (request, item) pair and the features the model saw.

    `sparse` maps a feature name to its id list (int64 each); `dense` a name to a float;
    `ts` is the serving time (data time, seconds).
    """

    request_id: str
    user_id: int
    item_id: int
    sparse: dict[str, list[int]]
    dense: dict[str, float]
    ts: float


@dataclass(frozen=True, slots=True)
class ActionEvent:
    """A user action on the impression `request_id` at data time `ts` (seconds)."""

    request_id: str
    action: str
    value: float
    ts: float


@dataclass(frozen=True, slots=True)
class Example:
    """A joined training example: the impression's features plus one label per action type.

    `labels[a]` is the max value of the actions of type `a` that joined within `a`'s window, 0.0
    when none did. `sample_rate` is the probability with which a *negative* of this stream was
    kept (1.0: no sampling); positives are always kept. `ts` is the impression's time.
    """

    request_id: str
    user_id: int
    item_id: int
    sparse: dict[str, list[int]]
    dense: dict[str, float]
    labels: dict[str, float]
    sample_rate: float
    ts: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be decoded: why, where it came from, and its bytes."""

    reason: str
    source: str
    partition: int
    offset: int
    data: bytes


# ---------------------------------------------------------------------------- encoding

_ENC = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode = _ENC.encode


def _dump(obj: Any, what: str) -> bytes:
    try:
        return _encode(obj).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as e:
        msg = f"{what}: cannot encode: {e}"
        raise EventError(msg) from None


def encode_feature(e: FeatureEvent) -> bytes:
    """The wire bytes of a feature event (compact JSON; key order as in the dataclass)."""
    return _dump(
        {
            "request_id": e.request_id,
            "user_id": e.user_id,
            "item_id": e.item_id,
            "sparse": e.sparse,
            "dense": e.dense,
            "ts": e.ts,
        },
        "feature event",
    )


def encode_action(e: ActionEvent) -> bytes:
    """The wire bytes of an action event."""
    return _dump(
        {"request_id": e.request_id, "action": e.action, "value": e.value, "ts": e.ts}, "action event"
    )


def encode_example(e: Example) -> bytes:
    """The wire bytes of an example: the feature event's fields, then `labels`, `sample_rate`."""
    return _dump(
        {
            "request_id": e.request_id,
            "user_id": e.user_id,
            "item_id": e.item_id,
            "sparse": e.sparse,
            "dense": e.dense,
            "ts": e.ts,
            "labels": e.labels,
            "sample_rate": e.sample_rate,
        },
        "example",
    )


def example_from_feature_bytes(feature: bytes, labels: Mapping[str, float], sample_rate: float) -> bytes:
    """Example wire bytes spliced from canonical feature bytes (as `encode_feature` makes them).

    Equal to `encode_example` of the same content, without decoding the features again; the
    joiner's hot path.
    """
    lab = _dump(labels, "labels")
    return b"".join((feature[:-1], b',"labels":', lab, b',"sample_rate":', _dump(sample_rate, "rate"), b"}"))


def encode_examples(examples: list[Example]) -> bytes:
    """A batch of examples as one JSON array (the compact batch form)."""
    return b"[" + b",".join(encode_example(e) for e in examples) + b"]"


def encode_dead_letter(d: DeadLetter) -> bytes:
    """The wire bytes of a dead letter (`data` as base64)."""
    return _dump(
        {
            "reason": d.reason,
            "source": d.source,
            "partition": d.partition,
            "offset": d.offset,
            "data": base64.b64encode(d.data).decode("ascii"),
        },
        "dead letter",
    )


# ---------------------------------------------------------------------------- decoding


def _no_constant(name: str) -> Any:
    msg = f"non-finite number literal {name!r} is not allowed"
    raise EventError(msg)


_DEC = json.JSONDecoder(parse_constant=_no_constant)
_FAST = msgspec.json.Decoder().decode  # strict JSON (no NaN/Infinity), about twice the stdlib's speed
_FAST_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


def _decode_json(text: str) -> Any:
    """A JSON document as Python values: the fast decoder, or where it refuses the text (malformed,
    a number out of float range, a lone surrogate escape), the stdlib's, which accepts exactly what
    it always did and names the fault in its error."""
    try:
        return _FAST(text)
    except _FAST_ERRORS:
        return _DEC.decode(text)


def _text(data: bytes | bytearray | memoryview | str) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8")
    if isinstance(data, str):
        return data
    return bytes(data).decode("utf-8")


def _load(data: bytes | bytearray | memoryview | str, kind: str) -> dict:
    try:
        text = _text(data)
    except UnicodeDecodeError as e:
        msg = f"{kind}: not UTF-8 ({e.reason} at byte {e.start})"
        raise EventError(msg) from None
    try:
        obj = _decode_json(text)
    except RecursionError:
        msg = f"{kind}: JSON nested too deeply"
        raise EventError(msg) from None
    except ValueError as e:
        msg = f"{kind}: not valid JSON ({e})"
        raise EventError(msg) from None
    if type(obj) is not dict:
        msg = f"{kind}: expected a JSON object, got {_tname(obj)}"
        raise EventError(msg)
    return obj


def _tname(v: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _field(obj: dict, name: str, kind: str) -> Any:
    try:
        return obj[name]
    except KeyError:
        msg = f"{kind}: missing field {name!r}"
        raise EventError(msg) from None


def _valid_str(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(obj: dict, name: str, kind: str) -> str:
    v = _field(obj, name, kind)
    if type(v) is not str:
        msg = f"{kind}: field {name!r}: expected a string, got {_tname(v)}"
        raise EventError(msg)
    if not 0 < len(v) <= MAX_NAME:
        msg = f"{kind}: field {name!r}: expected 1..{MAX_NAME} characters, got {len(v)}"
        raise EventError(msg)
    if not v.isascii() and not _valid_str(v):
        msg = f"{kind}: field {name!r}: not valid Unicode (lone surrogate)"
        raise EventError(msg)
    return v


def _int64(obj: dict, name: str, kind: str) -> int:
    v = _field(obj, name, kind)
    if type(v) is not int or not INT64_MIN <= v <= INT64_MAX:
        what = "out of int64 range" if type(v) is int else _tname(v)
        msg = f"{kind}: field {name!r}: expected an integer within int64, got {what} {_short(v)}"
        raise EventError(msg)
    return v


def _number(v: Any, where: str, kind: str) -> float:
    t = type(v)
    if t is float:
        if math.isfinite(v):
            return v
        msg = f"{kind}: {where}: expected a finite number, got {v}"
        raise EventError(msg)
    if t is int:
        try:
            return float(v)
        except OverflowError:
            pass
    msg = f"{kind}: {where}: expected a finite number, got {_tname(v)} {_short(v)}"
    raise EventError(msg)


def _ts(obj: dict, kind: str) -> float:
    v = _number(_field(obj, "ts", kind), "field 'ts'", kind)
    if not 0.0 <= v < TS_MAX:
        msg = f"{kind}: field 'ts': expected seconds since the epoch in [0, 1e11), got {v}"
        raise EventError(msg)
    return v


def _float_map(obj: dict, name: str, kind: str) -> dict[str, float]:
    m = _field(obj, name, kind)
    if type(m) is not dict:
        msg = f"{kind}: field {name!r}: expected an object of name -> number, got {_tname(m)}"
        raise EventError(msg)
    vals = m.values()
    if not m or (
        set(map(type, vals)) == _FLOAT_SET and min(vals) >= -_FMAX and max(vals) <= _FMAX
        and all(map(str.isascii, m))
    ):
        return m  # the common case, checked in C-level passes
    out = {}
    for k, v in m.items():
        if not k.isascii() and not _valid_str(k):
            msg = f"{kind}: field {name!r}: key {_short(k)} is not valid Unicode"
            raise EventError(msg)
        if type(v) is float and -_FMAX <= v <= _FMAX:
            out[k] = v
        else:
            out[k] = _number(v, f"field {name!r}[{k!r}]", kind)
    return out


def _sparse(obj: dict, kind: str) -> dict[str, list[int]]:
    m = _field(obj, "sparse", kind)
    if type(m) is not dict:
        msg = f"{kind}: field 'sparse': expected an object of name -> integer array, got {_tname(m)}"
        raise EventError(msg)
    if not m:
        return m
    # fast check in a few C-level passes over all slots at once; the slow path names the culprit
    vals = m.values()
    if set(map(type, vals)) == _LIST_SET and all(map(str.isascii, m)):
        flat = list(chain.from_iterable(vals))
        if not flat or (
            set(map(type, flat)) == _INT_SET and min(flat) >= INT64_MIN and max(flat) <= INT64_MAX
        ):
            return m
    for k, ids in m.items():
        _sparse_error(k, ids, kind)
    return m


def _sparse_error(k: str, ids: object, kind: str) -> None:
    """Raise the precise error for one sparse entry that failed the fast check (or return if fine)."""
    if not _valid_str(k):
        msg = f"{kind}: field 'sparse': key {_short(k)} is not valid Unicode"
        raise EventError(msg)
    if type(ids) is not list:
        msg = f"{kind}: field 'sparse'[{k!r}]: expected an array of integers, got {_tname(ids)}"
        raise EventError(msg)
    for j, i in enumerate(ids):
        if type(i) is not int or not INT64_MIN <= i <= INT64_MAX:
            what = "out of int64 range" if type(i) is int else _tname(i)
            msg = f"{kind}: field 'sparse'[{k!r}][{j}]: expected an integer within int64, got {what}"
            raise EventError(msg)


def decode_feature(data: bytes | bytearray | memoryview | str) -> FeatureEvent:
    """Decode and validate a feature event; raises `EventError` naming the field at fault."""
    kind = "feature event"
    o = _load(data, kind)
    return FeatureEvent(
        request_id=_name(o, "request_id", kind),
        user_id=_int64(o, "user_id", kind),
        item_id=_int64(o, "item_id", kind),
        sparse=_sparse(o, kind),
        dense=_float_map(o, "dense", kind),
        ts=_ts(o, kind),
    )


def feature_wire(data: bytes) -> tuple[str, float, bytes]:
    """Validate a feature event like `decode_feature`; return (request_id, ts, wire bytes).

    The wire bytes are what an example is spliced from (`example_from_feature_bytes`): `data`
    itself when it holds exactly the six feature fields and ends with `}`, else the canonical
    encoding. The joiner's hot path: no dataclass, no re-encoding of clean input.
    """
    kind = "feature event"
    o = _load(data, kind)
    rid, uid, iid, ts = o.get("request_id"), o.get("user_id"), o.get("item_id"), o.get("ts")
    if not (  # fast path for the scalar fields; the validators below give the precise errors
        type(rid) is str and 0 < len(rid) <= MAX_NAME and rid.isascii()
        and type(uid) is int and INT64_MIN <= uid <= INT64_MAX
        and type(iid) is int and INT64_MIN <= iid <= INT64_MAX
        and type(ts) is float and 0.0 <= ts < TS_MAX
    ):
        rid = _name(o, "request_id", kind)
        uid = _int64(o, "user_id", kind)
        iid = _int64(o, "item_id", kind)
        ts = _ts(o, kind)
    sparse = _sparse(o, kind)
    dense = _float_map(o, "dense", kind)
    if len(o) == 6 and type(data) is bytes and data[-1:] == b"}":
        return rid, ts, data
    return rid, ts, encode_feature(FeatureEvent(rid, uid, iid, sparse, dense, ts))


def action_fields(data: bytes) -> tuple[str, str, float, float]:
    """Validate an action event like `decode_action`; return (request_id, action, value, ts)."""
    kind = "action event"
    o = _load(data, kind)
    return (
        _name(o, "request_id", kind),
        _name(o, "action", kind),
        _number(_field(o, "value", kind), "field 'value'", kind),
        _ts(o, kind),
    )


def decode_action(data: bytes | bytearray | memoryview | str) -> ActionEvent:
    """Decode and validate an action event; raises `EventError` naming the field at fault."""
    kind = "action event"
    o = _load(data, kind)
    return ActionEvent(
        request_id=_name(o, "request_id", kind),
        action=_name(o, "action", kind),
        value=_number(_field(o, "value", kind), "field 'value'", kind),
        ts=_ts(o, kind),
    )


def _example_from(o: dict, kind: str) -> Example:
    rate = _number(_field(o, "sample_rate", kind), "field 'sample_rate'", kind)
    if not 0.0 < rate <= 1.0:
        msg = f"{kind}: field 'sample_rate': expected a rate in (0, 1], got {rate}"
        raise EventError(msg)
    return Example(
        request_id=_name(o, "request_id", kind),
        user_id=_int64(o, "user_id", kind),
        item_id=_int64(o, "item_id", kind),
        sparse=_sparse(o, kind),
        dense=_float_map(o, "dense", kind),
        labels=_float_map(o, "labels", kind),
        sample_rate=rate,
        ts=_ts(o, kind),
    )


def decode_example(data: bytes | bytearray | memoryview | str) -> Example:
    """Decode and validate an example; raises `EventError` naming the field at fault."""
    return _example_from(_load(data, "example"), "example")


def decode_examples(data: bytes | bytearray | memoryview | str) -> list[Example]:
    """Decode the batch form (a JSON array of examples) or a single example object."""
    kind = "example batch"
    try:
        obj = _decode_json(_text(data))
    except UnicodeDecodeError as e:
        msg = f"{kind}: not UTF-8 ({e.reason} at byte {e.start})"
        raise EventError(msg) from None
    except RecursionError:
        msg = f"{kind}: JSON nested too deeply"
        raise EventError(msg) from None
    except ValueError as e:
        msg = f"{kind}: not valid JSON ({e})"
        raise EventError(msg) from None
    if type(obj) is dict:
        return [_example_from(obj, "example")]
    if type(obj) is not list:
        msg = f"{kind}: expected a JSON array of examples, got {_tname(obj)}"
        raise EventError(msg)
    out = []
    for i, o in enumerate(obj):
        if type(o) is not dict:
            msg = f"{kind}: item {i}: expected an object, got {_tname(o)}"
            raise EventError(msg)
        out.append(_example_from(o, f"example {i}"))
    return out


def decode_dead_letter(data: bytes | bytearray | memoryview | str) -> DeadLetter:
    """Decode a dead letter; raises `EventError` naming the field at fault."""
    kind = "dead letter"
    o = _load(data, kind)
    reason = _field(o, "reason", kind)
    source = _field(o, "source", kind)
    raw = _field(o, "data", kind)
    for name, v in (("reason", reason), ("source", source), ("data", raw)):
        if type(v) is not str:
            msg = f"{kind}: field {name!r}: expected a string, got {_tname(v)}"
            raise EventError(msg)
    try:
        blob = base64.b64decode(raw, validate=True)
    except ValueError:
        msg = f"{kind}: field 'data': not valid base64"
        raise EventError(msg) from None
    return DeadLetter(
        reason=reason,
        source=source,
        partition=_int64(o, "partition", kind),
        offset=_int64(o, "offset", kind),
        data=blob,
    )


# ---------------------------------------------------------------------------- batch fast path
# (the kernels and what they accept: `freshrec.stream._wire_kernels`)


def _spans(spans: Any) -> np.ndarray:
    arr = np.ascontiguousarray(spans, dtype=np.int64).reshape(-1, 2)
    return arr


def feature_wires(data: bytes, spans: Any) -> list[tuple[bytes, float, bytes] | EventError]:
    """`feature_wire` of every record `data[s:e]` for (s, e) in `spans` (an (n, 2) int array).

    Returns, per record in order, (request_id as UTF-8 bytes, ts, wire bytes) or the
    `EventError` that `feature_wire` raises for it. One kernel pass checks the canonical records;
    the others are decoded one by one (see the module docstring).
    """
    sp = _spans(spans)
    out = np.empty((len(sp), 5), dtype=np.int64)
    check_features(np.frombuffer(data, dtype=np.uint8), sp, out)
    res: list[tuple[bytes, float, bytes] | EventError] = []
    add = res.append
    # columns, not rows, to python: 7 lists instead of one per record
    for ok, a, b, c, d, s, e in zip(*out.T.tolist(), *sp.T.tolist(), strict=True):
        if ok:
            ts = float(data[c:d])
            if ts < TS_MAX:
                add((data[a:b], ts, data[s:e]))
                continue
        try:
            rid, ts, wire = feature_wire(data[s:e])
        except EventError as err:
            add(err)
        else:
            add((rid.encode("utf-8"), ts, wire))
    return res


def action_fields_many(data: bytes, spans: Any) -> list[tuple[bytes, str, float, float] | EventError]:
    """`action_fields` of every record `data[s:e]` for (s, e) in `spans` (an (n, 2) int array).

    Returns, per record in order, (request_id as UTF-8 bytes, action, value, ts) or the
    `EventError` that `action_fields` raises for it.
    """
    sp = _spans(spans)
    out = np.empty((len(sp), 9), dtype=np.int64)
    check_actions(np.frombuffer(data, dtype=np.uint8), sp, out)
    res: list[tuple[bytes, str, float, float] | EventError] = []
    add = res.append
    names: dict[bytes, str] = {}
    for ok, r0, r1, a0, a1, v0, v1, t0, t1, s, e in zip(*out.T.tolist(), *sp.T.tolist(), strict=True):
        if ok:
            ts = float(data[t0:t1])
            if ts < TS_MAX:
                ab = data[a0:a1]
                action = names.get(ab)
                if action is None:
                    action = names[ab] = ab.decode("ascii")
                add((data[r0:r1], action, float(data[v0:v1]), ts))
                continue
        try:
            rid, action, value, ts = action_fields(data[s:e])
        except EventError as err:
            add(err)
        else:
            add((rid.encode("utf-8"), action, value, ts))
    return res
