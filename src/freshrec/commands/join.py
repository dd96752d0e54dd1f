"""`freshrec join`: run the online joiner as its own process on a log backend."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time

from freshrec.errors import ConfigError, FreshrecError

HELP = "run the online joiner: features + actions logs -> examples log (LMDB state, restartable)"
EXAMPLE = "freshrec join --log ./logs --store ./joiner-state --windows click=3600,like=86400 --until-idle"


def parse_windows(text: str) -> dict[str, float]:
    """`click=3600,like=86400` -> {"click": 3600.0, "like": 86400.0}."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            msg = f"--windows: expected ACTION=SECONDS[,ACTION=SECONDS...], got {text!r}"
            raise ConfigError(msg) from None
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", required=True, help="log backend: a folder (local log) or kafka://host:port")
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


def main(args: argparse.Namespace) -> int:
    from freshrec.stream.backends import open_backend
    from freshrec.stream.joiner import JOIN_TABLES, Joiner, JoinerConfig
    from freshrec.stream.sampling import SamplingConfig
    from freshrec.stream.store import LmdbStore

    stop = {"now": False}

    def _stop(signum, frame) -> None:  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
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
        backend = open_backend(args.log)
        store = LmdbStore(args.store, JOIN_TABLES, map_size=int(args.map_size_gb * (1 << 30)))
        p = args.partitions
        joiner = Joiner(
            config=cfg,
            features=backend.log(args.features, partitions=p),
            actions=backend.log(args.actions, partitions=p),
            examples=backend.log(args.examples, partitions=p),
            dead_letters=backend.log(args.dead_letters, partitions=1),
            store=store,
        )
    except FreshrecError as e:
        print(f"freshrec join: {e}", file=sys.stderr)
        return 2
    last = [time.monotonic()]

    def report(j: Joiner) -> None:
        if args.stats_every > 0 and time.monotonic() - last[0] >= args.stats_every:
            last[0] = time.monotonic()
            s = j.stats
            print(f"join: features={s.features} actions={s.actions} examples={s.examples} "
                  f"pending={j.pending()} early={j.early()} wm={j.watermark:.3f}", flush=True)

    try:
        stats = joiner.run(until_idle=args.until_idle, should_stop=lambda: stop["now"], on_batch=report)
    finally:
        joiner.close()
        store.close()
        backend.close()
    print(json.dumps({"stats": dataclasses.asdict(stats)}), flush=True)
    return 0
