"""Raw feature values of a request -> the ids and dense values the model saw in training.

Serving speaks the schema: a client sends the values as its files hold them (strings, lists,
numbers) and this module applies the same hashing (`stable_hash`), id parsing and dense transforms
(log1p, clip, standardize with the snapshot's statistics) as import and batch training, so a raw
value always becomes the same id. Pure functions, no I/O: the HTTP app calls them on the decoded
JSON body before its own validation.

    encode_features(schema, {"category": "shoes", "tags": ["a", "b"], "price": 12.5})
        -> ({"category": [h("shoes")], "tags": [h("a"), h("b")]}, {"price": 0.31})
    encode_rank_body(schema, {"user_id": "u-17", "features": {...},
                              "candidates": ["sku-1", {"item_id": "sku-2", "features": {...}}]})
        -> the integer body `/v1/rank` takes today ({"user_id": int, "sparse": {..}, "dense": {..},
           "candidates": [int | {"item_id": int, "sparse": .., "dense": ..}]}, other keys kept)

Feature values may come under "features", "sparse" or "dense" (the schema knows each slot's kind).
A name that is no slot of the schema is an `UnknownFeatures` error naming every such name (serve:
422); a value that cannot be an id of its slot is a `SchemaError` naming the slot (422).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from freshrec.data.schema import Schema, Slot, stable_hash
from freshrec.errors import SchemaError

__all__ = ["UnknownFeatures", "encode_features", "encode_predict_body", "encode_rank_body", "value_text"]

_INT64 = (-(2**63), 2**63 - 1)


class UnknownFeatures(SchemaError):
    """Feature names a request sent that the schema has no slot for.

    Attributes:
        names: the unknown names, sorted.
    """

    def __init__(self, names: list[str], schema: Schema) -> None:
        self.names = sorted(names)
        known = [s.name for s in schema.slots]
        msg = f"unknown features {self.names}; schema {schema.name!r} has {known}"
        super().__init__(msg, field=self.names[0] if self.names else "")


def value_text(v: Any) -> str:
    """The text a value is hashed as, the way pyarrow writes it from a file: str as is, ints in
    decimal, booleans `true`/`false`, integral floats without `.0`, other floats shortest repr."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 1e16:
        return str(int(v))
    return str(v)


def _id(slot: Slot, v: Any) -> int:
    """One raw value -> its id in `slot` (type resolved: int, hex or string; auto is treated as int
    for ints and hashed otherwise, as the data would have been)."""
    if v is None:
        return 0
    kind = slot.type
    if kind == "auto":
        kind = "int" if isinstance(v, int) and not isinstance(v, bool) else "string"
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int | str):
            msg = f"feature {slot.name!r}: expected an integer id, got {type(v).__name__} {str(v)[:40]!r}"
            raise SchemaError(msg, field=slot.name)
        try:
            i = int(v)
        except ValueError:
            msg = f"feature {slot.name!r}: expected an integer id, got {str(v)[:40]!r}"
            raise SchemaError(msg, field=slot.name) from None
        if not _INT64[0] <= i <= _INT64[1]:
            msg = f"feature {slot.name!r}: id {i} is out of int64"
            raise SchemaError(msg, field=slot.name)
        return i
    if kind == "hex":
        s = value_text(v)
        if s == "":
            return 0
        try:
            u = int(s, 16) & 0xFFFFFFFFFFFFFFFF
        except ValueError:
            msg = f"feature {slot.name!r}: {s[:40]!r} is not hexadecimal"
            raise SchemaError(msg, field=slot.name) from None
        return int(np.array(u, np.uint64).astype(np.int64))
    return int(stable_hash([value_text(v)])[0])


def _dense(schema: Schema, slot: Slot, v: Any) -> float:
    if v is None:
        x = slot.fill
    elif isinstance(v, bool) or not isinstance(v, int | float | str):
        msg = f"feature {slot.name!r}: expected a number, got {type(v).__name__}"
        raise SchemaError(msg, field=slot.name)
    else:
        try:
            x = float(v)
        except ValueError:
            msg = f"feature {slot.name!r}: expected a number, got {str(v)[:40]!r}"
            raise SchemaError(msg, field=slot.name) from None
        if not math.isfinite(x):
            x = slot.fill
    if slot.log1p:
        x = math.copysign(math.log1p(abs(x)), x)
    if slot.clip is not None:
        x = min(max(x, slot.clip[0]), slot.clip[1])
    if slot.standardize:
        if slot.name not in schema.stats:
            msg = f"dense slot {slot.name!r} is standardized but the schema holds no statistics for it"
            raise SchemaError(msg, field=slot.name)
        mean, std = schema.stats[slot.name]
        x = (x - mean) / std
    return float(np.float32(x))


