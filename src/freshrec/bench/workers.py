"""`freshrec bench workers`: memory and throughput of `freshrec serve --workers N`, N = 1, 2, ...

Setup: a DeepFM snapshot (slots user_id and item_id, `--rows` rows each, dim `--dim`, DNN
256-128). For each N of `--workers` (in one run, one after the other, same snapshot), a real
`freshrec serve --workers N` process tree on 127.0.0.1 (N = 1 is the single process; N > 1 the
supervisor + N workers over one shared copy of the tables), logging impressions to a local
features log as a default server does. Measured per N:

- memory: the PSS of the whole process tree (supervisor + workers; shared pages counted once,
  split between the processes that map them), after warm-up, and the plain RSS sum for reference;
- closed loop: `--connections` keep-alive connections send /v1/rank (`--candidates` random
  candidates) back to back for `--seconds`: requests/s, p50, p99, max;
- paced (N > 1): the requests/s that N = 1 sustained, sent on a fixed schedule, p50 / p99 (with
  wrk, latency runs from each request's write, as wrk measures, and the rate actually sent is
  reported next to the one asked; without wrk, an asyncio pacer counts from the scheduled send).

The load generators are separate processes that cost little CPU next to the servers:
`freshrec.bench.loadgen` (wrk with one thread when installed, `bash scripts/wrk.sh`, paced by its
Lua `delay` hook; else an asyncio client: raw HTTP/1.1 over keep-alive sockets, bodies encoded
once, each connection's first request sent before the clock starts). They share
the machine's cores with the servers, which the figures include. Before the measured phases, a
warm-up phase sends every worker its first requests. Ratios against N = 1 are printed; `--json`
prints one object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.commands.options import at_least, positive
from freshrec.errors import ConfigError, RoleError

HELP = "RSS and requests/s of `freshrec serve --workers N` for N = 1, 2 in one run"
EXAMPLE = "freshrec bench workers --rows 1000000 --workers 1,2 --json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=at_least(1), default=1_000_000, help="rows per table")
    parser.add_argument("--dim", type=at_least(1), default=16, help="embedding dim")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2")
    parser.add_argument("--candidates", type=at_least(1), default=100, help="candidates per request")
    parser.add_argument("--connections", type=at_least(1), default=8, help="keep-alive connections")
    parser.add_argument("--seconds", type=positive, default=10.0, help="measured seconds per phase")
    parser.add_argument("--rounds", type=at_least(1), default=3,
                        help="closed-loop phases per worker count, interleaved (1, 2, 1, 2, ...)")
    parser.add_argument("--quick", action="store_true", help="short run: 20k rows, 2 s phases")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


# ---- the load generator (its own process) ---------------------------------------------------------
async def _connection(
    host: str, port: int, reqs: list[bytes], until: float, gap: float | None, lat: list
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    bad = 0
    i = 0
    t_next = time.perf_counter()
    try:
        await _exchange(reader, writer, reqs[0])  # warm-up: the connection's first request, untimed
        t_next = time.perf_counter()
        while True:
            if gap is not None:
                t_next += gap
                delay = t_next - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                start = t_next  # paced: from the scheduled time
            else:
                start = time.perf_counter()
            if start >= until:
                return bad
            status = await _exchange(reader, writer, reqs[i % len(reqs)])
            i += 1
            lat.append(time.perf_counter() - start)
            bad += status != 200
    finally:
        writer.close()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    """Send one request, read its reply; its status."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            n = int(line[15:])
    await reader.readexactly(n)
    return int(head[9:12])


async def _load(
    host: str, port: int, reqs: list[bytes], conns: int, seconds: float, rate: float | None
) -> dict:
    lat: list[float] = []
    gap = None if rate is None else conns / rate
    t0 = time.perf_counter()
    until = t0 + seconds
    bad = await asyncio.gather(
        *(_connection(host, port, reqs[k::conns] or reqs, until, gap, lat) for k in range(conns))
    )
    wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1000.0
    return {
        "requests": len(lat),
        "errors": int(sum(bad)),
        "rps": len(lat) / wall,
        "p50_ms": float(np.percentile(a, 50)) if len(a) else float("nan"),
        "p99_ms": float(np.percentile(a, 99)) if len(a) else float("nan"),
        "max_ms": float(a.max()) if len(a) else float("nan"),
    }


