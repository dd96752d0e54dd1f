"""Retention of the local log: whole sealed segments only, by size and age, and never a segment
holding a record at or after the lowest committed position of a group registered for it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import LogError, OffsetOutOfRange
from freshrec.stream.local_log import LocalBackend, LocalLogConfig, Retention, SegmentInfo, plan_retention

CFG = LocalLogConfig(segment_bytes=2048, buffer_bytes=0)


@st.composite
def _layouts(draw):
    segments, holds = [], {}
    for p in range(draw(st.integers(1, 3))):
        base, mtime = 0, draw(st.floats(0, 50))
        n = draw(st.integers(1, 6))
        for i in range(n):
            count = draw(st.integers(1, 50))
            end = None if i == n - 1 else base + count
            segments.append(SegmentInfo(p, base, end, draw(st.integers(0, 1000)), mtime))
            base, mtime = base + count, mtime + draw(st.floats(0, 20))  # later segments are written later
        if draw(st.booleans()):
            holds[p] = draw(st.integers(0, base + 5))
    policy = Retention(groups=("g",), max_bytes=draw(st.none() | st.integers(0, 4000)),
                       max_age_s=draw(st.none() | st.floats(0, 100)))
    return segments, holds, policy, draw(st.floats(0, 200))


@settings(max_examples=300, deadline=None)
@given(_layouts())
def test_plan_deletes_only_unheld_sealed_prefixes_and_no_more_than_needed(layout):
    segments, holds, policy, now = layout
    gone = plan_retention(segments, holds, policy, now)
    assert len(set(gone)) == len(gone)
    kept = [g for g in segments if g not in gone]
    for g in gone:
        assert g.end is not None  # never the active segment
        assert g.partition not in holds or g.end <= holds[g.partition]  # nothing at or after the hold
        assert all(k.base > g.base for k in kept if k.partition == g.partition)  # the oldest ones only

    def front(p):  # the segment retention would look at next in partition p, if it may go
        left = [k for k in kept if k.partition == p]
        g = left[0] if left else None
        ok = g is not None and g.end is not None and (p not in holds or g.end <= holds[p])
        return g if ok else None

    fronts = [g for g in map(front, {g.partition for g in segments}) if g is not None]
    if policy.max_age_s is not None:  # nothing deletable is left that is too old
        assert all(now - g.mtime <= policy.max_age_s for g in fronts)
    total = sum(k.size for k in kept)
    if policy.max_bytes is not None and total > policy.max_bytes:
        assert fronts == []  # still too big only when nothing more may go
    by_size = [g for g in gone if policy.max_age_s is None or now - g.mtime <= policy.max_age_s]
    if policy.max_bytes is None:
        assert by_size == []
    elif by_size:  # the size rule deleted, and stopped as soon as the log fit
        assert by_size == gone[len(gone) - len(by_size):]
        assert total + gone[-1].size > policy.max_bytes


def _fill(log, n, start=0):
    log.append_many([(b"k%d" % (i % 3), b"record %06d " % i + b"." * 40) for i in range(start, start + n)])
    log.flush()


def _segs(root, p=0):
    return sorted((root / "x" / f"p{p}").glob("*.seg"))


def test_size_retention_never_deletes_what_a_registered_group_has_not_committed(tmp_path):
    log = LocalBackend(tmp_path, config=CFG).log("x")
    _fill(log, 500)
    c = log.consumer("trainer")
    c.poll(200)
    c.commit()  # trainer at 200
    log.consumer("idle")  # registered below, never commits: holds everything
    assert log.retain(groups=["trainer", "idle"], max_bytes=0).max_bytes == 0
    assert int(_segs(tmp_path)[0].stem) == 0  # 'idle' is at 0
    log.retain(groups=["trainer"], max_bytes=0)  # only trainer now
    first = int(_segs(tmp_path)[0].stem)
    assert 0 < first <= 200 and first + 50 > 200  # every segment below 200 went, the one holding 200 stayed
    assert [r.offset for r in log.consumer("trainer").poll(1000)] == list(range(200, 500))
    with pytest.raises(OffsetOutOfRange):
        log.consumer("late").seek(0, 0)
    c.poll(1000)
    c.commit()  # trainer at 500
    _fill(log, 100, 500)  # rolls apply retention: everything below 500 goes
    bases = [int(f.stem) for f in _segs(tmp_path)]
    assert bases[0] <= 500 < bases[1]
    assert [r.offset for r in c.poll(1000)] == list(range(500, 600))
    assert log.end_offsets() == [600]
    log.close()


def test_age_retention_by_file_time_with_an_injected_now(tmp_path):
    log = LocalBackend(tmp_path, config=CFG).log("x")
    _fill(log, 300)
    segs = _segs(tmp_path)
    for i, s in enumerate(segs):
        os.utime(s, (1000.0 + i, 1000.0 + i))
    log.retain(groups=[], max_age_s=1e12)  # nothing is that old
    assert _segs(tmp_path) == segs
    log.retain(groups=[], max_age_s=10, now=1000.0 + 2.5 + 10)
    assert _segs(tmp_path) == segs[3:]
    assert log.apply_retention(now=1000.0 + 2.5 + 10) == []
    assert log.apply_retention(now=1e12) == segs[3:-1]  # never the active segment
    log.close()


def test_retention_is_refused_when_badly_configured(tmp_path):
    log = LocalBackend(tmp_path).log("x")
    with pytest.raises(LogError):
        log.retain(groups=["g"], max_bytes=-1)
    with pytest.raises(LogError):
        log.retain(groups=[""], max_bytes=1)
    assert log.retention() is None
    log.close()


def test_log_du_shows_use_and_what_holds_it(tmp_path):
    log = LocalBackend(tmp_path, config=CFG).log("x", partitions=2)
    _fill(log, 400)
    c = log.consumer("trainer")
    c.commit({0: 50, 1: 0})
    log.retain(groups=["trainer"], max_bytes=1)
    log.close()
    out = subprocess.run([sys.executable, "-m", "freshrec.cli", "log", "du", "--log", f"local://{tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    size = sum(f.stat().st_size for f in tmp_path.glob("x/p*/*.seg"))
    assert lines[0].startswith(f"log 'x' {tmp_path / 'x'}: 2 partitions, ") and f"{size:,} bytes" in lines[0]
    assert lines[0].endswith("retention: at most 1 bytes, held for 'trainer'")
    assert "held by group 'trainer' (committed 50)" in lines[1]
    assert "held by group 'trainer' (committed 0)" in lines[2]
    assert lines[3] == "log 'x' group 'trainer': p0=50 p1=0 (registered for retention)"
    assert lines[-1] == f"log du {tmp_path}: 1 logs, {size:,} bytes"
