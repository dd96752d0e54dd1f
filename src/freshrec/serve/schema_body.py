"""Bodies of raw feature values: how a server started with a schema reads /v1/rank and /v1/predict.

A server that speaks a schema (`create_app(..., schema=)`, which `freshrec serve` does when its
snapshot was trained from a config) takes the values as the user's files hold them: string or
integer ids, lists or separated text for multi-valued slots, numbers for dense slots:

    POST /v1/rank  {"user_id": "u-17", "features": {"device": "ios", "price": 12.5},
                    "candidates": ["sku-1", {"item_id": "sku-2", "features": {"category": "shoes"}}]}

The body is decoded (pydantic's JSON parser: UTF-8 only, no NaN or Infinity), its list sizes are
bounded before any value is hashed, the values become ids and dense values exactly as import and
training made them (`freshrec.data.schema_request`), and the result is validated by the same body
models as an integer body, so every later rule (id range, list sizes, names) still holds. A
feature name that is no slot of the schema is a 422 naming every such name; a value that does not
fit its slot is a 422 naming the slot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import pydantic_core
from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from freshrec.data.schema import Schema
from freshrec.data.schema_request import UnknownFeatures, encode_predict_body, encode_rank_body
from freshrec.errors import SchemaError
from freshrec.serve.bodies import error_details, unprocessable

__all__ = ["RawCandidateIn", "RawExampleIn", "RawPredictIn", "RawRankIn", "refuse_unknown", "schema_parser"]

_M = TypeVar("_M", bound=BaseModel)

RawId = int | str
RawValue = int | float | str | list[int | float | str] | None
Features = Annotated[dict[str, RawValue], Field(description="feature name -> raw value, as in the files")]


class _Raw(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RawCandidateIn(_Raw):
    """A candidate with its own raw features."""

    item_id: RawId
    features: Features = {}
    sparse: Features = {}
    dense: Features = {}


class RawRankIn(_Raw):
    """/v1/rank with raw values (a server started with a schema); the response is as always."""

    user_id: RawId | None = None
    features: Features = {}
    sparse: Features = {}
    dense: Features = {}
    candidates: list[RawId | RawCandidateIn]
    request_id: str | None = None
    top_k: int | None = None
    ts: float | None = None


class RawExampleIn(_Raw):
    """One (user, item) pair with raw features."""

    user_id: RawId | None = None
    item_id: RawId | None = None
    features: Features = {}
    sparse: Features = {}
    dense: Features = {}


class RawPredictIn(_Raw):
    """/v1/predict with raw values (a server started with a schema)."""

    examples: list[RawExampleIn]


def _decode(body: bytes) -> Any:
    try:
        return pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as e:
        detail = [{"type": "json_invalid", "loc": ["body"], "msg": f"invalid JSON: {str(e)[:160]}"}]
        raise HTTPException(status_code=422, detail=detail) from None


def _bounded(raw: Any, key: str, max_items: int) -> None:
    if not isinstance(raw, Mapping):
        raise unprocessable("body", "the body must be a JSON object")
    items = raw.get(key)
    if items is None:
        raise unprocessable(key, "field required")
    if not isinstance(items, list):
        raise unprocessable(key, f"{key!r} must be a list")
    if len(items) > max_items:
        raise unprocessable(key, f"at most {max_items} {key} per request, got {len(items)}")


def schema_parser(schema: Schema, kind: str, *, max_items: int) -> Callable[[type[_M], bytes], _M]:
    """`parse(model, body)` for `kind` "rank" or "predict": raw values through `schema`, then the
    integer body model (see the module docstring); every refusal is an HTTPException 422."""
    if kind not in ("rank", "predict"):
        msg = f"schema_parser kind must be rank or predict, got {kind!r}"
        raise ValueError(msg)
    key, encode = ("candidates", encode_rank_body) if kind == "rank" else ("examples", encode_predict_body)

    def parse(model: type[_M], body: bytes) -> _M:
        raw = _decode(body)
        _bounded(raw, key, max_items)
        try:
            encoded = encode(schema, raw)
        except UnknownFeatures as e:
            raise unprocessable(e.field, str(e)) from None
        except SchemaError as e:
            raise unprocessable(e.field or key, str(e)) from None
        except (TypeError, ValueError) as e:  # a value of no JSON type the schema takes
            raise unprocessable(key, f"a feature value does not fit its slot: {str(e)[:160]}") from None
        try:
            return model.model_validate(encoded)
        except ValidationError as e:
            raise HTTPException(status_code=422, detail=error_details(e)) from None

    return parse


def refuse_unknown(
    sparse_names: frozenset[str],
    dense_names: frozenset[str],
    sparse: list[Mapping[str, Any]],
    dense: list[Mapping[str, Any]],
) -> None:
    """A 422 naming every sparse or dense feature name of a request that the model has no slot
    for (a misspelled name would otherwise be scored as missing, silently)."""
    bad_s = {k for m in sparse for k in m if k not in sparse_names}
    bad_d = {k for m in dense for k in m if k not in dense_names}
    if not bad_s and not bad_d:
        return
    parts = []
    if bad_s:
        parts.append(
            f"unknown sparse features {sorted(bad_s)[:20]}; the model's are {sorted(sparse_names)[:50]}"
        )
    if bad_d:
        parts.append(
            f"unknown dense features {sorted(bad_d)[:20]}; the model's are {sorted(dense_names)[:50]}"
        )
    field = "sparse" if bad_s else "dense"
    raise unprocessable(field, "; ".join(parts))
