"""`freshrec import`: write the files a schema describes into the features / actions logs.

The schema is the `[schema]` table of the config file (`freshrec.data.schema`; shipped ones in
`examples/`). Events go out in data-time order (`--speedup` paces them), the refused rows to the
dead-letter log with their reasons. Rerun after a kill or a full disk, it continues where it stopped
and never writes an event twice (the state file, `--state`; see `freshrec.stream.importer`).

Exit status: 0 done; 2 a configuration or schema error (one line naming the field and file);
3 a log failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HELP = "import your own event files (CSV/TSV/Parquet/JSON lines, a [schema] in the config) into the logs"
EXAMPLE = "freshrec import --config examples/shop-behaviour.toml --log ./logs --speedup 0"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", required=True, help="log backend: a folder (local log) or kafka://host:port")
    parser.add_argument(
        "--files", default=None, help="read these files/globs (comma separated) instead of the schema's"
    )
    parser.add_argument(
        "--dataset", default=None, help="a shipped schema instead of [schema]: movielens, globo, criteo"
    )
    parser.add_argument("--features", default="features", help="features log name")
    parser.add_argument("--actions", default="actions", help="actions log name")
    parser.add_argument("--dead-letters", default="dead-letters", help="dead-letter log name (refused rows)")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of logs this run creates")
    parser.add_argument("--state", default=None, help="resume state file (default: LOG/_import/NAME.json)")
    parser.add_argument(
        "--snapshot",
        default=None,
        help="check the schema against this snapshot and take its dense statistics",
    )
    parser.add_argument("--limit", type=int, default=None, help="import the first N rows (time order)")
    parser.add_argument("--speedup", type=float, default=0.0, help="data time / wall time (0: no pacing)")
    parser.add_argument(
        "--flush-every", type=int, default=50_000, help="records between flushes (and state writes)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="helper threads framing events ahead of the log's writes"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument_group(
        "exit status",
        "0  imported (or nothing left to import)\n"
        "2  a configuration or schema error (one line names the field and the file)\n"
        "3  a log failure (disk full, Kafka away, another writer): rerun to continue",
    )


def resolve_schema(args: argparse.Namespace, command: str):
    """The schema of `--dataset` (shipped) or of the `[schema]` table of `--config`, `--files` applied."""
    from freshrec.data.schema import load_schema, shipped_schema
    from freshrec.errors import SchemaError

    files = [f for f in (args.files or "").split(",") if f.strip()]
    if getattr(args, "dataset", None):
        return shipped_schema(args.dataset, files[0] if files else getattr(args, "data", None))
    if args.config is None:
        msg = "needs --config FILE.toml with a [schema] table (or --dataset NAME)"
        raise SchemaError(msg, field="schema")
    overrides = {"files": [str(Path(f).resolve()) for f in files]} if files else None
    return load_schema(args.config, overrides=overrides)


def main(args: argparse.Namespace) -> int:
    from freshrec.errors import FreshrecError

    try:
        schema = resolve_schema(args, "freshrec import")
    except FreshrecError as e:
        print(f"freshrec import: {e}", file=sys.stderr)
        return 2
    code, summary = run_import(schema, args, command="freshrec import")
    if summary is None:
        return code
    if args.json:
        print(json.dumps(summary))
    else:
        reasons = summary["refused_reasons"]
        refused = ", ".join(f"{n} {r}" for r, n in reasons.items())
        print(
            f"import {schema.name}: {summary['rows_read']} rows read, {summary['rows_refused']} refused"
            + (f" ({refused}; on log {args.dead_letters!r})" if reasons else "")
            + f"; {summary['features_written']} feature events, {summary['actions_written']} actions written"
            + (f" ({summary['already_written']} already in the logs)" if summary["already_written"] else "")
            + f" in {summary['seconds']} s"
        )
    return code


def run_import(schema, args: argparse.Namespace, *, command: str) -> tuple[int, dict | None]:
    """Import `schema`'s files with the options of `args` (those of `configure`; missing ones take
    their defaults): (exit status, the summary), the summary None after an error printed as one line."""
    from tqdm import tqdm

    from freshrec.data.schema_data import dense_stats, read_columns
    from freshrec.errors import FreshrecError, LogError
    from freshrec.stream.backends import open_backend
    from freshrec.stream.importer import import_to_logs, plan_events

    defaults = {
        "dead_letters": "dead-letters",
        "state": None,
        "snapshot": None,
        "flush_every": 50_000,
        "threads": 1,
        "json": False,
        "limit": None,
    }
    for k, v in defaults.items():
        if not hasattr(args, k):
            setattr(args, k, v)
    if args.threads < 1:  # before any file is read
        print(f"{command}: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2, None
    t0 = time.monotonic()
    try:
        stored = None
        if args.snapshot:  # checked before any file is read
            from freshrec.ps.schema_check import snapshot_schema

            stored = snapshot_schema(args.snapshot, required=True)
            schema.check_matches(stored, where=args.snapshot)
        cols = read_columns(schema, limit=args.limit)
        schema = schema.with_types(cols.types)
        if stored is not None:
            schema.check_matches(stored, where=args.snapshot)  # the types the data showed, too
            schema = schema.with_stats(stored.stats)
        else:
            schema = schema.with_stats(dense_stats(schema, cols))
        options = {"limit": args.limit, "files": list(cols.files)}
        fingerprint = _fingerprint(schema, options)
        plan = plan_events(schema, cols, fingerprint=fingerprint)
        backend = open_backend(args.log)
    except FreshrecError as e:
        print(f"{command}: {e}", file=sys.stderr)
        return 2, None
    read_s = time.monotonic() - t0
    state = Path(args.state) if args.state else _default_state(args.log, schema.name)
    bar = tqdm(total=len(plan), unit="ev", disable=args.no_progress or args.json, file=sys.stderr)
    try:
        logs = [
            backend.log(n, partitions=args.partitions)
            for n in (args.features, args.actions, args.dead_letters)
        ]
        stats = import_to_logs(
            plan,
            *logs,
            state=state,
            speedup=args.speedup,
            clock=time.monotonic,
            sleep=time.sleep,
            flush_every=max(1, args.flush_every),
            progress=bar.update,
            threads=args.threads,
        )
    except (LogError, OSError) as e:
        print(f"{command}: {e}", file=sys.stderr)
        return 3, None
    except FreshrecError as e:
        print(f"{command}: {e}", file=sys.stderr)
        return 2, None
    finally:
        bar.close()
        backend.close()
    reasons: dict[str, int] = {}
    for r in cols.refused:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    summary = {
        "schema": schema.name,
        "files": list(cols.files),
        "rows_read": cols.rows_read,
        "rows_refused": len(cols.refused),
        "refused_reasons": reasons,
        **{k: v for k, v in plan.info.items() if k not in ("rows_read", "rows_refused")},
        "events_planned": stats.planned,
        "already_written": stats.skipped,
        "features_written": stats.features,
        "actions_written": stats.actions,
        "dead_letters_written": stats.dead_letters,
        "resumed": stats.resumed,
        "state": str(state),
        "read_s": round(read_s, 3),
        "seconds": round(time.monotonic() - t0, 3),
    }
    summary["first_ts"], summary["last_ts"] = stats.first_ts, stats.last_ts
    return 0, summary


def _fingerprint(schema, options: dict) -> str:
    import hashlib
    import os

    files = []
    for f in options["files"]:
        st = os.stat(f)
        files.append([f, st.st_size, int(st.st_mtime)])
    blob = json.dumps({"schema": schema.to_dict(), "limit": options["limit"], "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _default_state(log: str, name: str) -> Path:
    if "://" in log:
        return Path("freshrec-state") / f"import-{name}.json"
    return Path(log) / "_import" / f"{name}.json"
