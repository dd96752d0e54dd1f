"""One replica's parameters held once per host: an applier process writes, worker processes serve.

    applier (SharedApplier)                         worker i (attach_replica)
      SyncSubscriber ─► apply(Delta) ──► tables  ◄── SharedTableReader per slot ◄─ model layers
                        apply(DenseUpdate) ─► dense-<n>.bin ─► DenseFollower ─► load_dense (swap)
                        counters ─────────► state  ─► DenseFollower ─► replica.version, ...

Everything lives in one folder (normally under /dev/shm):

    replica.json      what rebuilds the model (`TrainingPS.describe()`), the table stems, the
                      serving options; written once, before any worker starts
    t<i>.ctl, t<i>.<gen>   the shared table of the i-th collisionless slot (`freshrec.table.shared`)
    state             int64[16]: versions and apply counters (float64 words for times, NaN = none)
    dense-<n>.bin     the newest dense weights, in the parameter log's own frame format
                      (`freshrec.ps.delta.encode` of a `DenseUpdate`: no pickle)

Embedding deltas are visible to every worker as soon as the applier wrote them (each row before
or after, never torn: the tables' seqlock). Dense weights: once every tensor of a version has
arrived, the applier writes dense-<n>.bin (temp + rename) and then bumps `state[DENSE_FILE]`;
each worker's `DenseFollower` polls the state every `poll_s` and swaps the new weights in with
`ServingReplica.load_dense` (one reference assignment, as in one process), so a dense update
reaches the workers within about `poll_s` of being applied.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.errors import ConfigError
from freshrec.ps.delta import Delta, DenseUpdate, decode, encode
from freshrec.table.shared import SharedTableReader, SharedTableWriter

__all__ = ["BAD", "DenseFollower", "SharedApplier", "SharedState", "attach_replica"]

_MAGIC = 0x6672736853544131  # "frshSTA1"
VERSION, DENSE_VERSION, DENSE_FILE, DELTAS, ROWS, DELETED, DENSE_APPLIED, UNKNOWN, BAD = range(1, 10)
DATA_TS, LAST_WALL = 10, 11  # float64 words
_WORDS = 16


class SharedState:
    """The state words (module docstring); `create` in the applier, `open` in a worker."""

    def __init__(self, buf: mmap.mmap, writable: bool) -> None:
        self._buf = buf
        self.words = np.frombuffer(buf, np.int64, _WORDS)
        self.floats = np.frombuffer(buf, np.float64, _WORDS)
        if not writable:
            self.words.flags.writeable = False
            self.floats.flags.writeable = False

    @classmethod
    def create(cls, path: Path) -> SharedState:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, 8 * _WORDS)
            st = cls(mmap.mmap(fd, 8 * _WORDS), True)
        finally:
            os.close(fd)
        st.floats[DATA_TS] = st.floats[LAST_WALL] = math.nan
        st.words[0] = _MAGIC
        return st

    @classmethod
    def open(cls, path: Path) -> SharedState:
        fd = os.open(path, os.O_RDONLY)
        try:
            st = cls(mmap.mmap(fd, 8 * _WORDS, access=mmap.ACCESS_READ), False)
        finally:
            os.close(fd)
        if int(st.words[0]) != _MAGIC:
            msg = f"{path}: not a freshrec shared-replica state file"
            raise ConfigError(msg)
        return st

    def time(self, word: int) -> float | None:
        v = float(self.floats[word])
        return None if math.isnan(v) else v


class SharedApplier:
    """The one writer of a shared replica: what `SyncSubscriber` applies frames to.

    Build it with `from_ps` (the tables and dense weights of a loaded snapshot); `apply` mirrors
    `ServingReplica.apply` (remove then assign per Delta; a dense version once complete)."""

    def __init__(
        self,
        root: Path,
        tables: Mapping[str, SharedTableWriter],
        dense_keys: frozenset[str],
        *,
        fp16: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.tables = dict(tables)
        self._dense_keys = dense_keys
        self._pending: dict[int, dict[str, np.ndarray]] = {}
        self.fp16 = fp16
        self.clock = clock
        self.state = SharedState.create(self.root / "state")
        self._lock = threading.Lock()
        self.positions: dict[str, Any] = {}

    @property
    def version(self) -> int:
        return int(self.state.words[VERSION])

    @classmethod
    def from_ps(
        cls,
        ps: Any,
        root: Path,
        *,
        positions: Mapping[str, Any] | None = None,
        serving: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SharedApplier:
        """Shared tables and dense weights holding what the `TrainingPS` `ps` holds; writes
        replica.json (with `serving`: the JSON options of `ServingConfig` the workers use)."""
        from freshrec.model.contract import extra_columns_of
        from freshrec.ps.serving import serving_table_config

        serving = dict(serving or {})
        fp16 = bool(serving.get("fp16", False))
        desc = ps.describe()
        extra = extra_columns_of(ps.model_spec.resolve())
        writers: dict[str, SharedTableWriter] = {}
        stems: dict[str, str] = {}
        for i, name in enumerate(n for n in ps.spec.names if desc["embeddings"][n]["kind"] != "hashed"):
            dim = serving_table_config(ps.spec.table_config(name, extra_columns=extra)).dim
            ids, rows = ps.tables[name].export()
            rows = np.asarray(rows)[:, :dim]
            if fp16:
                rows = rows.astype(np.float16)
            stems[name] = f"t{i}"
            w = SharedTableWriter(root, stems[name], dim=dim, capacity=max(1024, ids.shape[0] * 5 // 4))
            w.assign(ids, np.ascontiguousarray(rows, np.float32))
            writers[name] = w
        dense = ps.dense_state()
        app = cls(root, writers, frozenset(dense), fp16=fp16, clock=clock)
        version = int(dict(positions or {}).get("params_version", 0))
        app._write_dense(DenseUpdate(version=version, tensors=dense))
        st = app.state
        st.words[VERSION] = st.words[DENSE_VERSION] = version
        st.floats[DATA_TS] = math.nan if ps.data_time is None else float(ps.data_time)
        app.positions = dict(positions or {})
        doc = {"describe": desc, "tables": stems, "serving": serving}
        tmp = root / "replica.json.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.rename(root / "replica.json")
        return app

    def _write_dense(self, upd: DenseUpdate) -> None:
        st = self.state
        n = int(st.words[DENSE_FILE]) + 1
        tmp = self.root / f"dense-{n}.tmp"
        tmp.write_bytes(encode(DenseUpdate(version=upd.version, tensors=dict(upd.tensors), ts=upd.ts)))
        tmp.rename(self.root / f"dense-{n}.bin")
        st.words[DENSE_VERSION] = int(upd.version)
        st.words[DENSE_FILE] = n  # after the rename: a worker that sees n finds the file
        (self.root / f"dense-{n - 2}.bin").unlink(missing_ok=True)  # keep the previous one a while

    def apply(self, msg: Delta | DenseUpdate) -> None:
        """Apply one parameter-log frame to the shared tables / dense file."""
        st = self.state
        w = st.words
        with self._lock:
            if isinstance(msg, Delta):
                table = self.tables.get(msg.table)
                if table is None:
                    w[UNKNOWN] += 1
                    return
                if msg.deleted.shape[0]:
                    w[DELETED] += table.remove(msg.deleted)
                if msg.ids.shape[0]:
                    emb = msg.embeddings
                    if self.fp16 and emb.dtype != np.float16:
                        emb = emb.astype(np.float16)
                    table.assign(msg.ids, emb.astype(np.float32, copy=False))
                    w[ROWS] += int(msg.ids.shape[0])
                w[DELTAS] += 1
            else:
                pend = self._pending.setdefault(int(msg.version), {})
                pend.update(msg.tensors)
                if not self._dense_keys <= set(pend):
                    return
                self._write_dense(DenseUpdate(version=msg.version, tensors=pend, ts=msg.ts))
                self._pending = {v: p for v, p in self._pending.items() if v > msg.version}
                w[DENSE_APPLIED] += 1
            w[VERSION] = max(int(w[VERSION]), int(msg.version))
            if msg.ts:
                old = st.time(DATA_TS)
                st.floats[DATA_TS] = float(msg.ts) if old is None else max(old, float(msg.ts))
            st.floats[LAST_WALL] = self.clock()

    def table_sizes(self) -> dict[str, int]:
        return {n: len(t) for n, t in self.tables.items()}

    def close(self) -> None:
        """Remove the tables' files (the folder is the caller's)."""
        for t in self.tables.values():
            t.close()


class DenseFollower:
    """A worker's follower of the applier: copies the state words into the replica's attributes
    and swaps in each new dense file (module docstring). Passed to `create_app` as its
    `subscriber` (stopped with the app)."""

    def __init__(self, replica: Any, root: Path, *, poll_s: float = 0.02) -> None:
        self.replica = replica
        self.root = Path(root)
        self.state = SharedState.open(self.root / "state")
        self.poll_s = float(poll_s)
        self._file = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.poll_once()

    @property
    def bad_frames(self) -> int:
        return int(self.state.words[BAD])

    def poll_once(self) -> None:
        w, st, r = self.state.words, self.state, self.replica
        n = int(w[DENSE_FILE])
        if n != self._file:
            try:
                upd = decode((self.root / f"dense-{n}.bin").read_bytes())
            except FileNotFoundError:  # replaced twice since: the next poll reads the newer one
                upd = None
            if isinstance(upd, DenseUpdate):
                r.load_dense(upd.tensors, version=upd.version)
                self._file = n
        r.version = int(w[VERSION])
        r.deltas_applied, r.rows_applied, r.rows_deleted = int(w[DELTAS]), int(w[ROWS]), int(w[DELETED])
        r.dense_applied, r.unknown_tables = int(w[DENSE_APPLIED]), int(w[UNKNOWN])
        r.data_ts, r.last_apply_wall = st.time(DATA_TS), st.time(LAST_WALL)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once()
            except Exception:  # keep serving the weights in use; counted
                self.errors += 1

    def start(self) -> DenseFollower:
        self._thread = threading.Thread(target=self._run, name="freshrec-dense-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def attach_replica(
    root: Path, *, clock: Callable[[], float] = time.time, follow: bool = True
) -> tuple[Any, DenseFollower]:
    """A `ServingReplica` over the shared tables in `root` and its `DenseFollower` (started,
    unless `follow` is False: then no thread starts)."""
    from freshrec.model import FeatureSpec, ModelSpec, Task
    from freshrec.model.contract import extra_columns_of
    from freshrec.ps.serving import ServingConfig, ServingReplica, serving_table_config

    doc = json.loads((Path(root) / "replica.json").read_text())
    desc, opts = doc["describe"], doc["serving"]
    spec = FeatureSpec.from_dict(desc["features"])
    model_spec = ModelSpec.from_dict(desc["model"])
    tasks = tuple(Task.from_dict(t) for t in desc["tasks"])
    hashed = {n: lm for n, lm in desc["embeddings"].items() if lm["kind"] == "hashed"}
    extra = extra_columns_of(model_spec.resolve())
    tables = {
        name: SharedTableReader(
            root, stem, config=serving_table_config(spec.table_config(name, extra_columns=extra))
        )
        for name, stem in doc["tables"].items()
    }
    names = opts.get("dense_names")
    config = ServingConfig(
        fp16=bool(opts.get("fp16", False)),
        train_sample_rate=opts.get("train_sample_rate"),
        dense_names=tuple(names) if names is not None else None,
        rank_weights=opts.get("rank_weights"),
    )
    replica = ServingReplica(
        spec, model=model_spec, tasks=tasks, hashed=hashed, config=config, clock=clock, tables=tables
    )
    follower = DenseFollower(replica, root)
    return replica, follower.start() if follow else follower
