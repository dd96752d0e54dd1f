"""Import a schema's rows into the features / actions logs: in data-time order, paced, resumable,
and never writing an event twice.

    plan = plan_events(schema, columns)          # every event, as columns, in the order it is written
    stats = import_to_logs(plan, features, actions, dead_letters, state=path, ...)

The events are never one Python object each: the plan holds their columns and one program per
kind (`freshrec.stream.record_columns`), and a log that takes frames (the local log's
`append_frames`) gets blocks framed straight from the columns by numba kernels, in helper threads
ahead of its writes; other logs get (key, value) pairs. The bytes are the same either way.

The plan is a pure function of the schema and the files (request ids `"<name>-<n>:<position>"`,
negatives drawn with the schema's seed), so two runs plan the same records in the same order:

- shape (a) rows: one feature event per row; per label, one action `(label, value)` at
  `ts + delay_s` when the row's value is > 0 (binary labels: value >= threshold, value 1).
- shape (b) behaviour: one feature event per impression row; one action per behaviour row that
  attaches to an impression (`freshrec.data.schema_data.attach_behaviours`), at its own time.
- shape (c) positives: per click, the clicked item and its sampled negatives as feature events
  (positions 0..k, the click at 0) and the click as an action at `ts + delay_s`.
- rows refused while reading (a missing time, user or item) go first, as dead letters naming the
  file, the row and the reason.

Resume. Before the first record, the state file (JSON, written atomically) records the
plan's fingerprint and every log's end offsets (the *base*). The logs are append-only and each
import writes, per log and partition, a prefix of its planned records for that partition (a crash
may leave any prefix: flushed or not, a torn last record is cut by the log). So on a rerun
`end offset - base` per partition is exactly how many planned records that partition already holds,
whatever was or was not recorded before the crash; those are skipped, after checking that the
log's last record is the one the plan put there (another writer in between is refused), and
the import goes on from there. A finished import rerun writes nothing.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from freshrec.data.dataset import Ragged
from freshrec.data.schema import Schema
from freshrec.data.schema_data import Columns, attach_behaviours, sample_positives, standardized
from freshrec.errors import ConfigError, LogError
from freshrec.stream.events import DeadLetter, encode_dead_letter
from freshrec.stream.log import Log
from freshrec.stream.record_columns import ColumnRecords, FrameBuffer, RecordsBuilder

__all__ = ["EventPlan", "ImportStats", "import_to_logs", "plan_events"]

FEATURES, ACTIONS, DEAD = 0, 1, 2
# one label's actions: (action, request, position, value, ts)
_ActionPart = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True, eq=False)
class EventPlan:
    """Every record an import writes, in order: record i is of `kind[i]` (uint8 (m,): 0 features,
    1 actions, 2 dead letters), row `row[i]` (int64 (m,)) of `records[kind[i]]`, at data time
    `ts[i]` (float64 (m,); dead letters: -inf). The records are columns
    (`freshrec.stream.record_columns`): a block of them is framed straight from the columns."""

    kind: np.ndarray
    row: np.ndarray
    ts: np.ndarray
    records: tuple[ColumnRecords, ColumnRecords, ColumnRecords]
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.kind)

    def key(self, i: int) -> bytes:
        """The key of record i."""
        return self.records[int(self.kind[i])].pairs(self.row[i : i + 1])[0][0]

    def _pairs(self, which: int) -> np.ndarray:
        out = np.empty(len(self), dtype=object)
        for k in range(3):
            ix = np.flatnonzero(self.kind == k)
            if len(ix):
                out[ix] = [kv[which] for kv in self.records[k].pairs(self.row[ix])]
        return out

    @property
    def keys(self) -> np.ndarray:
        """Every record's key, object (m,) of bytes (materialized: for inspection)."""
        return self._pairs(0)

    @property
    def values(self) -> np.ndarray:
        """Every record's value, object (m,) of bytes (materialized: for inspection)."""
        return self._pairs(1)


