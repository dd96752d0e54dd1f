"""The joiner store's batch-minded operations (insert-if-absent, pop, take) on LMDB and in memory,
against a dict, through commits and aborts."""

from __future__ import annotations

import os
import random

import lmdb
import pytest

from freshrec.errors import CorruptStoreError, StoreError
from freshrec.stream.store import LmdbStore, MemoryStore


@pytest.fixture(params=["lmdb", "memory"])
def make_store(request, tmp_path):
    opened = []

    def make():
        s = LmdbStore(tmp_path / "s", ("t", "u"), map_size=1 << 24) if request.param == "lmdb" \
            else MemoryStore(("t", "u"))
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def test_insert_pop_take_against_a_dict(make_store):
    s = make_store()
    rng = random.Random(0)
    committed: dict[bytes, bytes] = {}
    now: dict[bytes, bytes] = {}
    for step in range(3000):
        k = b"%03d" % rng.randrange(200)
        op = rng.random()
        if op < 0.35:
            v = b"v%d" % step
            assert s.insert("t", k, v) == (k not in now)
            now.setdefault(k, v)
        elif op < 0.6:
            assert s.pop("t", k) == now.pop(k, None)
        elif op < 0.7:
            stop, limit = b"%03d" % rng.randrange(220), rng.randrange(1, 30)
            want = sorted((kk, vv) for kk, vv in now.items() if kk < stop)[:limit]
            assert s.take("t", stop, limit=limit) == want
            for kk, _ in want:
                del now[kk]
        elif op < 0.9:
            s.put("t", k, b"p%d" % step)
            now[k] = b"p%d" % step
        elif op < 0.95:
            s.commit()
            committed = dict(now)
        else:
            s.abort()
            now = dict(committed)
        assert s.get("t", k) == now.get(k)
    assert s.scan("t") == sorted(now.items())
    assert s.count("t") == len(now) and s.count("u") == 0


def test_take_empty_and_whole_table(make_store):
    s = make_store()
    assert s.take("t", b"\xff") == []
    for i in range(50):
        s.put("t", b"%02d" % i, b"")
    assert [k for k, _ in s.take("t", b"\xff")] == [b"%02d" % i for i in range(50)]
    assert s.count("t") == 0 and s.take("t", b"\xff") == []


def test_put_many_is_put_in_order(make_store):
    s = make_store()
    s.put("t", b"a", b"old")
    s.put_many("t", [(b"c", b"1"), (b"a", b"2"), (b"b", b"3"), (b"c", b"4")])
    assert s.scan("t") == [(b"a", b"2"), (b"b", b"3"), (b"c", b"4")]
    s.abort()
    assert s.scan("t") == []


def test_a_damaged_value_is_refused_by_name(tmp_path):
    s = LmdbStore(tmp_path / "s", ("t", "u"), map_size=1 << 24)
    for i in range(200):
        s.put("t", b"k%03d" % i, b"value-%03d-" % i + b"x" * 40)
    s.put("u", b"due", b"")
    s.commit()
    s.close()
    data = bytearray((tmp_path / "s" / "data.mdb").read_bytes())
    at = data.index(b"value-123-")  # a flipped byte on disk, inside one stored value
    data[at + 3] ^= 0x20
    (tmp_path / "s" / "data.mdb").write_bytes(bytes(data))

    s = LmdbStore(tmp_path / "s", ("t", "u"), map_size=1 << 24)
    assert s.get("t", b"k122") == b"value-122-" + b"x" * 40 and s.get("u", b"due") == b""
    for read in (lambda: s.get("t", b"k123"), lambda: s.scan("t"), lambda: s.pop("t", b"k123"),
                 lambda: s.take("t", b"k200")):
        with pytest.raises(CorruptStoreError) as e:
            read()
        where = (e.value.path, e.value.table, e.value.key, e.value.kind)
        assert where == (str(tmp_path / "s"), "t", b"k123", "corrupt")
        assert str(tmp_path / "s") in str(e.value) and "'t'" in str(e.value) and "k123" in str(e.value)
        s.abort()
    s.close()


def test_a_store_written_before_checksums_is_read_as_it_was(tmp_path):
    env = lmdb.open(str(tmp_path / "old"), max_dbs=2, map_size=1 << 24)
    with env.begin(write=True, db=env.open_db(b"t")) as txn:
        txn.put(b"a", b"raw value")
    env.close()
    s = LmdbStore(tmp_path / "old", ("t", "u"), map_size=1 << 24)
    assert s.format == 1 and s.get("t", b"a") == b"raw value"
    s.put("t", b"b", b"new")
    s.commit()
    s.close()
    s = LmdbStore(tmp_path / "old", ("t", "u"), map_size=1 << 24)
    assert s.scan("t") == [(b"a", b"raw value"), (b"b", b"new")]
    s.close()
    s = LmdbStore(tmp_path / "new", ("t",), map_size=1 << 24)
    assert s.format == 2
    s.close()


class _FailingTxn:
    """A write transaction whose commit fails with `error` (after dropping the real one's writes)."""

    def __init__(self, real, error):
        self.real, self.error = real, error

    def commit(self):
        self.real.abort()
        raise self.error

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize(("error", "free", "kind"), [
    (lmdb.Error("mdb_txn_commit: Input/output error"), 1 << 40, "I/O error"),
    (lmdb.Error("mdb_txn_commit: Input/output error"), 0, "disk full"),  # LMDB's word for a full disk
    (lmdb.DiskError("mdb_txn_commit: No space left on device"), 1 << 40, "disk full"),
    (lmdb.ReadonlyError("mdb_txn_commit: Permission denied"), 1 << 40, "permission"),
    (lmdb.CorruptedError("mdb_txn_commit: MDB_CORRUPTED: Located page was wrong type"), 1 << 40, "corrupt"),
    (lmdb.Error("mdb_txn_commit: something new"), 1 << 40, "other"),
])
def test_store_failures_name_the_path_and_say_what_happened(tmp_path, monkeypatch, error, free, kind):
    s = LmdbStore(tmp_path / "s", ("t",), map_size=1 << 24)
    s.put("t", b"a", b"1")
    s.commit()
    s.put("t", b"b", b"2")
    blocks = free // 4096
    fake = os.statvfs_result((4096, 4096, 1 << 20, blocks, blocks, 0, 0, 0, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda p: fake)
    s._txn = _FailingTxn(s._txn, error)
    with pytest.raises(StoreError) as e:
        s.commit()
    assert (e.value.path, e.value.kind) == (str(tmp_path / "s"), kind)
    assert str(e.value).startswith(f"joiner store {tmp_path / 's'}: {kind}: commit failed: {error}")
    assert s.scan("t") == [(b"a", b"1")]  # the failed batch is dropped; the store goes on
    s.close()


def test_map_full_and_unopenable_stores_are_store_errors(tmp_path):
    s = LmdbStore(tmp_path / "s", ("t",), map_size=1 << 20)
    with pytest.raises(StoreError) as e:
        for i in range(100_000):
            s.put("t", b"%06d" % i, b"x" * 100)
        s.commit()
    assert e.value.kind == "map full" and str(tmp_path / "s") in str(e.value)
    assert "--map-size-gb" in str(e.value)
    s.close()
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError) as e:
        LmdbStore(tmp_path / "file" / "s", ("t",))
    assert str(tmp_path / "file" / "s") in str(e.value)
