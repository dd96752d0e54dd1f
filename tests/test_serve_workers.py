"""`freshrec serve --workers N`: shared tables (one writer, readers in other processes, never torn)
and the supervisor (one port, deltas seen by every worker, logs appended once, restarts, SIGTERM)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from freshrec.ps import ServingReplica
from freshrec.ps.delta import Delta, encode
from freshrec.stream.events import decode_feature
from freshrec.stream.local_log import LocalBackend
from freshrec.table.shared import BATCH, SharedTableReader, SharedTableWriter
from serve_process import make_snapshot, serve_command

ROWS = 3 * BATCH  # rows the torn-row writer rewrites per version: several seqlock windows


# ---- the shared table ------------------------------------------------------------------------------
def test_shared_table_matches_a_dict(tmp_path):
    w = SharedTableWriter(tmp_path, "t0", dim=3, capacity=16)
    r = SharedTableReader(tmp_path, "t0")
    rng = np.random.default_rng(0)
    oracle: dict[int, np.ndarray] = {}
    for _ in range(200):
        ids = rng.integers(-50, 3000, int(rng.integers(1, 300)))
        if rng.random() < 0.3:
            expect = len({int(i) for i in ids} & set(oracle))
            assert w.remove(ids) == expect
            for i in ids:
                oracle.pop(int(i), None)
        else:
            rows = rng.normal(size=(ids.shape[0], 3)).astype(np.float32)
            w.assign(ids, rows)
            oracle.update({int(i): x for i, x in zip(ids, rows, strict=True)})
        q = np.concatenate([rng.integers(-60, 3100, 100), [-(2**63), 2**63 - 1]])
        want = np.stack([oracle.get(int(i), np.zeros(3, np.float32)) for i in q])
        np.testing.assert_array_equal(r.lookup(q), want)
        assert len(r) == len(w) == len(oracle)
    assert r.generation > 1  # it grew (new segments) while the reader kept reading
    ids, rows = w.export()
    assert sorted(ids.tolist()) == sorted(oracle)
    w.close()
    assert not list(tmp_path.iterdir())


def _write_versions(root: str, versions: int) -> None:
    """Another process: every row of ids 0..ROWS-1 = the version number, version after version."""
    w = SharedTableWriter(root, "t0", dim=64, capacity=ROWS)
    ids = np.arange(ROWS)
    for v in range(versions):
        w.assign(ids, np.full((ROWS, 64), float(v), np.float32))
    (Path(root) / "done").write_text("")
    while (Path(root) / "done").exists():  # keep the files until the reader is done
        time.sleep(0.01)


def test_a_reader_in_another_process_never_sees_a_torn_row(tmp_path):
    ctx = mp.get_context("spawn")
    writer = ctx.Process(target=_write_versions, args=(str(tmp_path), 3000))
    writer.start()
    try:
        while not (tmp_path / "t0.ctl").exists():
            time.sleep(0.01)
        time.sleep(0.05)
        r = SharedTableReader(tmp_path, "t0")
        q = np.arange(0, ROWS, 7)
        seen: set[float] = set()
        lookups = 0
        while not (tmp_path / "done").exists():
            rows = r.lookup(q)
            lookups += 1
            # each row is one version: all of its floats equal (a torn row mixes two)
            assert (rows == rows[:, :1]).all(), "a row was read half written"
            seen.update(np.unique(rows[:, 0]).tolist())
        assert lookups > 10 and len(seen) > 10  # the reads overlapped many versions' writes
    finally:
        (tmp_path / "done").unlink(missing_ok=True)
        writer.join(30)


# ---- the supervisor and its workers ------------------------------------------------------------------
@contextlib.contextmanager
def workers(root: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, str, list[str]]]:
    proc = subprocess.Popen(
        serve_command(root, "--workers", "2", *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        url = None
        for line in proc.stdout:
            lines.append(line)
            if "listening on " in line:
                url = line.rsplit("listening on ", 1)[1].strip()
                break
        assert url is not None, "freshrec serve did not start:\n" + "".join(lines)
        out = proc.stdout
        threading.Thread(target=lambda: [lines.append(x) for x in out], daemon=True).start()
        yield proc, url, lines
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(60)


def by_worker(
    url: str, path: str = "/healthz", *, body: dict | None = None, tries: int = 400
) -> dict[str, dict]:
    """The answer of each worker (by its x-freshrec-worker index), one new connection a request."""
    out: dict[str, dict] = {}
    for _ in range(tries):
        with httpx.Client(timeout=30) as c:
            r = c.post(url + path, json=body) if body is not None else c.get(url + path)
        assert r.status_code == 200, r.text
        out[r.headers["x-freshrec-worker"].split("/")[0]] = {
            "pid": r.headers["x-freshrec-worker"],
            **r.json(),
        }
        if len(out) == 2:
            return out
    raise AssertionError(f"only workers {sorted(out)} answered in {tries} requests")


def ranks_counted(url: str) -> dict[str, float]:
    """/v1/rank 200s as each worker's /metrics counts them (by worker index)."""
    out: dict[str, float] = {}
    head = 'freshrec_requests_total{endpoint="/v1/rank",status="200"} '
    for _ in range(400):
        with httpx.Client(timeout=30) as c:
            r = c.get(url + "/metrics")
        assert r.status_code == 200
        lines = [ln for ln in r.text.splitlines() if ln.startswith(head)]
        out[r.headers["x-freshrec-worker"].split("/")[0]] = sum(float(ln.split()[-1]) for ln in lines)
        if len(out) == 2:
            return out
    raise AssertionError(f"only workers {sorted(out)} answered /metrics")


