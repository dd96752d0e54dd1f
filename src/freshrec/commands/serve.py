"""`freshrec serve`: a serving replica behind the HTTP API, following the parameter log.

Starts from any snapshot a command wrote (`freshrec train --out DIR`, `freshrec train online
--snapshots DIR`: its newest full snapshot plus incrementals, or a snapshot store), rebuilds the model
it records (any model of `freshrec.model.contract`), replays the parameter log from the offsets stored
in it, keeps following it
in the background, and answers /v1/rank, /v1/predict, /healthz and /metrics. Ranked candidates
are logged as feature events to the features log (`--no-features` turns that off).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from freshrec.errors import ConfigError, FreshrecError

HELP = "serve a model over HTTP from a snapshot, applying parameter-log deltas while serving"
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
    parser.add_argument("--features", default=None, help="features log backend (default: --params)")
    parser.add_argument("--features-log", default="features", help="features log name")
    parser.add_argument("--no-features", action="store_true", help="do not log served impressions")
    parser.add_argument("--group", default="serving", help="consumer group on the parameter log")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free port, printed)")
    parser.add_argument("--max-candidates", type=int, default=1000, help="candidates per request")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body limit")
    parser.add_argument("--fp16", action="store_true", help="round embeddings through float16 on apply")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for scoring")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")


def parse_weights(text: str) -> dict[str, float] | None:
    """"click=1,watch=0.01" -> {"click": 1.0, "watch": 0.01}; "" -> None."""
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


def main(args: argparse.Namespace) -> int:
    import torch

    from freshrec.ps import ServingConfig, ServingReplica, SyncSubscriber
    from freshrec.serve import AppConfig, bind_socket, create_app, serve_forever
    from freshrec.stream.backends import open_backend

    try:
        torch.set_num_threads(max(1, args.threads))
        snap = Path(args.snapshot)
        config = ServingConfig(fp16=args.fp16, rank_weights=parse_weights(args.rank_weights))
        replica = ServingReplica.from_snapshot(snap, config=config)
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
        app = create_app(
            replica,
            features_log=flog,
            subscriber=sub,
            config=AppConfig(max_candidates=args.max_candidates, max_body_bytes=args.max_body_bytes),
        )
        sock = bind_socket(args.host, args.port)
    except (FreshrecError, OSError) as e:
        print(f"freshrec serve: {e}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    sizes = ", ".join(f"{k}={v}" for k, v in replica.table_sizes().items())
    print(f"freshrec serve: snapshot {snap} (version {replica.version}; rows {sizes})", flush=True)
    print(f"freshrec serve: listening on http://{args.host}:{port}", flush=True)
    try:
        serve_forever(app, host=args.host, port=port, log_level=args.log_level, sock=sock)
    finally:
        sub.stop()
        backend.close()
    return 0
