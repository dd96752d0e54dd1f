"""`freshrec join`: run the online joiner as its own process on a log backend.

Exit status: 0 when it stopped (inputs drained with --until-idle, or SIGTERM/SIGINT); 2 for a
bad configuration; 3 when the log failed (`LogError`), e.g. a Kafka broker that stayed
unavailable longer than the URL's outage_timeout (default 300 s). A failure is one line on
stderr naming the log, the broker and the error that began the outage. While a broker is away
the joiner waits, with one line when it goes and one when it is back (`freshrec.stream.kafka`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Callable

from freshrec.errors import ConfigError, FreshrecError, LogError

HELP = "run the online joiner: features + actions logs -> examples log (LMDB state, restartable)"
EXAMPLE = "freshrec join --log ./logs --store ./joiner-state --windows click=3600,like=86400 --until-idle"
EXIT_LOG_FAILED = 3  # exit status when the log failed (e.g. Kafka unavailable past its outage_timeout)


def parse_windows(text: str) -> dict[str, float]:
    """`click=3600,like=86400` -> {"click": 3600.0, "like": 86400.0}."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        try:
            seconds = float(value) if sep and name else None
        except ValueError:
            seconds = None
        if seconds is None:
            msg = f"--windows: expected ACTION=SECONDS[,ACTION=SECONDS...], got {text!r}"
            raise ConfigError(msg)
        out[name] = seconds
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", required=True,
                        help="log backend: a folder (local log) or kafka://host:port[?outage_timeout=S]")
    parser.add_argument("--store", required=True, help="folder of the joiner's LMDB state")
    parser.add_argument("--features", default="features", help="features log name")
    parser.add_argument("--actions", default="actions", help="actions log name")
    parser.add_argument("--examples", default="examples", help="examples log name (output)")
    parser.add_argument("--dead-letters", default="dead-letters", help="dead-letter log name (output)")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of logs this run creates")
    parser.add_argument("--windows", default="click=3600", help="window per action, s: click=3600,like=86400")
    parser.add_argument("--lateness", type=float, default=60.0, help="allowed lateness, seconds of data time")
    parser.add_argument("--early-ttl", type=float, default=60.0, help="how long early actions wait, seconds")
    parser.add_argument("--negative-rate", type=float, default=1.0, help="keep rate of negative examples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the negative-sampling hash")
    parser.add_argument("--cache-entries", type=int, default=200_000, help="in-memory cache entries")
    parser.add_argument("--cache-mb", type=float, default=256.0, help="in-memory cache bound, MiB")
    parser.add_argument("--map-size-gb", type=float, default=8.0, help="LMDB map size, GiB")
    parser.add_argument("--batch", type=int, default=20_000, help="input records per batch (one commit)")
    parser.add_argument("--poll", type=int, default=2_000, help="records per poll of one partition")
    parser.add_argument("--poll-timeout", type=float, default=None,
                        help="seconds a poll waits (default: 0, or 0.2 on kafka://)")
    parser.add_argument("--early-positives", action="store_true",
                        help="emit an example when a positive joins (Monolith) instead of at window close")
    parser.add_argument("--group", default="joiner", help="consumer group on the input logs")
    parser.add_argument("--commit-consumers-s", type=float, default=1.0,
                        help="least seconds between commits of the group's positions (lag monitoring)")
    parser.add_argument("--until-idle", action="store_true", help="exit once the inputs are drained")
    parser.add_argument("--stats-every", type=float, default=10.0, help="print stats every S s (0: never)")
    parser.add_argument_group(
        "exit status",
        "0  stopped (inputs drained with --until-idle, or SIGTERM/SIGINT)\n"
        "2  bad configuration\n"
        f"{EXIT_LOG_FAILED}  the log failed, e.g. a Kafka broker unavailable for longer than its\n"
        "   outage_timeout (one line on stderr names the log, the broker and the error)",
    )


def _original(e: LogError) -> LogError:
    """The first LogError in `e`'s context chain: the one that began a failure (a rollback after
    it may fail again, for the same reason)."""
    first, seen = e, set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, LogError):
            first = cur
        cur = cur.__context__
    return first


def _close_all(*closers: Callable[[], object]) -> LogError | None:
    """Call every closer (each even when one before failed); the first LogError among them."""
    failed = None
    for close in closers:
        try:
            close()
        except LogError as e:
            failed = failed or e
    return failed


def main(args: argparse.Namespace) -> int:
    from freshrec.pipeline import Pipeline, PipelineConfig
    from freshrec.stream.joiner import JOIN_TABLES, JoinerConfig
    from freshrec.stream.sampling import SamplingConfig
    from freshrec.stream.store import LmdbStore

    stop = {"now": False}

    def _stop(signum, frame) -> None:  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s freshrec join: %(message)s",
                        datefmt="%H:%M:%S")
    backend = store = None
    try:
        cfg = JoinerConfig(
            windows=parse_windows(args.windows),
            allowed_lateness_s=args.lateness,
            early_action_ttl_s=args.early_ttl,
            cache_entries=args.cache_entries,
            cache_bytes=int(args.cache_mb * (1 << 20)),
            batch_records=args.batch,
            poll_records=args.poll,
            poll_timeout_s=(0.2 if args.log.startswith("kafka://") else 0.0)
            if args.poll_timeout is None else args.poll_timeout,
            sampling=SamplingConfig(negative_rate=args.negative_rate, seed=args.seed),
            emit_early_positives=args.early_positives,
            group=args.group,
            commit_consumers_s=args.commit_consumers_s,
        )
        pipe = Pipeline(
            PipelineConfig(
                log=args.log,
                features=args.features,
                actions=args.actions,
                examples=args.examples,
                dead_letters=args.dead_letters,
                partitions=args.partitions,
                joiner=cfg,
            )
        )
        backend = pipe.backend
        store = LmdbStore(args.store, JOIN_TABLES, map_size=int(args.map_size_gb * (1 << 30)))
        joiner = pipe.joiner(store)
    except LogError as e:
        _close_all(*(x.close for x in (store, backend) if x is not None))
        print(f"freshrec join: {_original(e)}", file=sys.stderr)
        return EXIT_LOG_FAILED
    except FreshrecError as e:
        print(f"freshrec join: {e}", file=sys.stderr)
        return 2
    last = [time.monotonic()]

    def report(j) -> None:
        if args.stats_every > 0 and time.monotonic() - last[0] >= args.stats_every:
            last[0] = time.monotonic()
            s = j.stats
            print(f"join: features={s.features} actions={s.actions} examples={s.examples} "
                  f"pending={j.pending()} early={j.early()} wm={j.watermark:.3f}", flush=True)

    failed: LogError | None = None
    try:
        joiner.run(until_idle=args.until_idle, should_stop=lambda: stop["now"], on_batch=report)
    except LogError as e:
        failed = e
    finally:
        closed = _close_all(joiner.close, store.close, backend.close)
    failed = failed or closed
    if failed is not None:
        print(f"freshrec join: {_original(failed)}", file=sys.stderr)
        return EXIT_LOG_FAILED
    print(json.dumps({"stats": dataclasses.asdict(joiner.stats)}), flush=True)
    return 0