def score(url_answer: dict) -> float:
    return float(url_answer["items"][0]["score"])


def test_two_workers_share_one_port_and_see_every_delta(tmp_path):
    snap = make_snapshot(tmp_path)
    expected = ServingReplica.from_snapshot(snap)
    body = {"user_id": 3, "candidates": [7]}
    with workers(tmp_path) as (_, url, _lines):
        before = by_worker(url, "/v1/rank", body=body)
        assert len({a["pid"] for a in before.values()}) == 2
        want0 = float(expected.rank(3, [7])[1][0])
        for a in before.values():
            assert score(a) == pytest.approx(want0, abs=1e-6)
        # a delta on the parameter log: item 7's row changes, in every worker
        delta = Delta(
            table="item_id", version=5, ids=np.array([7]), embeddings=np.full((1, 5), 0.7, np.float32)
        )
        backend = LocalBackend(tmp_path / "logs")
        try:
            plog = backend.log("params")
            plog.append(encode(delta), key=b"item_id")
            plog.flush()
        finally:
            backend.close()
        expected.apply(delta)
        want1 = float(expected.rank(3, [7])[1][0])
        assert want1 != pytest.approx(want0, abs=1e-4)
        deadline = time.monotonic() + 30
        seen: dict[str, float] = {}
        while time.monotonic() < deadline and len(seen) < 2:
            for k, a in by_worker(url, "/v1/rank", body=body).items():
                if score(a) == pytest.approx(want1, abs=1e-6):
                    seen[k] = score(a)
        assert sorted(seen) == ["0", "1"], "the delta did not reach every worker"
        health = by_worker(url)
        assert all(h["model_version"] == 5 for h in health.values())


def test_ranks_during_a_stream_of_deltas_see_whole_rows_only(tmp_path):
    snap = make_snapshot(tmp_path)
    expected = ServingReplica.from_snapshot(snap)
    values = [-2.0, -1.0, 0.5, 1.5, 3.0]  # item 7's row: every float equal to one of these
    want = [float(expected.rank(3, [7])[1][0])]  # or the snapshot's row, before the first delta
    for v in values:
        expected.apply(
            Delta(table="item_id", version=9, ids=np.array([7]), embeddings=np.full((1, 5), v, np.float32))
        )
        want.append(float(expected.rank(3, [7])[1][0]))
    assert len({round(w, 5) for w in want}) == len(values) + 1
    stop = threading.Event()

    def publish() -> None:
        backend = LocalBackend(tmp_path / "logs")
        plog = backend.log("params")
        ids = np.arange(ROWS)  # a big delta: the row of item 7 is written among many others
        v = 10
        try:
            while not stop.is_set():
                emb = np.full((ROWS, 5), values[v % len(values)], np.float32)
                plog.append(
                    encode(Delta(table="item_id", version=v, ids=ids, embeddings=emb)), key=b"item_id"
                )
                plog.flush()
                v += 1
                time.sleep(0.005)
        finally:
            backend.close()

    with workers(tmp_path) as (_, url, _lines):
        t = threading.Thread(target=publish, daemon=True)
        t.start()
        got: set[float] = set()
        try:
            deadline = time.monotonic() + 60  # at least 300 ranks, and until the rows changed
            ranks = 0
            with httpx.Client(timeout=30) as c:
                while ranks < 300 or (len(got) < 2 and time.monotonic() < deadline):
                    s = score(c.post(url + "/v1/rank", json={"user_id": 3, "candidates": [7]}).json())
                    assert min(abs(s - w) for w in want) < 1e-6, f"score {s} is none of a whole row's {want}"
                    got.add(round(s, 5))
                    ranks += 1
        finally:
            stop.set()
            t.join(10)
        assert len(got) > 1  # the ranks did run while the rows changed