@dataclass(slots=True)
class ImportStats:
    """What one `import_to_logs` call did."""

    planned: int = 0
    skipped: int = 0  # already in the logs from an earlier run
    features: int = 0
    actions: int = 0
    dead_letters: int = 0
    resumed: bool = False
    first_ts: float | None = None  # data time of the plan's first and last event
    last_ts: float | None = None

    @property
    def written(self) -> int:
        return self.features + self.actions + self.dead_letters


# ------------------------------------------------------------------------------------ encoding


def _features(
    schema: Schema,
    request: np.ndarray,
    position: np.ndarray,
    user: np.ndarray,
    item: np.ndarray,
    sparse: dict[str, np.ndarray],
    multi: dict[str, Ragged],
    dense: np.ndarray,
    ts: np.ndarray,
) -> ColumnRecords:
    """Feature events keyed by request id `"<name>-<request>:<position>"`, in the layout of
    `encode_feature` (compact JSON, fields in order):
    `{"request_id":"..","user_id":..,"item_id":..,"sparse":{..},"dense":{..},"ts":..}`."""
    b = RecordsBuilder(len(ts))
    b.key.lit(f"{schema.name}-").int(request).lit(":").int(position)
    v = b.value.lit(f'{{"request_id":"{schema.name}-').int(request).lit(":").int(position)
    v.lit('","user_id":').int(user).lit(',"item_id":').int(item).lit(',"sparse":{')
    first = True
    for s in schema.slots:
        if s.kind == "dense":
            continue
        v.lit(("" if first else ",") + f'"{s.name}":[')
        if s.kind == "categorical":
            v.int(sparse[s.name])
        else:
            v.ints(multi[s.name])
        v.lit("]")
        first = False
    v.lit('},"dense":{')
    for j, s in enumerate(schema.dense_slots):
        v.lit(("," if j else "") + f'"{s.name}":').float32(dense[:, j])
    v.lit('},"ts":').number(ts).lit("}")
    return b.build()


def _actions(name: str, parts: list[_ActionPart]) -> ColumnRecords:
    """Action events, one part (action, request, position, value, ts) after the other, in the
    layout of `encode_action`: `{"request_id":"..","action":"..","value":..,"ts":..}`."""
    request = np.concatenate([p[1] for p in parts]).astype(np.int64)
    position = np.concatenate([p[2] for p in parts]).astype(np.int64)
    which = np.concatenate([np.full(len(p[1]), j, np.int32) for j, p in enumerate(parts)])
    names = pa.array([p[0] for p in parts])
    actions = pa.DictionaryArray.from_arrays(pa.array(which), names).cast(pa.string())
    b = RecordsBuilder(len(request))
    b.key.lit(f"{name}-").int(request).lit(":").int(position)
    v = b.value.lit(f'{{"request_id":"{name}-').int(request).lit(":").int(position)
    v.lit('","action":"').text(actions).lit('","value":')
    v.number(np.concatenate([p[3] for p in parts]).astype(np.float64))
    v.lit(',"ts":').number(np.concatenate([p[4] for p in parts]).astype(np.float64)).lit("}")
    return b.build()


