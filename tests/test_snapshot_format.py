"""The snapshot format and the snapshot store: exact round trips, refusal of corrupt files, atomicity."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from freshrec.checkpoint import format as fmt
from freshrec.checkpoint.format import (
    FORMAT_VERSION,
    read_manifest,
    read_snapshot,
    snapshot_nbytes,
    strip_prefix,
    with_prefix,
    write_snapshot,
)
from freshrec.checkpoint.store import SnapshotStore
from freshrec.errors import ConfigError, CorruptSnapshotError, SnapshotError

i64 = np.iinfo(np.int64)


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    big = rng.standard_normal((6, 8))
    return {
        "f32": rng.standard_normal(17).astype(np.float32),
        "f64": np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-308, 1.5]),
        "i64": np.array([i64.min, -1, 0, 1, i64.max], dtype=np.int64),
        "u8": np.arange(256, dtype=np.uint8),
        "u16": np.array([0, 65535], dtype=np.uint16),
        "u32": np.array([0, 2**32 - 1], dtype=np.uint32),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "scalar": np.array(3.25),
        "m2d": rng.integers(-5, 5, size=(3, 4)).astype(np.int32),
        "m3d": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "strided": big[::2, 1::3],  # non-contiguous view
        "fortran": np.asfortranarray(big),
        "be": np.arange(4, dtype=">i4"),
        "table.user.rows": rng.standard_normal((5, 2)).astype(np.float32),
    }


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        assert g.tobytes() == np.ascontiguousarray(w).tobytes(), name  # bit-exact, NaN included


def test_round_trip_many_dtypes(tmp_path: Path) -> None:
    arrays = sample_arrays()
    meta = {"step": np.int64(12), "lr": np.float32(0.5), "offsets": {"p0": 3, "p1": 9}, "tags": ("a", "b")}
    p = write_snapshot(tmp_path / "snap", kind="table", meta=meta, arrays=arrays)
    assert p == tmp_path / "snap"
    got_meta, got = read_snapshot(p, kind="table")
    assert got_meta == {"step": 12, "lr": 0.5, "offsets": {"p0": 3, "p1": 9}, "tags": ["a", "b"]}
    assert_same(got, arrays)
    assert all(a.flags.writeable and a.flags.c_contiguous for a in got.values())
    # only the snapshot directory is left in the parent: no temp dirs
    assert [c.name for c in tmp_path.iterdir()] == ["snap"]
    manifest = read_manifest(p)
    assert manifest["format_version"] == FORMAT_VERSION and manifest["kind"] == "table"
    assert manifest["arrays"]["i64"] == {
        "file": "i64.bin",
        "dtype": "<i8",
        "shape": [5],
        "nbytes": 40,
        "sha256": manifest["arrays"]["i64"]["sha256"],
    }
    files = sum(f.stat().st_size for f in p.iterdir())
    assert snapshot_nbytes(p) == files


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arrays=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True),
        hnp.arrays(
            dtype=st.one_of(
                hnp.integer_dtypes(),
                hnp.unsigned_integer_dtypes(),
                hnp.floating_dtypes(),
                hnp.boolean_dtypes(),
            ),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        ),
        max_size=4,
    )
)
def test_round_trip_property(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    p = write_snapshot(tmp_path / "prop", kind="t", meta={"n": len(arrays)}, arrays=arrays)
    meta, got = read_snapshot(p)
    assert meta == {"n": len(arrays)}
    assert_same(got, arrays)


def test_round_trip_mmap(tmp_path: Path) -> None:
    arrays = sample_arrays()
    write_snapshot(tmp_path / "s", kind="table", meta={}, arrays=arrays)
    for verify in (True, False):
        _, got = read_snapshot(tmp_path / "s", mmap=True, verify=verify)
        assert_same(got, arrays)
        assert not any(a.flags.writeable for a in got.values())


def test_empty_snapshot(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "s", kind="dense", meta={"x": None}, arrays={})
    assert read_snapshot(tmp_path / "s") == ({"x": None}, {})


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_replace_existing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
    if not exchange:  # the portable path, taken where renameat2(RENAME_EXCHANGE) is not offered
        monkeypatch.setattr(fmt, "_exchange", lambda a, b: False)
    p = tmp_path / "s"
    write_snapshot(p, kind="t", meta={"v": 1}, arrays={"a": np.arange(3), "old": np.zeros(2)})
    write_snapshot(p, kind="t", meta={"v": 2}, arrays={"a": np.arange(5)})
    meta, arrays = read_snapshot(p)
    assert meta == {"v": 2}
    assert list(arrays) == ["a"] and arrays["a"].tolist() == [0, 1, 2, 3, 4]
    assert sorted(c.name for c in p.iterdir()) == ["a.bin", "manifest.json"]
    assert [c.name for c in tmp_path.iterdir()] == ["s"]


@pytest.mark.parametrize(
    "arrays",
    [
        {"o": np.array([1, "x"], dtype=object)},
        {"rec": np.zeros(2, dtype=[("a", "<i4"), ("b", "O")])},
        {"rec": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")])},
        {"bad/name": np.zeros(2)},
        {"../up": np.zeros(2)},
        {".hidden": np.zeros(2)},
        {"": np.zeros(2)},
    ],
)
def test_refuses_bad_arrays(tmp_path: Path, arrays: dict) -> None:
    with pytest.raises(SnapshotError):
        write_snapshot(tmp_path / "s", kind="t", meta={}, arrays=arrays)
    assert not any(tmp_path.iterdir())


def test_refuses_bad_meta_and_kind(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="JSON"):
        write_snapshot(tmp_path / "s", kind="t", meta={"a": np.zeros(3)}, arrays={})
    with pytest.raises(SnapshotError, match="JSON"):
        write_snapshot(tmp_path / "s", kind="t", meta={"a": object()}, arrays={})
    with pytest.raises(SnapshotError, match="kind"):
        write_snapshot(tmp_path / "s", kind="a b", meta={}, arrays={})
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- corruption


@pytest.fixture
def snap(tmp_path: Path) -> Path:
    rows = np.arange(1024, dtype=np.float32).reshape(256, 4)
    arrays = {"rows": rows, "ids": np.arange(256, dtype=np.int64)}
    return write_snapshot(tmp_path / "snap", kind="table", meta={"step": 1}, arrays=arrays)


def refused(path: Path, **kw) -> CorruptSnapshotError:
    with pytest.raises(CorruptSnapshotError) as info:
        read_snapshot(path, **kw)
    err = info.value
    assert err.path in str(err) and err.reason in str(err)
    return err


def rewrite_manifest(snap: Path, edit, *, fix_checksum: bool) -> None:
    mpath = snap / "manifest.json"
    m = json.loads(mpath.read_text())
    edit(m)
    if fix_checksum:
        body = {k: v for k, v in m.items() if k != "manifest_sha256"}
        m["manifest_sha256"] = fmt.hashlib.sha256(fmt._canonical(body)).hexdigest()
    mpath.write_text(json.dumps(m))


@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_array_file(snap: Path, mmap: bool) -> None:
    f = snap / "rows.bin"
    f.write_bytes(f.read_bytes()[:120])
    err = refused(snap, mmap=mmap)
    assert err.path == str(f)
    assert err.reason == "truncated: 120 of 4096 bytes"


def test_oversized_array_file(snap: Path) -> None:
    with open(snap / "ids.bin", "ab") as f:
        f.write(b"\0")
    err = refused(snap)
    assert err.path == str(snap / "ids.bin") and err.reason.startswith("oversized")


@pytest.mark.parametrize("mmap", [False, True])
def test_flipped_byte(snap: Path, mmap: bool) -> None:
    f = snap / "ids.bin"
    data = bytearray(f.read_bytes())
    data[777] ^= 0x01
    f.write_bytes(bytes(data))
    err = refused(snap, mmap=mmap)
    assert err.path == str(f) and err.reason == "checksum mismatch"
    # without verification the (wrong) bytes are returned as they are: the caller opted out
    _, arrays = read_snapshot(snap, verify=False)
    assert arrays["ids"].tobytes() == bytes(data)


def test_missing_array_file(snap: Path) -> None:
    (snap / "rows.bin").unlink()
    err = refused(snap)
    assert err.path == str(snap / "rows.bin") and err.reason == "missing"


def test_missing_manifest_and_missing_snapshot(snap: Path, tmp_path: Path) -> None:
    (snap / "manifest.json").unlink()
    err = refused(snap)
    assert err.path == str(snap / "manifest.json") and err.reason == "missing"
    err = refused(tmp_path / "nowhere")
    assert err.path == str(tmp_path / "nowhere" / "manifest.json") and err.reason == "missing"


def test_garbage_appended_to_manifest(snap: Path) -> None:
    with open(snap / "manifest.json", "a") as f:
        f.write("}garbage")
    err = refused(snap)
    assert err.path == str(snap / "manifest.json") and err.reason.startswith("not valid JSON")


def test_extra_field_in_manifest(snap: Path) -> None:
    rewrite_manifest(snap, lambda m: m.update(extra=1), fix_checksum=False)
    err = refused(snap)
    assert err.path == str(snap / "manifest.json") and err.reason == "manifest checksum mismatch"


def test_tampered_manifest(snap: Path) -> None:
    rewrite_manifest(snap, lambda m: m["arrays"]["rows"].update(shape=[4, 256]), fix_checksum=False)
    assert refused(snap).reason == "manifest checksum mismatch"


def test_tampered_meta(snap: Path) -> None:
    rewrite_manifest(snap, lambda m: m["meta"].update(step=2), fix_checksum=False)
    assert refused(snap).reason == "manifest checksum mismatch"


def test_wrong_format_version(snap: Path) -> None:
    rewrite_manifest(snap, lambda m: m.update(format_version=7), fix_checksum=True)
    err = refused(snap)
    assert err.path == str(snap / "manifest.json") and err.reason == "unknown format_version 7"


def test_wrong_format_name(snap: Path) -> None:
    rewrite_manifest(snap, lambda m: m.update(format="something-else"), fix_checksum=True)
    assert refused(snap).reason == "unknown format 'something-else'"


def test_inconsistent_entry_even_with_valid_checksum(snap: Path) -> None:
    rewrite_manifest(snap, lambda m: m["arrays"]["rows"].update(shape=[3, 4]), fix_checksum=True)
    assert "nbytes" in refused(snap).reason
    rewrite_manifest(snap, lambda m: m["arrays"]["rows"].update(file="../x.bin"), fix_checksum=True)
    assert "is not rows.bin" in refused(snap).reason


@pytest.mark.parametrize("dtype", ["|O", "|V8", "<f4,<i4"])
def test_object_dtype_in_manifest_refused(snap: Path, dtype: str) -> None:
    rewrite_manifest(snap, lambda m: m["arrays"]["ids"].update(dtype=dtype), fix_checksum=True)
    assert refused(snap).reason.startswith("array 'ids': unsupported dtype")


def test_kind_mismatch(snap: Path) -> None:
    err = refused(snap, kind="dense")
    assert err.reason == "kind 'table' where 'dense' was expected"
    assert read_snapshot(snap, kind="table")[0] == {"step": 1}


# ---------------------------------------------------------------- atomicity


def test_exception_midway_leaves_previous_snapshot(snap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = read_snapshot(snap)
    calls = []
    real = fmt._write_array

    def failing(path, arr):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, arr)

    monkeypatch.setattr(fmt, "_write_array", failing)
    with pytest.raises(SnapshotError, match="No space left"):
        write_snapshot(snap, kind="table", meta={"step": 2}, arrays={"a": np.zeros(9), "b": np.ones(9)})
    assert calls == ["a.bin", "b.bin"]
    meta, arrays = read_snapshot(snap)
    assert meta == before[0]
    assert_same(arrays, before[1])
    assert [c.name for c in snap.parent.iterdir()] == ["snap"]  # temp dir cleaned up


CRASH_WRITER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from freshrec.checkpoint import format as fmt
    real = fmt._write_array
    n = 0
    def dying(path, arr):
        global n
        n += 1
        if n == 2:
            os._exit(17)  # a crash: no cleanup code runs
        return real(path, arr)
    fmt._write_array = dying
    fmt.write_snapshot(sys.argv[1], kind="table", meta={"step": 2},
                       arrays={"a": np.zeros(9), "b": np.ones(9)})
    """
)


