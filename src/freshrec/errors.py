"""freshrec's exceptions, in one tree.

    FreshrecError
    ├── ConfigError            a configuration value is out of range or inconsistent
    ├── SnapshotError          a snapshot cannot be written or read
    │   └── CorruptSnapshotError   a snapshot file is missing, truncated or fails its checksum
    ├── LogError               the log seam (local log, Kafka) failed
    │   └── OffsetOutOfRange       a read asked for an offset the log does not hold
    ├── EventError             an event could not be decoded or validated (goes to the dead-letter log)
    └── CapacityError          a table cannot take more rows under its memory cap and eviction is off

Every message names the object at fault (a path, a field, a table) and the reason.
"""

from __future__ import annotations

__all__ = [
    "CapacityError",
    "ConfigError",
    "CorruptSnapshotError",
    "EventError",
    "FreshrecError",
    "LogError",
    "OffsetOutOfRange",
    "SnapshotError",
]


class FreshrecError(Exception):
    """Base of every error freshrec raises on purpose."""


class ConfigError(FreshrecError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


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


class EventError(FreshrecError, ValueError):
    """An event could not be decoded or validated."""


class CapacityError(FreshrecError):
    """A table cannot take more rows under its cap and has no eviction policy."""
