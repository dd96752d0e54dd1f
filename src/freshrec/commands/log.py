"""`freshrec log check | repair | du`: verify the local log's files, move corruption aside, show disk use.

`check` walks every segment of every log (or of `--topic`), verifies every checksum and prints
one line per segment (records, bytes, and any bad span with its file, byte range and offsets),
one per quarantined file, and a summary line last. Exit code 0: clean (a torn tail, which the
next writer cuts, is clean); 1: corrupt; 2: it could not run.

`repair` takes each log's writer lock (stop the writer first; stop its readers too) and moves
every bad span into a quarantine file next to its segment - nothing is deleted - keeping every
valid record readable, in order, at its offset (the span's offsets become a hole that readers
step over; see `freshrec.stream.local_segments`). It prints one line per moved span: the file,
the byte range, the offsets it held and the quarantine file. Exit code 0 when the logs are
clean afterwards.

`du` prints each log's disk use, its retention policy (`LocalLog.retain`), and per partition
what holds the bytes: the active segment, the sealed segments at or after the lowest committed
position of the registered groups (naming the group), and what retention may delete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from freshrec.errors import ConfigError, FreshrecError

HELP = "local log files: check (every checksum), repair (bad spans moved aside, offsets kept), du (disk use)"
EXAMPLE = "freshrec log check --log local:///var/lib/freshrec/logs --topic examples"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{check,repair,du}")
    for name, text in [
        ("check", "report every log/partition/segment: records, bytes, corruption (exit 1 if any)"),
        ("repair", "move each bad span into a quarantine file next to its segment; keep every valid record"),
        ("du", "each log's disk use and what holds it (the active segment, retention's consumer groups)"),
    ]:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--log", required=True, help="local log root: local:///path or a folder")
        p.add_argument("--topic", default=None, help="only this log (default: every log under the root)")


def log_root(url: str) -> Path:
    """The folder a local-log URL names (local:///path, file:///path or a plain path); it must exist."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("local", "file") or parts.netloc not in ("", "localhost"):
            msg = f"--log {url!r}: only the local log has files to check; expected local:///path"
            raise ConfigError(msg)
        url = unquote(parts.path)
    root = Path(url)
    if not root.is_dir():
        msg = f"--log {url!r}: no such folder"
        raise ConfigError(msg)
    return root


def log_names(root: Path, topic: str | None) -> list[str]:
    """The logs under `root` (folders with a meta.json), or just `topic` (which must be one)."""
    if topic is not None:
        if not (root / topic / "meta.json").is_file():
            msg = f"--topic {topic!r}: no log of that name under {root}"
            raise ConfigError(msg)
        return [topic]
    return sorted(d.name for d in root.iterdir() if (d / "meta.json").is_file())


def _offsets(first: int, count: int) -> str:
    if count == 0:
        return "no offset"
    return f"offset {first}" if count == 1 else f"offsets {first}..{first + count - 1}"


def _check(root: Path, names: list[str]) -> int:
    from freshrec.stream.local_log import LocalLog

    logs = segments = records = size = bad = 0
    for name in names:
        log = LocalLog(root, name)
        logs += 1
        for p, checks in log.check().items():
            for chk in checks:
                at = f"log {name!r} p{p} {chk.path}"
                segments += 1
                records += chk.records
                size += chk.size
                state = "ok"
                if chk.spans:
                    state = f"CORRUPT: {len(chk.spans)} bad span(s)"
                if chk.problem:
                    state = f"CORRUPT: {chk.problem}"
                if chk.tail is not None:
                    what = "torn tail (an incomplete last record: the next writer cuts it)" \
                        if chk.tail.kind == "torn" else f"{chk.tail.kind} last record"
                    state = f"{what}, {chk.tail.size - chk.tail.start} bytes at byte {chk.tail.start}"
                bad += len(chk.spans) + bool(chk.problem) + (chk.tail is not None and chk.tail.kind != "torn")
                active = "" if chk.sealed else " (active)"
                print(f"{at}{active}: {chk.records:,} records, {chk.size:,} bytes, {state}")
                for s in chk.spans:
                    held = _offsets(s.first, s.count) + ("" if s.exact else ", estimated")
                    print(f"{at}: CORRUPT at byte {s.start}: {s.end - s.start} bytes to byte {s.end} "
                          f"({held}): {s.reason}")
                if chk.tail is not None and chk.tail.kind != "torn":
                    print(f"{at}: CORRUPT at byte {chk.tail.start}: {chk.tail.reason}")
            for q in sorted((log.path / f"p{p}").glob("*.quarantine")):
                print(f"log {name!r} p{p} {q}: quarantined, {q.stat().st_size:,} bytes (see {q.name}.json)")
        log.close()
    verdict = "clean" if not bad else (f"CORRUPT: {bad} problem(s); `freshrec log repair --log {root}` "
                                       "moves the bad spans aside")
    print(f"log check {root}: {logs} logs, {segments} segments, {records:,} records, {size:,} bytes: "
          f"{verdict}")
    return 1 if bad else 0


def _repair(root: Path, names: list[str]) -> int:
    from freshrec.stream.local_log import LocalLog

    total = 0
    for name in names:
        log = LocalLog(root, name)
        try:
            moved = log.repair()
            for m in moved:
                s = m.span
                print(f"log {name!r} {m.segment}: moved bytes {s.start}..{s.end} ({s.end - s.start} bytes, "
                      f"{_offsets(s.first, s.count)}) to {m.quarantine}: {s.reason}")
            total += len(moved)
            left = [c for checks in log.check().values() for c in checks if not c.ok]
        finally:
            log.close()
        if left:
            print(f"freshrec log repair: log {name!r} still has problems, e.g. {left[0].path}: "
                  f"{left[0].problem or 'bad spans'}", file=sys.stderr)
            return 1
    print(f"log repair {root}: {len(names)} logs, {total} span(s) moved aside: clean")
    return 0


def _groups(log_path: Path) -> dict[str, dict[int, int]]:
    """Every consumer group with committed positions in a log: name -> {partition: position}."""
    import json

    out = {}
    for f in sorted((log_path / "consumers").glob("*.json")):
        try:
            doc = json.loads(f.read_text())
            out[str(doc["group"])] = {int(p): int(o) for p, o in doc.get("positions", {}).items()}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _du(root: Path, names: list[str]) -> int:
    from freshrec.stream.local_log import LocalLog

    total = 0
    for name in names:
        log = LocalLog(root, name)
        segs = log.segments()
        policy = log.retention()
        holds = log.holds(policy.groups) if policy else {}
        quarantined = sum(q.stat().st_size for q in log.path.glob("p*/*.quarantine"))
        size = sum(g.size for g in segs)
        total += size + quarantined
        if policy is None:
            rule = "no retention registered: everything is kept"
        else:
            limits = [f"at most {policy.max_bytes:,} bytes" if policy.max_bytes is not None else "",
                      f"at most {policy.max_age_s:,.0f} s old" if policy.max_age_s is not None else ""]
            who = ", ".join(repr(g) for g in policy.groups) or "no group"
            rule = f"retention: {', '.join(x for x in limits if x) or 'no limit'}, held for {who}"
        print(f"log {name!r} {log.path}: {log.partitions} partitions, {len(segs)} segments, {size:,} bytes, "
              f"{quarantined:,} bytes quarantined; {rule}")
        for p in range(log.partitions):
            mine = [g for g in segs if g.partition == p]
            if not mine:
                print(f"log {name!r} p{p}: empty")
                continue
            active = sum(g.size for g in mine if g.end is None)
            hold = holds.get(p)
            held = sum(g.size for g in mine if g.end is not None and hold is not None and g.end > hold[0])
            free = sum(g.size for g in mine if g.end is not None) - held
            by = f", {held:,} bytes held by group {hold[1]!r} (committed {hold[0]:,})" if hold else ""
            can = f", {free:,} bytes retention may delete" if policy else ""
            print(f"log {name!r} p{p}: {len(mine)} segments, {sum(g.size for g in mine):,} bytes from offset "
                  f"{mine[0].base:,}; {active:,} bytes active{by}{can}")
        registered = set(policy.groups) if policy else set()
        for g, pos in _groups(log.path).items():
            at = " ".join(f"p{p}={o:,}" for p, o in sorted(pos.items()))
            note = "registered for retention" if g in registered else "not registered: not waited for"
            print(f"log {name!r} group {g!r}: {at} ({note})")
        log.close()
    print(f"log du {root}: {len(names)} logs, {total:,} bytes")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        root = log_root(args.log)
        names = log_names(root, args.topic)
        if args.action == "du":
            return _du(root, names)
        return _check(root, names) if args.action == "check" else _repair(root, names)
    except (FreshrecError, OSError) as e:
        print(f"freshrec log {args.action}: {e}", file=sys.stderr)
        return 2
