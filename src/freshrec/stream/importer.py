"""Import a schema's rows into the features / actions logs: in data-time order, paced, resumable,
and never writing an event twice.

    plan = plan_events(schema, columns)          # every event, encoded, in the order it is written
    stats = import_to_logs(plan, features, actions, dead_letters, state=path, ...)

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.data.dataset import Ragged
from freshrec.data.schema import Schema
from freshrec.data.schema_data import Columns, attach_behaviours, sample_positives, standardized
from freshrec.errors import ConfigError, LogError
from freshrec.stream.events import DeadLetter, encode_dead_letter
from freshrec.stream.log import Log, partition_for

__all__ = ["EventPlan", "ImportStats", "import_to_logs", "plan_events"]

FEATURES, ACTIONS, DEAD = 0, 1, 2


@dataclass(frozen=True, eq=False)
class EventPlan:
    """Every record an import writes, in order: `kind` uint8 (m,) (0 features, 1 actions, 2 dead
    letters), `keys` / `values` object arrays of bytes (m,), `ts` float64 (m,) data time (dead
    letters: -inf)."""

    kind: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    ts: np.ndarray
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.kind)


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


def _text(a: np.ndarray | pa.Array) -> pa.Array:
    """Numbers as JSON text (shortest round trip for floats)."""
    return pc.cast(pa.array(a) if isinstance(a, np.ndarray) else a, pa.string())


def _list_text(r: Ragged) -> pa.Array:
    lists = pa.LargeListArray.from_arrays(pa.array(r.offsets), pa.array(r.values))
    return pc.binary_join(pc.cast(lists, pa.large_list(pa.string())), ",")


def _features_wire(
    schema: Schema,
    rid: pa.Array,
    user: np.ndarray,
    item: np.ndarray,
    sparse: dict[str, np.ndarray],
    multi: dict[str, Ragged],
    dense: np.ndarray,
    ts: np.ndarray,
) -> pa.Array:
    """The wire bytes of feature events (the layout of `encode_feature`: compact JSON, fields in
    order), built column-wise:
    `{"request_id":"..","user_id":..,"item_id":..,"sparse":{..},"dense":{..},"ts":..}`."""
    parts: list[Any] = [
        '{"request_id":"',
        rid,
        '","user_id":',
        _text(user),
        ',"item_id":',
        _text(item),
        ',"sparse":{',
    ]
    first = True
    for s in schema.slots:
        if s.kind == "dense":
            continue
        parts.append(("" if first else ",") + f'"{s.name}":[')
        parts.append(_text(sparse[s.name]) if s.kind == "categorical" else _list_text(multi[s.name]))
        parts.append("]")
        first = False
    parts.append('},"dense":{')
    for j, s in enumerate(schema.dense_slots):
        parts.append(("," if j else "") + f'"{s.name}":')
        parts.append(_text(dense[:, j].astype(np.float32)))
    parts.append('},"ts":')
    parts.append(_text(ts))
    parts.append("}")
    return _join(parts, len(rid))


def _actions_wire(rid: pa.Array, action: str, value: np.ndarray, ts: np.ndarray) -> pa.Array:
    parts = [
        '{"request_id":"',
        rid,
        f'","action":"{action}","value":',
        _text(value.astype(np.float64)),
        ',"ts":',
        _text(ts),
        "}",
    ]
    return _join(parts, len(rid))


def _join(parts: list[Any], n: int) -> pa.Array:
    cols = [pa.scalar(p, pa.string()) if isinstance(p, str) else p.cast(pa.string()) for p in parts]
    if n == 0:
        return pa.array([], pa.string())
    return pc.binary_join_element_wise(*cols, "")


def _rids(name: str, request: np.ndarray, position: np.ndarray | int = 0) -> pa.Array:
    pos = np.broadcast_to(np.asarray(position, np.int64), request.shape)
    if len(request) == 0:
        return pa.array([], pa.string())
    return pc.binary_join_element_wise(pa.scalar(f"{name}-"), _text(request), pa.scalar(":"), _text(pos), "")


def plan_events(schema: Schema, cols: Columns, *, fingerprint: str = "") -> EventPlan:
    """Every record of an import of `cols` under `schema` (see the module docstring), in order.

    Dense values are standardized with `schema.stats` (a snapshot's, or the rows' own)."""
    dense = standardized(schema, cols.dense)
    shape = schema.impressions.shape
    delay = schema.impressions.delay_s
    feats: list[tuple[pa.Array, pa.Array, np.ndarray]] = []  # (rid, wire, ts)
    acts: list[tuple[pa.Array, pa.Array, np.ndarray]] = []
    info: dict[str, Any] = {"shape": shape}
    n = len(cols)
    if shape == "rows":
        rid = _rids(schema.name, np.arange(n))
        feats.append(
            (
                rid,
                _features_wire(
                    schema,
                    rid,
                    cols.sparse[schema.user],
                    cols.sparse[schema.item],
                    cols.sparse,
                    cols.multi,
                    dense,
                    cols.ts,
                ),
                cols.ts,
            )
        )
        for lab in schema.labels:
            v = cols.labels[lab.name]
            val = (v >= lab.threshold).astype(np.float64) if lab.threshold is not None else v
            hit = np.flatnonzero(val > 0)
            t = cols.ts[hit] + delay
            acts.append(
                (
                    rid.take(pa.array(hit)) if len(hit) else pa.array([], pa.string()),
                    _actions_wire(rid.take(pa.array(hit)), lab.name, val[hit], t),
                    t,
                )
            )
        info["impressions"] = n
    elif shape == "behaviour":
        att = attach_behaviours(schema, cols)
        idx = att.impression
        rid = _rids(schema.name, np.arange(len(idx)))
        feats.append(
            (
                rid,
                _features_wire(
                    schema,
                    rid,
                    cols.sparse[schema.user][idx],
                    cols.sparse[schema.item][idx],
                    {k: v[idx] for k, v in cols.sparse.items()},
                    {k: r.take(idx) for k, r in cols.multi.items()},
                    dense[idx],
                    cols.ts[idx],
                ),
                cols.ts[idx],
            )
        )
        for lab in schema.labels:
            imp, rows = att.actions[lab.name]
            arid = rid.take(pa.array(imp)) if len(imp) else pa.array([], pa.string())
            t = cols.ts[rows]
            acts.append((arid, _actions_wire(arid, lab.name, np.ones(len(rows)), t), t))
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
        rid = _rids(schema.name, row, smp.position)
        ts = cols.ts[row]
        feats.append(
            (rid, _features_wire(schema, rid, sparse[schema.user], smp.item, sparse, multi, d, ts), ts)
        )
        pos = np.flatnonzero(smp.label > 0)
        t = ts[pos] + delay
        arid = rid.take(pa.array(pos))
        acts.append((arid, _actions_wire(arid, schema.labels[0].name, np.ones(len(pos)), t), t))
        info |= {
            "impressions": int(len(row)),
            "clicks": n,
            "mean_sample_rate": float(smp.rate[pos].mean()) if len(pos) else 1.0,
        }
    # dead letters first, then features and actions merged by time (stable: features first on ties)
    dl_keys, dl_vals = [], []
    for r in cols.refused:
        key = f"{schema.name}-refused-{r.file}:{r.row}".encode()
        raw = json.dumps({"file": r.file, "row": r.row}).encode()
        dl_keys.append(key)
        dl_vals.append(encode_dead_letter(DeadLetter(r.reason, r.file, 0, r.row, raw)))
    keys_arr = pa.concat_arrays([x[0].cast(pa.string()) for x in feats + acts])
    vals_arr = pa.concat_arrays([x[1].cast(pa.string()) for x in feats + acts])
    ts_all = np.concatenate([x[2] for x in feats + acts]).astype(np.float64)
    kind = np.concatenate(
        [np.full(len(x[2]), FEATURES, np.uint8) for x in feats]
        + [np.full(len(x[2]), ACTIONS, np.uint8) for x in acts]
    )
    order = np.argsort(ts_all, kind="stable")
    keys = np.array(dl_keys + pc.cast(keys_arr, pa.binary()).to_pylist(), dtype=object)
    values = np.array(dl_vals + pc.cast(vals_arr, pa.binary()).to_pylist(), dtype=object)
    head = np.arange(len(dl_keys))
    if not np.array_equal(order, np.arange(len(order))):
        keys = keys[np.concatenate([head, order + len(dl_keys)])]
        values = values[np.concatenate([head, order + len(dl_keys)])]
    info |= {"rows_read": cols.rows_read, "rows_refused": len(cols.refused)}
    return EventPlan(
        kind=np.concatenate([np.full(len(dl_keys), DEAD, np.uint8), kind[order]]),
        keys=keys,
        values=values,
        ts=np.concatenate([np.full(len(dl_keys), -np.inf), ts_all[order]]),
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
) -> ImportStats:
    """Write `plan` into the logs (see the module docstring for resume), flushing every
    `flush_every` records and at the end; with `speedup > 0` paced like `replay_to_logs` (a record
    of data time t goes out no earlier than `(t - t_first) / speedup` s of `clock()` after the start).

    Raises ConfigError when `state` belongs to another plan, LogError when a log's tail is not the
    record the plan put there (another writer) or holds more than the plan."""
    if speedup < 0:
        msg = f"speedup must be >= 0 (0 = as fast as possible), got {speedup}"
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
        left = [list(h) for h in have]
        for i in range(len(plan)):
            k = int(kinds[i])
            p = partition_for(plan.keys[i], parts[k]) if parts[k] > 1 else 0
            if left[k][p] > 0:
                left[k][p] -= 1
                todo[i] = False
                last[(k, p)] = i
        for k in range(3):
            for p in range(parts[k]):
                if left[k][p] > 0:
                    msg = (
                        f"log {logs[k].name!r} partition {p} holds {have[k][p]} records past this import's "
                        f"base, more than it planned: another writer; use other logs or another --state"
                    )
                    raise LogError(msg)
        for (k, p), i in last.items():
            end = logs[k].end_offsets()[p]
            got = _tail_key(logs[k], p, end - 1)
            if got != plan.keys[i]:
                msg = (
                    f"log {logs[k].name!r} partition {p}: the record at offset {end - 1} is {got!r}, not "
                    f"this import's {plan.keys[i]!r}: another writer; use other logs or another --state"
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
                _append(logs[k], list(zip(plan.keys[mine].tolist(), plan.values[mine].tolist(), strict=True)))
                counts[k] += len(mine)
        for log in logs:
            log.flush()
        st["written"] = stats.skipped + sum(counts)
        _write_state(path, st)
        if progress is not None:
            progress(stop - start)
        start = stop
    stats.features, stats.actions, stats.dead_letters = counts
    if len(finite):
        stats.first_ts, stats.last_ts = float(finite[0]), float(finite[-1])
    st["done"] = True
    st["written"] = len(plan)
    _write_state(path, st)
    return stats


def _append(log: Log, records: list[tuple[bytes | None, bytes]]) -> None:
    many = getattr(log, "append_many", None)  # the Log protocol's optional fast path
    if many is not None:
        many(records)
        return
    for key, value in records:
        log.append(value, key=key)