def plan_events(schema: Schema, cols: Columns, *, fingerprint: str = "") -> EventPlan:
    """Every record of an import of `cols` under `schema` (see the module docstring), in order.

    Dense values are standardized with `schema.stats` (a snapshot's, or the rows' own)."""
    dense = standardized(schema, cols.dense)
    shape = schema.impressions.shape
    delay = schema.impressions.delay_s
    acts: list[_ActionPart] = []
    info: dict[str, Any] = {"shape": shape}
    n = len(cols)
    zero = np.zeros(0, np.int64)
    if shape == "rows":
        request = np.arange(n, dtype=np.int64)
        ts = cols.ts
        feats = _features(schema, request, np.zeros(n, np.int64), cols.sparse[schema.user],
                          cols.sparse[schema.item], cols.sparse, cols.multi, dense, ts)
        for lab in schema.labels:
            v = cols.labels[lab.name]
            val = (v >= lab.threshold).astype(np.float64) if lab.threshold is not None else v
            hit = np.flatnonzero(val > 0)
            acts.append((lab.name, hit, np.zeros(len(hit), np.int64), val[hit], cols.ts[hit] + delay))
        info["impressions"] = n
    elif shape == "behaviour":
        att = attach_behaviours(schema, cols)
        idx = att.impression
        ts = cols.ts[idx]
        feats = _features(
            schema,
            np.arange(len(idx), dtype=np.int64),
            np.zeros(len(idx), np.int64),
            cols.sparse[schema.user][idx],
            cols.sparse[schema.item][idx],
            {k: v[idx] for k, v in cols.sparse.items()},
            {k: r.take(idx) for k, r in cols.multi.items()},
            dense[idx],
            ts,
        )
        for lab in schema.labels:
            imp, rows = att.actions[lab.name]
            acts.append((lab.name, np.asarray(imp, np.int64), np.zeros(len(imp), np.int64),
                         np.ones(len(rows)), cols.ts[rows]))
        info |= {"impressions": int(len(idx)), "unattached": att.unattached, "ignored": att.ignored}
    else:
        smp = sample_positives(schema, cols)
        row = smp.row
        sparse = {k: v[row] for k, v in cols.sparse.items()}
        sparse[schema.item] = smp.item
        for s in schema.sparse_slots:
            if s.side == "item" and s.name != schema.item:
                sparse[s.name] = cols.sparse[s.name][smp.item_row]
        multi = {
            k: r.take(smp.item_row if schema.slot(k).side == "item" else row) for k, r in cols.multi.items()
        }
        d = dense[row]
        side = np.array([s.side == "item" for s in schema.dense_slots], bool)
        if side.any():
            d[:, side] = dense[smp.item_row][:, side]
        ts = cols.ts[row]
        position = np.broadcast_to(np.asarray(smp.position, np.int64), row.shape)
        feats = _features(schema, np.asarray(row, np.int64), position, sparse[schema.user], smp.item,
                          sparse, multi, d, ts)
        pos = np.flatnonzero(smp.label > 0)
        acts.append((schema.labels[0].name, np.asarray(row, np.int64)[pos], position[pos],
                     np.ones(len(pos)), ts[pos] + delay))
        info |= {
            "impressions": int(len(row)),
            "clicks": n,
            "mean_sample_rate": float(smp.rate[pos].mean()) if len(pos) else 1.0,
        }
    if not acts:
        acts.append(("none", zero, zero, np.zeros(0), np.zeros(0)))
    actions = _actions(schema.name, acts)
    # dead letters first, then features and actions merged by time (stable: features first on ties)
    dl_keys, dl_vals = [], []
    for r in cols.refused:
        key = f"{schema.name}-refused-{r.file}:{r.row}".encode()
        raw = json.dumps({"file": r.file, "row": r.row}).encode()
        dl_keys.append(key)
        dl_vals.append(encode_dead_letter(DeadLetter(r.reason, r.file, 0, r.row, raw)))
    b = RecordsBuilder(len(dl_keys))
    b.key.text(pa.array(dl_keys, pa.binary()))
    b.value.text(pa.array(dl_vals, pa.binary()))
    dead = b.build()
    nf, na, nd = len(feats), len(actions), len(dl_keys)
    ts_all = np.concatenate([ts, np.concatenate([p[4] for p in acts])]).astype(np.float64)
    order = np.argsort(ts_all, kind="stable")
    kind = np.concatenate([np.full(nf, FEATURES, np.uint8), np.full(na, ACTIONS, np.uint8)])[order]
    rows = np.concatenate([np.arange(nf), np.arange(na)]).astype(np.int64)[order]
    info |= {"rows_read": cols.rows_read, "rows_refused": len(cols.refused)}
    return EventPlan(
        kind=np.concatenate([np.full(nd, DEAD, np.uint8), kind]),
        row=np.concatenate([np.arange(nd, dtype=np.int64), rows]),
        ts=np.concatenate([np.full(nd, -np.inf), ts_all[order]]),
        records=(feats, actions, dead),
        fingerprint=fingerprint,
        info=info,
    )