def test_kill_9_of_a_worker_restarts_it_and_sigterm_stops_the_tree(tmp_path):
    make_snapshot(tmp_path)
    with workers(tmp_path) as (proc, url, lines):
        root = next(x for x in lines if "tables shared in" in x).rsplit(" in ", 1)[1].strip()
        assert Path(root).is_dir()
        for _ in range(10):
            with httpx.Client(timeout=30) as c:
                assert c.post(url + "/v1/rank", json={"user_id": 1, "candidates": [1, 2]}).status_code == 200
        # every worker's /metrics counts the whole server's requests, not its own
        assert set(ranks_counted(url).values()) == {10.0}
        first = by_worker(url)
        victim = int(first["0"]["pid"].split("/")[1])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        now: dict[str, dict] = {}
        while time.monotonic() < deadline:
            now = by_worker(url)
            if now["0"]["pid"] != first["0"]["pid"]:
                break
            time.sleep(0.2)
        assert now["0"]["pid"] != first["0"]["pid"], "worker 0 was not started again"
        assert now["1"]["pid"] == first["1"]["pid"]
        # ranked impressions of both workers reach the features log, once each
        n = 20  # the 10 ranks above
        for _ in range(20):
            with httpx.Client(timeout=30) as c:
                r = c.post(url + "/v1/rank", json={"user_id": 1, "candidates": [1, 2, 3]})
            assert r.status_code == 200
            n += 3
        # the killed worker's requests still count: 10 before, 20 since
        assert set(ranks_counted(url).values()) == {30.0}
        pids = [int(a["pid"].split("/")[1]) for a in now.values()]
        pids.append(_parent(pids[0]))  # the zygote
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not Path(root).exists()
    backend = LocalBackend(tmp_path / "logs")
    try:
        events = [
            decode_feature(rec.value) for rec in backend.log("features").consumer("check").poll(100_000)
        ]
    finally:
        backend.close()
    assert len(events) == n
    assert len({e.request_id for e in events}) == n


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_workers_are_forked_by_one_zygote_that_dies_with_the_supervisor(tmp_path):
    make_snapshot(tmp_path)
    with workers(tmp_path) as (proc, url, _lines):
        pids = [int(a["pid"].split("/")[1]) for a in by_worker(url).values()]
        zygotes = {_parent(p) for p in pids}
        assert len(zygotes) == 1  # both workers forked by the same process ...
        (zygote,) = zygotes
        assert zygote != proc.pid and _parent(zygote) == proc.pid  # ... the supervisor's child
        proc.kill()  # kill -9: no clean-up runs in the supervisor
        proc.wait(30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(map(_alive, [zygote, *pids])):
            time.sleep(0.1)
        assert not [p for p in [zygote, *pids] if _alive(p)], "a process outlived the supervisor"


def test_kill_9_of_the_zygote_replaces_it_and_the_workers_it_took_down(tmp_path):
    make_snapshot(tmp_path)
    with workers(tmp_path) as (proc, url, _lines):
        first = by_worker(url)
        old = {a["pid"] for a in first.values()}
        zygote = _parent(int(first["0"]["pid"].split("/")[1]))
        os.kill(zygote, signal.SIGKILL)  # its workers die with it (PR_SET_PDEATHSIG)
        deadline = time.monotonic() + 180
        now: dict[str, dict] = {}
        while time.monotonic() < deadline:
            try:
                now = by_worker(url, tries=50)
            except (AssertionError, httpx.HTTPError):  # a worker still starting
                time.sleep(0.2)
                continue
            if not old & {a["pid"] for a in now.values()}:
                break
            time.sleep(0.2)
        assert now and not old & {a["pid"] for a in now.values()}, "the workers were not started again"
        zygotes = {_parent(int(a["pid"].split("/")[1])) for a in now.values()}
        assert len(zygotes) == 1 and zygote not in zygotes  # a new zygote forked both
        assert _parent(next(iter(zygotes))) == proc.pid
        r = httpx.post(url + "/v1/rank", json={"user_id": 1, "candidates": [1, 2, 3]}, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