def client_main(argv: list[str]) -> None:
    """The load generator process: argv[0] is a JSON job; prints the JSON result."""
    job = json.loads(argv[0])
    rng = np.random.default_rng(job["seed"])
    reqs = []
    for _ in range(256):
        body = json.dumps(
            {
                "user_id": int(rng.integers(job["rows"])),
                "candidates": rng.integers(0, job["rows"], job["candidates"]).tolist(),
            }
        ).encode()
        reqs.append(
            b"POST /v1/rank HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (job["host"].encode(), len(body), body)
        )
    out = asyncio.run(
        _load(job["host"], job["port"], reqs, job["connections"], job["seconds"], job.get("rate"))
    )
    print(json.dumps(out), flush=True)


def _bodies(args: argparse.Namespace) -> list[bytes]:
    rng = np.random.default_rng(7)
    return [
        json.dumps(
            {
                "user_id": int(rng.integers(args.rows)),
                "candidates": rng.integers(0, args.rows, args.candidates).tolist(),
            }
        ).encode()
        for _ in range(256)
    ]


def _phase(port: int, args: argparse.Namespace, seconds: float, rate: float | None = None) -> dict:
    """One load phase: the closed loop through `freshrec.bench.loadgen` (wrk, one thread, when
    installed); with `rate`, `rate` requests/s on a schedule instead (wrk's Lua `delay` hook;
    without wrk, the asyncio pacer): `rps` is what was sent and answered, `rate` what was asked."""
    from freshrec.bench.loadgen import run_load, wrk_path

    if rate is not None and wrk_path() is None:
        return _drive(port, args, seconds, rate=rate)
    res = run_load(
        f"http://127.0.0.1:{port}/v1/rank",
        _bodies(args),
        connections=args.connections,
        seconds=seconds,
        threads=1,
        rate=rate,
    )
    ok = res.statuses.get("200", 0)
    out = {
        "generator": res.generator,
        "requests": res.requests,
        "errors": res.requests - ok + res.transport_errors,
        "rps": res.rps,
        "p50_ms": res.p50_ms,
        "p99_ms": res.p99_ms,
        "max_ms": res.max_ms,
    }
    return out if rate is None else {**out, "rate": rate}


def _drive(port: int, args: argparse.Namespace, seconds: float, rate: float | None = None) -> dict:
    job = {
        "host": "127.0.0.1",
        "port": port,
        "rows": args.rows,
        "candidates": args.candidates,
        "connections": args.connections,
        "seconds": seconds,
        "rate": rate,
        "seed": 7,
    }
    code = "import sys; from freshrec.bench.workers import client_main; client_main(sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(job)], capture_output=True, text=True, timeout=seconds + 120
    )
    if done.returncode != 0:
        msg = f"the load generator failed: {done.stderr.strip()[-500:]}"
        raise RoleError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- memory of a process tree ---------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for k in kids:
            out.extend(_tree(int(k)))
    return out