def test_process_crash_midway_leaves_previous_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store", keep=3)
    store.save(1, kind="table", meta={"step": 1}, arrays={"a": np.arange(4)})
    rc = subprocess.run([sys.executable, "-c", CRASH_WRITER, str(store.path_for(2))], timeout=120).returncode
    assert rc == 17
    stray = [c.name for c in store.root.iterdir() if c.name.startswith(".")]
    assert len(stray) == 1 and ".tmp-" in stray[0]  # the half write is there, hidden
    assert store.steps() == [1]  # ... and invisible
    step, meta, arrays = store.load_latest(kind="table")
    assert (step, meta, arrays["a"].tolist()) == (1, {"step": 1}, [0, 1, 2, 3])
    # the same crash while replacing an existing snapshot in place
    p = store.path_for(1)
    rc = subprocess.run([sys.executable, "-c", CRASH_WRITER, str(p)], timeout=120).returncode
    assert rc == 17
    assert read_snapshot(p)[0] == {"step": 1}
    # the next save removes the leftovers
    store.save(3, kind="table", meta={"step": 3}, arrays={})
    assert sorted(c.name for c in store.root.iterdir()) == ["step-000000000001", "step-000000000003"]


# ---------------------------------------------------------------- prefixes


def test_prefix_helpers(tmp_path: Path) -> None:
    user = {"ids": np.arange(3), "rows": np.ones((3, 2), np.float32)}
    dense = {"fc1.weight": np.zeros((2, 2), np.float32)}
    arrays = with_prefix("table.user", user) | with_prefix("dense", dense)
    assert sorted(arrays) == ["dense.fc1.weight", "table.user.ids", "table.user.rows"]
    write_snapshot(tmp_path / "ps", kind="training-ps", meta={"tables": {"user": {"dim": 2}}}, arrays=arrays)
    meta, got = read_snapshot(tmp_path / "ps", kind="training-ps")
    assert meta["tables"]["user"]["dim"] == 2
    assert_same(strip_prefix("table.user", got), user)
    assert_same(strip_prefix("dense", got), dense)
    assert strip_prefix("table.item", got) == {}


