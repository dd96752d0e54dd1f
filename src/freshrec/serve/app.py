"""The HTTP model server (FastAPI): rank and predict with a `ServingReplica`, log what was served
and what users did with it.

Endpoints (details, statuses and examples: docs/http.md):

    POST /v1/rank      {"user_id": 42, "sparse": {"tags": [3, 7]}, "dense": {"dense_0": 0.5},
                        "candidates": [1007, 1009, {"item_id": 1011, "sparse": {"category": [2]}}],
                        "request_id": "optional", "top_k": 10, "ts": 1700000000.5}
                   ->  {"request_id": "r81f2", "model_version": 12,
                        "items": [{"item_id": 1009, "score": 0.031}, ...]}          best first
    POST /v1/predict   {"examples": [{"user_id": 42, "item_id": 1007, "sparse": {...}, "dense": {...}}]}
                   ->  {"probabilities": [0.02], "model_version": 12}
    POST /v1/actions   {"actions": [{"request_id": "r81f2:0", "action": "click", "value": 1.0, "ts": ...}]}
                   ->  202 {"accepted": 1}
    GET  /healthz      {"status": "ok", "model_version": 12, "tables": {"user_id": 1000, ...}}
    GET  /metrics      Prometheus text (see `freshrec.serve.metrics`)
    GET  /v1/stats     the replica's health as JSON: versions, delta age, rows, request rates,
                       latency percentiles, errors (`freshrec.serve.page.StatsResponse`)
    GET  /             a live page of those stats (HTML, self-contained; `freshrec.serve.page`)

Scores are click probabilities. Input rules and the shape of a 422 are in `freshrec.serve.bodies`;
access control, the JSON-only rule and the body limit in `freshrec.serve.guard`; connection
limits (slow clients) in `freshrec.serve.server`.

The loop closes here. Each returned candidate is logged as a `FeatureEvent` to the features log
with request_id `"<request_id>:<position>"` (position in the returned list, 0 = best; with
`top_k` only the best k are returned, so only those are impressions), the features the model saw
(context merged with the candidate's own) and ts = the request's `ts`, or the server clock when it
has none. A client reports what the user did with the item at position i by POSTing an action on
that request_id to /v1/actions; each becomes an `ActionEvent` on the actions log (ts: the
action's, default the server clock). Both logs are written by background threads
(`freshrec.serve.writers`, which also says when an accepted record is durable). Without an actions
log, /v1/actions answers 404.

Scheduling: a cheap request (a small body, few ids for the model to read: `AppConfig.inline_*`)
is parsed and answered on the event loop, where it costs less than a hop to a thread; any other
is parsed and scored in a small thread pool (`AppConfig.workers`) with at most `max_pending`
requests queued or running (503 with Retry-After past it). So the event loop stays free for
connections, /healthz and /metrics (answered on it at once), and cheap requests do not wait
behind an expensive one. A body request that waited past `AppConfig.max_queue_s` for its turn
(from its headers being in, as the connection layer stamps it) is answered 503 with Retry-After
at once, unparsed: an overloaded loop sheds its backlog cheaply instead of queueing without limit.
The cheap rank requests that arrive in one turn of the loop are scored in one model call
(`freshrec.serve.batching`, at most `AppConfig.batch_max_rows` candidates;
`freshrec_rank_calls_total` counts the calls).

The POST body endpoints are answered by `answer_body(path, body, arrived)` (a `Reply`, or an
awaitable of one when a worker scores it), which the server's connection protocol calls itself,
without ASGI (`app.body_routes`, `freshrec.serve._protocol`); under another ASGI server (or a
root path) a plain ASGI handler (`body_endpoints`) ahead of Starlette's stack, behind the same
`Guard`, calls it. FastAPI serves everything else (and documents those three routes, whose
handlers call the same function).

A request that makes the model's scores non-finite is a 422 when its dense values are the cause
(the scores are finite without them), a 500 otherwise (the served parameters are broken).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from freshrec.errors import ConfigError
from freshrec.serve._protocol import BodyRoutes
from freshrec.serve.batching import Pending, RankBatcher
from freshrec.serve.bodies import (
    ActionsResponse,
    ErrorOut,
    HealthResponse,
    PredictResponse,
    RankResponse,
    Reply,
    ValidationErrorOut,
    bodies,
    json_reply,
    parse_body,
    unprocessable,
)
from freshrec.serve.guard import Guard
from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.page import ServerStats, StatsResponse, serve_page
from freshrec.serve.replies import error_reply, name_features, rank_body
from freshrec.serve.schema_body import RawPredictIn, RawRankIn, refuse_unknown, schema_parser
from freshrec.serve.server import ARRIVED
from freshrec.serve.writers import ActionLogger, FeatureLogger, feature_records
from freshrec.stream.events import ActionEvent
from freshrec.stream.log import Log

if TYPE_CHECKING:
    from freshrec.data.schema import Schema
    from freshrec.ps.serving import RankQuery, ServingReplica

__all__ = ["AppConfig", "create_app", "feature_records", "rank_body"]

log = logging.getLogger(__name__)

BODY_PATHS = frozenset({"/v1/rank", "/v1/predict", "/v1/actions"})


@dataclass(frozen=True, kw_only=True)
class AppConfig:
    """Limits and options of the HTTP app.

    max_candidates: candidates per /v1/rank (examples per /v1/predict, actions per /v1/actions).
    max_body_bytes: request body limit (413 past it). flush_interval_s: how often the logs are
    flushed. workers: threads that parse and score the requests that are not cheap (a body over
    inline_max_bytes, or more than inline_max_ids ids for the model to read); cheap ones are
    answered on the event loop, the rank requests of one loop turn in one model call of at most
    batch_max_rows candidates (`freshrec.serve.batching`; 0: each alone). max_pending:
    requests queued or running in the workers at most (503 past it). max_queue_s: a body
    request that waited longer than this for its turn (from its headers being in, as the
    connection layer stamps it in `scope["extensions"][ARRIVED]`, to the app taking it up) is
    answered 503 at once, unparsed, so an overloaded event loop sheds its backlog instead of
    queueing without limit. max_pending_actions: action batches waiting
    for the actions log at most (503 past it). api_token: bearer token every path but /healthz
    and the docs needs (None: open). metrics_token: bearer token /metrics needs (None: open).
    """

    max_candidates: int = 1000
    max_body_bytes: int = 1_000_000
    flush_interval_s: float = 1.0
    workers: int = 1
    max_pending: int = 64
    max_queue_s: float = 0.5
    max_pending_actions: int = 1024
    inline_max_bytes: int = 65_536
    inline_max_ids: int = 20_000
    batch_max_rows: int = 4096
    api_token: str | None = field(default=None, repr=False)
    metrics_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        positive = ("max_candidates", "max_body_bytes", "workers", "max_pending", "max_pending_actions",
                    "flush_interval_s", "max_queue_s")  # fmt: skip
        bad = [(n, "> 0") for n in positive if not getattr(self, n) > 0]
        counts = ("inline_max_bytes", "inline_max_ids", "batch_max_rows")
        bad += [(n, ">= 0") for n in counts if getattr(self, n) < 0]
        if bad:
            rules = "; ".join(f"{n} must be {rule}" for n, rule in bad)
            got = ", ".join(f"{n}={getattr(self, n)!r}" for n, _ in bad)
            msg = f"AppConfig: {rules} (got {got})"
            raise ConfigError(msg)
        for name in ("api_token", "metrics_token"):
            tok = getattr(self, name)
            if tok is not None and (not tok or not tok.isascii() or not tok.isprintable() or " " in tok):
                msg = f"AppConfig {name} must be non-empty printable ASCII without spaces"
                raise ConfigError(msg)


class _RankJob(NamedTuple):
    """A rank request ready to score: the parsed body, its model query, the candidates' own
    features by item id (None: none has any)."""

    req: Any
    query: RankQuery
    isparse: dict[int, dict[str, list[int]]] | None
    idense: dict[int, dict[str, float]] | None


def _with_features(candidates: list[Any]) -> list[Any]:
    """The candidates given as objects (with features of their own), in order; usually none."""
    return [c for c in candidates if type(c) is not int]


def _non_finite(has_dense: bool, finite_without_dense: Callable[[], bool]) -> HTTPException:
    """The error for non-finite scores: the client's dense values (422) or the model (500)."""
    if has_dense and finite_without_dense():
        msg = "the scores are not finite with these dense values (they are without them): use smaller values"
        return unprocessable("dense", msg)
    msg = "the model produced non-finite scores (check the embeddings and dense weights)"
    return HTTPException(status_code=500, detail=msg)