def _kb(pid: int, field: str, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> dict[str, Any]:
    """PSS and RSS (MB) summed over `pid` and its descendants; the process count."""
    pids = _tree(pid)
    pss = sum(_kb(p, "Pss", "smaps_rollup") for p in pids)
    rss = sum(_kb(p, "VmRSS", "status") for p in pids)
    return {"pss_mb": pss / 1024.0, "rss_sum_mb": rss / 1024.0, "processes": len(pids)}


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of one process so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of `pid` (the supervisor) and of its descendants, by role: "supervisor",
    "zygote" (a child with children of its own) and "workers" (the rest, summed)."""
    out = {"supervisor": _cpu_s(pid), "zygote": 0.0, "workers": 0.0}
    for p in _tree(pid)[1:]:
        role = "zygote" if len(_tree(p)) > 1 else "workers"
        out[role] += _cpu_s(p)
    return out


# ---- the run -----------------------------------------------------------------------------------------
def _snapshot(root: Path, args: argparse.Namespace) -> Path:
    from freshrec.model import FeatureSpec, SlotSpec
    from freshrec.ps import TrainingPS

    spec = FeatureSpec(slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dense_dim=0, dim=args.dim)
    ps = TrainingPS(spec, hidden=(256, 128))
    rng = np.random.default_rng(0)
    for name in ("user_id", "item_id"):
        t = ps.tables[name]
        rows = rng.normal(0, 0.1, (args.rows, t.dim)).astype(np.float32)
        t.assign(np.arange(args.rows), rows)
    return ps.save(root / "snap", positions={"params": [0], "params_version": 0})


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def _serve(root: Path, snap: Path, n: int) -> tuple[subprocess.Popen, int]:
    cmd = [
        sys.executable,
        "-m",
        "freshrec.cli",
        "serve",
        "--params",
        str(root / "logs"),
        "--snapshot",
        str(snap),
    ]
    cmd += ["--port", "0", "--workers", str(n), "--max-pending", "1024"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "listening on " in line:
            port = int(line.rsplit(":", 1)[1])
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return proc, port
    proc.wait(10)
    msg = "freshrec serve did not start:\n" + "".join(lines[-20:])
    raise RoleError(msg)


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.rows, args.seconds = 20_000, 2.0
    try:
        counts = [int(x) for x in str(args.workers).split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        msg = f"--workers: a comma-separated list of counts >= 1, got {args.workers!r}"
        raise ConfigError(msg)
    out = sys.stderr if args.json else sys.stdout

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    result: dict[str, Any] = {
        "rows_per_table": args.rows,
        "dim": args.dim,
        "candidates": args.candidates,
        "connections": args.connections,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "load_generator": "freshrec.bench.loadgen: wrk, 1 thread (paced: its Lua delay hook); else asyncio",
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="freshrec-bench-workers-") as tmp:
        root = Path(tmp)
        say(f"building the snapshot: 2 tables x {args.rows} rows, dim {args.dim} ...")
        snap = _snapshot(root, args)
        servers: dict[int, tuple[subprocess.Popen, int]] = {}
        try:
            # every server runs for the whole benchmark (the others idle while one is loaded), so
            # the phases interleave and the machine's drift falls on every count alike
            for n in counts:
                say(f"serve --workers {n}: starting ...")
                (root / f"w{n}").mkdir()
                servers[n] = _serve(root / f"w{n}", snap, n)
                _phase(servers[n][1], args, min(2.0, args.seconds))  # warm-up: every worker's first
            runs: dict[int, dict[str, Any]] = {
                n: {"memory": tree_memory(proc.pid), "rounds": []} for n, (proc, _) in servers.items()
            }
            for r in range(args.rounds):
                for n, (proc, port) in servers.items():
                    cpu0 = tree_cpu(proc.pid)
                    closed = _phase(port, args, args.seconds)
                    cpu1 = tree_cpu(proc.pid)
                    per = 1000.0 / max(closed["requests"], 1)  # by role (supervisor: applier, log appends)
                    closed["cpu_ms_per_request"] = {k: round(per * (cpu1[k] - cpu0[k]), 3) for k in cpu0}
                    runs[n]["rounds"].append(closed)
                    say(
                        f"  round {r + 1}, workers {n}: {closed['rps']:.0f} req/s, "
                        f"p50 {closed['p50_ms']:.1f} ms, p99 {closed['p99_ms']:.1f} ms; "
                        f"CPU ms per request: {closed['cpu_ms_per_request']}"
                    )
            base_n = counts[0]
            base_rps = float(np.median([c["rps"] for c in runs[base_n]["rounds"]]))
            for n, run in runs.items():
                rps = [c["rps"] for c in run["rounds"]]
                run["closed"] = run["rounds"][int(np.argsort(rps)[len(rps) // 2])]  # the median round
                pairs = zip(run["rounds"], runs[base_n]["rounds"], strict=True)
                run["rps_ratio_by_round"] = [round(c["rps"] / b["rps"], 3) for c, b in pairs]
                run["rps_ratio"] = float(np.median(run["rps_ratio_by_round"]))
                run["pss_ratio"] = run["memory"]["pss_mb"] / runs[base_n]["memory"]["pss_mb"]
                if n != base_n:
                    run["paced_at_1_worker_rps"] = _phase(servers[n][1], args, args.seconds, rate=base_rps)
                result["runs"][str(n)] = run
                mem = run["memory"]
                say(
                    f"  workers {n} / {base_n}: PSS {mem['pss_mb']:.0f} MB ({mem['processes']} processes), "
                    f"memory x{run['pss_ratio']:.2f}, requests/s x{run['rps_ratio']:.2f} "
                    f"(rounds {run['rps_ratio_by_round']})"
                )
        finally:
            for proc, _ in servers.values():
                proc.terminate()
            for proc, _ in servers.values():
                proc.wait(60)
    result["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    if args.json:
        print(json.dumps(result))
    return 0
