"""`freshrec serve --workers N` (N > 1): the supervisor process of `freshrec.serve.workers`.

Forks the zygote first (while this process runs no thread of its own), loads the snapshot once
into shared tables, follows the parameter log as their one applier, has the zygote fork N
worker processes on one port, appends the impressions and actions they log, restarts
a worker that dies, and stops everything on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from freshrec.errors import FreshrecError, SnapshotError


def serve_workers(
    args: argparse.Namespace, pipe: Any, app_config: Any, server_config: Any, stored: Any = None
) -> int:
    """Serve with `args.workers` processes; `stored`: the snapshot's schema (the workers speak it
    unless `--ids`, and name the dense features as it does)."""
    from freshrec.ps.sync import SyncSubscriber
    from freshrec.ps.training import TrainingPS
    from freshrec.serve.server import is_loopback
    from freshrec.serve.shared_replica import BAD, SharedApplier
    from freshrec.serve.workers import Supervisor, WorkerSpec, reuseport_sockets, run_worker, shared_root
    from freshrec.serve.zygote import Zygote

    snap = Path(args.snapshot)
    schema = None if args.ids else stored
    root = shared_root()
    applier: SharedApplier | None = None
    sub: SyncSubscriber | None = None
    sup: Supervisor | None = None
    logs: list[Any] = []
    env = {
        "FRESHREC_WORKER_TOKEN": app_config.api_token or "",
        "FRESHREC_WORKER_METRICS_TOKEN": app_config.metrics_token or "",
    }
    # first: the interpreter and torch as imported so far are shared with every worker
    zygote = Zygote.fork(root, lambda i, listen, link: run_worker(root, i, listen, link), env=env)
    try:
        try:
            ps, positions = TrainingPS.load(snap)
        except SnapshotError as e:
            msg = f"--snapshot {e}"
            raise SnapshotError(msg) from e
        serving = {
            "fp16": bool(args.fp16),
            "rank_weights": pipe.config.serving.rank_weights,
            "dense_names": list(stored.dense_names) if stored is not None and stored.dense_names else None,
            "train_sample_rate": None,
        }
        applier = SharedApplier.from_ps(ps, root, positions=positions, serving=serving)
        del ps
        gc.collect()
        _trim_heap()  # the loaded snapshot's freed heap back to the system (it stays in the tables)
        start = positions.get("params")
        sub = SyncSubscriber(applier, pipe.log(args.params_log), group=args.group, start=start or [0])
        sub.catch_up()
        sockets = reuseport_sockets(args.host, args.port, args.workers)
        port = sockets[0].getsockname()[1]
        features = None if args.no_features else pipe.log(args.features_log)
        actions = None if args.no_actions else pipe.log(args.actions_log)
        logs = [features, actions]
        app_kwargs = {
            k: v for k, v in dataclasses.asdict(app_config).items() if k not in ("api_token", "metrics_token")
        }
        spec = WorkerSpec(
            host=args.host,
            port=port,
            app=app_kwargs,
            server=dataclasses.asdict(server_config),
            logs=tuple(
                None if lg is None else (name, lg.partitions)
                for lg, name in ((features, args.features_log), (actions, args.actions_log))
            ),
            threads=args.threads,
            log_level=args.log_level,
            schema=None if schema is None else schema.to_dict(),
        )
        sup = Supervisor(root, spec, sockets, logs, zygote=zygote)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        sup.start()
        sub.start()
    except (FreshrecError, OSError) as e:
        _shutdown(sup, sub, applier, logs, pipe, root, zygote)
        print(f"freshrec serve: {e}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{k}={v}" for k, v in applier.table_sizes().items())
    print(f"freshrec serve: snapshot {snap} (version {applier.version}; rows {sizes})", flush=True)
    pids = ", ".join(map(str, sup.pids()))
    print(f"freshrec serve: {args.workers} workers (pids {pids}), tables shared in {root}", flush=True)
    if schema is not None:
        print(
            f"freshrec serve: speaks schema {schema.name!r} (raw feature values; --ids: encoded ids)",
            flush=True,
        )
    if app_config.api_token is None and not is_loopback(args.host):
        print(f"freshrec serve: WARNING: {args.host} is served without a token (--insecure)", flush=True)
    url = f"http://{args.host}:{port}"
    print(f"freshrec serve: health page {url}/, API docs {url}/docs", flush=True)
    print(f"freshrec serve: listening on {url}", flush=True)
    state = applier.state

    def tick() -> None:
        assert sub is not None
        state.words[BAD] = sub.bad_frames  # frames that failed to decode, for the workers' metrics

    try:
        sup.watch(stop, tick=tick)
    finally:
        _shutdown(sup, sub, applier, logs, pipe, root, zygote)
    return 0


def _trim_heap() -> None:
    """glibc's malloc_trim(0): return freed heap pages to the system (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _shutdown(sup: Any, sub: Any, applier: Any, logs: list[Any], pipe: Any, root: Path, zygote: Any) -> None:
    if sup is not None:
        sup.stop()  # the workers, then the zygote
    else:
        zygote.stop()
    if sub is not None:
        sub.stop()
    for lg in logs:
        if lg is not None:
            try:
                lg.flush()
            except FreshrecError as e:
                print(f"freshrec serve: flushing {getattr(lg, 'name', 'a log')}: {e}", file=sys.stderr)
    if applier is not None:
        applier.close()
    pipe.close()
    shutil.rmtree(root, ignore_errors=True)
