"""Retention of the local log: what it may delete (whole sealed segments, oldest first, by size and
age, never past the lowest committed position of a registered group), as a pure plan
(`plan_retention`) and as the log's methods (`Retaining`, a part of `LocalLog`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from freshrec.errors import LogError
from freshrec.stream.local_consumer import group_file, read_positions
from freshrec.stream.local_segments import (
    SegmentIndex,
    fsync_dir,
    segment_bases,
    segment_path,
    write_json_atomic,
)

__all__ = ["Retaining", "Retention", "SegmentInfo", "plan_retention"]


@dataclass(frozen=True, kw_only=True)
class Retention:
    """What a local log may delete (`LocalLog.retain`): whole sealed segments, oldest first.

    groups: the consumer groups registered for retention. No segment holding a record at or
        after the lowest committed position of any of them is deleted (a group that never
        committed is at 0 and holds everything); an empty tuple: no consumer holds the log.
    max_bytes: delete while the log's segments (all partitions) take more than this many bytes.
    max_age_s: delete sealed segments last written more than this many seconds ago.
    The active segment of a partition is never deleted; nor is a quarantine file.
    """

    groups: tuple[str, ...]
    max_bytes: int | None = None
    max_age_s: float | None = None

    def validate(self) -> None:
        if self.max_bytes is not None and self.max_bytes < 0:
            msg = f"retention max_bytes must be >= 0, got {self.max_bytes}"
            raise LogError(msg)
        if self.max_age_s is not None and not self.max_age_s >= 0:
            msg = f"retention max_age_s must be >= 0, got {self.max_age_s}"
            raise LogError(msg)


class SegmentInfo(NamedTuple):
    """A segment on disk: partition, first offset (`base`), the next segment's base (`end`;
    None for the active one), bytes, and the time it was last written (s since the epoch)."""

    partition: int
    base: int
    end: int | None
    size: int
    mtime: float


def plan_retention(segments: Sequence[SegmentInfo], holds: Mapping[int, int], policy: Retention,
                   now: float) -> list[SegmentInfo]:
    """The segments `policy` deletes (pure): per partition, only a run from its oldest segment,
    only sealed ones (`end` not None) whose records all lie below `holds[partition]` (the lowest
    committed position of the registered groups; absent: no hold). First those older than
    `max_age_s`, then, oldest first across partitions, while the log takes more than `max_bytes`.

    Example: p0 segments at 0, 100, 200 (active), 1 MB each, hold 150, max_bytes 1 MB: only
    segment 0 goes (segment 100 holds offsets 100..199, some >= 150).
    """
    parts: dict[int, list[SegmentInfo]] = {}
    for info in sorted(segments, key=lambda g: (g.partition, g.base)):
        parts.setdefault(info.partition, []).append(info)
    front = dict.fromkeys(parts, 0)
    total = sum(g.size for g in segments)
    out: list[SegmentInfo] = []

    def deletable(p: int) -> SegmentInfo | None:
        segs, i = parts[p], front[p]
        if i >= len(segs):
            return None
        seg = segs[i]
        hold = holds.get(p)
        ok = seg.end is not None and (hold is None or seg.end <= hold)
        return seg if ok else None

    def take(seg: SegmentInfo) -> None:
        nonlocal total
        out.append(seg)
        front[seg.partition] += 1
        total -= seg.size

    if policy.max_age_s is not None:
        for p in parts:
            while (seg := deletable(p)) is not None and now - seg.mtime > policy.max_age_s:
                take(seg)
    if policy.max_bytes is not None:
        while total > policy.max_bytes:
            fronts = [g for g in map(deletable, parts) if g is not None]
            if not fronts:
                break
            take(min(fronts, key=lambda g: (g.mtime, g.partition)))
    return out


class Retaining:
    """`LocalLog`'s retention methods (the policy lives in `root/name/retention.json`)."""

    name: str
    path: Path
    _partitions: int
    _index: dict[tuple[int, int], SegmentIndex]
    _index_lock: threading.Lock

    def retain(self, *, groups: Sequence[str], max_bytes: int | None = None,
               max_age_s: float | None = None, now: float | None = None) -> Retention:
        """Register a retention policy (`Retention`) for this log, durably (`retention.json`,
        replacing any earlier one), and apply it once (at `now`, see `apply_retention`). The
        writer applies it again after each segment roll; `apply_retention` on demand."""
        policy = Retention(groups=tuple(groups), max_bytes=max_bytes, max_age_s=max_age_s)
        policy.validate()
        for g in policy.groups:
            group_file(self.path, g)  # the group name is valid
        try:
            write_json_atomic(self.path / "retention.json", {
                "groups": list(policy.groups), "max_bytes": max_bytes, "max_age_s": max_age_s})
        except OSError as e:
            msg = f"log {self.name!r}: cannot write {self.path / 'retention.json'}: {e}"
            raise LogError(msg) from e
        self.apply_retention(now)
        return policy

    def retention(self) -> Retention | None:
        """The registered retention policy, or None."""
        f = self.path / "retention.json"
        try:
            doc = json.loads(f.read_text())
            return Retention(groups=tuple(doc["groups"]), max_bytes=doc.get("max_bytes"),
                             max_age_s=doc.get("max_age_s"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            msg = f"log {self.name!r}: cannot read {f}: {e}"
            raise LogError(msg) from e

    def holds(self, groups: Sequence[str]) -> dict[int, tuple[int, str]]:
        """Per partition, the lowest committed position of `groups` and the group at it (a
        group that never committed a partition is at 0 there); {} for no groups."""
        out: dict[int, tuple[int, str]] = {}
        for g in groups:
            committed = read_positions(group_file(self.path, g), g)
            for p in range(self._partitions):
                pos = committed.get(p, 0)
                if p not in out or pos < out[p][0]:
                    out[p] = (pos, g)
        return out

    def segments(self) -> list[SegmentInfo]:
        """Every segment on disk, per partition in offset order."""
        out = []
        for p in range(self._partitions):
            pdir = self.path / f"p{p}"
            bases = segment_bases(pdir)
            for i, b in enumerate(bases):
                try:
                    st = os.stat(segment_path(pdir, b))
                except FileNotFoundError:
                    continue  # deleted since the listing
                out.append(SegmentInfo(p, b, bases[i + 1] if i + 1 < len(bases) else None, st.st_size,
                                       st.st_mtime))
        return out

    def apply_retention(self, now: float | None = None) -> list[Path]:
        """Delete the segments the registered policy allows (`plan_retention`, holds read now);
        returns their paths. `now`: seconds since the epoch (default: the wall clock, which is
        what file times are in)."""
        policy = self.retention()
        if policy is None:
            return []
        holds = {p: pos for p, (pos, _) in self.holds(policy.groups).items()}
        plan = plan_retention(self.segments(), holds, policy, time.time() if now is None else now)
        gone: list[Path] = []
        try:
            for seg in plan:
                path = segment_path(self.path / f"p{seg.partition}", seg.base)
                with contextlib.suppress(FileNotFoundError):  # another process deleted it first
                    path.unlink()
                gone.append(path)
                with self._index_lock:
                    self._index.pop((seg.partition, seg.base), None)
            for p in sorted({seg.partition for seg in plan}):
                fsync_dir(self.path / f"p{p}")
        except OSError as e:
            msg = f"log {self.name!r}: retention could not delete in {self.path}: {e}"
            raise LogError(msg) from e
        return gone
