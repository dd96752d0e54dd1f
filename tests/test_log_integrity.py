"""Nothing lost to one bad byte: in the local log, corruption is an error naming the file and the
byte, never a silent stop and never a cut; a torn tail is still cut; `repair` moves the bad
bytes aside and keeps every other record at its offset. Flips are seeded; every assertion
message carries the seed, the file and the byte."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from freshrec.errors import CorruptLogError, LogError
from freshrec.stream import local_segments
from freshrec.stream.local_log import LocalBackend, LocalLog, LocalLogConfig

CFG = LocalLogConfig(segment_bytes=2048)
N = 600


def _write(root: Path, *, seed: int, n: int = N, partitions: int = 1) -> list[tuple[bytes | None, bytes]]:
    """n records in log "x" (keys and values of random bytes); with one partition record i has offset i."""
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        key = None if rng.random() < 0.3 else b"k%d" % rng.randrange(9)
        recs.append((key, b"%06d:" % i + rng.randbytes(rng.randrange(0, 40))))
    b = LocalBackend(root, config=CFG)
    b.log("x", partitions=partitions).append_many(recs)
    b.close()
    return recs


def _segments(root: Path, p: int = 0) -> list[Path]:
    return sorted((root / "x" / f"p{p}").glob("*.seg"))


def _frames(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte of each record of a valid segment file."""
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        end = pos + 8 + int.from_bytes(data[pos : pos + 4], "little")
        out.append((pos, end))
        pos = end
    return out


def _flip(path: Path, rng: random.Random, lo: int, hi: int) -> tuple[int, bytes]:
    """XOR one byte in [lo, hi) of `path` with a random non-zero mask: (its index, the new file bytes)."""
    data = bytearray(path.read_bytes())
    i = rng.randrange(lo, hi)
    data[i] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return i, bytes(data)


def _files(root: Path) -> dict[str, int]:
    """Size of every file of log "x" but the writer lock (which a writer rewrites with its pid)."""
    files = (root / "x").rglob("*")
    return {str(f): f.stat().st_size for f in files if f.is_file() and f.name != "writer.lock"}


def _drain(log: LocalLog, group: str) -> list[tuple[int, bytes | None, bytes]]:
    """Every record (offset, key, value) a fresh consumer of `group` reads."""
    c = log.consumer(group)
    out: list[tuple[int, bytes | None, bytes]] = []
    while got := c.poll(10_000):
        out += [(r.offset, r.key, r.value) for r in got]
    c.close()
    return out


def _read_until_error(log: LocalLog, *, blocks: bool) -> tuple[list[bytes], CorruptLogError | None]:
    """The values a consumer reads before polling raises CorruptLogError, and the error."""
    values: list[bytes] = []
    c = log.consumer(f"until-error-{blocks}")
    try:
        while True:
            if blocks:
                got = c.poll_blocks(97)
                values += [b.data[s:e] for b in got for s, e in b.spans.tolist()]
            else:
                got = c.poll(97)
                values += [r.value for r in got]
            if not got:
                return values, None
    except CorruptLogError as e:
        return values, e
    finally:
        c.close()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("where", ["sealed", "active"])
