"""The joiner's store: a small transactional key-value seam, on disk (LMDB) or in memory.

`JoinStore` holds named tables of bytes -> bytes, each iterable in key order. Writes accumulate
in one open transaction and become durable, all together or not at all, at `commit()`; reads see
the transaction's own writes. `LmdbStore` is the on-disk implementation (one LMDB environment,
one named database per table, one write transaction per joiner batch); `MemoryStore` is the
in-process twin with the same semantics (including `abort()` rolling back to the last commit),
for tests.

`LruCache` is the bounded in-memory cache the joiner keeps in front of the store (entries and
approximate bytes), so recent impressions are joined without touching the store.
"""

from __future__ import annotations

import bisect
import fcntl
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lmdb

from freshrec.errors import ConfigError

__all__ = ["JoinStore", "LmdbStore", "LruCache", "MemoryStore"]


@runtime_checkable
class JoinStore(Protocol):
    """Named tables of bytes -> bytes with one transaction open at a time."""

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def put_many(self, table: str, items: list[tuple[bytes, bytes]]) -> None:
        """`put` of each (key, value) in order."""
        ...

    def insert(self, table: str, key: bytes, value: bytes) -> bool:
        """Put `key` unless it is there; True when it was not (and is now)."""
        ...

    def delete(self, table: str, key: bytes) -> bool:
        """Remove `key`; True when it was there."""
        ...

    def pop(self, table: str, key: bytes) -> bytes | None:
        """Remove `key` and return its value (None when it was not there)."""
        ...

    def take(self, table: str, stop: bytes, *, limit: int = 1 << 62) -> list[tuple[bytes, bytes]]:
        """Remove and return the first (up to `limit`) pairs in key order with key < `stop`."""
        ...

    def scan(
        self, table: str, stop: bytes | None = None, *, limit: int = 1 << 62
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, value) pairs in key order, with key < `stop` when given."""
        ...

    def count(self, table: str) -> int: ...

    def commit(self) -> None:
        """Make every write since the last commit durable, atomically."""
        ...

    def abort(self) -> None:
        """Drop every write since the last commit."""
        ...

    def close(self) -> None: ...


class LmdbStore:
    """`JoinStore` on LMDB: one environment at `path`, one named database per table.

    One process owns a store at a time (`owner.lock`, an advisory lock released on exit, even on
    kill -9); opening it while another holds it raises `ConfigError`.

    Args:
        path: directory of the environment (created when absent).
        tables: table names, fixed when the store is opened.
        map_size: the most bytes the store may hold (LMDB map size); raise it for long windows.
        sync: fsync at commit (the crash-safety guarantee); off only for benchmarks of the CPU path.
    """

    def __init__(self, path: str | os.PathLike, tables: tuple[str, ...], *, map_size: int = 1 << 33,
                 sync: bool = True) -> None:
        if map_size < 1 << 20:
            msg = f"LmdbStore map_size must be >= 1 MiB, got {map_size}"
            raise ConfigError(msg)
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # one owner at a time: a second writer would block forever on LMDB's writer mutex
        self._lock_fd = os.open(self.path / "owner.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            msg = f"LmdbStore {self.path} is open in another process (owner.lock is held)"
            raise ConfigError(msg) from None
        self._env = lmdb.open(
            str(self.path), map_size=map_size, max_dbs=max(len(tables), 1), sync=sync, metasync=sync,
            readahead=False, lock=True,
        )
        self._dbs = {t: self._env.open_db(t.encode()) for t in tables}
        self._txn: Any = self._env.begin(write=True)

    def _unknown(self, table: str) -> ConfigError:
        return ConfigError(f"LmdbStore {self.path}: unknown table {table!r}")

    def _db(self, table: str) -> Any:
        try:
            return self._dbs[table]
        except KeyError:
            raise self._unknown(table) from None

    def get(self, table: str, key: bytes) -> bytes | None:
        try:
            return self._txn.get(key, db=self._dbs[table])
        except KeyError:
            raise self._unknown(table) from None

    def put(self, table: str, key: bytes, value: bytes) -> None:
        try:
            self._txn.put(key, value, db=self._dbs[table])
        except KeyError:
            raise self._unknown(table) from None

    def put_many(self, table: str, items: list[tuple[bytes, bytes]]) -> None:
        with self._txn.cursor(db=self._db(table)) as cur:
            cur.putmulti(items)

    def insert(self, table: str, key: bytes, value: bytes) -> bool:
        try:
            return bool(self._txn.put(key, value, db=self._dbs[table], overwrite=False))
        except KeyError:
            raise self._unknown(table) from None

    def delete(self, table: str, key: bytes) -> bool:
        try:
            return bool(self._txn.delete(key, db=self._dbs[table]))
        except KeyError:
            raise self._unknown(table) from None

    def pop(self, table: str, key: bytes) -> bytes | None:
        try:
            return self._txn.pop(key, db=self._dbs[table])
        except KeyError:
            raise self._unknown(table) from None

    def take(self, table: str, stop: bytes, *, limit: int = 1 << 62) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        with self._txn.cursor(db=self._db(table)) as cur:
            if not cur.first():
                return out
            item, delete, add = cur.item, cur.delete, out.append
            while len(out) < limit:
                k, v = item()
                if not k or k >= stop:  # b"": past the last pair (LMDB keys are never empty)
                    break
                add((k, v))
                delete()  # and move to the next pair
        return out

    def scan(
        self, table: str, stop: bytes | None = None, *, limit: int = 1 << 62
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        with self._txn.cursor(db=self._db(table)) as cur:
            if not cur.first():
                return out
            for k, v in cur:
                if (stop is not None and k >= stop) or len(out) >= limit:
                    break
                out.append((k, v))
        return out

    def count(self, table: str) -> int:
        return int(self._txn.stat(self._db(table))["entries"])

    def commit(self) -> None:
        self._txn.commit()
        self._txn = self._env.begin(write=True)

    def abort(self) -> None:
        self._txn.abort()
        self._txn = self._env.begin(write=True)

    def disk_bytes(self) -> int:
        """Bytes the environment's data file takes on disk."""
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        self._env.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1


