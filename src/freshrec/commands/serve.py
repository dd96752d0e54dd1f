"""`freshrec serve`: a serving replica behind the HTTP API, following the parameter log.

Starts from a training-PS snapshot (a snapshot directory, or a snapshot store folder whose newest
snapshot is used), replays the parameter log from the offsets stored in it, keeps following it
in the background, and answers /v1/rank, /v1/predict, /v1/actions, /healthz and /metrics. Ranked
candidates are logged as feature events to the features log (`--no-features` turns that off),
actions posted to /v1/actions go to the actions log on the same backend (`--no-actions`: 404).

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

from freshrec.errors import ConfigError, FreshrecError

HELP = "serve a model over HTTP from a snapshot, applying parameter-log deltas while serving"
EXAMPLE = "freshrec serve --params ./logs --snapshot ./snapshots --host 127.0.0.1 --port 8080"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help="log backend of the parameter log: folder or URL")
    parser.add_argument("--params-log", default="params", help="parameter log name")
    parser.add_argument("--snapshot", required=True, help="training-PS snapshot dir, or a snapshot store")
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
    parser.add_argument("--workers", type=int, default=1, help="threads that parse and score requests")
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


def resolve_snapshot(path: str | Path) -> Path:
    """A snapshot directory as given, or the newest snapshot of a snapshot-store folder."""
    from freshrec.checkpoint.format import MANIFEST_NAME
    from freshrec.checkpoint.store import SnapshotStore

    p = Path(path)
    if (p / MANIFEST_NAME).is_file():
        return p
    if p.is_dir():
        latest = SnapshotStore(p).latest_path()
        if latest is not None:
            return latest
    msg = f"--snapshot {str(p)!r}: neither a snapshot directory nor a snapshot store with a snapshot"
    raise ConfigError(msg)


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

    import torch

    from freshrec.ps import ServingConfig, ServingReplica, SyncSubscriber
    from freshrec.serve import AppConfig, ServerConfig, bind_socket, create_app, serve_forever
    from freshrec.stream.backends import open_backend

    try:
        app_config = AppConfig(
            max_candidates=args.max_candidates,
            max_body_bytes=args.max_body_bytes,
            workers=args.workers,
            max_pending=args.max_pending,
            inline_max_ids=args.inline_max_ids,
            api_token=token,
            metrics_token=metrics_token,
        )
        server_config = ServerConfig(
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            keep_alive_s=args.keep_alive,
            max_connections=args.max_connections,
        )
        torch.set_num_threads(max(1, args.threads))
        snap = resolve_snapshot(args.snapshot)
        replica = ServingReplica.from_snapshot(snap, config=ServingConfig(fp16=args.fp16))
        backend = open_backend(args.params)
        plog = backend.log(args.params_log)
        start = replica.positions.get("params")
        sub = SyncSubscriber(replica, plog, group=args.group, start=start if start is not None else [0])
        sub.catch_up()
        sub.start()
        flog = None
        if not args.no_features:
            fb = backend if args.features is None else open_backend(args.features)
            flog = fb.log(args.features_log)
        alog = None
        if not args.no_actions:
            ab = backend if args.features is None else open_backend(args.features)
            alog = ab.log(args.actions_log)
        app = create_app(
            replica,
            features_log=flog,
            actions_log=alog,
            subscriber=sub,
            config=app_config,
        )
        sock = bind_socket(args.host, args.port)
    except (FreshrecError, OSError) as e:
        print(f"freshrec serve: {e}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    sizes = ", ".join(f"{k}={v}" for k, v in replica.table_sizes().items())
    print(f"freshrec serve: snapshot {snap} (version {replica.version}; rows {sizes})", flush=True)
    if token is None and not is_loopback(args.host):
        print(f"freshrec serve: WARNING: {args.host} is served without a token (--insecure)", flush=True)
    print(f"freshrec serve: listening on http://{args.host}:{port}", flush=True)
    try:
        serve_forever(
            app, host=args.host, port=port, log_level=args.log_level, sock=sock, config=server_config
        )
    finally:
        sub.stop()
        backend.close()
    return 0
