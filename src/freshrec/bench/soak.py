"""`freshrec bench soak`: the whole loop under steady load for minutes; is anything creeping?

One process runs the loop the way the commands do, built by `freshrec.pipeline.Pipeline` on the
local log: a model server (real HTTP, `ServerThread`), the joiner, the online trainer with periodic
snapshots, the sync publisher (touched rows every second) and the serving replica following the
parameter log. Retention is on for every log (size-bound, held by the joiner's group for the
features/actions logs and by the snapshots' replay floor for the examples/parameter logs).

Load: `--clients` threads send `/v1/rank` (`--candidates` items, top 5 shown) at `--rate` requests/s in
total, and post a click on a shown item with probability `--click-rate` to `/v1/actions`; the
clicks follow a hidden taste so there is something to learn.

Per window of `--window-s` (default 60 s: per minute) it reports: ranks and actions per second,
p50 / p99 rank latency (client side), errors (non-2xx or transport), the server process's RSS,
its open file descriptors, the logs' bytes on disk, the parameter version and table rows. At the
end: the throughput trend (last window vs first, %), RSS growth (last vs first, %), the largest
log disk use against its retention bound, and a PNG of the windows. The targets (issue 14): trend
within +-10 %, RSS growth under 5 %, disk bounded by retention.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = "minutes of ranks, actions and deltas at once: throughput/p99 trend, RSS, descriptors, log disk"
EXAMPLE = "freshrec bench soak --minutes 10 --json"


def configure(parser: argparse.ArgumentParser) -> None:
    from freshrec.commands.options import at_least, positive

    positive_int = at_least(1)

    parser.add_argument("--minutes", type=positive, default=10.0, help="how long to run")
    parser.add_argument("--window-s", type=positive, default=60.0, help="seconds per reported window")
    parser.add_argument("--rate", type=positive, default=100.0, help="/v1/rank requests per second in total")
    parser.add_argument("--clients", type=positive_int, default=2, help="client threads")
    parser.add_argument("--candidates", type=positive_int, default=50, help="candidates per rank request")
    parser.add_argument("--click-rate", type=float, default=0.05, help="chance that a shown item is clicked")
    parser.add_argument("--retain-mb", type=positive, default=8.0, help="retention per log, MiB")
    parser.add_argument("--segment-kb", type=positive_int, default=512, help="local log segment size, KiB")
    parser.add_argument(
        "--snapshot-every", type=positive_int, default=20, help="batches between trainer snapshots"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="40 s in 10 s windows, 1 MiB retention, 128 KiB segments (the CI form)",
    )
    parser.add_argument("--out", default="runs/bench-soak", help="folder for the plot and JSON")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def _du(path: Path) -> dict[str, int]:
    out = {}
    for d in sorted(p for p in path.iterdir() if p.is_dir()):
        out[d.name] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    return out


class _Load:
    """Client threads: ranks at a fixed total rate, clicks on shown items through /v1/actions."""

    def __init__(self, url: str, args: argparse.Namespace, clock) -> None:
        self.url, self.args, self.clock = url, args, clock
        self.lock = threading.Lock()
        self.lat: list[float] = []
        self.ranks = self.actions = self.errors = 0
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(args.clients)
        ]

    def take(self) -> tuple[list[float], int, int, int]:
        with self.lock:
            out = (self.lat, self.ranks, self.actions, self.errors)
            self.lat, self.ranks, self.actions, self.errors = [], 0, 0, 0
        return out

    def _run(self, i: int) -> None:
        import httpx

        rng = np.random.default_rng(100 + i)
        per = self.args.rate / max(1, self.args.clients)
        n_users, n_items = 5000, 3000
        taste = np.random.default_rng(0).normal(size=(16, 2))
        next_at = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=10.0) as c:
            while not self.stop.is_set():
                next_at += 1.0 / per
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                user = int(rng.integers(0, n_users))
                # a slowly moving window of items: new ones appear, old ones leave
                base = int(self.clock() / 30) % n_items
                cands = ((base + rng.choice(400, self.args.candidates, replace=False)) % n_items).tolist()
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/rank", json={"user_id": user, "candidates": cands, "top_k": 5})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                acts = []
                if ok:
                    body = r.json()
                    for pos, it in enumerate(body["items"]):
                        p = 1 / (1 + np.exp(-(taste[user % 16] @ taste[it["item_id"] % 16]) * 2))
                        if rng.random() < self.args.click_rate * 2 * p:
                            acts.append({"request_id": f"{body['request_id']}:{pos}", "action": "click"})
                n_err = 0 if ok else 1
                if acts:
                    try:
                        a = c.post("/v1/actions", json={"actions": acts})
                        n_err += int(a.status_code != 202)
                    except httpx.HTTPError:
                        n_err += 1
                with self.lock:
                    self.ranks += int(ok)
                    self.actions += len(acts)
                    self.errors += n_err
                    if ok:
                        self.lat.append(dt)


def run_soak(args: argparse.Namespace, work: Path, log=print) -> dict[str, Any]:
    import psutil
    import torch

    from freshrec.checkpoint.periodic import SnapshotPolicy
    from freshrec.model import FeatureSpec, SlotSpec
    from freshrec.pipeline import Pipeline, PipelineConfig
    from freshrec.serve.server import ServerThread
    from freshrec.stream.joiner import JOIN_TABLES, JoinerConfig
    from freshrec.stream.local_log import LocalBackend, LocalLogConfig
    from freshrec.stream.store import LmdbStore
    from freshrec.table import Adagrad
    from freshrec.train.online import OnlineConfig

    torch.set_num_threads(1)
    retain = int(args.retain_mb * (1 << 20))
    backend = LocalBackend(work / "logs", config=LocalLogConfig(segment_bytes=args.segment_kb << 10))
    spec = FeatureSpec(
        slots=(
            SlotSpec(name="user_id", table={"ttl_s": 3600.0}),
            SlotSpec(name="item_id", table={"ttl_s": 600.0}),
        ),
        dim=8,
        optimizer=Adagrad(lr=0.05),
    )
    pipe = Pipeline(
        PipelineConfig(
            log=str(work / "logs"),
            joiner=JoinerConfig(
                windows={"click": 20.0},
                allowed_lateness_s=2.0,
                emit_early_positives=True,
                poll_timeout_s=0.05,
            ),
            online=OnlineConfig(batch_size=256, poll_timeout_s=0.2, evict_every=20),
            features_spec=spec,
            model=None,
            snapshots=work / "snaps",
            policy=SnapshotPolicy(every_batches=args.snapshot_every, full_every=3, keep=1),
            sync_interval_s=1.0,
            dense_interval_s=10.0,
        ),
        backend=backend,
    )
    for name in ("features", "actions"):
        pipe.log(name).retain(groups=["joiner"], max_bytes=retain)
    pipe.retain(max_bytes=retain)
    trainer = pipe.trainer()
    publisher = pipe.publisher(trainer)
    publisher.publish_once(dense=True)
    replica, subscriber = pipe.replica(snapshot=None, publisher=publisher, group="soak-serving")
    app = pipe.app(replica, subscriber)
    server = ServerThread(app).start()
    subscriber.start()
    stop = threading.Event()
    errors: list[str] = []

    def run_joiner() -> None:
        store = LmdbStore(work / "joiner", JOIN_TABLES, map_size=1 << 30, sync=False)
        j = pipe.joiner(store)
        try:
            j.run(should_stop=stop.is_set, idle_sleep_s=0.02)
        except Exception as e:  # noqa: BLE001 - reported in the result
            errors.append(f"joiner: {type(e).__name__}: {e}")
        finally:
            j.close()
            store.close()

    elog, consumer = pipe.examples_consumer(trainer, group="soak-trainer")

    def run_trainer() -> None:
        try:
            trainer.run(consumer, until_idle=False, stop=stop.is_set, log=elog)
        except Exception as e:  # noqa: BLE001
            errors.append(f"trainer: {type(e).__name__}: {e}")

    threads = [
        threading.Thread(target=run_joiner, daemon=True),
        threading.Thread(target=run_trainer, daemon=True),
    ]
    pub_thread, pub_stop = publisher.start()
    for th in threads:
        th.start()
    load = _Load(server.url, args, clock=time.time)
    for th in load.threads:
        th.start()
    proc = psutil.Process(os.getpid())
    windows: list[dict[str, Any]] = []
    seconds = args.minutes * 60.0
    t_start = time.monotonic()
    n = max(1, int(round(seconds / args.window_s)))
    try:
        for w in range(n):
            end = t_start + (w + 1) * args.window_s
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(1.0, left))
                for name in ("features", "actions", "examples", "params"):
                    pipe.log(name).apply_retention()
            lat, ranks, actions, errs = load.take()
            du = _du(work / "logs")
            row = {
                "window": w + 1,
                "ranks_per_s": ranks / args.window_s,
                "actions_per_s": actions / args.window_s,
                "p50_ms": float(np.percentile(lat, 50) * 1e3) if lat else float("nan"),
                "p99_ms": float(np.percentile(lat, 99) * 1e3) if lat else float("nan"),
                "errors": errs,
                "rss_mb": proc.memory_info().rss / 2**20,
                "fds": proc.num_fds(),
                "log_bytes": du,
                "version": replica.version,
                "rows": replica.table_sizes(),
                "examples_trained": trainer.examples,
            }
            windows.append(row)
            log(
                f"[soak {w + 1}/{n}] {row['ranks_per_s']:.0f} ranks/s {row['actions_per_s']:.0f} actions/s "
                f"p50 {row['p50_ms']:.1f} ms p99 {row['p99_ms']:.1f} ms errors {errs} "
                f"RSS {row['rss_mb']:.0f} MB "
                f"fds {row['fds']} logs {sum(du.values()) / 2**20:.1f} MiB v{row['version']} "
                f"trained {row['examples_trained']}"
            )
    finally:
        load.stop.set()
        for th in load.threads:
            th.join(15)
        stop.set()
        pub_stop.set()
        for th in threads:
            th.join(30)
        pub_thread.join(30)
        server.stop()
        subscriber.stop()
        pipe.close()
    first, last = windows[0], windows[-1]
    trend = 100.0 * (last["ranks_per_s"] - first["ranks_per_s"]) / max(first["ranks_per_s"], 1e-9)
    growth = 100.0 * (last["rss_mb"] - first["rss_mb"]) / max(first["rss_mb"], 1e-9)
    biggest = max(b for w in windows for b in w["log_bytes"].values())
    # a log holds at most its retention, the segment being written and one being sealed, and what
    # the snapshots' replay floor holds (up to `snapshot_every` batches behind: two more segments)
    bound = retain + 4 * (args.segment_kb << 10)
    return {
        "windows": windows,
        "window_s": args.window_s,
        "throughput_trend_pct": trend,
        "rss_growth_pct": growth,
        "max_log_bytes": biggest,
        "retention_bound_bytes": bound,
        "disk_bounded": biggest <= bound,
        "errors": sum(w["errors"] for w in windows),
        "role_errors": errors,
    }


def _plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ws = result["windows"]
    x = [w["window"] * result["window_s"] / 60 for w in ws]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    axes[0].plot(x, [w["ranks_per_s"] for w in ws], marker="o", label="ranks/s")
    axes[0].plot(x, [w["actions_per_s"] for w in ws], marker="o", label="actions/s")
    axes[0].set_title("throughput")
    axes[0].legend()
    axes[1].plot(x, [w["p50_ms"] for w in ws], marker="o", label="p50")
    axes[1].plot(x, [w["p99_ms"] for w in ws], marker="o", label="p99")
    axes[1].set_title("rank latency (ms)")
    axes[1].legend()
    axes[2].plot(x, [w["rss_mb"] for w in ws], marker="o")
    axes[2].set_title("RSS (MB)")
    for name in ws[0]["log_bytes"]:
        axes[3].plot(x, [w["log_bytes"].get(name, 0) / 2**20 for w in ws], marker="o", label=name)
    axes[3].axhline(result["retention_bound_bytes"] / 2**20, color="k", linestyle="--", label="bound")
    axes[3].set_title("log disk use (MiB)")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("minutes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.minutes, args.window_s = 40 / 60, 10.0
        args.retain_mb, args.segment_kb, args.snapshot_every = 1.0, 128, 5
    say = lambda s: print(s, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="freshrec-soak-"))
    try:
        result = run_soak(args, work, log=say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    png = _plot(result, out / "soak.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    say(
        f"trend {result['throughput_trend_pct']:+.1f}% (target +-10%), "
        f"RSS growth {result['rss_growth_pct']:+.1f}% (target < 5%), "
        f"largest log {result['max_log_bytes'] / 2**20:.1f} MiB of a "
        f"{result['retention_bound_bytes'] / 2**20:.1f} MiB bound, errors {result['errors']}, plot {png}"
    )
    if args.json:
        print(json.dumps(result))
    return 0 if not result["role_errors"] else 1
