"""`freshrec bench serve`: latency of /v1/rank over real HTTP while deltas are applied every second.

Setup: a training PS (DeepFM, slots user_id / item_id / category, 2 dense features, DNN 256-128)
with `--users` users and `--items` items, published once to a local parameter log and snapshotted.
A `freshrec serve` SUBPROCESS (its own interpreter, `--threads` torch threads, 127.0.0.1) boots
from that snapshot and follows the log. Meanwhile, in this process:

- a publisher thread changes `--delta-rows` user and item rows every `--sync-interval` seconds
  (as training would) and publishes them (dense weights every `--dense-interval` seconds);
- `--clients` client threads, each with its own httpx.Client (keep-alive), send /v1/rank with
  `--candidates` random candidates back to back for `--seconds` (after a 1 s warm-up).

With `--connections N` the clients are instead N keep-alive connections from a load generator in
another process (`freshrec.bench.loadgen`: wrk when installed, `bash scripts/wrk.sh`; else an
asyncio client), which also counts the statuses (503s apart) and names itself in the output.

Reported: client-side p50 / p99 / max latency, requests/s, errors (non-200 or transport errors),
and how many parameter versions the server applied during the run. Baselines measured in the same
run: GET /healthz over the same HTTP path (transport + framework floor), and `ServingReplica.rank`
called in-process on the same snapshot with the clients' bodies (the scoring alone, its thread's
CPU time, 300 calls before the load and 300 after it); `server_cpu_over_inprocess_rank` is the
server's CPU per request (deltas and impression logging included) over that baseline's p50.
The same calls each after an idle millisecond (`baseline_inprocess_rank_paced_p50_ms`, as a
server's requests come: caches and branch predictors cool in between) cost more CPU than back
to back; `server_cpu_over_paced_rank` is the server's CPU per request over that. The server scores the
rank requests that arrive together in one model call (`--batch-rows`, 0: each alone);
`requests_per_model_call` says how many it joined on average: about 1 with 2 closed-loop
clients, tens with 64 connections.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from freshrec.bench.loadgen import run_load, wrk_path
from freshrec.commands.options import at_least, positive
from freshrec.errors import RoleError

if TYPE_CHECKING:
    import psutil

HELP = "p50/p99 latency and requests/s of /v1/rank over HTTP while deltas apply every second"
EXAMPLE = "freshrec bench serve --quick --json"
TORCH_THREADS = 1  # the in-process baseline's; `--threads` wins (the server subprocess gets the same)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=at_least(1), default=100_000, help="users in the tables")
    parser.add_argument("--items", type=at_least(1), default=100_000, help="items in the tables")
    parser.add_argument("--dim", type=at_least(1), default=16, help="embedding dim")
    parser.add_argument("--candidates", type=at_least(1), default=100, help="candidates per request")
    parser.add_argument("--clients", type=at_least(1), default=2,
                        help="concurrent client threads (closed loop)")
    parser.add_argument("--seconds", type=positive, default=15.0, help="measured duration")
    parser.add_argument("--delta-rows", type=int, default=5_000, help="user and item rows changed per sync")
    parser.add_argument("--sync-interval", type=float, default=1.0, help="seconds between syncs")
    parser.add_argument("--dense-interval", type=float, default=5.0, help="seconds between dense updates")
    parser.add_argument("--threads", type=at_least(1), default=1, help="torch threads of the server")
    parser.add_argument("--workers", type=at_least(1), default=1,
                        help="server processes (freshrec serve --workers); CPU is counted over all of them")
    parser.add_argument("--batch-rows", type=at_least(0), default=4096,
                        help="the server's --batch-rows (0: each request scored alone)")
    parser.add_argument("--connections", type=at_least(1), default=None,
                        help="instead of --clients: this many keep-alive connections from a load generator "
                             "in another process (wrk when installed: bash scripts/wrk.sh; else asyncio)")
    parser.add_argument("--load-generator", choices=("auto", "wrk", "asyncio"), default="auto",
                        help="with --connections: wrk, the asyncio client, or wrk when installed (auto)")
    parser.add_argument("--quick", action="store_true", help="short run: 20k users/items, 4 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _body(g: np.random.Generator, args: argparse.Namespace) -> dict:
    """A /v1/rank body: a random user, `--candidates` random items, a category and two dense values."""
    return {
        "user_id": int(g.integers(args.users)),
        "candidates": g.integers(0, args.items, args.candidates).tolist(),
        "sparse": {"category": [int(g.integers(1000))]},
        "dense": {"dense_0": float(g.random()), "dense_1": 1.0},
    }


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1000.0 if xs else float("nan")


def _build(root: Path, args: argparse.Namespace):
    from freshrec.model import FeatureSpec, SlotSpec
    from freshrec.ps import SyncPublisher, TrainingPS
    from freshrec.stream.local_log import LocalBackend

    spec = FeatureSpec(
        slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id"), SlotSpec(name="category")),
        dense_dim=2,
        dim=args.dim,
    )
    ps = TrainingPS(spec, shards=2)
    rng = np.random.default_rng(0)
    for name, n in (("user_id", args.users), ("item_id", args.items), ("category", 1000)):
        t = ps.tables[name]
        t.assign(np.arange(n, dtype=np.int64), rng.normal(0, 0.1, (n, t.dim)).astype(np.float32), now=0.0)
    backend = LocalBackend(root / "logs")
    plog = backend.log("params")
    pub = SyncPublisher(
        ps, plog, interval_s=args.sync_interval, dense_interval_s=args.dense_interval, clock=time.monotonic
    )
    first = pub.publish_once()
    snap = pub.snapshot(root / "snapshot")
    return ps, pub, backend, snap, first


def _start_server(
    root: Path, snap: Path, threads: int, workers: int, batch_rows: int = 4096
) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "freshrec.cli",
        "serve",
        "--params",
        str(root / "logs"),
        "--snapshot",
        str(snap),
        "--port",
        "0",
        "--threads",
        str(threads),
        "--workers",
        str(workers),
        "--batch-rows",
        str(batch_rows),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 180
    stdout = proc.stdout
    assert stdout is not None
    lines = []
    while time.monotonic() < deadline:
        line = stdout.readline()
        if not line:
            break
        lines.append(line)
        if "listening on " in line:
            url = line.rsplit("listening on ", 1)[1].strip()
            threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()  # drain
            return proc, url
    proc.kill()
    msg = "freshrec serve did not start:\n" + "".join(lines)
    raise RoleError(msg)


def _server_cpu_s(server: psutil.Process) -> float:
    """CPU seconds (user + system) so far of a server: its process and every worker under it."""
    total = 0.0
    for p in (server, *server.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _stop_server(proc: subprocess.Popen) -> None:
    """Stop a server started by `_start_server`: SIGTERM (a clean shutdown), SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _rank_buckets(text: str) -> dict[float, float]:
    """Cumulative counts of the server-side /v1/rank latency histogram, by upper bound (s)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "freshrec_request_latency_seconds":
            for smp in fam.samples:
                if smp.name.endswith("_bucket") and smp.labels.get("endpoint") == "/v1/rank":
                    out[float(smp.labels["le"])] = smp.value
    return out


def _bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound (ms) of the histogram bucket holding quantile q of the requests in between."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    for b, c in zip(bounds, counts, strict=True):
        if c >= q * counts[-1]:
            return b * 1000.0
    return float("inf")


def _rank_answered(text: str) -> float:
    """/v1/rank requests the server answered 200 (its `freshrec_requests_total`)."""
    head = 'freshrec_requests_total{endpoint="/v1/rank",status="200"} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(head))


def _thread_cpu(text: str) -> dict[str, float]:
    """The server's background threads' CPU seconds by thread (`freshrec_thread_cpu_seconds_total`)."""
    head = "freshrec_thread_cpu_seconds_total{thread="
    return {
        line[len(head) + 1 : line.index('"}')]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(head)
    }


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def main(args: argparse.Namespace) -> int:
    import httpx

    from freshrec.ps import ServingReplica

    if args.quick:
        args.users, args.items, args.seconds = 20_000, 20_000, 4.0
    out = sys.stderr if args.json else sys.stdout

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    with tempfile.TemporaryDirectory(prefix="freshrec-bench-serve-") as tmp:
        root = Path(tmp)
        say(f"building tables: {args.users} users, {args.items} items, dim {args.dim} ...")
        ps, pub, backend, snap, first = _build(root, args)
        say(f"initial publish: {first.touched} rows, {first.bytes / 1e6:.1f} MB in {first.frames} frames")
        say("starting `freshrec serve` subprocess ...")
        proc, url = _start_server(root, snap, args.threads, args.workers, args.batch_rows)
        rng = np.random.default_rng(1)
        try:
            # baseline 1: in-process scoring alone, same snapshot (torch threads: --threads, set by the
            # CLI), before the load and again after it (the machine's speed drifts within a run)
            rep = ServingReplica.from_snapshot(snap)

            def score_alone(n: int, pause_s: float = 0.0) -> list[float]:
                out = []
                for _ in range(n):  # the clients' bodies, as the server gets them after parsing
                    b = _body(rng, args)
                    if pause_s:
                        time.sleep(pause_s)
                    t0 = time.thread_time()  # CPU, as the server's is counted
                    rep.rank(b["user_id"], b["candidates"], sparse=b["sparse"], dense=b["dense"])
                    out.append(time.thread_time() - t0)
                return out

            score_before = score_alone(300)
            score_paced = score_alone(300, pause_s=0.001)  # each call after an idle ms, as a request
            # baseline 2: /healthz over the same HTTP path
            health_lat = []
            with httpx.Client(base_url=url, timeout=10.0) as c:
                for _ in range(300):
                    t0 = time.perf_counter()
                    c.get("/healthz").raise_for_status()
                    health_lat.append(time.perf_counter() - t0)
                m0 = c.get("/metrics").text
                v0 = _metric(m0, "freshrec_model_version")
                b0 = _rank_buckets(m0)
                calls0, answered0 = _metric(m0, "freshrec_rank_calls_total"), _rank_answered(m0)

            stop_pub = threading.Event()
            syncs: list[float] = []

            def publisher() -> None:
                g = np.random.default_rng(2)
                while not stop_pub.wait(args.sync_interval):
                    for name, n in (("user_id", args.users), ("item_id", args.items)):
                        t = ps.tables[name]
                        ids = g.integers(0, n, args.delta_rows)
                        t.assign(ids, g.normal(0, 0.1, (ids.shape[0], t.dim)).astype(np.float32), now=1.0)
                    t0 = time.perf_counter()
                    pub.publish_once()
                    syncs.append(time.perf_counter() - t0)

            lat: list[list[float]] = [[] for _ in range(args.clients)]
            errors = [0] * args.clients
            t_start = time.monotonic() + 1.0  # warm-up before
            t_end = t_start + args.seconds

            def client(k: int) -> None:
                g = np.random.default_rng(100 + k)
                with httpx.Client(base_url=url, timeout=10.0) as c:
                    while True:
                        now = time.monotonic()
                        if now >= t_end:
                            return
                        body = _body(g, args)
                        t0 = time.perf_counter()
                        try:
                            r = c.post("/v1/rank", json=body)
                            ok = r.status_code == 200 and len(r.json()["items"]) == args.candidates
                        except httpx.HTTPError:
                            ok = False
                        dt = time.perf_counter() - t0
                        if now >= t_start:
                            lat[k].append(dt)
                            errors[k] += 0 if ok else 1

            pth = threading.Thread(target=publisher, daemon=True)
            import psutil

            sproc = psutil.Process(proc.pid)

            def server_cpu() -> float:
                return _server_cpu_s(sproc)

            def scrape() -> str:
                """The server's /metrics, read where the CPU is (at the load's start and end)."""
                with httpx.Client(base_url=url, timeout=10.0) as c:
                    return c.get("/metrics").text
            pth.start()
            load = None
            if args.connections is not None:
                if args.load_generator == "wrk" and wrk_path() is None:
                    msg = "--load-generator wrk: wrk is not installed (bash scripts/wrk.sh installs it)"
                    raise RoleError(msg)
                say(
                    f"{args.connections} keep-alive connections x {args.seconds:.0f} s of /v1/rank "
                    f"({args.candidates} candidates), deltas every {args.sync_interval} s ..."
                )
                g = np.random.default_rng(7)
                bodies = [json.dumps(_body(g, args)).encode() for _ in range(256)]
                with httpx.Client(base_url=url, timeout=10.0) as c:  # warm-up, as the clients' second
                    t_warm = time.monotonic() + 1.0
                    while time.monotonic() < t_warm:
                        c.post("/v1/rank", content=bodies[0], headers={"content-type": "application/json"})
                tc0, c0 = _thread_cpu(scrape()), server_cpu()
                load = run_load(
                    url + "/v1/rank", bodies, connections=args.connections, seconds=args.seconds,
                    use_wrk=args.load_generator != "asyncio",
                )  # fmt: skip
                c1, tc1 = server_cpu(), _thread_cpu(scrape())
                say(f"load generator: {load.generator}")
            else:
                say(
                    f"{args.clients} clients x {args.seconds:.0f} s of /v1/rank ({args.candidates} "
                    f"candidates), deltas of {args.delta_rows} users + {args.delta_rows} items every "
                    f"{args.sync_interval} s"
                )
                threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
                for th in threads:
                    th.start()
                while time.monotonic() < t_start:  # warm-up: clients run, not measured
                    time.sleep(0.005)
                tc0, c0 = _thread_cpu(scrape()), server_cpu()
                for th in threads:
                    th.join()
                c1, tc1 = server_cpu(), _thread_cpu(scrape())
            stop_pub.set()
            pth.join()
            with httpx.Client(base_url=url, timeout=10.0) as c:
                mtext = c.get("/metrics").text
            score_after = score_alone(300)
        finally:
            _stop_server(proc)
            backend.close()

    score_lat = score_before + score_after
    all_lat = [x for xs in lat for x in xs]
    n_err = sum(errors)
    v1 = _metric(mtext, "freshrec_model_version")
    b1 = _rank_buckets(mtext)
    n_req = len(all_lat)
    p50, p99 = round(_pct(all_lat, 50), 3), round(_pct(all_lat, 99), 3)
    worst = round(max(all_lat) * 1000.0, 3) if all_lat else float("nan")
    rps = round(len(all_lat) / args.seconds, 1)
    extra: dict = {}
    if load is not None:
        n_req, p50, p99, worst, rps = load.requests, load.p50_ms, load.p99_ms, load.max_ms, load.rps
        n_err = load.requests - load.statuses.get("200", 0) + load.transport_errors
        extra = {
            "load_generator": load.generator,
            "connections": load.connections,
            "statuses": load.statuses,
            "status_503": load.statuses.get("503", 0),
            "transport_errors": load.transport_errors,
            "p99_over_p50": round(load.p99_ms / load.p50_ms, 2) if load.p50_ms > 0 else None,
        }
    cpu_ms = 1000.0 * (c1 - c0) / max(n_req, 1)
    # where the server's CPU went, per request: its background threads (one process: with several
    # workers, /metrics answers for one of them) and the rest, the request path
    by_thread: dict[str, float] | None = None
    if args.workers == 1 and tc1:
        by_thread = {k: round(1000.0 * (v - tc0.get(k, 0.0)) / max(n_req, 1), 3) for k, v in tc1.items()}
        by_thread["request_path"] = round(cpu_ms - sum(by_thread.values()), 3)
    calls = _metric(mtext, "freshrec_rank_calls_total") - calls0
    per_call = (_rank_answered(mtext) - answered0) / calls if calls > 0 else None
    result = {
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": worst,
        "rps": rps,
        "errors": n_err,
        "requests": n_req,
        "clients": args.clients,
        "candidates": args.candidates,
        "users": args.users,
        "items": args.items,
        "server_threads": args.threads,
        "server_workers": args.workers,
        "versions_applied": int(v1 - v0) if v1 == v1 and v0 == v0 else None,
        "server_cpu_ms_per_request": round(cpu_ms, 3),
        "server_p50_ms_le": _bucket_quantile(b0, b1, 0.50),
        "server_p99_ms_le": _bucket_quantile(b0, b1, 0.99),
        "syncs": len(syncs),
        "sync_publish_ms_p50": round(_pct(syncs, 50), 2),
        "delta_rows_per_sync": 2 * args.delta_rows,
        "baseline_healthz_p50_ms": round(_pct(health_lat, 50), 3),
        "baseline_healthz_p99_ms": round(_pct(health_lat, 99), 3),
        "baseline_inprocess_rank_p50_ms": round(_pct(score_lat, 50), 3),
        "baseline_inprocess_rank_p99_ms": round(_pct(score_lat, 99), 3),
        "baseline_inprocess_rank_p50_ms_before_after": [
            round(_pct(score_before, 50), 3), round(_pct(score_after, 50), 3)
        ],
        "server_cpu_over_inprocess_rank": round(cpu_ms / _pct(score_lat, 50), 2),
        "server_cpu_ms_per_request_by_thread": by_thread,
        "request_path_cpu_over_inprocess_rank": None if by_thread is None
        else round(by_thread["request_path"] / _pct(score_lat, 50), 2),
        "baseline_inprocess_rank_paced_p50_ms": round(_pct(score_paced, 50), 3),
        "server_cpu_over_paced_rank": round(cpu_ms / _pct(score_paced, 50), 2),
        "batch_rows": args.batch_rows,
        "requests_per_model_call": None if per_call is None else round(per_call, 2),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **extra,
    }
    rows = [
        ("/v1/rank over HTTP, deltas applying", result["p50_ms"], result["p99_ms"], result["rps"]),
        (
            "baseline: GET /healthz over HTTP",
            result["baseline_healthz_p50_ms"],
            result["baseline_healthz_p99_ms"],
            "",
        ),
        (
            "baseline: ServingReplica.rank in-process",
            result["baseline_inprocess_rank_p50_ms"],
            result["baseline_inprocess_rank_p99_ms"],
            "",
        ),
    ]
    print(f"{'':44} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for name, a, b, c in rows:
        print(f"{name:44} {a:>8} {b:>8} {c!s:>8}")
    print(
        f"server-side handling time (histogram buckets): p50 <= {result['server_p50_ms_le']} ms, "
        f"p99 <= {result['server_p99_ms_le']} ms; server CPU {result['server_cpu_ms_per_request']} ms/req "
        f"({result['server_cpu_over_inprocess_rank']}x the in-process rank, "
        f"{result['server_cpu_over_paced_rank']}x it paced by 1 ms idle) "
        f"(deltas and feature logging included); {result['requests_per_model_call']} requests per model "
        f"call (--batch-rows {args.batch_rows}); load avg {result['load_avg_1m']} on {os.cpu_count()} cpus"
    )
    if by_thread is not None:
        print(
            "server CPU by thread, ms/req: "
            + ", ".join(f"{k} {v}" for k, v in by_thread.items())
            + f"; the request path alone is {result['request_path_cpu_over_inprocess_rank']}x "
            "the in-process rank"
        )
    if load is not None:
        print(
            f"load: {load.generator}, {load.connections} connections: p50 {p50} ms, p99 {p99} ms "
            f"({extra['p99_over_p50']}x p50), max {worst} ms, {rps} req/s, statuses {load.statuses}, "
            f"503s {extra['status_503']}, transport errors {load.transport_errors}"
        )
    print(
        f"errors {n_err} of {n_req}; max {result['max_ms']} ms; versions applied in the run: "
        f"{result['versions_applied']} ({result['syncs']} syncs of {2 * args.delta_rows} rows, "
        f"publish p50 {result['sync_publish_ms_p50']} ms)"
    )
    if args.json:
        print(json.dumps(result))
    return 0 if n_err == 0 else 1
