"""Periodic snapshots of an online trainer (full + incremental) with log positions, and recovery.

Layout under `root`::

    root/full/step-000000000040/          full snapshot (kind "online-full"): every table's whole
                                          state, dense weights + optimizer state, positions, step
    root/incr/base-000000000040/step-000000000041/   incremental (kind "online-incr"): only the
                                          rows touched (and ids evicted) since the previous snapshot
                                          of the chain, plus the whole dense state (it is small)
    root/quarantine/...                   snapshots set aside by `recover` (corrupt, or newer than
                                          the point recovered to), kept for people to inspect

Arrays of a snapshot are flat, prefixed names (`table.<slot>.rows`, `model.dnn.0.weight`,
`opt.dense.3.exp_avg`, `window.scores`); the meta is JSON: `{"step", "kind", "base_step",
"prev_step", "tables": {slot: table meta}, "trainer": trainer.trainer_state() meta, "extra": {...}}`
where `extra` holds what `extra_state()` returned (e.g. the parameter log's position of a sync
publisher). Every file is checksummed and written atomically (`freshrec.checkpoint.format`).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.checkpoint.format import snapshot_nbytes, strip_prefix, with_prefix
from freshrec.checkpoint.store import SnapshotStore
from freshrec.errors import ConfigError, CorruptSnapshotError, SnapshotError

__all__ = [
    "PeriodicSnapshotter",
    "RecoveryInfo",
    "SnapshotInfo",
    "SnapshotPolicy",
    "full_state",
    "load_full",
    "recover",
    "save_full",
]

log = logging.getLogger(__name__)

CHANNEL = "snapshot"
KIND_FULL = "online-full"
KIND_INCR = "online-incr"


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
    """Writes full and incremental snapshots of an `OnlineTrainer` under `root` (see the module doc).

    Use as a trainer hook: `trainer.add_hook(snapshotter)`; it snapshots when `trainer.step` is a
    multiple of `policy.every_batches`. `extra_state()` (optional) returns JSON data stored with each
    snapshot (`RecoveryInfo.extra` gives it back). With `publisher` (a `freshrec.ps.sync.SyncPublisher`
    of this trainer) every snapshot also stores the parameter log's end offsets (`extra["params"]`)
    and the publisher's version (`extra["params_version"]`, for `SyncPublisher(start_version=...)`
    after a recovery); they agree exactly with the tables when the publisher publishes from a hook
    of the same trainer (same thread) placed before the snapshotter, as
    `freshrec.ps.sync.SyncPublisher.snapshot` does for a training PS.
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
        for table in trainer.tables.values():
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
        tmeta, arrays = trainer.trainer_state()
        meta: dict[str, Any] = {
            "step": trainer.step,
            "trainer": tmeta,
            "extra": self._extra(),
            "tables": {},
        }
        rows = 0
        for slot, table in trainer.tables.items():
            if full:
                table.take_touched(CHANNEL)  # drain: the next incremental starts from here
                m, a = table.state()
            else:
                m, a = table.take_changes(CHANNEL)
            rows += int(m["rows"])
            meta["tables"][slot] = m
            arrays |= with_prefix(f"table.{slot}", a)
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

    def _extra(self) -> dict[str, Any]:
        out = dict(self.extra_state()) if self.extra_state else {}
        pub = self.publisher
        if pub is not None:
            pub.log.flush()
            out["params"] = [int(x) for x in pub.log.end_offsets()]
            out["params_version"] = int(pub.version)
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


