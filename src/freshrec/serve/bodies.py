"""Request and response bodies of the HTTP API, and how a bad body becomes a small 422.

Input rules (each breach is a 422 naming the field; see `parse_body`):

- ids (`user_id`, `item_id`, sparse values) are JSON integers within int64: no floats, strings or
  booleans, even `1.0`;
- numbers (dense values, an action's `value`) are JSON numbers, finite and within float32
  (|x| <= 3.4028235e38); `NaN`, `Infinity`, `"1"`, `true` are refused;
- `ts` is data time in seconds since the epoch, a finite number in [0, 1e11) (the wire rule of
  `freshrec.stream.events`, so whatever the server logs decodes);
- strings are valid UTF-8 JSON (invalid bytes and lone surrogates are a `json_invalid` 422);
  names (feature names, ids given by the client) have 1..256 characters, a rank `request_id`
  1..200 (room for the ":<position>" suffix of the logged impressions), an action 1..64
  characters of `A-Z a-z 0-9 _ . : -`;
- lists are bounded BEFORE their elements are validated: more than `max_items` candidates,
  examples or actions (or 1000 ids in one sparse list) fail at once with one error, whatever the
  elements hold;
- unknown fields are refused.

Error replies are bounded whatever the input: at most `MAX_ERRORS` errors, each without the
offending input (pydantic's `input` is dropped), messages cut at `MAX_MSG` characters and path
elements at `MAX_LOC` characters, so a 422 is at most a few KB.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, NamedTuple, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

__all__ = [
    "F32_MAX",
    "MAX_ERRORS",
    "ActionIn",
    "Bodies",
    "CandidateIn",
    "ErrorOut",
    "ExampleIn",
    "FieldErrorOut",
    "Reply",
    "ValidationErrorOut",
    "bodies",
    "parse_body",
]

F32_MAX = 3.4028234663852886e38
TS_MAX = 1e11
MAX_ERRORS = 20
MAX_MSG = 200
MAX_LOC = 64
MAX_IDS = 1000  # ids in one sparse list

Int64 = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
F32 = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-F32_MAX, le=F32_MAX)]
Ts = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, lt=TS_MAX)]
IdList = Annotated[list[Int64], Field(max_length=MAX_IDS)]
Name = Annotated[str, Field(min_length=1, max_length=256)]
RequestId = Annotated[str, Field(min_length=1, max_length=200)]
ActionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Sparse = dict[Name, IdList]
Dense = dict[Name, F32]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CandidateIn(_Model):
    """A candidate with features of its own (they override the request's)."""

    item_id: Int64
    sparse: Sparse = Field(default_factory=dict)
    dense: Dense = Field(default_factory=dict)


class ExampleIn(_Model):
    user_id: Int64
    item_id: Int64
    sparse: Sparse = Field(default_factory=dict)
    dense: Dense = Field(default_factory=dict)


class ActionIn(_Model):
    """A user action on the impression `request_id` ("<request>:<position>" of a /v1/rank reply)."""

    request_id: Name
    action: ActionName
    value: F32 = 1.0
    ts: Ts | None = Field(default=None, description="data time, seconds; default: the server clock")


class RankedItem(BaseModel):
    item_id: int
    score: float  # the rank score: the blend of the task scores (one task: its score)
    scores: dict[str, float] | None = None  # models with several tasks: each task's score


class RankResponse(BaseModel):
    request_id: str
    items: list[RankedItem]
    model_version: int


class PredictResponse(BaseModel):
    probabilities: list[float]
    model_version: int


class ActionsResponse(BaseModel):
    accepted: int


class HealthResponse(BaseModel):
    status: str
    model_version: int
    tables: dict[str, int]


class ErrorOut(BaseModel):
    """Every error but 422: one message."""

    detail: str


class FieldErrorOut(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class ValidationErrorOut(BaseModel):
    """A 422: the first `MAX_ERRORS` errors (a last `too_many_errors` entry counts the rest)."""

    detail: list[FieldErrorOut]


class Bodies(NamedTuple):
    """The request models of one list limit (`bodies(max_items)`)."""

    rank: type[BaseModel]
    predict: type[BaseModel]
    actions: type[BaseModel]


@functools.cache
def bodies(max_items: int) -> Bodies:
    """The request models whose lists (candidates, examples, actions) hold at most `max_items`."""

    def items() -> Any:
        return Field(min_length=1, max_length=max_items)

    class RankRequest(_Model):
        user_id: Int64
        candidates: Annotated[list[Int64 | CandidateIn], items()]
        sparse: Sparse = Field(default_factory=dict)
        dense: Dense = Field(default_factory=dict)
        request_id: RequestId | None = None
        top_k: Annotated[int, Field(strict=True, ge=1, le=max_items)] | None = None
        ts: Ts | None = Field(default=None, description="data time of the impressions, seconds; default: now")

    class PredictRequest(_Model):
        examples: Annotated[list[ExampleIn], items()]

    class ActionsRequest(_Model):
        actions: Annotated[list[ActionIn], items()]

    return Bodies(RankRequest, PredictRequest, ActionsRequest)


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _message(e: ErrorDetails) -> str:
    t, ctx, loc = e["type"], e.get("ctx") or {}, e["loc"]
    if t == "too_long" and len(loc) == 1:
        return f"too many {loc[0]}: {ctx.get('actual_length')} > max {ctx.get('max_length')} per request"
    if (t == "less_than_equal" and ctx.get("le") == F32_MAX) or (
        t == "greater_than_equal" and ctx.get("ge") == -F32_MAX
    ):
        return f"Input should be a finite number within float32 range (|x| <= {F32_MAX:.8g})"
    return _cut(str(e["msg"]), MAX_MSG)


def error_details(e: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as FastAPI-style details (loc under "body"), bounded: see the module doc."""
    errors = e.errors(include_url=False, include_input=False)
    out = [
        {
            "type": str(d["type"]),
            "loc": ["body", *(x if isinstance(x, int) else _cut(str(x), MAX_LOC) for x in d["loc"])],
            "msg": _message(d),
        }
        for d in errors[:MAX_ERRORS]
    ]
    if len(errors) > MAX_ERRORS:
        more = len(errors) - MAX_ERRORS
        out.append({"type": "too_many_errors", "loc": ["body"], "msg": f"{more} more errors not shown"})
    return out


_M = TypeVar("_M", bound=BaseModel)


def parse_body(model: type[_M], body: bytes) -> _M:
    """`body` validated as `model` straight from the JSON bytes (pydantic's Rust parser); a bad
    body raises HTTPException 422 with `error_details`."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise HTTPException(status_code=422, detail=error_details(e)) from None


def unprocessable(field: str, msg: str) -> HTTPException:
    """A 422 about one field, in the same shape as a validation error."""
    return HTTPException(
        status_code=422, detail=[{"type": "value_error", "loc": ["body", field], "msg": msg}]
    )


class Reply(NamedTuple):
    """One HTTP reply of a body endpoint as plain data: the status, the headers in the order they
    are written (lowercase names; content-length and content-type included) and the body. The
    connection layer adds the date and, where the connection ends, `connection: close`."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    close: bool = False  # the connection ends after this reply (a rejection before the body)


def json_reply(body: bytes, status: int = 200, extra: tuple[tuple[bytes, bytes], ...] = ()) -> Reply:
    """A JSON reply with the headers Starlette's `Response(media_type="application/json")` writes,
    in its order (given headers, content-length, content-type)."""
    return Reply(status, (*extra, (b"content-length", b"%d" % len(body)), (b"content-type", _JSON)), body)


_JSON = b"application/json"


def error_json(detail: str) -> bytes:
    """The body of an error reply made outside FastAPI (middleware, protocol)."""
    return json.dumps({"detail": detail}).encode()