def test_a_flipped_byte_is_an_error_never_a_cut_and_repair_keeps_the_rest(tmp_path, where, seed):
    rng = random.Random(seed)
    recs = _write(tmp_path, seed=seed)
    segs = _segments(tmp_path)
    assert len(segs) >= 4
    seg = rng.choice(segs[:-1]) if where == "sealed" else segs[-1]
    frames = _frames(seg)
    k = rng.randrange(len(frames) - (where == "active"))  # the active one's last record: the next test
    start, end = frames[k]
    byte, damaged = _flip(seg, rng, start, end)
    lost = int(seg.stem) + k  # the offset of the damaged record
    why = f"seed={seed} {where} file={seg.name} byte={byte} record {lost} at bytes {start}..{end}"
    before = _files(tmp_path)

    log = LocalBackend(tmp_path, config=CFG).log("x")
    values, err = _read_until_error(log, blocks=seed % 2 == 1)
    assert err is not None, f"a reader stopped silently after {len(values)} records: {why}"
    assert (err.path, err.offset) == (str(seg), start) and err.offset <= byte and err.reason, f"{err}: {why}"
    assert values == [v for _, v in recs[:lost]], why  # every record before it, then the error
    if lost + 1 < (int(segs[segs.index(seg) + 1].stem) if where == "sealed" else N):
        with pytest.raises(CorruptLogError, match="corrupt"):  # a seek past it: not "out of range"
            log.consumer("seek").seek(0, lost + 1)
    if where == "active":
        with pytest.raises(CorruptLogError) as opening:
            log.append(b"more")  # opening for write refuses, cutting nothing
        assert (opening.value.path, opening.value.offset) == (str(seg), start), why
        with pytest.raises(CorruptLogError):
            log.end_offsets()
    assert _files(tmp_path) == before, f"a file changed size: {why}"

    spans = [(c.path, s) for c in log.check()[0] for s in c.spans]
    assert [(p, s.start, s.end, s.first, s.count) for p, s in spans] == [(seg, start, end, lost, 1)], why
    (moved,) = log.repair()
    assert (moved.segment, moved.span.start, moved.span.end) == (seg, start, end), why
    assert moved.quarantine.read_bytes() == damaged[start:end], why  # moved aside, byte for byte
    note = json.loads(moved.quarantine.with_name(moved.quarantine.name + ".json").read_text())
    assert (note["segment"], note["start"], note["end"]) == (seg.name, start, end), why
    assert note["offsets"] == [lost, lost + 1], why
    log.close()

    log = LocalBackend(tmp_path, config=CFG).log("x")
    want = [(i, key, value) for i, (key, value) in enumerate(recs) if i != lost]
    assert _drain(log, "after") == want, why  # every other record, in order, at its offset
    assert all(c.ok for c in log.check()[0]), why
    assert log.append(b"after") == (0, N), why  # appending goes on after the last offset
    log.close()


@pytest.mark.parametrize("seed", range(6))
def test_a_flipped_byte_in_the_last_record_is_moved_aside_or_cut_as_torn(tmp_path, seed):
    """A damaged last record with nothing after it looks like a write a crash tore: readers wait
    at it; the next writer cuts it when it is incomplete, else moves its bytes aside first."""
    rng = random.Random(seed)
    recs = _write(tmp_path, seed=seed)
    seg = _segments(tmp_path)[-1]
    start, end = _frames(seg)[-1]
    byte, damaged = _flip(seg, rng, start, end)
    length = int.from_bytes(damaged[start : start + 4], "little")
    torn = 2 <= length <= 1 << 30 and start + 8 + length > len(damaged)  # now runs past the end
    why = f"seed={seed} file={seg.name} byte={byte} torn={torn}"

    log = LocalBackend(tmp_path, config=CFG).log("x")
    assert _drain(log, "r") == [(i, k, v) for i, (k, v) in enumerate(recs[:-1])], why
    assert log.end_offsets() == [N - 1], why
    assert log.append(b"after") == (0, N - 1), why
    log.close()
    assert seg.stat().st_size == start + 8 + 2 + len(b"after"), why
    aside = sorted(seg.parent.glob("*-tail-*.quarantine"))
    if torn:
        assert aside == [], why
    else:
        assert [q.name for q in aside] == [f"{N - 1:020d}-tail-1.quarantine"], why
        assert aside[0].read_bytes() == damaged[start:end], why