# ------------------------------------------------------------------------------------ writing


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically replace the state file (temp + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        msg = f"import state {path} cannot be read ({e}); remove it only if the logs hold none of this import"
        raise ConfigError(msg) from None


def _tail_key(log: Log, partition: int, offset: int) -> bytes | None:
    c = log.consumer("freshrec-import-check", partitions=[partition])
    try:
        c.seek(partition, offset)
        for _ in range(20):
            recs = c.poll(1, timeout_s=0.5)
            if recs:
                return recs[0].key
        return None
    finally:
        c.close()


def import_to_logs(
    plan: EventPlan,
    features: Log,
    actions: Log,
    dead_letters: Log,
    *,
    state: str | os.PathLike,
    speedup: float = 0.0,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    flush_every: int = 50_000,
    progress: Callable[[int], None] | None = None,
    threads: int = 1,
) -> ImportStats:
    """Write `plan` into the logs (see the module docstring for resume), flushing every
    `flush_every` records and at the end; with `speedup > 0` paced like `replay_to_logs` (a record
    of data time t goes out no earlier than `(t - t_first) / speedup` s of `clock()` after the start).
    Into a log that takes frames, `threads` helper threads frame the next blocks while it writes.

    Raises ConfigError when `state` belongs to another plan, LogError when a log's tail is not the
    record the plan put there (another writer) or holds more than the plan."""
    if speedup < 0:
        msg = f"speedup must be >= 0 (0 = as fast as possible), got {speedup}"
        raise ConfigError(msg)
    if threads < 1:
        msg = f"threads must be >= 1, got {threads}"
        raise ConfigError(msg)
    if speedup > 0 and (clock is None or sleep is None):
        msg = "a paced import (speedup > 0) needs clock and sleep"
        raise ConfigError(msg)
    logs = (features, actions, dead_letters)
    path = Path(state)
    st = _read_state(path)
    stats = ImportStats(planned=len(plan))
    if st is None:
        st = {
            "fingerprint": plan.fingerprint,
            "planned": len(plan),
            "done": False,
            "written": 0,
            "base": [list(log.end_offsets()) for log in logs],
            "logs": [log.name for log in logs],
        }
        _write_state(path, st)
    elif st.get("fingerprint") != plan.fingerprint or st.get("planned") != len(plan):
        msg = (
            f"import state {path} belongs to another import (schema, files or options changed); "
            "use another --state to import again"
        )
        raise ConfigError(msg)
    else:
        stats.resumed = True
    base = st["base"]
    parts = [log.partitions for log in logs]
    # what each (log, partition) already holds of this plan
    have = [
        [end - b for end, b in zip(log.end_offsets(), base[k], strict=True)] for k, log in enumerate(logs)
    ]
    for k, hs in enumerate(have):
        for p, h in enumerate(hs):
            if h < 0:
                msg = (
                    f"log {logs[k].name!r} partition {p} holds fewer records than when the import of "
                    f"state {path} began (the log was deleted or is another one); remove the state file "
                    "to import into it afresh"
                )
                raise LogError(msg)
    kinds = plan.kind
    todo = np.ones(len(plan), bool)
    if any(h for hs in have for h in hs):
        last: dict[tuple[int, int], int] = {}
        for k in range(3):
            mine = np.flatnonzero(kinds == k)
            part = _partitions(plan.records[k], plan.row[mine], parts[k])
            for p in range(parts[k]):
                if not have[k][p]:
                    continue
                sel = mine[part == p]
                if len(sel) < have[k][p]:
                    msg = (
                        f"log {logs[k].name!r} partition {p} holds {have[k][p]} records past this import's "
                        f"base, more than it planned: another writer; use other logs or another --state"
                    )
                    raise LogError(msg)
                todo[sel[: have[k][p]]] = False
                last[(k, p)] = int(sel[have[k][p] - 1])
        for (k, p), i in last.items():
            end = logs[k].end_offsets()[p]
            got, want = _tail_key(logs[k], p, end - 1), plan.key(i)
            if got != want:
                msg = (
                    f"log {logs[k].name!r} partition {p}: the record at offset {end - 1} is {got!r}, not "
                    f"this import's {want!r}: another writer; use other logs or another --state"
                )
                raise LogError(msg)
        stats.skipped = int((~todo).sum())
        if progress is not None and stats.skipped:
            progress(stats.skipped)
    idx = np.flatnonzero(todo)
    finite = plan.ts[np.isfinite(plan.ts)]
    t_first = float(finite[0]) if len(finite) else 0.0
    wall0 = clock() if clock is not None and speedup > 0 else 0.0
    counts = [0, 0, 0]
    start = 0
    framer = _Framer(threads)
    try:
        while start < len(idx):
            stop = min(start + flush_every, len(idx))
            if speedup > 0:
                assert clock is not None and sleep is not None
                due = wall0 + (plan.ts[idx[start:stop]] - t_first) / speedup
                late = np.flatnonzero(due > clock())
                if len(late) and late[0] == 0:
                    sleep(float(due[0] - clock()))
                    continue
                if len(late):
                    stop = start + int(late[0])
            sel = idx[start:stop]
            sk = kinds[sel]
            for k in range(3):
                mine = sel[sk == k]
                if len(mine):
                    _append(logs[k], plan.records[k], plan.row[mine], framer)
                    counts[k] += len(mine)
            for log in logs:
                log.flush()
            st["written"] = stats.skipped + sum(counts)
            _write_state(path, st)
            if progress is not None:
                progress(stop - start)
            start = stop
    finally:
        framer.close()
    stats.features, stats.actions, stats.dead_letters = counts
    if len(finite):
        stats.first_ts, stats.last_ts = float(finite[0]), float(finite[-1])
    st["done"] = True
    st["written"] = len(plan)
    _write_state(path, st)
    return stats


def _partitions(records: ColumnRecords, rows: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each of `rows` (`partition_for` of its key), int64."""
    if partitions == 1:
        return np.zeros(len(rows), np.int64)
    return records.key_crcs(rows) % partitions


class _Framer:
    """Frames blocks of records in `threads` helper threads (the numba kernel releases the GIL),
    up to `ahead` blocks ahead of the log writing them (so framing goes on while a write or an
    fsync waits), in order: ahead + 1 blocks of memory, used in turn."""

    def __init__(self, threads: int = 1, block_bytes: int = 4 << 20, ahead: int = 4) -> None:
        self._threads = max(1, int(threads))
        self._ahead = max(self._threads, ahead)
        self._block_bytes = block_bytes
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="freshrec-import-frames")
        self._free = [FrameBuffer() for _ in range(self._ahead + 1)]

    def append(self, append_frames: Callable[..., None], records: ColumnRecords, rows: np.ndarray,
               partition: int) -> None:
        """append_frames(buf, ends, partition=partition) of every block of `rows`, in order."""
        records.check_lengths(rows)
        todo = iter(records.split(rows, self._block_bytes))
        pending: deque[tuple[FrameBuffer, Future]] = deque()

        def submit() -> None:
            nxt = next(todo, None)
            if nxt is not None:
                scratch = self._free.pop()
                pending.append((scratch, self._pool.submit(records.block, rows[nxt[0] : nxt[1]], scratch)))

        try:
            for _ in range(self._ahead):
                submit()
            while pending:
                scratch, fut = pending.popleft()
                buf, ends = fut.result()
                append_frames(buf, ends, partition=partition)
                self._free.append(scratch)  # its frames are written: free for the next block
                submit()
        finally:
            wait([f for _, f in pending])
            self._free += [sc for sc, _ in pending]

    def close(self) -> None:
        self._pool.shutdown()


def _append(log: Log, records: ColumnRecords, rows: np.ndarray, framer: _Framer) -> None:
    """Queue `rows` of `records` on `log`, in order: framed straight from the columns, a block at
    a time, when the log takes frames (the local log's `append_frames`), else as (key, value) pairs."""
    frames = getattr(log, "append_frames", None)  # the Log protocol's optional fast paths
    if frames is not None:
        part = _partitions(records, rows, log.partitions)
        for p in range(log.partitions):
            sel = rows if log.partitions == 1 else rows[part == p]
            if len(sel):
                framer.append(frames, records, sel, p)
        return
    pairs: list[tuple[bytes | None, bytes]] = list(records.pairs(rows))
    many = getattr(log, "append_many", None)
    if many is not None:
        many(pairs)
        return
    for key, value in pairs:
        log.append(value, key=key)