class _Workers:
    """Threads that parse and score; at most `max_pending` calls queued or running (503 past it).
    `pending` is only touched on the event loop."""

    def __init__(self, threads: int, max_pending: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="freshrec-score")
        self.max_pending = max_pending
        self.pending = 0

    def run(self, fn: Callable[[Any], Reply], arg: Any) -> Awaitable[Reply]:
        """`fn(arg)` submitted now (or a 503 raised now); the awaitable of its reply must be awaited."""
        if self.pending >= self.max_pending:
            msg = f"server overloaded: {self.pending} requests in progress; retry later"
            raise HTTPException(status_code=503, detail=msg, headers={"Retry-After": "1"})
        self.pending += 1
        return self._reply(self._pool.submit(fn, arg))

    async def _reply(self, fut: Future[Reply]) -> Reply:
        try:
            return await asyncio.wrap_future(fut)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


_ERRORS: dict[int, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong bearer token (when the server has one)"},
    404: {"model": ErrorOut, "description": "this server logs no actions (started without an actions log)"},
    413: {"model": ErrorOut, "description": "request body larger than the server's limit"},
    415: {"model": ErrorOut, "description": "Content-Type is not application/json"},
    422: {"model": ValidationErrorOut, "description": "invalid body: the first errors, without the input"},
    500: {"model": ErrorOut, "description": "the model produced non-finite scores for a valid request"},
    503: {"model": ErrorOut, "description": "overloaded, or the actions log is failing: retry later"},
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: _ERRORS[c] for c in codes}