class _Table:
    __slots__ = ("data", "keys")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] | None = None  # sorted keys, built lazily for scans


class MemoryStore:
    """In-process twin of `LmdbStore` (same transaction semantics, not durable).

    Writes go straight to the tables and an undo journal remembers each key's value before the
    transaction touched it, so `commit()` is O(1) and `abort()` O(keys written).
    """

    def __init__(self, tables: tuple[str, ...]) -> None:
        self._tables = {t: _Table() for t in tables}
        self._undo: dict[tuple[str, bytes], bytes | None] = {}

    def _t(self, table: str) -> _Table:
        try:
            return self._tables[table]
        except KeyError:
            msg = f"MemoryStore: unknown table {table!r}"
            raise ConfigError(msg) from None

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._t(table).data.get(key)

    def _raw_put(self, t: _Table, key: bytes, value: bytes) -> None:
        if t.keys is not None and key not in t.data:
            bisect.insort(t.keys, key)
        t.data[key] = value

    def _raw_delete(self, t: _Table, key: bytes) -> None:
        del t.data[key]
        if t.keys is not None:
            del t.keys[bisect.bisect_left(t.keys, key)]

    def put(self, table: str, key: bytes, value: bytes) -> None:
        t = self._t(table)
        key = bytes(key)
        self._undo.setdefault((table, key), t.data.get(key))
        self._raw_put(t, key, bytes(value))

    def put_many(self, table: str, items: list[tuple[bytes, bytes]]) -> None:
        for key, value in items:
            self.put(table, key, value)

    def insert(self, table: str, key: bytes, value: bytes) -> bool:
        if key in self._t(table).data:
            return False
        self.put(table, key, value)
        return True

    def delete(self, table: str, key: bytes) -> bool:
        t = self._t(table)
        if key not in t.data:
            return False
        key = bytes(key)
        self._undo.setdefault((table, key), t.data[key])
        self._raw_delete(t, key)
        return True

    def pop(self, table: str, key: bytes) -> bytes | None:
        value = self._t(table).data.get(key)
        if value is not None:
            self.delete(table, key)
        return value

    def take(self, table: str, stop: bytes, *, limit: int = 1 << 62) -> list[tuple[bytes, bytes]]:
        rows = self.scan(table, stop, limit=limit)
        for k, _ in rows:
            self.delete(table, k)
        return rows

    def scan(
        self, table: str, stop: bytes | None = None, *, limit: int = 1 << 62
    ) -> list[tuple[bytes, bytes]]:
        t = self._t(table)
        if t.keys is None:
            t.keys = sorted(t.data)
        end = len(t.keys) if stop is None else bisect.bisect_left(t.keys, stop)
        return [(k, t.data[k]) for k in t.keys[: min(end, limit)]]

    def count(self, table: str) -> int:
        return len(self._t(table).data)

    def commit(self) -> None:
        self._undo.clear()

    def abort(self) -> None:
        for (table, key), old in self._undo.items():
            t = self._tables[table]
            if old is None:
                if key in t.data:
                    self._raw_delete(t, key)
            else:
                self._raw_put(t, key, old)
        self._undo.clear()

    def close(self) -> None:
        return None


class LruCache:
    """A bounded least-recently-used map, capped by entries and by approximate bytes.

    `size_of(value)` gives a value's byte cost (default `len`); a key costs `len(key) + 64`.
    """

    def __init__(self, *, max_entries: int, max_bytes: int = 1 << 62, size_of: Any = len) -> None:
        if max_entries < 0 or max_bytes < 0:
            msg = f"LruCache bounds must be >= 0, got max_entries={max_entries} max_bytes={max_bytes}"
            raise ConfigError(msg)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._d: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: bytes) -> Any:
        item = self._d.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._d.move_to_end(key)
        return item[0]

    def put(self, key: bytes, value: Any) -> None:
        cost = len(key) + 64 + self._size_of(value)
        old = self._d.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if self.max_entries == 0 or cost > self.max_bytes:
            return
        self._d[key] = (value, cost)
        self.bytes += cost
        while len(self._d) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, c) = self._d.popitem(last=False)
            self.bytes -= c

    def pop(self, key: bytes) -> Any:
        item = self._d.pop(key, None)
        if item is None:
            return None
        self.bytes -= item[1]
        return item[0]

    def clear(self) -> None:
        self._d.clear()
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._d)
