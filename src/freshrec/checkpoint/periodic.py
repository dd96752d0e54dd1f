"""Periodic snapshots of a training PS (full + incremental) with log positions, and recovery.

Layout under `root`::

    root/full/step-000000000040/          full snapshot (kind "training"): the PS's whole state
                                          (`freshrec.ps.training`: model spec, features, tasks,
                                          tables, dense weights, optimizers, progress, positions)
    root/incr/base-000000000040/step-000000000041/   incremental (kind "training-incremental"): the
                                          rows touched (and ids evicted) since the previous snapshot
                                          of the chain, plus the whole non-row state (it is small)
    root/quarantine/...                   snapshots set aside by `recover` (corrupt, or newer than
                                          the point recovered to), kept for people to inspect

This module knows the chain, not the state: it asks the PS (`ps.state(...)`, `ps.load_state`,
`ps.apply_changes`; an `OnlineTrainer` counts as its `.ps`) for the arrays and meta of one
snapshot, and every snapshot of every command has the same layout. The meta also holds
`base_step` / `prev_step` (the chain) and `positions["params"]` / `positions["params_version"]`
when a sync publisher is attached: the parameter log's end offsets and version that match the
tables exactly (the publisher publishes from a hook of the same trainer placed before the
snapshotter, so nothing is between them).

Chains. Every table tracks a change channel "snapshot". A full snapshot drains it and writes whole
tables; an incremental writes `table.take_changes("snapshot")`, i.e. exactly what changed since the
previous snapshot of the chain (full or incremental). Recovery = the newest readable full snapshot,
then its incrementals in step order (each must name the previous one as `prev_step`), then seek
the consumer to the positions stored in the last one applied; training from there replays the log.

Corruption. A snapshot that fails validation raises `CorruptSnapshotError` naming the file; with
`fallback=True` (the default) `recover` logs it and uses the previous good state instead: the
chain is cut before a bad incremental; a bad full snapshot falls back to the one before and its
incrementals. With `fallback=False` the error propagates.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freshrec.checkpoint.format import snapshot_nbytes
from freshrec.checkpoint.store import SnapshotStore
from freshrec.errors import ConfigError, CorruptSnapshotError, SnapshotError

__all__ = [
    "KIND_FULL",
    "KIND_INCR",
    "PeriodicSnapshotter",
    "RecoveryInfo",
    "SnapshotInfo",
    "SnapshotPolicy",
    "chain_root",
    "load_full",
    "recover",
    "save_full",
]

log = logging.getLogger(__name__)

CHANNEL = "snapshot"
KIND_FULL = "training"  # = freshrec.ps.training.SNAPSHOT_KIND
KIND_INCR = "training-incremental"


def _ps(trainer: Any) -> Any:
    """The training PS of `trainer` (an OnlineTrainer's `.ps`, or a PS itself)."""
    return getattr(trainer, "ps", trainer)


def chain_root(path: str | Path) -> bool:
    """Whether `path` is a periodic-snapshot root (it has a `full/` store)."""
    return (Path(path) / "full").is_dir()


@dataclass(frozen=True, kw_only=True)
class SnapshotPolicy:
    """When to snapshot: every `every_batches` batches; every `full_every`-th snapshot is full (1: all
    full), the others incremental; keep the newest `keep` full snapshots with their incrementals."""

    every_batches: int = 100
    full_every: int = 10
    keep: int = 3

    def __post_init__(self) -> None:
        if self.every_batches < 1 or self.full_every < 1 or self.keep < 1:
            msg = f"SnapshotPolicy: every_batches, full_every and keep must be >= 1, got {self}"
            raise ConfigError(msg)


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot written: kind ("full" or "incremental"), step, path, bytes on disk, seconds."""

    kind: str
    step: int
    path: Path
    nbytes: int
    seconds: float
    rows: int


@dataclass(frozen=True)
class RecoveryInfo:
    """What `recover` restored: the full snapshot's step, the incrementals applied, the final step,
    the log positions the consumer was moved to, and the files it refused (path, reason)."""

    full_step: int
    incrementals: list[int]
    step: int
    positions: dict[int, int]
    skipped: list[tuple[str, str]]
    extra: dict[str, Any]
    log_positions: dict[str, Any] = field(default_factory=dict)  # meta["positions"]: params offsets, version

    @property
    def params_version(self) -> int:
        return int(self.log_positions.get("params_version", 0))


def _full_store(root: Path, keep: int) -> SnapshotStore:
    return SnapshotStore(root / "full", keep=keep)


def _incr_store(root: Path, base: int) -> SnapshotStore:
    return SnapshotStore(root / "incr" / f"base-{int(base):012d}", keep=1 << 30)


def _incr_bases(root: Path) -> list[int]:
    d = root / "incr"
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        if p.is_dir() and p.name.startswith("base-") and p.name[5:].isdigit():
            out.append(int(p.name[5:]))
    return sorted(out)


class PeriodicSnapshotter:
    """Writes full and incremental snapshots of a training PS (or an `OnlineTrainer`'s) under `root`.

    Use as a trainer hook: `trainer.add_hook(snapshotter)`; it snapshots when `trainer.step` is a
    multiple of `policy.every_batches`. `extra_state()` (optional) returns JSON data stored with each
    snapshot (`RecoveryInfo.extra` gives it back). With `publisher` (a `freshrec.ps.sync.SyncPublisher`
    of this trainer) every snapshot also stores the parameter log's end offsets (`positions["params"]`)
    and the publisher's version (`positions["params_version"]`, for `SyncPublisher(start_version=...)`
    after a recovery, and for a serving replica started from the snapshot); they agree exactly with
    the tables when the publisher publishes from a hook of the same trainer (same thread) placed
    before the snapshotter.
    """

    def __init__(
        self,
        root: str | Path,
        policy: SnapshotPolicy | None = None,
        *,
        extra_state: Callable[[], Mapping[str, Any]] | None = None,
        publisher: Any = None,
    ) -> None:
        self.root = Path(root)
        self.policy = policy or SnapshotPolicy()
        self.extra_state = extra_state
        self.publisher = publisher
        self.root.mkdir(parents=True, exist_ok=True)
        self.full = _full_store(self.root, self.policy.keep)
        self.history: list[SnapshotInfo] = []
        # the chain the next incremental extends: (base full step, previous snapshot step)
        self._base: int | None = None
        self._prev: int | None = None
        self._count = 0  # snapshots since the last full one

    def __call__(self, trainer, info=None) -> None:
        if trainer.step % self.policy.every_batches == 0:
            self.snapshot(trainer)

    def attach(self, trainer) -> None:
        """Start change tracking on the trainer's tables (done by `snapshot` too)."""
        for table in _ps(trainer).tables.values():
            table.track(CHANNEL)

    def snapshot(self, trainer, *, full: bool | None = None) -> SnapshotInfo:
        """Write a snapshot now: full when `full` or when the policy says so (or no chain exists).

        If writing fails, the error propagates and the next snapshot is a full one."""
        if full is None:
            full = self._base is None or self._count >= self.policy.full_every - 1
        if self._prev is not None and trainer.step <= self._prev:
            msg = f"snapshot at step {trainer.step}: not after the previous one ({self._prev}) in {self.root}"
            raise SnapshotError(msg)
        self.attach(trainer)
        try:
            return self._snapshot(trainer, full)
        except BaseException:
            self._base = None  # the change channels may be drained: the next snapshot must be full
            raise

    def _snapshot(self, trainer, full: bool) -> SnapshotInfo:
        t0 = time.perf_counter()
        ps = _ps(trainer)
        meta, arrays = ps.state(
            self._positions(),
            extra=dict(self.extra_state()) if self.extra_state else None,
            changes=None if full else CHANNEL,
            drain=CHANNEL if full else None,
        )
        rows = sum(_rows(m) for m in meta["tables"].values())
        if full:
            meta |= {"kind": "full", "base_step": trainer.step, "prev_step": None}
            path = self.full.save(trainer.step, kind=KIND_FULL, meta=meta, arrays=arrays)
            self._base, self._count = trainer.step, 0
            self._prune_incrementals()
        else:
            assert self._base is not None
            meta |= {"kind": "incremental", "base_step": self._base, "prev_step": self._prev}
            path = _incr_store(self.root, self._base).save(
                trainer.step, kind=KIND_INCR, meta=meta, arrays=arrays
            )
            self._count += 1
        self._prev = trainer.step
        seconds = time.perf_counter() - t0
        info = SnapshotInfo(
            "full" if full else "incremental", trainer.step, path, snapshot_nbytes(path), seconds, rows
        )
        self.history.append(info)
        return info

    def _positions(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        pub = self.publisher
        if pub is not None:
            pub.log.flush()
            out["params"] = [int(x) for x in pub.log.end_offsets()]
            out["params_version"] = int(pub.version)
        return out

    def replay_floor(self) -> dict[str, Any]:
        """What the oldest kept full snapshot needs to be replayed from: {"trained": {partition:
        offset} of the examples log, "params": [offset per partition] of the parameter log (when a
        publisher was attached)}; {} when there is none. Retention must keep the logs from there on
        (`freshrec.pipeline` commits it under the group "snapshots" of each log)."""
        from freshrec.checkpoint.format import read_manifest

        steps = self.full.steps()
        if not steps:
            return {}
        try:
            pos = dict(read_manifest(self.full.path_for(steps[0]))["meta"].get("positions", {}))
        except CorruptSnapshotError:
            return {}
        out: dict[str, Any] = {"trained": {int(p): int(o) for p, o in pos.get("trained", {}).items()}}
        if "params" in pos:
            out["params"] = [int(x) for x in pos["params"]]
        return out

    def _prune_incrementals(self) -> None:
        kept = set(self.full.steps())
        for base in _incr_bases(self.root):
            if base not in kept:
                shutil.rmtree(self.root / "incr" / f"base-{base:012d}", ignore_errors=True)

    def recover(self, trainer, consumer=None, *, fallback: bool = True) -> RecoveryInfo | None:
        """`recover(self.root, trainer, consumer)`, then continue the chain recovered to."""
        info = recover(self.root, trainer, consumer, fallback=fallback)
        if info is not None:
            self._base = info.full_step
            self._prev = info.step
            self._count = len(info.incrementals)
        return info


def _rows(table_meta: Mapping[str, Any]) -> int:
    if "shards" in table_meta:
        return sum(int(m.get("rows", 0)) for m in table_meta["shards"])
    return int(table_meta.get("rows", 0))


def save_full(trainer, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write one standalone full snapshot of `trainer` (its PS) at `path`, without touching its
    change channels (atomic, checksummed)."""
    from freshrec.checkpoint.format import write_snapshot

    meta, arrays = _ps(trainer).state(extra=extra)
    return write_snapshot(path, kind=KIND_FULL, meta=meta, arrays=arrays)


def load_full(trainer, path: str | Path) -> dict[str, Any]:
    """Restore `trainer` (same model) from a full snapshot folder; returns its `extra`.

    Raises CorruptSnapshotError naming the file when the snapshot is damaged, SnapshotError when
    it is of another model."""
    from freshrec.checkpoint.format import read_snapshot

    meta, arrays = read_snapshot(path, kind=KIND_FULL)
    _ps(trainer).load_state(meta, arrays, source=str(path))
    return dict(meta.get("extra", {}))


def _quarantine(root: Path, path: Path) -> None:
    q = root / "quarantine"
    q.mkdir(exist_ok=True)
    dest = q / f"{path.parent.name}-{path.name}-{time.time_ns()}"
    try:
        path.rename(dest)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def recover(
    root: str | Path, trainer, consumer=None, *, fallback: bool = True, quarantine: bool = True
) -> RecoveryInfo | None:
    """Restore `trainer` (a training PS or an OnlineTrainer; the same model) from the snapshots under
    `root`; None when there are none.

    Tables are replaced by the snapshot's, dense weights / optimizer state / counters / positions
    loaded; `consumer` (when given) is moved to the restored positions. Snapshots newer than the
    state recovered to (corrupt ones, or incrementals after a corrupt link) are moved to
    `root/quarantine/` so later saves continue the chain cleanly (unless `quarantine` is false:
    readers such as a serving replica leave the folder as it is).

    Raises:
        CorruptSnapshotError: a snapshot is unreadable and `fallback` is false, or no full snapshot
            is readable (the newest one's error).
    """
    root = Path(root)
    ps = _ps(trainer)
    fulls = _full_store(root, keep=1 << 30)
    steps = fulls.steps()
    if not steps:
        return None
    skipped: list[tuple[str, str]] = []
    first_error: CorruptSnapshotError | None = None
    for full_step in reversed(steps):
        try:
            meta, arrays = fulls.load(full_step, kind=KIND_FULL)
            source = str(fulls.path_for(full_step))
            ps.load_state(meta, arrays, source=source)
        except CorruptSnapshotError as e:
            if not fallback:
                raise
            log.warning(
                "full snapshot %d unusable: %s (%s); trying the previous one", full_step, e.path, e.reason
            )
            skipped.append((str(e.path), e.reason))
            first_error = first_error or e
            continue
        last_meta = meta
        applied: list[int] = []
        prev = full_step
        incr = _incr_store(root, full_step)
        for istep in incr.steps():
            try:
                imeta, iarrays = incr.load(istep, kind=KIND_INCR)
                if imeta.get("prev_step") != prev or imeta.get("base_step") != full_step:
                    raise CorruptSnapshotError(
                        str(incr.path_for(istep)),
                        f"chain broken: prev_step {imeta.get('prev_step')} where {prev} was expected",
                    )
            except CorruptSnapshotError as e:
                if not fallback:
                    raise
                log.warning(
                    "incremental snapshot %d unusable: %s (%s); stopping at step %d",
                    istep,
                    e.path,
                    e.reason,
                    prev,
                )
                skipped.append((str(e.path), e.reason))
                break
            ps.apply_changes(imeta, iarrays, source=str(incr.path_for(istep)))
            applied.append(istep)
            prev = istep
            last_meta = imeta
        for table in ps.tables.values():
            table.track(CHANNEL)
        # set aside everything newer than the state recovered to (not when only reading, e.g. serving)
        for s in fulls.steps() if quarantine else ():
            if s > full_step:
                _quarantine(root, fulls.path_for(s))
        for base in _incr_bases(root) if quarantine else ():
            store = _incr_store(root, base)
            for s in store.steps():
                if s > prev:
                    _quarantine(root, store.path_for(s))
        if consumer is not None:
            for p, off in ps.positions.items():
                consumer.seek(int(p), int(off))
        return RecoveryInfo(
            full_step=full_step,
            incrementals=applied,
            step=ps.step,
            positions=dict(ps.positions),
            skipped=skipped,
            extra=dict(last_meta.get("extra", {})),
            log_positions=dict(last_meta.get("positions", {})),
        )
    assert first_error is not None
    raise first_error
