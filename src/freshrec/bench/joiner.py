"""`freshrec bench joiner`: events/s through the online joiner on the local log (and Kafka), and its memory.

The input stream (the Globo replay, or a synthetic one when the data is absent) is written to the
input logs first; then one joiner (one thread, LMDB state, fsync on) consumes it until drained,
and the time of that consumption alone is measured. The baseline, measured in the same run on the
same logs, is a reader that polls record by record and decodes each one into its event dataclass
(`decode_feature` / `decode_action`): the plain decoders' cost, a yardstick for comparing runs on
a busy machine. (The joiner reads whole polls and validates them in one kernel pass, so it can
beat the baseline.) Resident memory is sampled as the stream goes by (it should stay flat).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from freshrec.bench._kafka import start_broker, stop_broker
from freshrec.commands.options import at_least
from freshrec.errors import RoleError

HELP = "events/s through the joiner on the local log (and Kafka), resident memory as the stream grows"
EXAMPLE = "freshrec bench joiner --quick --json"

WINDOWS = {"click": 1800.0}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clicks", type=at_least(1), default=300_000,
                        help="Globo clicks to replay (x6 events)")
    parser.add_argument("--quick", action="store_true", help="a short run (30k clicks)")
    parser.add_argument("--synthetic", action="store_true", help="a synthetic stream instead of Globo")
    parser.add_argument("--hashed-ids", action="store_true",
                        help="the synthetic stream with 63-bit ids (19 digits, as hashed string ids)")
    parser.add_argument("--kafka", default=None, help="bootstrap host:port of a Kafka broker")
    parser.add_argument("--no-kafka", action="store_true", help="do not try to start a broker")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of the input logs")
    parser.add_argument("--cache-entries", type=int, default=20_000, help="joiner cache bound (entries)")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / (1 << 20)


def _anon_mb() -> float:
    """Resident memory that is not file-backed (RSS minus shared pages such as LMDB's map)."""
    import psutil

    m = psutil.Process().memory_info()
    return (m.rss - getattr(m, "shared", 0)) / (1 << 20)


def _synthetic(n_clicks: int, *, hashed: bool = False):
    """Five impressions and one click per click; `hashed`: every id spread over 63 bits (almost
    all of 19 digits, as the schema importer's hashed string ids), else small ids."""
    import numpy as np

    from freshrec.stream.events import ActionEvent, FeatureEvent

    rng = np.random.default_rng(0)
    t = 1.6e9
    spread = (lambda x: (x * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (1 << 63)) if hashed else int
    for i in range(n_clicks):
        t += float(rng.exponential(0.5))
        users, items = rng.integers(0, 100_000), rng.integers(0, 50_000, size=5)
        u = spread(int(users))
        for pos in range(5):
            it = spread(int(items[pos]))
            yield FeatureEvent(f"s{i}:{pos}", u, it, {"user": [u], "item": [it]}, {"position": float(pos)}, t)
        yield ActionEvent(f"s{i}:{int(rng.integers(0, 5))}", "click", 1.0, t + 1.0)


def _prewrite(url: str, backend, args, n_clicks: int) -> tuple[str, int]:
    """Write the input stream; the Globo replay runs in a child process so that loading the
    3M-row file does not count in this process's memory."""
    from freshrec.data.paths import dataset_path
    from freshrec.stream.replay import replay_to_logs

    path = dataset_path("globo") / "clicks.csv.gz"
    if not (args.synthetic or args.hashed_ids) and path.is_file():
        cmd = [sys.executable, "-m", "freshrec.cli", "replay", "globo", "--log", url,
               "--limit", str(n_clicks), "--partitions", str(args.partitions), "--no-progress"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            msg = f"replay globo failed: {out.stderr.strip()[-500:]}"
            raise RoleError(msg)
        info = json.loads(out.stdout.strip().splitlines()[-1])
        return "globo", info["features"] + info["actions"]
    f = backend.log("features", partitions=args.partitions)
    a = backend.log("actions", partitions=args.partitions)
    st = replay_to_logs(_synthetic(n_clicks, hashed=args.hashed_ids), f, a, flush_every=100_000)
    return "synthetic", st.features + st.actions


def _baseline(backend) -> float:
    """Poll and decode (into the event dataclasses) every input record once, one by one."""
    from freshrec.errors import EventError
    from freshrec.stream.events import decode_action, decode_feature

    t0 = time.perf_counter()
    n = 0
    for name, dec in (("features", decode_feature), ("actions", decode_action)):
        log = backend.log(name)
        c = log.consumer("bench-baseline")
        while True:
            recs = c.poll(5000)
            if not recs:
                break
            for r in recs:
                try:
                    dec(r.value)
                except EventError:
                    pass
            n += len(recs)
        c.close()
    return n / (time.perf_counter() - t0)


def _run_joiner(backend, store_dir: Path, n_events: int, label: str, rss: list,
                poll_timeout_s: float = 0.0, cache_entries: int = 20_000) -> tuple[float, dict]:
    from freshrec.stream.joiner import JOIN_TABLES, Joiner, JoinerConfig
    from freshrec.stream.store import LmdbStore

    store = LmdbStore(store_dir, JOIN_TABLES, map_size=4 << 30)
    cfg = JoinerConfig(windows=WINDOWS, allowed_lateness_s=10.0, cache_entries=cache_entries,
                       batch_records=20_000, poll_records=5_000, poll_timeout_s=poll_timeout_s)
    j = Joiner(config=cfg, features=backend.log("features"), actions=backend.log("actions"),
               examples=backend.log("examples", partitions=1), dead_letters=backend.log("dead-letters"),
               store=store)
    marks = [n_events * q // 8 for q in range(1, 8)]
    seen = {"n": 0}

    def on_batch(jn: Joiner) -> None:
        n = jn.stats.features + jn.stats.actions
        while marks and n >= marks[0]:
            marks.pop(0)
            r = _rss_mb()
            rss.append(r)
            print(f"  {label}: {n:>9,} events  rss {r:7.1f} MB (anon {_anon_mb():7.1f} MB)  "
                  f"pending {jn.pending():>7,}  cache {len(jn._cache):>7,}", flush=True)
        seen["n"] = n

    t0, c0 = time.perf_counter(), time.process_time()
    stats = j.run(until_idle=True, on_batch=on_batch)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    rss.append(_rss_mb())
    j.close()
    store.close()
    n = stats.features + stats.actions
    return n / dt, {"events": n, "seconds": round(dt, 3), "cpu_seconds": round(dc, 3),
                    "events_per_cpu_s": round(n / dc), "examples": stats.examples,
                    "positives": stats.positives, "cache_hits": j._cache.hits,
                    "anon_rss_mb_end": round(_anon_mb(), 1)}


def main(args: argparse.Namespace) -> int:
    from freshrec.stream.local_log import LocalBackend

    n_clicks = 30_000 if args.quick else args.clicks
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="freshrec-bench-joiner-"))
    work.mkdir(parents=True, exist_ok=True)
    rss: list[float] = [_rss_mb()]
    result: dict = {"clicks": n_clicks}
    try:
        print(f"writing the input stream ({n_clicks:,} clicks) to the local log in {work} ...", flush=True)
        backend = LocalBackend(work / "local")
        t0 = time.perf_counter()
        source, n_events = _prewrite(str(work / "local"), backend, args, n_clicks)
        result.update(source=source, events=n_events, prewrite_s=round(time.perf_counter() - t0, 2))
        base = _baseline(backend)
        print(f"baseline (poll + decode only): {base:,.0f} events/s", flush=True)
        local_eps, local_info = _run_joiner(backend, work / "state-local", n_events, "local", rss,
                                            cache_entries=args.cache_entries)
        backend.close()
        result.update(baseline_decode_events_per_s=round(base), local_events_per_s=round(local_eps),
                      local=local_info)
        kafka_eps, reason, kdir = None, None, None
        bootstrap = args.kafka
        if bootstrap is None and not args.no_kafka:
            print("starting a Kafka broker (scripts/kafka.sh start) ...", flush=True)
            bootstrap, kdir, reason = start_broker()
        elif bootstrap is None:
            reason = "--no-kafka"
        if bootstrap is not None:
            try:
                from freshrec.stream.backends import open_backend

                url = f"kafka://{bootstrap}?prefix=bench-{os.getpid()}-{int(time.time())}."
                kb = open_backend(url)
                _prewrite(url, kb, args, n_clicks)
                kafka_eps, kinfo = _run_joiner(kb, work / "state-kafka", n_events, "kafka", rss, 0.5,
                                               args.cache_entries)
                result["kafka"] = kinfo
                kb.close()
            except Exception as e:  # noqa: BLE001 - report why Kafka could not be measured
                kafka_eps, reason = None, f"{type(e).__name__}: {e}"
        if kdir is not None:
            stop_broker(kdir)
        result.update(kafka_events_per_s=None if kafka_eps is None else round(kafka_eps), kafka_reason=reason,
                      peak_rss_mb=round(max(rss), 1), rss_mb_samples=[round(r, 1) for r in rss])
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'what':<34}{'events/s':>14}")
    print(f"{'baseline: poll + decode only':<34}{result['baseline_decode_events_per_s']:>14,}")
    print(f"{'joiner, local log + LMDB':<34}{result['local_events_per_s']:>14,}"
          f"   ({result['local']['events_per_cpu_s']:,} per CPU-second)")
    k = result["kafka_events_per_s"]
    print(f"{'joiner, Kafka + LMDB':<34}{(f'{k:,}' if k is not None else 'n/a: ' + str(reason)):>14}")
    print(f"joiner / baseline: {result['local_events_per_s'] / result['baseline_decode_events_per_s']:.2f}")
    print(f"peak RSS {result['peak_rss_mb']} MB; samples {result['rss_mb_samples']}")
    if args.json:
        print(json.dumps(result))
    return 0