@pytest.mark.parametrize("seed", range(6))
def test_a_torn_tail_is_cut_and_appending_goes_on(tmp_path, seed):
    rng = random.Random(seed)
    recs = _write(tmp_path, seed=seed)
    seg = _segments(tmp_path)[-1]
    start, end = _frames(seg)[-1]
    cut = rng.randrange(start + 1, end)  # a writer killed mid-record
    with open(seg, "r+b") as f:
        f.truncate(cut)
    why = f"seed={seed} file={seg.name} cut at byte {cut} of the record at bytes {start}..{end}"

    log = LocalBackend(tmp_path, config=CFG).log("x")
    assert log.end_offsets() == [N - 1], why
    c = log.consumer("r")
    assert [(r.offset, r.key, r.value) for r in c.poll(10_000)] == \
        [(i, k, v) for i, (k, v) in enumerate(recs[:-1])], why
    assert c.poll(10, timeout_s=0.02) == [], why  # waits at the torn record, no error
    log.append_many([(b"k", b"after %d" % i) for i in range(3)])  # the writer cuts it, then appends
    log.flush()
    assert seg.stat().st_size == start + 3 * (10 + 1 + 7), why
    assert list(seg.parent.glob("*.quarantine")) == [], why  # an incomplete record is not kept
    assert [(r.offset, r.value) for r in c.poll(10)] == [(N - 1 + i, b"after %d" % i) for i in range(3)], why
    log.close()


def test_a_torn_tail_after_corruption_is_not_cut(tmp_path):
    _write(tmp_path, seed=1)
    seg = _segments(tmp_path)[-1]
    frames = _frames(seg)
    _flip(seg, random.Random(1), frames[1][0], frames[1][1])
    with open(seg, "r+b") as f:
        f.truncate(frames[-1][1] - 3)
    before = _files(tmp_path)
    log = LocalBackend(tmp_path, config=CFG).log("x")
    with pytest.raises(CorruptLogError) as e:
        log.append(b"x")
    assert (e.value.path, e.value.offset) == (str(seg), frames[1][0])
    assert _files(tmp_path) == before
    log.close()


def test_readers_step_over_the_offsets_a_repair_quarantined(tmp_path):
    recs = _write(tmp_path, seed=2)
    segs = _segments(tmp_path)
    lost = []
    for seg in (segs[1], segs[2], segs[-1]):  # first records of two sealed segments and of the active one
        start, end = _frames(seg)[0]
        _flip(seg, random.Random(int(seg.stem)), start, end)
        lost.append(int(seg.stem))
    log = LocalBackend(tmp_path, config=CFG).log("x")
    moved = log.repair()
    assert [(m.span.first, m.span.count) for m in moved] == [(o, 1) for o in lost]
    assert [s.stat().st_size for s in _segments(tmp_path) if int(s.stem) in lost] == [0, 0, 0]
    c = log.consumer("g")
    for o in lost:
        c.seek(0, o)  # into a hole: the first record after it
        (r,) = c.poll(1)
        assert (r.offset, r.value) == (o + 1, recs[o + 1][1])
    c.commit({0: lost[0]})
    c2 = log.consumer("g")
    assert c2.poll(1)[0].offset == lost[0] + 1
    assert [o for o, _, _ in _drain(log, "all")] == [i for i in range(N) if i not in lost]
    log.close()


def test_several_bad_spans_in_one_sealed_segment(tmp_path):
    recs = _write(tmp_path, seed=3)
    seg = _segments(tmp_path)[1]
    frames = _frames(seg)
    rng = random.Random(3)
    for k in (2, 3, 9):  # two adjacent damaged records make one span
        _flip(seg, rng, *frames[k])
    base = int(seg.stem)
    log = LocalBackend(tmp_path, config=CFG).log("x")
    (chk,) = [c for c in log.check()[0] if c.spans]
    assert [(s.start, s.end) for s in chk.spans] == [(frames[2][0], frames[3][1]), frames[9]]
    assert sum(s.count for s in chk.spans) == 3  # pinned by the next segment's name
    log.repair()
    lost = {base + 2, base + 3, base + 9}
    assert [o for o, _, _ in _drain(log, "all")] == [i for i in range(N) if i not in lost]
    assert [v for _, _, v in _drain(log, "again")] == [v for i, (_, v) in enumerate(recs) if i not in lost]
    log.close()