# ---------------------------------------------------------------- store


def test_store_empty(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "new" / "root")
    assert store.root.is_dir()
    assert store.steps() == [] and store.latest_path() is None
    assert store.load_latest() is None
    assert store.load_latest(fallback=False) is None


def test_store_keep_and_order(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=2)
    for step in (5, 10, 123, 124):
        p = store.save(step, kind="t", meta={"s": step}, arrays={"x": np.full(3, step)})
        assert p == tmp_path / f"step-{step:012d}"
    assert store.steps() == [123, 124]
    assert store.latest_path() == tmp_path / "step-000000000124"
    step, meta, arrays = store.load_latest(kind="t")
    assert step == 124 and meta == {"s": 124} and arrays["x"].tolist() == [124] * 3
    assert store.load(123)[0] == {"s": 123}
    with pytest.raises(CorruptSnapshotError):
        store.load(5)  # pruned
    with pytest.raises(SnapshotError, match="older"):
        store.save(100, kind="t", meta={}, arrays={})
    store.save(124, kind="t", meta={"s": "again"}, arrays={})  # the newest may be rewritten
    assert store.load_latest()[1] == {"s": "again"}
    with pytest.raises(SnapshotError):
        store.save(-1, kind="t", meta={}, arrays={})
    with pytest.raises(ConfigError):
        SnapshotStore(tmp_path, keep=0)


