"""The joiner's store: a small transactional key-value seam, on disk (LMDB) or in memory.

`JoinStore` holds named tables of bytes -> bytes, each iterable in key order. Writes accumulate
in one open transaction and become durable, all together or not at all, at `commit()`; reads see
the transaction's own writes. `LmdbStore` is the on-disk implementation (one LMDB environment,
one named database per table, one write transaction per joiner batch); `MemoryStore` is the
in-process twin with the same semantics (including `abort()` rolling back to the last commit),
for tests.

`LmdbStore` keeps a crc32 with every value and refuses a damaged one (`CorruptStoreError`: path,
table, key); every LMDB or file-system failure becomes a `StoreError` that names the path and says
what happened (disk full, map full, permission, I/O error, corrupt).

`LruCache` is the bounded in-memory cache the joiner keeps in front of the store (entries and
approximate bytes), so recent impressions are joined without touching the store.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lmdb

from freshrec.errors import ConfigError, CorruptStoreError, StoreError

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


_FORMAT_DB = b"__freshrec_store__"
FORMAT_VERSION = 2  # 1: values as given (no format record); 2: each value followed by a crc32 of key + value
_PACK_CRC = struct.Struct("<I").pack
_crc32 = zlib.crc32
# The crc32 of any bytes followed by their own crc32 (4 bytes LE) is this constant, so one call
# checks a stored value: crc32(stored, crc32(key)) == _RESIDUE.
_RESIDUE = 0x2144DF1C


def _seal(key: bytes, value: bytes) -> bytes:
    """The stored form of `value` under `key` (format 2): value, then crc32(key + value) (4 bytes LE).

    Example: key b"k", value b"v" -> b"v" + crc32(b"kv").to_bytes(4, "little")."""
    return value + _PACK_CRC(_crc32(value, _crc32(key)))


def _store_error(path: Path, e: BaseException, what: str) -> StoreError:
    """`e` (an lmdb.Error or OSError from `what`) as a StoreError that says what happened. LMDB
    reports a full disk as a bare I/O error, so an I/O error on a disk with no space left is
    called what it is."""
    text = str(e)
    code = getattr(e, "errno", None)
    if isinstance(e, lmdb.MapFullError):
        kind, hint = "map full", "the store reached its map size; give it more (freshrec join --map-size-gb)"
    elif isinstance(e, lmdb.DiskError) or code == errno.ENOSPC or "No space left" in text:
        kind, hint = "disk full", f"free space on the disk that holds {path}"
    elif isinstance(e, lmdb.ReadonlyError) or code in (errno.EACCES, errno.EPERM, errno.EROFS) \
            or "Permission denied" in text or "Read-only file system" in text:
        kind, hint = "permission", f"this process cannot write {path}"
    elif isinstance(e, lmdb.CorruptedError | lmdb.PageNotFoundError | lmdb.PanicError | lmdb.BadChecksumError
                    | lmdb.VersionMismatchError | lmdb.InvalidError):
        kind, hint = "corrupt", "the store's files are damaged; restore it or start it afresh"
    elif code == errno.EIO or "Input/output error" in text:
        kind, hint = "I/O error", "check the disk"
        with contextlib.suppress(OSError):
            st = os.statvfs(path)
            if st.f_bavail * st.f_frsize < max(1 << 20, st.f_blocks * st.f_frsize // 1000):
                kind, hint = "disk full", f"no space left on the disk that holds {path}; free some"
    else:
        kind, hint = "other", "see the LMDB message"
    return StoreError(str(path), kind, f"{what} failed: {text} ({hint})")


class LmdbStore:
    """`JoinStore` on LMDB: one environment at `path`, one named database per table.

    One process owns a store at a time (`owner.lock`, an advisory lock released on exit, even on
    kill -9); opening it while another holds it raises `ConfigError`.

    Every value is stored followed by a crc32 of its key and bytes (`_seal`; format 2, recorded
    in the environment), so a damaged value is refused with `CorruptStoreError` (path, table, key)
    instead of being decoded. A store written before format 2 (no format record) is read and
    written as it was, without checksums. Every LMDB or file-system failure (disk full, map
    full, permission, I/O error, corruption) is raised as `StoreError` with the path and kind.

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
        if any(t.encode() == _FORMAT_DB for t in tables):
            msg = f"LmdbStore: the table name {_FORMAT_DB.decode()!r} is reserved"
            raise ConfigError(msg)
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # one owner at a time: a second writer would block forever on LMDB's writer mutex
            self._lock_fd = os.open(self.path / "owner.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _store_error(self.path, e, "opening") from e
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            msg = f"LmdbStore {self.path} is open in another process (owner.lock is held)"
            raise ConfigError(msg) from None
        try:
            self._env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=len(tables) + 1, sync=sync, metasync=sync,
                readahead=False, lock=True,
            )
        except (lmdb.Error, OSError) as e:
            os.close(self._lock_fd)
            raise _store_error(self.path, e, "opening") from e
        try:
            self.format = self._open_format()
            self._dbs = {t: self._env.open_db(t.encode()) for t in tables}
            self._txn: Any = self._env.begin(write=True)
        except (lmdb.Error, OSError) as e:
            self._env.close()
            os.close(self._lock_fd)
            raise _store_error(self.path, e, "opening") from e
        except StoreError:
            self._env.close()
            os.close(self._lock_fd)
            raise
        self._sealed = self.format >= 2

    def _open_format(self) -> int:
        """The environment's format: recorded, or 1 for one with tables but no record, or (a new
        environment) FORMAT_VERSION, recorded now."""
        with self._env.begin() as txn:
            names = [k for k, _ in txn.cursor()]  # the main database lists the named ones
        if _FORMAT_DB in names:
            with self._env.begin(db=self._env.open_db(_FORMAT_DB)) as txn:
                raw = txn.get(b"format")
            version = int(raw) if raw is not None and raw.isdigit() else -1
            if not 1 <= version <= FORMAT_VERSION:
                raise StoreError(str(self.path), "corrupt", f"unknown store format {raw!r} (this freshrec "
                                 f"reads 1..{FORMAT_VERSION})")
            return version
        if names:
            return 1
        db = self._env.open_db(_FORMAT_DB)
        with self._env.begin(write=True, db=db) as txn:
            txn.put(b"format", b"%d" % FORMAT_VERSION)
        return FORMAT_VERSION

    def _unknown(self, table: str) -> ConfigError:
        return ConfigError(f"LmdbStore {self.path}: unknown table {table!r}")

    def _fail(self, e: BaseException, what: str, table: str) -> StoreError:
        return _store_error(self.path, e, f"{what} in table {table!r}")

    def _corrupt(self, table: str, key: bytes, raw: bytes) -> CorruptStoreError:
        detail = "value shorter than its checksum" if len(raw) < 4 else \
            f"value of {len(raw) - 4} bytes fails its checksum"
        return CorruptStoreError(str(self.path), table, key, detail)

    def _open_pairs(self, table: str, pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """`pairs` as stored -> as put (format 2: each checked, its checksum dropped)."""
        if not self._sealed:
            return pairs
        crc32 = _crc32
        for k, raw in pairs:
            if crc32(raw, crc32(k)) != _RESIDUE:
                raise self._corrupt(table, k, raw)
        return [(k, raw[:-4]) for k, raw in pairs]

    def _db(self, table: str) -> Any:
        try:
            return self._dbs[table]
        except KeyError:
            raise self._unknown(table) from None

    def get(self, table: str, key: bytes) -> bytes | None:
        try:
            raw = self._txn.get(key, db=self._dbs[table])
        except KeyError:
            raise self._unknown(table) from None
        except lmdb.Error as e:
            raise self._fail(e, "get", table) from e
        if raw is None or not self._sealed:
            return raw
        if _crc32(raw, _crc32(key)) != _RESIDUE:
            raise self._corrupt(table, key, raw)
        return raw[:-4]

    def put(self, table: str, key: bytes, value: bytes) -> None:
        try:
            self._txn.put(key, _seal(key, value) if self._sealed else value, db=self._dbs[table])
        except KeyError:
            raise self._unknown(table) from None
        except lmdb.Error as e:
            raise self._fail(e, "put", table) from e

    def put_many(self, table: str, items: list[tuple[bytes, bytes]]) -> None:
        if self._sealed:
            pack, crc32 = _PACK_CRC, _crc32
            items = [(k, v + pack(crc32(v, crc32(k)))) for k, v in items]
        try:
            with self._txn.cursor(db=self._db(table)) as cur:
                cur.putmulti(items)
        except lmdb.Error as e:
            raise self._fail(e, "put", table) from e

    def insert(self, table: str, key: bytes, value: bytes) -> bool:
        try:
            stored = value + _PACK_CRC(_crc32(value, _crc32(key))) if self._sealed else value  # _seal, inline
            return bool(self._txn.put(key, stored, db=self._dbs[table], overwrite=False))
        except KeyError:
            raise self._unknown(table) from None
        except lmdb.Error as e:
            raise self._fail(e, "insert", table) from e

    def delete(self, table: str, key: bytes) -> bool:
        try:
            return bool(self._txn.delete(key, db=self._dbs[table]))
        except KeyError:
            raise self._unknown(table) from None
        except lmdb.Error as e:
            raise self._fail(e, "delete", table) from e

    def pop(self, table: str, key: bytes) -> bytes | None:
        try:
            raw = self._txn.pop(key, db=self._dbs[table])
        except KeyError:
            raise self._unknown(table) from None
        except lmdb.Error as e:
            raise self._fail(e, "pop", table) from e
        if raw is None or not self._sealed:
            return raw
        if _crc32(raw, _crc32(key)) != _RESIDUE:
            raise self._corrupt(table, key, raw)
        return raw[:-4]

    def take(self, table: str, stop: bytes, *, limit: int = 1 << 62) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        sealed, crc32 = self._sealed, _crc32
        try:
            with self._txn.cursor(db=self._db(table)) as cur:
                if not cur.first():
                    return out
                item, delete, add = cur.item, cur.delete, out.append
                while len(out) < limit:
                    k, v = item()
                    if not k or k >= stop:  # b"": past the last pair (LMDB keys are never empty)
                        break
                    if sealed:
                        if crc32(v, crc32(k)) != _RESIDUE:
                            raise self._corrupt(table, k, v)
                        v = v[:-4]
                    add((k, v))
                    delete()  # and move to the next pair
        except lmdb.Error as e:
            raise self._fail(e, "take", table) from e
        return out

    def scan(
        self, table: str, stop: bytes | None = None, *, limit: int = 1 << 62
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        try:
            with self._txn.cursor(db=self._db(table)) as cur:
                if not cur.first():
                    return out
                for k, v in cur:
                    if (stop is not None and k >= stop) or len(out) >= limit:
                        break
                    out.append((k, v))
        except lmdb.Error as e:
            raise self._fail(e, "scan", table) from e
        return self._open_pairs(table, out)

    def count(self, table: str) -> int:
        try:
            return int(self._txn.stat(self._db(table))["entries"])
        except lmdb.Error as e:
            raise self._fail(e, "count", table) from e

    def commit(self) -> None:
        """Make the transaction's writes durable. On failure (StoreError) they are dropped, as
        by `abort()`, and a new transaction is open."""
        self._end(self._txn.commit, "commit")

    def abort(self) -> None:
        self._end(self._txn.abort, "abort")

    def _end(self, finish: Any, what: str) -> None:
        """Commit or abort (`finish`), then begin the next write transaction."""
        err = None
        try:
            finish()
        except lmdb.Error as e:
            err = _store_error(self.path, e, what)
            err.__cause__ = e
        try:
            self._txn = self._env.begin(write=True)
        except lmdb.Error as e:
            self._txn = None
            if err is None:
                raise _store_error(self.path, e, "beginning a transaction") from e
        if err is not None:
            raise err

    def disk_bytes(self) -> int:
        """Bytes the environment's data file takes on disk."""
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def close(self) -> None:
        if self._txn is not None:
            with contextlib.suppress(lmdb.Error):
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