def test_an_interrupted_repair_is_finished_by_the_next(tmp_path, monkeypatch):
    recs = _write(tmp_path, seed=4)
    seg = _segments(tmp_path)[-1]
    start, end = _frames(seg)[5]
    _flip(seg, random.Random(4), start, end)
    lost = int(seg.stem) + 5

    def crash(pdir):
        raise KeyboardInterrupt("killed after the plan was written")

    with monkeypatch.context() as m:
        m.setattr(local_segments, "_finish_repair", crash)
        with pytest.raises(KeyboardInterrupt):
            LocalBackend(tmp_path, config=CFG).log("x").repair()
    assert seg.stat().st_size > end  # nothing cut yet
    log = LocalBackend(tmp_path, config=CFG).log("x")
    with pytest.raises(LogError, match="interrupted"):
        log.append(b"x")
    log.repair()
    assert [(o, v) for o, _, v in _drain(log, "g")] == [(i, v) for i, (_, v) in enumerate(recs) if i != lost]
    assert len(list(seg.parent.glob("*.quarantine"))) == 1 and not list(seg.parent.glob(".*.tmp"))
    log.close()


def test_a_missing_segment_is_reported_and_not_papered_over(tmp_path):
    _write(tmp_path, seed=7)
    segs = _segments(tmp_path)
    segs[2].unlink()  # offsets int(segs[2].stem).. are gone, and no quarantine file says why
    log = LocalBackend(tmp_path, config=CFG).log("x")
    with pytest.raises(LogError, match="next segment starts at"):
        _drain(log, "g")
    (bad,) = [c for c in log.check()[0] if not c.ok]
    assert bad.path == segs[1] and "next segment starts at offset" in bad.problem
    with pytest.raises(LogError, match="cannot repair"):
        log.repair()
    log.close()


def _freshrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "freshrec.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_log_check_and_repair_as_processes(tmp_path):
    _write(tmp_path, seed=5, partitions=2)
    b = LocalBackend(tmp_path)
    b.log("y").append_many([(None, b"%d" % i) for i in range(50)])
    b.close()
    url = f"local://{tmp_path}"
    segs = sorted(tmp_path.glob("*/p*/*.seg"))
    ok = _freshrec("log", "check", "--log", url)
    assert ok.returncode == 0, ok.stderr
    size = sum(f.stat().st_size for f in segs)
    assert ok.stdout.splitlines()[-1] == \
        f"log check {tmp_path}: 2 logs, {len(segs)} segments, {N + 50:,} records, {size:,} bytes: clean"

    seg = _segments(tmp_path, 1)[1]
    start, end = _frames(seg)[4]
    _flip(seg, random.Random(5), start, end)
    bad = _freshrec("log", "check", "--log", url, "--topic", "x")
    assert bad.returncode == 1, bad.stderr
    lines = bad.stdout.splitlines()
    (line,) = [ln for ln in lines if "CORRUPT at byte" in ln]
    want = f"log 'x' p1 {seg}: CORRUPT at byte {start}: {end - start} bytes to byte {end} ("
    assert line.startswith(want), line
    assert "CORRUPT: 1 problem(s)" in lines[-1] and "freshrec log repair" in lines[-1]

    fixed = _freshrec("log", "repair", "--log", url, "--topic", "x")
    assert fixed.returncode == 0, fixed.stderr
    assert f"{seg}: moved bytes {start}..{end} ({end - start} bytes, offset " in fixed.stdout
    again = _freshrec("log", "check", "--log", url)
    assert again.returncode == 0 and again.stdout.splitlines()[-1].endswith("clean"), again.stdout
    assert f"{N + 50 - 1:,} records" in again.stdout.splitlines()[-1]

    missing = _freshrec("log", "check", "--log", f"local://{tmp_path}/nope")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.splitlines() == [f"freshrec log check: --log '{tmp_path}/nope': no such folder"]