def test_store_ignores_foreign_entries(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "step-abc").mkdir()
    (tmp_path / "step-000000000009").write_text("a file, not a snapshot dir")
    store.save(1, kind="t", meta={}, arrays={})
    assert store.steps() == [1]
    assert (tmp_path / "notes.txt").exists()


def test_store_fallback_to_previous_good(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SnapshotStore(tmp_path, keep=3)
    for step in (1, 2, 3):
        store.save(step, kind="t", meta={"s": step}, arrays={"x": np.arange(100) * step})
    bad = store.path_for(3) / "x.bin"
    os.truncate(bad, 10)
    with caplog.at_level(logging.WARNING, logger="freshrec.checkpoint.store"):
        step, meta, arrays = store.load_latest(kind="t")
    assert step == 2 and meta == {"s": 2} and arrays["x"].tolist() == (np.arange(100) * 2).tolist()
    assert str(bad) in caplog.text and "truncated: 10 of 800 bytes" in caplog.text
    with pytest.raises(CorruptSnapshotError) as info:
        store.load_latest(kind="t", fallback=False)
    assert info.value.path == str(bad)
    # kind mismatch everywhere: every snapshot refused -> the newest one's error, never None
    with pytest.raises(CorruptSnapshotError) as info:
        store.load_latest(kind="other")
    assert info.value.path == str(store.path_for(3) / "manifest.json")
    # corrupt the previous one too: falls back two steps
    (store.path_for(2) / "manifest.json").write_text("{")
    assert store.load_latest()[0] == 1
