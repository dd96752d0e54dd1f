"""`freshrec import` as a process: killed with kill -9 at a seeded random moment and rerun, the logs
equal an uninterrupted import's, record for record; a finished import rerun writes nothing; a log
that another writer appended to is refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freshrec.stream.backends import open_backend
from freshrec.stream.events import decode_action, decode_dead_letter, decode_feature
from schema_fixtures import EXAMPLES, write_behaviour, write_clicks

LOGS = ("features", "actions", "dead-letters")


def _import(
    config: Path, data: Path, logs: Path, *extra: str, check: bool = True
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "freshrec.cli",
        "import",
        "--config",
        str(config),
        "--files",
        str(data),
        "--log",
        str(logs),
        "--no-progress",
        "--json",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)


def _records(folder: Path) -> dict[str, list[tuple[bytes | None, bytes]]]:
    backend = open_backend(str(folder))
    out = {}
    try:
        for name in LOGS:
            c = backend.log(name).consumer("test-read")
            recs = []
            while not c.at_end():
                recs += [(r.key, r.value) for r in c.poll(10_000)]
            c.close()
            out[name] = recs
    finally:
        backend.close()
    return out


def test_import_writes_decodable_events_in_time_order(tmp_path):
    data = write_behaviour(tmp_path, n=400)
    res = _import(EXAMPLES / "shop-behaviour.toml", data, tmp_path / "logs")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["rows_refused"] == 2 and summary["features_written"] == 400
    recs = _records(tmp_path / "logs")
    feats = [decode_feature(v) for _, v in recs["features"]]
    acts = [decode_action(v) for _, v in recs["actions"]]
    assert [f.ts for f in feats] == sorted(f.ts for f in feats)
    assert {a.action for a in acts} <= {"cart", "fav", "buy"} and len(acts) == summary["actions_written"]
    by_id = {f.request_id: f for f in feats}
    assert all(by_id[a.request_id].ts <= a.ts <= by_id[a.request_id].ts + 86400 for a in acts)
    reasons = sorted(decode_dead_letter(v).reason for _, v in recs["dead-letters"])
    assert reasons == ["timestamp 'ts' is missing", "user_id column 'user' is missing"]
    again = json.loads(
        _import(EXAMPLES / "shop-behaviour.toml", data, tmp_path / "logs").stdout.splitlines()[-1]
    )
    assert again["features_written"] == again["actions_written"] == again["dead_letters_written"] == 0
    assert again["already_written"] == summary["events_planned"]
    assert _records(tmp_path / "logs") == recs


def test_import_killed_and_rerun_writes_every_event_exactly_once(tmp_path):
    seed = int(os.environ.get("FRESHREC_KILL_SEED", random.randrange(1 << 30)))
    print(f"kill seed: {seed} (FRESHREC_KILL_SEED={seed} reruns this case)")
    rng = random.Random(seed)
    data = write_clicks(tmp_path, n=2500)
    config = EXAMPLES / "clickstream.toml"
    _import(config, data, tmp_path / "whole", "--flush-every", "700")
    want = _records(tmp_path / "whole")
    assert len(want["features"]) > 10_000
    logs = tmp_path / "killed"
    state = logs / "_import" / "clicks.json"
    kills = 0
    for _ in range(3):
        cmd = [
            sys.executable,
            "-m",
            "freshrec.cli",
            "import",
            "--config",
            str(config),
            "--files",
            str(data),
            "--log",
            str(logs),
            "--no-progress",
            "--flush-every",
            "150",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                st = json.loads(state.read_text())
            except (OSError, ValueError):
                st = {}
            if st.get("written", 0) > 0 and not st.get("done"):
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    partial = len(_records(logs)["features"])
    print(f"kills: {kills}; after them the features log held {partial} of {len(want['features'])} records")
    res = _import(config, data, logs, "--flush-every", "700")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["resumed"] and summary["already_written"] >= partial
    got = _records(logs)
    assert kills >= 1, "every import finished before its kill; the machine was too fast for this seed"
    for name in LOGS:
        assert got[name] == want[name], f"log {name!r} differs from an uninterrupted import (seed {seed})"


def test_a_log_appended_to_by_another_writer_is_refused(tmp_path):
    data = write_clicks(tmp_path, n=300)
    config = EXAMPLES / "clickstream.toml"
    logs = tmp_path / "logs"
    _import(config, data, logs)
    state = logs / "_import" / "clicks.json"
    st = json.loads(state.read_text())
    st["done"] = False
    backend = open_backend(str(logs))
    feats = backend.log("features")
    feats.append(b'{"x":1}', key=b"someone-else")
    feats.flush()
    backend.close()
    state.write_text(json.dumps(st))
    res = _import(config, data, logs, check=False)
    assert res.returncode == 3
    assert "another writer" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--limit"])
def test_another_import_into_the_same_state_is_refused(tmp_path, flag):
    data = write_clicks(tmp_path, n=300)
    config = EXAMPLES / "clickstream.toml"
    _import(config, data, tmp_path / "logs")
    res = _import(config, data, tmp_path / "logs", flag, "100", check=False)
    assert res.returncode == 2 and "belongs to another import" in res.stderr


def test_a_log_deleted_under_its_state_is_refused(tmp_path):
    import shutil

    data = write_clicks(tmp_path, n=200)
    config = EXAMPLES / "clickstream.toml"
    logs = tmp_path / "logs"
    backend = open_backend(str(logs))
    backend.log("features").append(b'{"x":1}', key=b"before")  # the import begins at offset 1
    backend.log("features").flush()
    backend.close()
    _import(config, data, logs, "--state", str(tmp_path / "state.json"))
    shutil.rmtree(logs)
    res = _import(config, data, logs, "--state", str(tmp_path / "state.json"), check=False)
    assert res.returncode == 3 and "fewer records" in res.stderr


class _FullDisk:
    """A log that fails (as a full disk does) at its `fail_at`-th flush, after taking the records."""

    def __init__(self, log, fail_at: int) -> None:
        self._log, self.fail_at, self.flushes = log, fail_at, 0
        self.name = log.name

    def __getattr__(self, name):
        return getattr(self._log, name)

    def flush(self) -> None:
        self.flushes += 1
        if self.flushes == self.fail_at:
            from freshrec.errors import LogError

            msg = "No space left on device"
            raise LogError(msg)
        self._log.flush()


def _plan(tmp_path, n=600):
    from freshrec.data.schema import load_schema
    from freshrec.data.schema_data import read_columns
    from freshrec.stream.importer import plan_events

    data = write_clicks(tmp_path, n=n)
    schema = load_schema(EXAMPLES / "clickstream.toml", overrides={"files": [str(data)]})
    cols = read_columns(schema)
    return plan_events(schema.with_types(cols.types), cols, fingerprint="t")


def test_a_full_disk_then_a_rerun_writes_every_event_once(tmp_path):
    from freshrec.errors import LogError
    from freshrec.stream.importer import import_to_logs
    from freshrec.stream.log import MemoryBackend

    plan = _plan(tmp_path)
    whole, broken = MemoryBackend(), MemoryBackend()
    import_to_logs(plan, *(whole.log(n) for n in LOGS), state=tmp_path / "a.json", flush_every=333)
    failing = _FullDisk(broken.log("actions"), fail_at=4)
    with pytest.raises(LogError, match="No space"):
        import_to_logs(
            plan,
            broken.log("features"),
            failing,
            broken.log("dead-letters"),
            state=tmp_path / "b.json",
            flush_every=333,
        )
    st = import_to_logs(plan, *(broken.log(n) for n in LOGS), state=tmp_path / "b.json", flush_every=333)
    assert st.resumed and st.skipped > 0 and st.skipped + st.written == len(plan)
    for n in LOGS:
        want = [(r.key, r.value) for r in whole.log(n).consumer("t").poll(10**6)]
        assert [(r.key, r.value) for r in broken.log(n).consumer("t").poll(10**6)] == want


def test_a_paced_import_waits_for_data_time(tmp_path):
    from freshrec.stream.importer import import_to_logs
    from freshrec.stream.log import MemoryBackend

    plan = _plan(tmp_path, n=200)
    now = [0.0]
    slept = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    b = MemoryBackend()
    import_to_logs(
        plan,
        *(b.log(n) for n in LOGS),
        state=tmp_path / "s.json",
        speedup=3600.0,
        clock=lambda: now[0],
        sleep=sleep,
    )
    span = plan.ts[-1] - plan.ts[0]
    assert now[0] == pytest.approx(span / 3600.0, rel=1e-6) and len(slept) > 10
