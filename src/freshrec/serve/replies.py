"""Reply bodies of the model server made without a framework: the /v1/rank JSON, the replies of
errors raised while answering, and the feature names documented in the bodies' schemas."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from freshrec.serve._reply_kernels import write_ranked
from freshrec.serve.bodies import Reply

__all__ = ["error_reply", "name_features", "rank_body"]

log = logging.getLogger("freshrec.serve.app")

_dump = json.JSONEncoder(ensure_ascii=False).encode


def rank_body(
    rid: str,
    items: Sequence[int] | np.ndarray,
    scores: np.ndarray,
    version: int,
    *,
    tasks: Sequence[str] | None = None,
    per_task: np.ndarray | None = None,
) -> bytes:
    """The /v1/rank response JSON. Scores are written with 9 significant digits, which round-trips
    float32 exactly, and cost half of `json.dumps`'s 17-digit float64 repr. With several tasks each
    item also carries `"scores": {task: score}` (`per_task` (B, T) in `tasks` order). The items of
    one task are written by a numba kernel (`freshrec.serve._reply_kernels`, the `%.9g` layout)."""
    if tasks is not None and per_task is not None:
        names = [_dump(t) for t in tasks]
        ranked = ",".join(
            f'{{"item_id":{i},"score":{x:.9g},"scores":{{'
            + ",".join(f"{n}:{v:.9g}" for n, v in zip(names, row, strict=True))
            + "}}"
            for i, x, row in zip(np.asarray(items).tolist(), scores.tolist(), per_task.tolist(), strict=True)
        ).encode()
    else:
        ranked = write_ranked(np.asarray(items), scores)
    return b'{"request_id":%b,"items":[%b],"model_version":%d}' % (_dump(rid).encode(), ranked, int(version))


def name_features(schema: Any, sparse: frozenset[str], dense: frozenset[str]) -> None:
    """Document in a body's JSON schema (in place, nested models too) that the keys of every
    `sparse` / `dense` object are the model's feature names (others are a 422)."""
    if isinstance(schema, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            for key, names in (("sparse", sparse), ("dense", dense)):
                if isinstance(props.get(key), dict):
                    props[key]["propertyNames"] = {"enum": sorted(names)}
        for v in schema.values():
            name_features(v, sparse, dense)
    elif isinstance(schema, list):
        for v in schema:
            name_features(v, sparse, dense)


def error_reply(e: Exception) -> Reply:
    """The reply of an error raised while answering: an HTTPException as FastAPI's handler here
    writes it (`{"detail": ...}` with its headers), anything else a logged 500."""
    if isinstance(e, StarletteHTTPException):
        resp = JSONResponse({"detail": e.detail}, status_code=e.status_code, headers=e.headers)
        return Reply(resp.status_code, tuple(resp.raw_headers), bytes(resp.body))
    log.error("Exception in ASGI application", exc_info=e)
    return Reply(500, _TEXT_500, b"Internal Server Error")


_TEXT_500 = ((b"content-length", b"21"), (b"content-type", b"text/plain; charset=utf-8"))
