"""freshrec's exceptions, in one tree.

    FreshrecError
    ├── ConfigError            a configuration value or argument is out of range or inconsistent
    │   └── SchemaError            a data schema does not fit its files, its snapshot or a request
    ├── DataError              data handed in (arrays, a dataset, a file's rows) is malformed or inconsistent
    │   └── MissingDataError       a data file or folder is not there
    ├── NotFoundError          a name or id asked for is not there (a slot, a user of the synthetic platform)
    ├── SnapshotError          a snapshot cannot be written or read
    │   └── CorruptSnapshotError   a snapshot file is missing, truncated or fails its checksum
    ├── LogError               the log seam (local log, Kafka) failed
    │   ├── OffsetOutOfRange       a read asked for an offset the log does not hold
    │   └── CorruptLogError        a log file holds bytes that are no valid record where records must be
    ├── StoreError             the joiner's store (LMDB) failed: disk full, permission, map full, I/O, ...
    │   └── CorruptStoreError      a stored value fails its checksum
    ├── EventError             an event could not be decoded or validated (goes to the dead-letter log)
    ├── CapacityError          a table cannot take more rows: its memory cap with eviction off, or a
    │                          shard's row or bucket limit
    └── RoleError              a role run as a process or thread (a `freshrec` command, a server) failed
                               to start or stopped with an error

Every message names the object at fault (a path, a field, a table) and the reason. For callers
that catch built-in types, `ConfigError`, `DataError` and `EventError` are also `ValueError`s,
`MissingDataError` a `FileNotFoundError` and `NotFoundError` a `KeyError`.

The command line turns any `FreshrecError` into one line on stderr and exit code 2 (see
`freshrec.cli`).
"""

from __future__ import annotations

__all__ = [
    "CapacityError",
    "ConfigError",
    "CorruptLogError",
    "CorruptSnapshotError",
    "CorruptStoreError",
    "DataError",
    "EventError",
    "FreshrecError",
    "LogError",
    "MissingDataError",
    "NotFoundError",
    "OffsetOutOfRange",
    "RoleError",
    "SchemaError",
    "SnapshotError",
    "StoreError",
]


class FreshrecError(Exception):
    """Base of every error freshrec raises on purpose."""


class ConfigError(FreshrecError, ValueError):
    """A configuration value or argument is out of range or inconsistent with another."""


class DataError(FreshrecError, ValueError):
    """Data handed in (arrays, a dataset's columns, the rows of a file) is malformed or inconsistent."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file or folder is not there (the message says where it was looked for)."""


class NotFoundError(FreshrecError, KeyError):
    """A name or id asked for is not there (a slot of a feature spec, an id of the synthetic platform)."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


class SchemaError(ConfigError):
    """A data schema (`freshrec.data.schema`) does not fit its files, the snapshot it is used with,
    or a request: a slot or label not in the data, a label with no positives, a timestamp that does
    not sort, a schema other than the snapshot's, unknown feature names.

    Attributes:
        field: the schema field at fault (a slot, label or column name; "" when the schema as a whole).
        file: the file (a data file, config file or snapshot) it was checked against, or "".
    """

    def __init__(self, message: str, *, field: str = "", file: str = "") -> None:
        self.field = field
        self.file = str(file)
        super().__init__(message)


class SnapshotError(FreshrecError):
    """A snapshot cannot be written or read."""


class CorruptSnapshotError(SnapshotError):
    """A snapshot file is missing, truncated, or fails its checksum.

    Attributes:
        path: the file at fault.
        reason: why it was refused.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"refusing snapshot file {self.path}: {reason}")


class LogError(FreshrecError):
    """The log seam failed (local log files, Kafka)."""


class OffsetOutOfRange(LogError):
    """A read asked for an offset the log does not hold."""


class CorruptLogError(LogError):
    """A log file holds bytes that are not a valid record where valid records must be: inside a
    sealed segment, or followed by valid records in the active one (a torn last record is not
    corruption). Nothing is cut; `freshrec log repair` moves the bad bytes aside.

    Attributes:
        path: the segment file at fault.
        offset: the byte in `path` where the bad bytes start.
        reason: what is wrong with them (checksum mismatch, impossible length, ...).
    """

    def __init__(self, path: str, offset: int, reason: str, *, log: str | None = None) -> None:
        self.path = str(path)
        self.offset = int(offset)
        self.reason = reason
        self.log = log
        where = f"log {log!r}: " if log else ""
        super().__init__(f"{where}corrupt data at byte {self.offset} of {self.path}: {reason} "
                         "(`freshrec log check` reports it, `freshrec log repair` moves it aside)")


class StoreError(FreshrecError):
    """The joiner's store failed.

    Attributes:
        path: the store's folder.
        kind: "disk full", "map full", "permission", "corrupt", "I/O error" or "other".
    """

    def __init__(self, path: str, kind: str, detail: str) -> None:
        self.path = str(path)
        self.kind = kind
        super().__init__(f"joiner store {self.path}: {kind}: {detail}")


class CorruptStoreError(StoreError):
    """A value in the joiner's store fails its checksum (or is too short to carry one).

    Attributes:
        table: the table holding it.
        key: its key.
    """

    def __init__(self, path: str, table: str, key: bytes, detail: str) -> None:
        self.table = table
        self.key = bytes(key)
        super().__init__(path, "corrupt", f"table {table!r} key {self.key[:64]!r}: {detail}")


class EventError(FreshrecError, ValueError):
    """An event could not be decoded or validated."""


class CapacityError(FreshrecError):
    """A table cannot take more rows: under its cap with no eviction policy, or past a shard's
    row or bucket limit."""


class RoleError(FreshrecError):
    """A role run as a process or thread (a `freshrec` command, a server) failed to start or
    stopped with an error."""