def encode_features(
    schema: Schema, features: Mapping[str, Any]
) -> tuple[dict[str, list[int]], dict[str, float]]:
    """(sparse ids per slot, dense values) of raw feature values (see the module docstring).

    A categorical slot takes one value (or a list of one); a multi-valued slot a list or a text
    split by its separator; a dense slot a number. Raises UnknownFeatures naming every unknown
    name, SchemaError naming the slot of a value that does not fit."""
    slots = {s.name: s for s in schema.slots}
    unknown = [k for k in features if k not in slots]
    if unknown:
        raise UnknownFeatures(unknown, schema)
    sparse: dict[str, list[int]] = {}
    dense: dict[str, float] = {}
    for name, v in features.items():
        s = slots[name]
        if s.kind == "dense":
            if isinstance(v, list):
                if len(v) != 1:
                    msg = f"feature {name!r}: a dense slot takes one number, got a list of {len(v)}"
                    raise SchemaError(msg, field=name)
                v = v[0]
            dense[name] = _dense(schema, s, v)
        elif s.kind == "multi":
            if isinstance(v, str):
                vals: list[Any] = [x for x in v.split(s.separator)] if s.separator else [v]
                vals = [x for x in vals if x != ""]
            elif isinstance(v, list):
                vals = [x for x in v if x is not None and x != ""]
            else:
                vals = [v]
            sparse[name] = [_id(s, x) for x in vals]
        else:
            if isinstance(v, list):
                if len(v) != 1:
                    msg = f"feature {name!r}: a categorical slot takes one value, got a list of {len(v)}"
                    raise SchemaError(msg, field=name)
                v = v[0]
            sparse[name] = [_id(s, v)]
    return sparse, dense


_EXAMPLE_KEYS = frozenset({"user_id", "item_id", "features", "sparse", "dense"})
_CANDIDATE_KEYS = frozenset({"item_id", "features", "sparse", "dense"})


def _only(obj: Mapping[str, Any], keys: frozenset[str], what: str) -> None:
    extra = sorted(k for k in obj if k not in keys)
    if extra:
        msg = (
            f"{what} fields {extra[:20]} are not known (feature values go under 'features');"
            f" known: {sorted(keys)}"
        )
        raise SchemaError(msg, field=str(extra[0])[:64])


def _merged(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("sparse", "dense", "features"):
        part = body.get(key)
        if part is None:
            continue
        if not isinstance(part, Mapping):
            msg = f"{key!r} must be an object of feature name -> value"
            raise SchemaError(msg, field=key)
        out.update(part)
    return out


def _context(schema: Schema, body: Mapping[str, Any], role: str) -> tuple[int | None, dict, dict]:
    feats = _merged(body)
    key = f"{role}_id"
    slot_name = schema.user if role == "user" else schema.item
    raw = body.get(key, feats.get(slot_name))
    rid = None if raw is None else _id(schema.slot(slot_name), raw)
    feats.pop(slot_name, None)
    sparse, dense = encode_features(schema, feats)
    if rid is not None:
        sparse[slot_name] = [rid]
    return rid, sparse, dense


def encode_rank_body(schema: Schema, body: Mapping[str, Any]) -> dict[str, Any]:
    """A `/v1/rank` body with raw values -> the integer body the app takes (module docstring).
    The user's id (`user_id`, raw) goes to the schema's user slot too, each candidate's to its item
    slot, so a schema whose slots are named otherwise (`device_id`, `ad_id`) is served alike."""
    user, sparse, dense = _context(schema, body, "user")
    out = {k: v for k, v in body.items() if k not in ("features", "sparse", "dense", "candidates", "user_id")}
    out |= {"user_id": user if user is not None else 0, "sparse": sparse, "dense": dense}
    cands: list[Any] = []
    item_slot = schema.slot(schema.item)
    for c in body.get("candidates", []):
        if isinstance(c, Mapping):
            _only(c, _CANDIDATE_KEYS, "candidate")
            iid, cs, cd = _context(schema, c, "item")
            if iid is None:
                msg = "a candidate object needs an item_id"
                raise SchemaError(msg, field="item_id")
            cands.append({"item_id": iid, "sparse": cs, "dense": cd})
        else:
            iid = _id(item_slot, c)
            cands.append(
                {"item_id": iid, "sparse": {schema.item: [iid]}, "dense": {}}
                if schema.item != "item_id"
                else iid
            )
    out["candidates"] = cands
    return out


def encode_predict_body(schema: Schema, body: Mapping[str, Any]) -> dict[str, Any]:
    """A `/v1/predict` body ({"examples": [{"user_id", "item_id", features...}]}) with raw values ->
    the integer body the app takes."""
    out = {k: v for k, v in body.items() if k != "examples"}
    examples = []
    for e in body.get("examples", []):
        if not isinstance(e, Mapping):
            msg = "each example must be an object"
            raise SchemaError(msg, field="examples")
        _only(e, _EXAMPLE_KEYS, "example")
        user, sparse, dense = _context(schema, e, "user")
        item_raw = e.get("item_id", _merged(e).get(schema.item))
        iid = 0 if item_raw is None else _id(schema.slot(schema.item), item_raw)
        sparse.pop(schema.item, None)
        sparse[schema.item] = [iid]
        examples.append(
            {"user_id": user if user is not None else 0, "item_id": iid, "sparse": sparse, "dense": dense}
        )
    out["examples"] = examples
    return out
