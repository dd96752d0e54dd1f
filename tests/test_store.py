"""The joiner store's batch-minded operations (insert-if-absent, pop, take) on LMDB and in memory,
against a dict, through commits and aborts."""

from __future__ import annotations

import random

import pytest

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
