"""`freshrec bench wakes`: what a thread's wake costs, and what the serving threads' wake rates cost.

A thread that slept runs its first work on cold caches (and, on a VM, on a vCPU the host may have
given to someone else), so a background thread's CPU is mostly per wake, not per record. Measured
here, in one run:

1. **The same call back to back and after an idle sleep** (`--pauses`, ms): the CPU time (this
   thread's, `time.thread_time`), median of `--calls` calls, of
   - `impression_block`, one request's 100 impression records framed by the features logger's
     numba kernels, and
   - an empty poll of a local parameter log by `SyncSubscriber.poll_once` (what an idle sync
     follower does on each wake).
2. **The features logger at two lingers** (`--lingers`, s): a `FeatureLogger` on a fresh local log
   gets `--rate` requests a second of 100 impressions each (the shape `freshrec serve` logs for
   `freshrec bench serve`'s requests) for `--seconds`; its thread's CPU per request
   (`FeatureLogger.cpu_s`, encoding and appending; the flushes' fsyncs included). Every impression
   is checked to be in the log.
3. **An idle sync follower at two idle intervals** (`--idles`, s): a `SyncSubscriber` following a
   local parameter log that nothing is appended to, for `--seconds`; its thread's CPU per second.
4. **An idle server**: a `freshrec serve` subprocess (one worker, `freshrec bench serve`'s
   snapshot: 20,000 users and items) that gets no requests and no deltas: its CPU per second over
   `--idle-seconds`, after 3 s to settle. It is the sum of every thread's wakes.

Parts 2 and 3 run in `--rounds` interleaved rounds (a, b, a, b, ...), so the machine's drift falls
on both settings alike; the medians and their ratio (second setting over first) are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.commands.options import at_least, positive
from freshrec.errors import ConfigError, LogError

__all__ = ["configure", "main", "run"]

HELP = "what a thread's wake costs, and the features logger's and sync follower's CPU at two wake rates"
EXAMPLE = "freshrec bench wakes --json"
CANDIDATES = 100


def _floats(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not out or any(not x >= 0 for x in out):
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {text!r}")
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pauses", type=_floats, default=(0.0, 1.0, 10.0), help="idle ms before each call")
    parser.add_argument("--calls", type=at_least(5), default=200, help="calls per pause (the median is kept)")
    parser.add_argument("--lingers", type=_floats, default=(0.01, 0.05), help="two FeatureLogger lingers, s")
    parser.add_argument("--idles", type=_floats, default=(0.02, 0.05), help="two SyncSubscriber idle_s, s")
    parser.add_argument("--rate", type=positive, default=800.0, help="requests/s handed to the logger")
    parser.add_argument("--seconds", type=positive, default=2.0, help="seconds per round and setting")
    parser.add_argument("--rounds", type=at_least(1), default=5, help="interleaved rounds")
    parser.add_argument("--idle-seconds", type=positive, default=10.0, help="idle server watched, s")
    parser.add_argument("--quick", action="store_true", help="short: 50 calls, 2 rounds of 0.5 s, 2 s idle")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _cpu_us(fn: Callable[[], object], pause_s: float, calls: int) -> float:
    """Median CPU microseconds of `fn()`, each call after `pause_s` of sleep."""
    fn()  # compiled and imported before timing
    spent = []
    for _ in range(calls):
        if pause_s:
            time.sleep(pause_s)
        t0 = time.thread_time()
        fn()
        spent.append(time.thread_time() - t0)
    return 1e6 * statistics.median(spent)


def _requests(n: int, seed: int = 0) -> list[tuple]:
    """`FeatureLogger.submit` items: the requests `freshrec bench serve` sends, as the server logs them."""
    rng = np.random.default_rng(seed)
    return [
        (
            f"{seed}-{k:08x}",
            int(rng.integers(20_000)),
            rng.integers(0, 20_000, CANDIDATES).tolist(),
            {"category": [int(rng.integers(1000))]},
            {"dense_0": float(rng.random()), "dense_1": 1.0},
            None,
            None,
            1.7e9 + k,
        )
        for k in range(n)
    ]


class _Idle:
    """A replica for the follower of a log that nothing is published to: it has nothing to apply."""

    version = 0

    def apply(self, msg: object) -> None:
        """Never called: the log stays empty."""


def _wake_costs(root: Path, pauses_ms: tuple[float, ...], calls: int) -> dict[str, dict[str, float]]:
    from freshrec.ps.sync import SyncSubscriber
    from freshrec.serve.writers import impression_block
    from freshrec.stream.local_log import LocalBackend

    rid, user, items, sparse, dense, *_, ts = _requests(1)[0]
    one = [(rid, user, items, sparse, dense, ts)]
    backend = LocalBackend(root / "wake")
    follower = SyncSubscriber(_Idle(), backend.log("params"), group="bench-wakes")
    out: dict[str, dict[str, float]] = {}
    try:
        for p in pauses_ms:
            out[f"{p:g}"] = {
                "impression_block_us": round(_cpu_us(lambda: impression_block(one), p / 1000, calls), 1),
                "empty_poll_us": round(_cpu_us(follower.poll_once, p / 1000, calls), 1),
            }
    finally:
        follower.consumer.close()
        backend.close()
    return out


def _logger_cpu(root: Path, linger_s: float, rate: float, seconds: float, requests: list[tuple]) -> float:
    """CPU ms per request of a FeatureLogger with `linger_s`, fed `rate` requests/s for `seconds`."""
    from freshrec.serve.writers import FeatureLogger
    from freshrec.stream.local_log import LocalBackend

    backend = LocalBackend(root)
    log = backend.log("features")
    writer = FeatureLogger(log, linger_s=linger_s)
    n = 0
    try:
        start = time.monotonic()
        while (now := time.monotonic()) < start + seconds:
            due = start + n / rate
            if now < due:
                time.sleep(due - now)
            writer.submit(requests[n % len(requests)])
            n += 1
        if not writer.flush(timeout_s=60.0):
            raise LogError(f"the features logger did not flush within 60 s ({root})")
    finally:
        writer.close()
    logged = writer.logged
    backend.close()
    if logged != n * CANDIDATES or writer.errors:
        msg = f"{logged} of {n * CANDIDATES} impressions logged, {writer.errors} write errors"
        raise LogError(msg)
    return 1000 * writer.cpu_s / n


def _follower_cpu(root: Path, idle_s: float, seconds: float) -> float:
    """CPU ms per second of a SyncSubscriber with `idle_s` following an empty local log."""
    from freshrec.ps.sync import SyncSubscriber
    from freshrec.stream.local_log import LocalBackend

    backend = LocalBackend(root)
    follower = SyncSubscriber(_Idle(), backend.log("params"), group="bench-wakes", idle_s=idle_s).start()
    try:
        time.sleep(seconds)
    finally:
        follower.stop()
        follower.consumer.close()
        backend.close()
    return 1000 * follower.cpu_s / seconds


def _idle_server_cpu(root: Path, seconds: float) -> float:
    """CPU ms per second of a `freshrec serve` subprocess that gets nothing to do."""
    import psutil

    from freshrec.bench.serve import _build, _server_cpu_s, _start_server, _stop_server

    shape = argparse.Namespace(users=20_000, items=20_000, dim=16, sync_interval=1.0, dense_interval=10.0)
    _, _, backend, snap, _ = _build(root, shape)
    proc, _ = _start_server(root, snap, threads=1, workers=1)
    try:
        time.sleep(3.0)  # start-up work (the first scrape of the log, imports) done
        server = psutil.Process(proc.pid)
        c0 = _server_cpu_s(server)
        time.sleep(seconds)
        c1 = _server_cpu_s(server)
    finally:
        _stop_server(proc)
        backend.close()
    return 1000 * (c1 - c0) / seconds


def _pair(runs: dict[float, list[float]], a: float, b: float) -> dict[str, Any]:
    med = {k: round(statistics.median(v), 4) for k, v in runs.items()}  # the ratio of the medians shown
    return {
        "rounds": {f"{k:g}": [round(x, 4) for x in v] for k, v in runs.items()},
        "median": {f"{k:g}": m for k, m in med.items()},
        "ratio": round(med[b] / med[a], 3) if med[a] else None,
    }


def run(args: argparse.Namespace, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    if args.quick:
        args.calls, args.rounds, args.seconds, args.idle_seconds = 50, 2, 0.5, 2.0
    if any(len(set(v)) != 2 or len(v) != 2 for v in (args.lingers, args.idles)):
        raise ConfigError("--lingers and --idles each take two different values, e.g. 0.01,0.05")
    la, lb = args.lingers
    ia, ib = args.idles
    requests = _requests(2000)
    logger: dict[float, list[float]] = {la: [], lb: []}
    follower: dict[float, list[float]] = {ia: [], ib: []}
    with tempfile.TemporaryDirectory(prefix="freshrec-bench-wakes-") as tmp:
        root = Path(tmp)
        say(f"one call after each of these sleeps (ms): {', '.join(f'{p:g}' for p in args.pauses)} ...")
        wakes = _wake_costs(root, args.pauses, args.calls)
        for r in range(args.rounds):
            for lg in (la, lb):
                at = root / f"log-{r}-{lg:g}"
                logger[lg].append(_logger_cpu(at, lg, args.rate, args.seconds, requests))
            for idle in (ia, ib):
                follower[idle].append(_follower_cpu(root / f"follow-{r}-{idle:g}", idle, args.seconds))
            per_request = ", ".join(f"{k:g} s: {v[-1]:.4f}" for k, v in logger.items())
            per_second = ", ".join(f"{k:g} s: {v[-1]:.2f}" for k, v in follower.items())
            say(f"  round {r + 1}: logger ms/request {per_request}; idle follower ms/s {per_second}")
        say(f"an idle `freshrec serve` for {args.idle_seconds:g} s ...")
        idle_server = _idle_server_cpu(root / "server", args.idle_seconds)
    return {
        "wake_cpu_us_by_pause_ms": wakes,
        "features_logger_cpu_ms_per_request_by_linger_s": _pair(logger, la, lb),
        "idle_follower_cpu_ms_per_s_by_idle_s": _pair(follower, ia, ib),
        "idle_server_cpu_ms_per_s": round(idle_server, 1),
        "idle_seconds": args.idle_seconds,
        "rate": args.rate,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "candidates": CANDIDATES,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(args: argparse.Namespace) -> int:
    out = sys.stderr if args.json else sys.stdout

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    result = run(args, say)
    say("")
    say(f"{'pause ms':>9} {'impression_block us':>20} {'empty poll us':>14}   (CPU, median)")
    for p, row in result["wake_cpu_us_by_pause_ms"].items():
        say(f"{p:>9} {row['impression_block_us']:>20} {row['empty_poll_us']:>14}")
    lg = result["features_logger_cpu_ms_per_request_by_linger_s"]
    fo = result["idle_follower_cpu_ms_per_s_by_idle_s"]
    say(
        f"features logger, {CANDIDATES} impressions a request at {args.rate:g}/s, CPU ms per request "
        f"by linger (s): {lg['median']} (x{lg['ratio']})"
    )
    say(f"idle sync follower, CPU ms per second by idle_s (s): {fo['median']} (x{fo['ratio']})")
    say(f"idle freshrec serve (default settings), CPU ms per second: {result['idle_server_cpu_ms_per_s']}")
    say(f"load avg {result['load_avg_1m']} on {result['cpus']} cpus")
    if args.json:
        print(json.dumps(result))
    return 0
