"""`freshrec serve`: a serving replica behind the HTTP API, following the parameter log.

Starts from any snapshot a command wrote (`freshrec train --out DIR`, `freshrec train online
--snapshots DIR`: its newest full snapshot plus incrementals, or a snapshot store), rebuilds the model
it records (any model of `freshrec.model.contract`), replays the parameter log from the offsets stored
in it, keeps following it in the background, and answers /v1/rank, /v1/predict, /v1/actions,
/healthz and /metrics. Ranked candidates are logged as feature events to the features log
(`--no-features` turns that off), actions posted to /v1/actions go to the actions log on the same
backend (`--no-actions`: 404). With several tasks, /v1/rank returns every task's score and ranks by
`--rank-weights`.

A snapshot trained from a config (`freshrec train --config`) holds its schema; the server then
speaks it: /v1/rank and /v1/predict take raw feature values (string ids, lists, numbers) and
encode them as import and training did (`freshrec.serve.schema_body`). `--ids` serves integer ids
instead (values already encoded by the client). `--config FILE` checks that the config's schema
is the snapshot's and refuses to start otherwise.

Access (docs/http.md): `--token` (or the environment variable FRESHREC_TOKEN) makes every path
but /healthz and the docs need `Authorization: Bearer <token>`; `--metrics-token` (or
FRESHREC_METRICS_TOKEN) does the same for /metrics. A non-loopback `--host` is refused without a
token unless `--insecure` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from freshrec.errors import ConfigError, FreshrecError, SnapshotError

HELP = "serve a model over HTTP from a snapshot, applying parameter-log deltas while serving"
TORCH_THREADS = 1  # torch's intra-op threads for scoring; `--threads` wins (set by freshrec.cli)
EXAMPLE = "freshrec serve --params ./logs --snapshot ./snapshots --host 127.0.0.1 --port 8080"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help="log backend of the parameter log: folder or URL")
    parser.add_argument("--params-log", default="params", help="parameter log name")
    parser.add_argument(
        "--snapshot", required=True, help="a snapshot folder, snapshot store or online snapshots folder"
    )
    parser.add_argument(
        "--rank-weights",
        default="",
        help="rank by a blend of task scores, e.g. click=1,watch=0.01 (default: the first task)",
    )
    parser.add_argument(
        "--ids", action="store_true", help="take encoded integer ids even when the snapshot holds a schema"
    )
    parser.add_argument("--features", default=None, help="features log backend (default: --params)")
    parser.add_argument("--features-log", default="features", help="features log name")
    parser.add_argument("--no-features", action="store_true", help="do not log served impressions")
    parser.add_argument("--actions-log", default="actions", help="actions log name (features backend)")
    parser.add_argument("--no-actions", action="store_true", help="no actions log (/v1/actions: 404)")
    parser.add_argument("--token", default=None, help="bearer token for the API (default: $FRESHREC_TOKEN)")
    parser.add_argument(
        "--metrics-token", default=None, help="bearer token for /metrics (default: $FRESHREC_METRICS_TOKEN)"
    )
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    parser.add_argument("--group", default="serving", help="consumer group on the parameter log")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free port, printed)")
    parser.add_argument("--max-candidates", type=int, default=1000, help="candidates per request")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body limit")
    parser.add_argument("--fp16", action="store_true", help="round embeddings through float16 on apply")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for scoring")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="server processes on one port sharing one copy of the tables (default: the CPU count; "
        "1: one process)",
    )
    parser.add_argument(
        "--score-threads",
        type=int,
        default=1,
        help="threads per server process that parse and score requests",
    )
    parser.add_argument(
        "--max-queue", type=float, default=0.5, help="seconds a request may wait for its turn (503 past it)"
    )
    parser.add_argument("--max-pending", type=int, default=64, help="requests in progress (503 past it)")
    parser.add_argument("--header-timeout", type=float, default=10.0, help="seconds to send the headers")
    parser.add_argument("--body-timeout", type=float, default=30.0, help="seconds to send the body")
    parser.add_argument("--keep-alive", type=float, default=5.0, help="seconds an idle connection is kept")
    parser.add_argument("--max-connections", type=int, default=1000, help="open connections at most")
    parser.add_argument(
        "--inline-max-ids",
        type=int,
        default=20_000,
        help="cheap requests answered on the event loop (0: none)",
    )
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=4096,
        help="candidates of concurrent rank requests scored in one model call at most (0: each alone)",
    )


def parse_weights(text: str) -> dict[str, float] | None:
    """ "click=1,watch=0.01" -> {"click": 1.0, "watch": 0.01}; "" -> None."""
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, w = part.partition("=")
        try:
            out[name.strip()] = float(w)
        except ValueError:
            sep = ""
        if not sep:
            msg = f"--rank-weights: {part!r} is not task=weight"
            raise ConfigError(msg)
    return out or None


def _schema(snap: Path, config: Path | None):
    """The snapshot's schema (None when it holds none); `config`'s [schema], if any, must match."""
    from freshrec.train.schema_train import checked_snapshot_schema

    try:
        return checked_snapshot_schema(config, snap)
    except SnapshotError as e:
        msg = f"--snapshot {e}"
        raise SnapshotError(msg) from e


def main(args: argparse.Namespace) -> int:
    from freshrec.serve.server import check_exposure, is_loopback

    token = args.token if args.token is not None else os.environ.get("FRESHREC_TOKEN") or None
    metrics_token = args.metrics_token
    if metrics_token is None:
        metrics_token = os.environ.get("FRESHREC_METRICS_TOKEN") or None
    try:
        check_exposure(args.host, token=token, insecure=args.insecure)
    except FreshrecError as e:
        print(f"freshrec serve: {e}", file=sys.stderr)
        return 2

    from freshrec.pipeline import Pipeline, PipelineConfig
    from freshrec.ps import ServingConfig
    from freshrec.serve import AppConfig, ServerConfig, bind_socket, serve_forever

    try:
        app_config = AppConfig(
            max_candidates=args.max_candidates,
            max_body_bytes=args.max_body_bytes,
            workers=args.score_threads,
            max_pending=args.max_pending,
            max_queue_s=args.max_queue,
            inline_max_ids=args.inline_max_ids,
            batch_max_rows=args.batch_rows,
            api_token=token,
            metrics_token=metrics_token,
        )
        server_config = ServerConfig(
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            keep_alive_s=args.keep_alive,
            max_connections=args.max_connections,
        )
        snap = Path(args.snapshot)
        stored = _schema(snap, args.config)  # --config: the command line's TOML file
        schema = None if args.ids else stored  # what the app speaks
        if args.workers < 1:
            msg = f"--workers must be >= 1, got {args.workers}"
            raise ConfigError(msg)
        pipe = Pipeline(
            PipelineConfig(
                log=args.features or args.params,
                params_url=args.params,
                features=args.features_log,
                actions=args.actions_log,
                params=args.params_log,
                serving=ServingConfig(fp16=args.fp16, rank_weights=parse_weights(args.rank_weights)),
            )
        )
        if args.workers > 1:
            from freshrec.commands.serve_workers import serve_workers

            return serve_workers(args, pipe, app_config, server_config, stored)
        try:
            replica, sub = pipe.replica(snapshot=snap, group=args.group)
        except SnapshotError as e:
            msg = f"--snapshot {e}"
            raise SnapshotError(msg) from e
        sub.start()
        app = pipe.app(
            replica,
            sub,
            features_log=None if args.no_features else pipe.log(args.features_log),
            actions_log=None if args.no_actions else pipe.log(args.actions_log),
            config=app_config,
            schema=schema,
        )
        sock = bind_socket(args.host, args.port)
    except (FreshrecError, OSError) as e:
        print(f"freshrec serve: {e}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    sizes = ", ".join(f"{k}={v}" for k, v in replica.table_sizes().items())
    print(f"freshrec serve: snapshot {snap} (version {replica.version}; rows {sizes})", flush=True)
    if schema is not None:
        print(
            f"freshrec serve: speaks schema {schema.name!r} (raw feature values; --ids: encoded ids)",
            flush=True,
        )
    if token is None and not is_loopback(args.host):
        print(f"freshrec serve: WARNING: {args.host} is served without a token (--insecure)", flush=True)
    url = f"http://{args.host}:{port}"
    print(f"freshrec serve: health page {url}/, API docs {url}/docs", flush=True)
    print(f"freshrec serve: listening on {url}", flush=True)
    try:
        serve_forever(
            app, host=args.host, port=port, log_level=args.log_level, sock=sock, config=server_config
        )
    finally:
        sub.stop()
        pipe.close()
    return 0