def full_state(trainer, *, extra: Mapping[str, Any] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a full snapshot of `trainer` (kind "online-full"), without touching its
    change channels: what `save_full` writes and `load_full` reads."""
    tmeta, arrays = trainer.trainer_state()
    meta: dict[str, Any] = {
        "step": trainer.step,
        "kind": "full",
        "base_step": trainer.step,
        "prev_step": None,
        "trainer": tmeta,
        "extra": dict(extra or {}),
        "tables": {},
    }
    for slot, table in trainer.tables.items():
        m, a = table.state()
        meta["tables"][slot] = m
        arrays |= with_prefix(f"table.{slot}", a)
    return meta, arrays


def save_full(trainer, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write one standalone full snapshot of `trainer` at `path` (atomic, checksummed)."""
    from freshrec.checkpoint.format import write_snapshot

    meta, arrays = full_state(trainer, extra=extra)
    return write_snapshot(path, kind=KIND_FULL, meta=meta, arrays=arrays)


def load_full(trainer, path: str | Path) -> dict[str, Any]:
    """Restore `trainer` (same architecture) from a `save_full` snapshot; returns its `extra`.

    Raises CorruptSnapshotError naming the file when the snapshot is damaged.
    """
    from freshrec.checkpoint.format import read_snapshot

    meta, arrays = read_snapshot(path, kind=KIND_FULL)
    _restore_tables(trainer, meta, arrays, str(path))
    trainer.load_trainer_state(meta["trainer"], arrays)
    return dict(meta.get("extra", {}))


def _restore_tables(trainer, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], source: str) -> None:
    from freshrec.table import EmbeddingTable

    layers = trainer.model.collisionless
    if set(meta["tables"]) != set(layers):
        msg = f"{source}: tables {sorted(meta['tables'])} do not match the model's {sorted(layers)}"
        raise SnapshotError(msg)
    for slot, tmeta in meta["tables"].items():
        table = EmbeddingTable.from_state(tmeta, strip_prefix(f"table.{slot}", arrays), source=source)
        table.track(CHANNEL)
        layers[slot].table = table


def _apply_incremental(
    trainer, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], source: str
) -> None:
    tables = trainer.tables
    if set(meta["tables"]) != set(tables):
        msg = f"{source}: tables {sorted(meta['tables'])} do not match the model's {sorted(tables)}"
        raise SnapshotError(msg)
    for slot, tmeta in meta["tables"].items():
        tables[slot].apply_changes(tmeta, strip_prefix(f"table.{slot}", arrays))


def _quarantine(root: Path, path: Path) -> None:
    q = root / "quarantine"
    q.mkdir(exist_ok=True)
    dest = q / f"{path.parent.name}-{path.name}-{time.time_ns()}"
    try:
        path.rename(dest)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def recover(root: str | Path, trainer, consumer=None, *, fallback: bool = True) -> RecoveryInfo | None:
    """Restore `trainer` (same model architecture) from the snapshots under `root`; None when there are none.

    Tables are replaced by the snapshot's, dense weights / optimizer state / counters / positions
    loaded; `consumer` (when given) is moved to the restored positions. Snapshots newer than the
    state recovered to (corrupt ones, or incrementals after a corrupt link) are moved to
    `root/quarantine/` so later saves continue the chain cleanly.

    Raises:
        CorruptSnapshotError: a snapshot is unreadable and `fallback` is false, or no full snapshot
            is readable (the newest one's error).
    """
    root = Path(root)
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
            _restore_tables(trainer, meta, arrays, source)
        except CorruptSnapshotError as e:
            if not fallback:
                raise
            log.warning(
                "full snapshot %d unusable: %s (%s); trying the previous one", full_step, e.path, e.reason
            )
            skipped.append((str(e.path), e.reason))
            first_error = first_error or e
            continue
        last_meta, last_arrays = meta, arrays
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
            _apply_incremental(trainer, imeta, iarrays, str(incr.path_for(istep)))
            applied.append(istep)
            prev = istep
            last_meta, last_arrays = imeta, iarrays
        trainer.load_trainer_state(last_meta["trainer"], last_arrays)
        # set aside everything newer than the state recovered to
        for s in fulls.steps():
            if s > full_step:
                _quarantine(root, fulls.path_for(s))
        for base in _incr_bases(root):
            store = _incr_store(root, base)
            for s in store.steps():
                if s > prev:
                    _quarantine(root, store.path_for(s))
        if consumer is not None:
            trainer.seek(consumer)
        return RecoveryInfo(
            full_step=full_step,
            incrementals=applied,
            step=trainer.step,
            positions=dict(trainer.positions),
            skipped=skipped,
            extra=dict(last_meta.get("extra", {})),
        )
    assert first_error is not None
    raise first_error