def create_app(
    replica: ServingReplica,
    *,
    features_log: Log | None = None,
    actions_log: Log | None = None,
    subscriber: Any = None,
    config: AppConfig | None = None,
    clock: Callable[[], float] = time.time,
    new_request_id: Callable[[], str] = lambda: os.urandom(8).hex(),
    schema: Schema | None = None,
) -> FastAPI:
    """The FastAPI app serving `replica` (see the module docstring).

    Args:
        replica: the ServingReplica to score with (deltas are applied to it elsewhere, e.g. by a
            `SyncSubscriber` passed as `subscriber`, which is then stopped on shutdown).
        features_log: where served impressions go as FeatureEvents (None: not logged).
        actions_log: where POST /v1/actions appends ActionEvents (None: that endpoint answers 404).
        config: limits, workers and tokens (AppConfig).
        clock: wall-clock seconds for default event timestamps and metric ages.
        new_request_id: makes a request id when the client sends none.
        schema: the data schema the model was trained with: /v1/rank and /v1/predict then take raw
            feature values and encode them as training did (`freshrec.serve.schema_body`).
    """
    from freshrec.ps.serving import RankQuery

    cfg = config or AppConfig()
    body_models = bodies(cfg.max_candidates)
    metrics = ServeMetrics(replica, subscriber=subscriber, clock=clock)
    flush_s = cfg.flush_interval_s
    features: FeatureLogger | None = None
    actions: ActionLogger | None = None
    if features_log is not None:
        features = FeatureLogger(features_log, flush_interval_s=flush_s, metrics=metrics)
    if actions_log is not None:
        actions = ActionLogger(
            actions_log, flush_interval_s=flush_s, max_pending=cfg.max_pending_actions, metrics=metrics
        )
    workers = _Workers(cfg.workers, cfg.max_pending)
    sparse_names = frozenset(s.name for s in replica.spec.slots)
    dense_names = frozenset(replica.dense_names)
    parse_rank: Callable[[Any, bytes], Any] = parse_body
    parse_predict: Callable[[Any, bytes], Any] = parse_body
    if schema is not None:
        parse_rank = schema_parser(schema, "rank", max_items=cfg.max_candidates)
        parse_predict = schema_parser(schema, "predict", max_items=cfg.max_candidates)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        workers.close()
        for writer in (features, actions):
            if writer is not None:
                writer.close()
        if subscriber is not None and hasattr(subscriber, "stop"):
            subscriber.stop()

    app = _ServingApp(title="freshrec model server", version="1", lifespan=lifespan)
    app.state.replica = replica
    app.state.metrics = metrics
    app.state.feature_logger = features
    app.state.action_logger = actions
    app.state.config = cfg
    schemas: dict[str, Any] = {}  # nested models of the bodies, merged into the OpenAPI components

    def body_doc(model: type[BaseModel], secured: bool) -> dict[str, Any]:
        """OpenAPI requestBody of a handler that parses its body itself."""
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        if model.__module__ == bodies_module:  # ids bodies: the model's feature names are the only keys
            name_features(schema, sparse_names, dense_names)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        ref = {"$ref": f"#/components/schemas/{model.__name__}"}
        doc: dict[str, Any] = {
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}
        }
        if secured:
            doc["security"] = [{"bearerAuth": []}]
        return doc

    def json_response(data: bytes, status: int = 200) -> Response:
        return Response(data, status_code=status, media_type="application/json")

    bodies_module = body_models.rank.__module__

    # ---- handlers: parse, then score and log (on the event loop when cheap, else in a worker) ----
    def rank_cost(req: Any) -> int:
        """Ids the model reads: each candidate reads its own and the context's (a bag per row)."""
        ctx = sum(map(len, req.sparse.values()))
        own = sum(sum(map(len, c.sparse.values())) for c in _with_features(req.candidates))
        return len(req.candidates) * (2 + ctx) + own

    task_names = [t.name for t in replica.tasks] if len(replica.tasks) > 1 else None  # per item

    def prepare_rank(req: Any) -> _RankJob:
        """A parsed rank body checked against the model's feature names, ready to score."""
        isparse: dict[int, dict[str, list[int]]] | None = None
        idense: dict[int, dict[str, float]] | None = None
        row_sparse: list[dict[str, list[int]]] | None = None
        row_dense: list[dict[str, float]] | None = None
        own = _with_features(req.candidates)
        if own:
            ids = [c if isinstance(c, int) else c.item_id for c in req.candidates]
            isparse = {c.item_id: c.sparse for c in own}
            idense = {c.item_id: c.dense for c in own}
            row_sparse = [isparse.get(i, {}) for i in ids]
            row_dense = [idense.get(i, {}) for i in ids]
            refuse_unknown(
                sparse_names, dense_names, [req.sparse, *isparse.values()], [req.dense, *idense.values()]
            )
        else:
            ids = req.candidates  # plain ints, as validated
            refuse_unknown(sparse_names, dense_names, [req.sparse], [req.dense])
        query = RankQuery(req.user_id, ids, req.sparse, req.dense, row_sparse, row_dense)
        return _RankJob(req, query, isparse, idense)

    def finish_rank(job: _RankJob, ranked: tuple[np.ndarray, np.ndarray, np.ndarray], version: int) -> Reply:
        """The reply of a scored rank job: its top_k, its impressions logged, the JSON."""
        req, q = job.req, job.query
        items, scores, per_task = ranked
        if not np.isfinite(scores).all():
            has_dense = bool(req.dense) or any(q.item_dense or ())

            def finite_without() -> bool:
                _, s = replica.rank(req.user_id, q.item_ids, sparse=req.sparse, item_sparse=q.item_sparse)
                return bool(np.isfinite(s).all())

            raise _non_finite(has_dense, finite_without)
        if req.top_k is not None:
            items, scores, per_task = items[: req.top_k], scores[: req.top_k], per_task[: req.top_k]
        rid = req.request_id or new_request_id()
        item_list = items.tolist()
        if features is not None:
            ts = req.ts if req.ts is not None else clock()
            features.submit((rid, req.user_id, item_list, req.sparse, req.dense, job.isparse, job.idense, ts))
        return json_reply(rank_body(rid, items, scores, version, tasks=task_names, per_task=per_task))

    def do_rank(req: Any) -> Reply:
        """A rank request scored alone (in a worker thread)."""
        job = prepare_rank(req)
        version = replica.version
        return finish_rank(job, replica.rank_many([job.query])[0], version)

    def rank_jobs(jobs: Sequence[_RankJob]) -> list[Reply]:
        """The replies of rank jobs scored in one model call (`freshrec.serve.batching`)."""
        version = replica.version
        metrics.rank_calls.inc()
        ranked = replica.rank_many([j.query for j in jobs])  # raising: each job's error (RankBatcher)
        replies = []
        for job, r in zip(jobs, ranked, strict=True):
            try:
                replies.append(finish_rank(job, r, version))
            except Exception as e:
                replies.append(error_reply(e))
        return replies

    batcher = RankBatcher(rank_jobs, lambda job: len(job.query.item_ids), max_rows=cfg.batch_max_rows)

    def queue_rank(req: Any) -> Reply | Pending:
        """A cheap rank request, answered in the loop's next turn with the others then queued."""
        job = prepare_rank(req)
        if cfg.batch_max_rows == 0:
            return rank_jobs([job])[0]
        return batcher.add(job)

    def predict_cost(req: Any) -> int:
        return sum(2 + sum(map(len, e.sparse.values())) for e in req.examples)

    def do_predict(req: Any) -> Reply:
        version = replica.version
        examples = [
            {"user_id": e.user_id, "item_id": e.item_id, "sparse": e.sparse, "dense": e.dense}
            for e in req.examples
        ]
        refuse_unknown(
            sparse_names, dense_names, [e["sparse"] for e in examples], [e["dense"] for e in examples]
        )
        p = replica.predict(examples)
        if not np.isfinite(p).all():
            has_dense = any(e["dense"] for e in examples)

            def finite_without() -> bool:
                return bool(np.isfinite(replica.predict([{**e, "dense": {}} for e in examples])).all())

            raise _non_finite(has_dense, finite_without)
        probs = ("%.9g," * len(p) % tuple(p.tolist()))[:-1]
        return json_reply(f'{{"probabilities":[{probs}],"model_version":{int(version)}}}'.encode())

    def len_actions(req: Any) -> int:
        return len(req.actions)

    def do_actions(req: Any) -> Reply:
        assert actions is not None
        now = clock()
        events = [
            ActionEvent(a.request_id, a.action, a.value, a.ts if a.ts is not None else now)
            for a in req.actions
        ]
        if not actions.submit(events):
            msg = f"the actions log is behind ({cfg.max_pending_actions} batches waiting); retry later"
            raise HTTPException(status_code=503, detail=msg, headers={"Retry-After": "1"})
        return json_reply(b'{"accepted":%d}' % len(events), status=202)

    def shed(arrived: float | None) -> None:
        """503 for a request that waited past `max_queue_s` for its turn (see AppConfig)."""
        if arrived is not None:
            waited = time.monotonic() - arrived
            if waited > cfg.max_queue_s:
                msg = (
                    f"server overloaded: the request waited {1000 * waited:.0f} ms for its turn "
                    f"(at most {1000 * cfg.max_queue_s:.0f}); retry later"
                )
                raise HTTPException(status_code=503, detail=msg, headers={"Retry-After": "1"})

    def dispatch(
        body: bytes,
        model: type[BaseModel],
        cost: Callable[[Any], int],
        answer: Callable[[Any], Reply],
        parse: Callable[[Any, bytes], Any] = parse_body,
        inline: Callable[[Any], Reply | Pending] | None = None,
    ) -> Reply | Awaitable[Reply]:
        """Parse and answer here (on the event loop, by `inline` when given) when the body is small
        and the answer cheap (a thread hop costs more than such a request); otherwise in a worker,
        so the loop stays free."""
        if len(body) <= cfg.inline_max_bytes:
            req = parse(model, body)
            if cost(req) <= cfg.inline_max_ids:
                return (inline or answer)(req)
            return workers.run(answer, req)
        return workers.run(lambda b: answer(parse(model, b)), body)

    def answer_rank(body: bytes, arrived: float | None) -> Reply | Awaitable[Reply]:
        shed(arrived)
        return dispatch(body, body_models.rank, rank_cost, do_rank, parse_rank, inline=queue_rank)

    def answer_predict(body: bytes, arrived: float | None) -> Reply | Awaitable[Reply]:
        shed(arrived)
        return dispatch(body, body_models.predict, predict_cost, do_predict, parse_predict)

    def answer_actions(body: bytes, arrived: float | None) -> Reply | Awaitable[Reply]:
        if actions is None:
            raise HTTPException(
                status_code=404, detail="this server logs no actions (started without an actions log)"
            )
        shed(arrived)
        failing = actions.failing(within_s=max(5.0, 5 * flush_s))
        if failing is not None:
            msg = f"the actions log is failing ({failing[:200]}); retry later"
            raise HTTPException(status_code=503, detail=msg, headers={"Retry-After": "5"})
        return dispatch(body, body_models.actions, len_actions, do_actions)

    answers = {"/v1/rank": answer_rank, "/v1/predict": answer_predict, "/v1/actions": answer_actions}

    def answer_body(path: str, body: bytes, arrived: float | None) -> Reply | Awaitable[Reply]:
        """The reply to a POST of `body` to a body endpoint that passed the Guard's rules: a Reply
        when it was answered here, an awaitable of one when it went to a worker. Errors are
        replies too (HTTPException: its status, JSON detail and headers; anything else: 500)."""
        try:
            r = answers[path](body, arrived)
        except Exception as e:
            return error_reply(e)
        if isinstance(r, (Reply, Pending)):  # a Pending's errors are replies already
            return r
        return finish(r)

    async def finish(pending: Awaitable[Reply]) -> Reply:
        try:
            return await pending
        except Exception as e:
            return error_reply(e)

    async def answer_request(path: str, request: Request) -> Response:
        body = await request.body()
        r = answer_body(path, body, request.scope.get("extensions", {}).get(ARRIVED))
        reply = r if isinstance(r, Reply) else await r
        resp = Response(reply.body, status_code=reply.status)
        resp.raw_headers = list(reply.headers)
        return resp

    # ---- routes --------------------------------------------------------------------------------
    secured = cfg.api_token is not None
    scored = _responses(401, 413, 415, 422, 500, 503)

    @app.post(
        "/v1/rank",
        response_model=RankResponse,
        responses=scored,
        openapi_extra=body_doc(body_models.rank if schema is None else RawRankIn, secured),
    )
    async def rank(request: Request) -> Response:
        return await answer_request("/v1/rank", request)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=scored,
        openapi_extra=body_doc(body_models.predict if schema is None else RawPredictIn, secured),
    )
    async def predict(request: Request) -> Response:
        return await answer_request("/v1/predict", request)

    @app.post(
        "/v1/actions",
        status_code=202,
        response_model=ActionsResponse,
        responses=_responses(401, 404, 413, 415, 422, 503),
        openapi_extra=body_doc(body_models.actions, secured),
    )
    async def post_actions(request: Request) -> Response:
        return await answer_request("/v1/actions", request)

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> Response:
        data = {"status": "ok", "model_version": int(replica.version), "tables": replica.table_sizes()}
        return json_response(json.dumps(data).encode())

    metrics_doc: dict[str, Any] = {"security": [{"bearerAuth": []}]} if cfg.metrics_token is not None else {}

    @app.get(
        "/metrics", response_class=PlainTextResponse, responses=_responses(401), openapi_extra=metrics_doc
    )
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    stats = ServerStats(replica, metrics, clock=clock)
    page = serve_page()

    @app.get(
        "/v1/stats",
        summary="The replica's health: versions, delta age, rows, request rates, latency, errors",
        response_model=StatsResponse,
        responses=_responses(401),
        openapi_extra={"security": [{"bearerAuth": []}]} if secured else None,
    )
    async def stats_endpoint() -> Response:
        return json_response(json.dumps(stats.snapshot(), allow_nan=False).encode())

    @app.get("/", include_in_schema=False)
    async def page_endpoint() -> Response:
        return Response(page.html, media_type="text/html; charset=utf-8", headers=page.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(schemas)
            if secured or cfg.metrics_token is not None:
                components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    guard: dict[str, Any] = {
        "body_paths": BODY_PATHS,
        "max_bytes": cfg.max_body_bytes,
        "metrics": metrics,
        "api_token": cfg.api_token,
        "metrics_token": cfg.metrics_token,
    }
    app.add_middleware(Guard, **guard)

    async def body_endpoints(scope: dict, receive: Callable, send: Callable) -> None:
        """POST /v1/rank, /v1/predict, /v1/actions as plain ASGI, behind the same Guard (which has
        read the whole body and replays it as one message): what the FastAPI routes above do,
        without Starlette's routing, dependency and middleware layers on the way."""
        body = (await receive()).get("body", b"")
        r = answer_body(scope["path"], body, scope.get("extensions", {}).get(ARRIVED))
        reply = r if isinstance(r, Reply) else await r
        await send({"type": "http.response.start", "status": reply.status, "headers": list(reply.headers)})
        await send({"type": "http.response.body", "body": reply.body})

    body_guard = Guard(body_endpoints, **guard)
    app.body_endpoints = body_guard
    app.body_routes = BodyRoutes(paths=BODY_PATHS, guard=body_guard, answer=answer_body)
    return app


class _ServingApp(FastAPI):
    """The FastAPI app, with a POST to a body endpoint handed to `body_endpoints` (pure ASGI behind
    its own Guard) before Starlette's stack; everything else (docs, health, metrics, pages, other
    methods, unknown paths) goes the FastAPI way."""

    body_endpoints: Callable[..., Any] | None = None
    body_routes: BodyRoutes | None = None  # the same endpoints, for the connection layer (_protocol)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        fast = self.body_endpoints
        if (
            fast is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in BODY_PATHS
            and not self.root_path
        ):
            await fast(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)
