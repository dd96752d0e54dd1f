"""Read a schema's files with pyarrow and turn their columns into ids, dense values, times, labels.

    read_columns(schema)  -> Columns   every kept row, sorted by time (stable), refused rows aside
    to_dataset(schema, c) -> Dataset   the examples of shape (a), (b) or (c) for batch training
    load_schema_dataset(schema, limit=...) -> (Dataset, resolved Schema)

`Columns` of n rows (a worked example: 3 rows of an e-commerce log, one multi-valued slot)::

    ts        float64 (n,) seconds, non-decreasing   [100.0, 160.0, 200.0]
    sparse    {"user_id": int64 (n,), "item_id": int64 (n,), "category": stable_hash(text) (n,)}
    multi     {"tags": Ragged(values=int64 [h1, h2, h1], offsets=[0, 2, 2, 3])}
    dense     float64 (n, k): after log1p / clip (standardizing happens in `to_dataset` / import)
    labels    {"click": float64 (n,)}: raw label-column values (shape a)
    behaviour object (n,) of str: the behaviour column's text (shape b), else None
    row       int64 (n,): each row's number in the source (files one after the other)

A row is refused (not an error: counted, and sent to the dead-letter log by import) when its time,
user or item is missing. A slot, label or column not in a file, a label with no positives, or a
time column that does not sort (text that is no number, a unit that does not parse) is a
`SchemaError` naming the field and the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.data.dataset import Dataset, Ragged
from freshrec.data.schema import _UNIT_S, IdType, Schema, Slot, stable_hash
from freshrec.errors import SchemaError

__all__ = [
    "Columns",
    "Refusal",
    "dense_stats",
    "load_schema_dataset",
    "read_columns",
    "standardized",
    "to_dataset",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A source row left out, and why."""

    file: str
    row: int
    reason: str


@dataclass(frozen=True, eq=False)
class Columns:
    """A schema's rows as arrays (see the module docstring)."""

    ts: np.ndarray
    sparse: dict[str, np.ndarray]
    multi: dict[str, Ragged]
    dense: np.ndarray
    labels: dict[str, np.ndarray]
    behaviour: np.ndarray | None
    row: np.ndarray
    rows_read: int
    refused: list[Refusal] = field(default_factory=list)
    types: dict[str, IdType] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ts)


# ---------------------------------------------------------------------------------------- reading


def _read_file(schema: Schema, path: Path, wanted: list[str]) -> pa.Table:
    fmt = schema.source.format_of(path)
    string_cols = {s.column for s in schema.slots if s.type in ("string", "hex")}
    if schema.impressions.column:
        string_cols.add(schema.impressions.column)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            have = pq.read_schema(path).names
            _check_columns(schema, wanted, have, path)
            return pq.read_table(path, columns=wanted)
        if fmt == "jsonl":
            import pyarrow.json as pj

            t = pj.read_json(path)
            _check_columns(schema, wanted, t.column_names, path)
            return t.select(wanted)
        import pyarrow.csv as pacsv

        delimiter = schema.source.delimiter or ("\t" if fmt == "tsv" else ",")
        names = list(schema.source.columns) if not schema.source.header else None
        if names is None:
            with pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter)) as r:
                have = r.schema.names
        else:
            have = names
        _check_columns(schema, wanted, have, path)
        types = {c: pa.string() for c in string_cols if c in wanted}
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(include_columns=wanted, column_types=types),
        )
    except pa.ArrowInvalid as e:
        msg = f"cannot read {path} as {fmt}: {e}"
        raise SchemaError(msg, file=str(path)) from None


def _check_columns(schema: Schema, wanted: list[str], have: list[str], path: Path) -> None:
    missing = [c for c in wanted if c not in have]
    if not missing:
        return
    c = missing[0]
    users = [f"slot {s.name!r}" for s in schema.slots if s.column == c]
    users += [f"label {lab.name!r}" for lab in schema.labels if lab.column == c]
    if schema.timestamp == c:
        users.append("timestamp")
    if schema.impressions.column == c:
        users.append("impressions.column")
    what = users[0] if users else "column"
    msg = f"{what}: column {c!r} is not in {path} (its columns: {have[:40]})"
    raise SchemaError(msg, field=c, file=str(path))


def _ids(schema: Schema, slot: Slot, col: pa.ChunkedArray, where: str) -> tuple[np.ndarray, IdType]:
    """(int64 ids, resolved type) of a categorical column; nulls -> 0."""
    kind = slot.type
    if kind == "auto":
        kind = "int" if pa.types.is_integer(col.type) else "string"
    if kind == "hex":
        from freshrec.data.criteo import parse_hex

        try:
            return parse_hex(col.cast(pa.string()), what=where), kind
        except ValueError as e:
            raise SchemaError(str(e), field=slot.name, file=where) from None
    if kind == "int":
        try:
            ints = col if pa.types.is_integer(col.type) else pc.cast(col, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            msg = f"slot {slot.name!r}: column {slot.column!r} of {where} is not integer ({e})"
            raise SchemaError(msg, field=slot.name, file=where) from None
        return pc.fill_null(ints, 0).to_numpy().astype(np.int64), kind
    return _hash_column(col), "string"


def _hash_column(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """stable_hash of each value's text, computed once per distinct value; nulls -> 0."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    enc = arr.dictionary_encode()
    codes = pc.fill_null(enc.indices, -1).to_numpy().astype(np.int64)
    hashed = stable_hash(enc.dictionary.to_pylist())
    lut = np.concatenate([hashed, np.zeros(1, np.int64)])
    return lut[codes]  # code -1 (null) reads the trailing 0


def _multi(schema: Schema, slot: Slot, col: pa.ChunkedArray, where: str) -> tuple[Ragged, IdType]:
    arr = col.combine_chunks()
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        if slot.separator is None:
            msg = f"slot {slot.name!r}: column {slot.column!r} of {where} is no list column; set `separator`"
            raise SchemaError(msg, field=slot.name, file=where)
        arr = pc.split_pattern(pc.cast(arr, pa.string()), slot.separator)
    n = len(arr)
    flat = pc.list_flatten(arr)
    parents = pc.list_parent_indices(arr).to_numpy()
    kind = slot.type
    if kind == "auto":
        kind = "int" if pa.types.is_integer(flat.type) else "string"
    keep = pc.is_valid(flat)
    if pa.types.is_string(flat.type):
        keep = pc.and_(keep, pc.not_equal(flat, ""))
    keep_np = keep.to_numpy(zero_copy_only=False)
    flat = flat.filter(keep)
    parents = parents[keep_np]
    if kind == "int":
        try:
            values = pc.cast(flat, pa.int64()).to_numpy().astype(np.int64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            msg = f"slot {slot.name!r}: values of {slot.column!r} in {where} are not integer ({e})"
            raise SchemaError(msg, field=slot.name, file=where) from None
    else:
        values = _hash_column(flat)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(parents, minlength=n), out=offsets[1:])
    return Ragged(values, offsets), kind


def _dense(slot: Slot, col: pa.ChunkedArray, where: str) -> np.ndarray:
    try:
        x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        msg = f"dense slot {slot.name!r}: column {slot.column!r} of {where} is not numeric ({e})"
        raise SchemaError(msg, field=slot.name, file=where) from None
    x = np.where(np.isfinite(x), x, slot.fill)
    if slot.log1p:
        x = np.sign(x) * np.log1p(np.abs(x))
    if slot.clip is not None:
        x = np.clip(x, slot.clip[0], slot.clip[1])
    return x


def _seconds(schema: Schema, col: pa.ChunkedArray, where: str) -> np.ndarray:
    """float64 seconds, NaN where missing; SchemaError when the column cannot be sorted as time."""
    name = schema.timestamp
    if schema.time_unit == "iso" or pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        try:
            t = col if pa.types.is_timestamp(col.type) else pc.cast(col, pa.timestamp("us"))
            us = pc.cast(pc.cast(t, pa.timestamp("us")), pa.int64())
            return pc.cast(us, pa.float64()).to_numpy(zero_copy_only=False) / 1e6
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            msg = f"timestamp column {name!r} of {where} is not ISO-8601 time ({e})"
            raise SchemaError(msg, field=str(name), file=where) from None
    try:
        x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        msg = (
            f"timestamp column {name!r} of {where} is not monotone-sortable: not a number in "
            f'unit {schema.time_unit!r} ({e}); set time_unit = "iso" for text dates'
        )
        raise SchemaError(msg, field=str(name), file=where) from None
    return x / _UNIT_S[schema.time_unit]


def read_columns(schema: Schema, *, limit: int | None = None) -> Columns:
    """Read every file of `schema.source` (see the module docstring); rows sorted by time (stable),
    the first `limit` of them kept."""
    files = schema.source.files()
    wanted = schema.columns()
    tables, sizes = [], []
    for f in files:
        t = _read_file(schema, f, wanted)
        tables.append(t)
        sizes.append(t.num_rows)
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        msg = f"files of schema {schema.name!r} have columns of different types: {e}"
        raise SchemaError(msg, file=str(files[0])) from None
    starts = np.concatenate([[0], np.cumsum(sizes)])
    where = str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} files)"
    n = table.num_rows

    def file_of(r: int) -> str:
        return str(files[int(np.searchsorted(starts, r, side="right")) - 1])

    bad = np.zeros(n, bool)
    reasons: dict[int, str] = {}
    if schema.timestamp:
        ts = _seconds(schema, table.column(schema.timestamp), where)
        miss = ~np.isfinite(ts)
        for r in np.flatnonzero(miss & ~bad)[:10000]:
            reasons[int(r)] = f"timestamp {schema.timestamp!r} is missing"
        bad |= miss
    else:
        ts = np.arange(n, dtype=np.float64)
    for role in (schema.user, schema.item):
        c = table.column(schema.slot(role).column)
        miss = ~pc.is_valid(c).to_numpy(zero_copy_only=False)
        for r in np.flatnonzero(miss & ~bad)[:10000]:
            reasons[int(r)] = f"{role} column {schema.slot(role).column!r} is missing"
        bad |= miss
    order = np.flatnonzero(~bad)
    order = order[np.argsort(ts[order], kind="stable")]
    if limit is not None:
        order = order[: max(int(limit), 0)]
    if len(order) != n or np.any(np.diff(order) != 1):  # already in time order: no copy
        table = table.take(pa.array(order))
    types: dict[str, IdType] = {}
    sparse: dict[str, np.ndarray] = {}
    multi: dict[str, Ragged] = {}
    dense_cols = []
    for s in schema.slots:
        col = table.column(s.column)
        if s.kind == "categorical":
            sparse[s.name], types[s.name] = _ids(schema, s, col, where)
        elif s.kind == "multi":
            multi[s.name], types[s.name] = _multi(schema, s, col, where)
        else:
            dense_cols.append(_dense(s, col, where))
    dense = np.stack(dense_cols, axis=1) if dense_cols else np.zeros((len(order), 0))
    labels = {}
    for lab in schema.labels:
        if lab.column:
            try:
                labels[lab.name] = pc.cast(table.column(lab.column), pa.float64()).to_numpy(
                    zero_copy_only=False
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                msg = f"label {lab.name!r}: column {lab.column!r} of {where} is not numeric ({e})"
                raise SchemaError(msg, field=lab.name, file=where) from None
            labels[lab.name] = np.nan_to_num(labels[lab.name], nan=0.0)
    behaviour = None
    if schema.impressions.column:
        behaviour = np.asarray(
            pc.cast(table.column(schema.impressions.column), pa.string()).to_pylist(), object
        )
    refused = [
        Refusal(file_of(r), r - int(starts[np.searchsorted(starts, r, side="right") - 1]), why)
        for r, why in sorted(reasons.items())
    ]
    return Columns(
        ts=ts[order],
        sparse=sparse,
        multi=multi,
        dense=dense,
        labels=labels,
        behaviour=behaviour,
        row=order.astype(np.int64),
        rows_read=n,
        refused=refused,
        types=types,
        files=tuple(str(f) for f in files),
    )


# ---------------------------------------------------------------------------------------- examples


def dense_stats(schema: Schema, cols: Columns) -> dict[str, tuple[float, float]]:
    """(mean, std) per standardized dense slot over `cols`' rows (std 1 where it is 0)."""
    out = {}
    for j, s in enumerate(schema.dense_slots):
        if s.standardize:
            x = cols.dense[:, j]
            std = float(x.std()) if len(x) else 1.0
            out[s.name] = (float(x.mean()) if len(x) else 0.0, std if std > 0 else 1.0)
    return out


def standardized(schema: Schema, dense: np.ndarray) -> np.ndarray:
    """`dense` (n, k) with each standardized slot's (x - mean) / std from `schema.stats`, float32."""
    out = np.array(dense, dtype=np.float64)  # float64 math, one rounding at the end (as serving does)
    for j, s in enumerate(schema.dense_slots):
        if s.standardize:
            if s.name not in schema.stats:
                msg = f"dense slot {s.name!r} is standardized but the schema holds no statistics for it"
                raise SchemaError(msg, field=s.name, file=schema.origin)
            mean, std = schema.stats[s.name]
            out[:, j] = (out[:, j] - mean) / std
    return out.astype(np.float32)


@dataclass(frozen=True, slots=True)
class Attached:
    """Shape (b): `impression` (n_imp,) row indices of the impressions, and per label the indices
    (into impressions) its actions attached to, plus what did not attach."""

    impression: np.ndarray
    actions: dict[str, tuple[np.ndarray, np.ndarray]]  # label -> (impression index, action row)
    unattached: int
    ignored: int


def attach_behaviours(schema: Schema, cols: Columns) -> Attached:
    """Shape (b): each action row (a behaviour that names a label) joins the latest impression row
    of the same (user, item) at or before it and at most `window_s` earlier."""
    imp_value = schema.impressions.impression
    assert cols.behaviour is not None
    beh = cols.behaviour
    is_imp = beh == imp_value
    imp_rows = np.flatnonzero(is_imp)
    user, item = cols.sparse[schema.user], cols.sparse[schema.item]
    # order impressions by (user, item, ts): a key per pair, then the time within
    pair = _pair_codes(user, item)
    imp_key = pair[imp_rows]
    imp_sorted = np.lexsort((cols.ts[imp_rows], imp_key))
    sk, st = imp_key[imp_sorted], cols.ts[imp_rows][imp_sorted]
    actions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    matched = np.zeros(len(beh), bool)
    unattached = 0
    for lab in schema.labels:
        rows = np.flatnonzero(beh == lab.behaviour)
        matched[rows] = True
        if not len(rows):
            actions[lab.name] = (np.zeros(0, np.int64), rows)
            continue
        k, t = pair[rows], cols.ts[rows]
        # the last impression with key == k and ts <= t: search (k, t) in the (key, ts)-sorted list
        pos = _search_pairs(sk, st, k, t) - 1
        ok = pos >= 0
        pos_c = np.clip(pos, 0, max(len(sk) - 1, 0))
        if len(sk):
            ok &= sk[pos_c] == k
            ok &= t - st[pos_c] <= schema.impressions.window_s
        else:
            ok[:] = False
        unattached += int((~ok).sum())
        actions[lab.name] = (imp_sorted[pos_c[ok]].astype(np.int64), rows[ok])
    ignored = int((~matched & ~is_imp).sum())
    return Attached(imp_rows, actions, unattached, ignored)


def _pair_codes(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    both = np.stack([user, item], axis=1)
    _, codes = np.unique(both, axis=0, return_inverse=True)
    return codes.reshape(-1).astype(np.int64)


def _search_pairs(sk: np.ndarray, st: np.ndarray, k: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each query (k, t): the number of pairs of the (sk, st)-sorted list that are <= (k, t)
    (the right insertion point), in one sort: impressions before queries on ties."""
    m = len(sk)
    keys = np.concatenate([sk, k])
    times = np.concatenate([st, t])
    kind = np.concatenate([np.zeros(m, np.int8), np.ones(len(k), np.int8)])
    order = np.lexsort((kind, times, keys))  # by key, then time, impressions first
    is_imp = order < m
    # impressions seen so far along the order = insertion point of each query
    seen = np.cumsum(is_imp)
    out = np.empty(len(k), np.int64)
    out[order[~is_imp] - m] = seen[~is_imp]
    return out


def _labels_rows(schema: Schema, cols: Columns) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Shape (a): (first label as 0/1 or value, {label: value}) per row."""
    out = {}
    for lab in schema.labels:
        v = cols.labels[lab.name]
        out[lab.name] = (v >= lab.threshold).astype(np.float64) if lab.threshold is not None else v
    return out[schema.labels[0].name], out


def check_positives(schema: Schema, labels: dict[str, np.ndarray], where: str) -> None:
    """SchemaError when a label has no positive (a misspelled value or column trains on zeros)."""
    for name, v in labels.items():
        if len(v) and not np.any(v > 0):
            lab = next(x for x in schema.labels if x.name == name)
            src = f"behaviour {lab.behaviour!r}" if lab.behaviour is not None else f"column {lab.column!r}"
            msg = f"label {name!r} ({src}) has no positive in {where}"
            raise SchemaError(msg, field=name, file=where)


def to_dataset(schema: Schema, cols: Columns) -> Dataset:
    """The examples of `cols` for batch training (shape a: a row each; b: an impression each,
    labelled by the actions that attach; c: a positive each followed by its sampled negatives,
    every example of a click carrying the click's sample rate). Dense values standardized with
    `schema.stats`."""
    where = cols.files[0] if cols.files else schema.origin
    shape = schema.impressions.shape
    dense = standardized(schema, cols.dense)
    first = schema.labels[0].name
    if shape == "rows":
        label, labels = _labels_rows(schema, cols)
        check_positives(schema, labels, where)
        return Dataset.build(
            schema.name,
            sparse=cols.sparse,
            label=label,
            ts=cols.ts if schema.timestamp else None,
            dense=dense,
            dense_names=schema.dense_names,
            multi=cols.multi,
            labels={k: v for k, v in labels.items() if k != first},
            label_name=first,
        )
    if shape == "behaviour":
        att = attach_behaviours(schema, cols)
        idx = att.impression
        labels = {}
        for name, (imp, _rows) in att.actions.items():
            v = np.zeros(len(idx), np.float64)
            v[imp] = 1.0
            labels[name] = v
        check_positives(schema, labels, where)
        return Dataset.build(
            schema.name,
            sparse={k: v[idx] for k, v in cols.sparse.items()},
            label=labels[first],
            ts=cols.ts[idx],
            dense=dense[idx],
            dense_names=schema.dense_names,
            multi={k: r.take(idx) for k, r in cols.multi.items()},
            labels={k: v for k, v in labels.items() if k != first},
            label_name=first,
        )
    plan = sample_positives(schema, cols)
    row = plan.row
    sparse = {k: v[row] for k, v in cols.sparse.items()}
    sparse[schema.item] = plan.item
    for s in schema.slots:
        if s.side == "item" and s.kind == "categorical" and s.name != schema.item:
            sparse[s.name] = cols.sparse[s.name][plan.item_row]
    multi = {
        k: r.take(plan.item_row if schema.slot(k).side == "item" else row) for k, r in cols.multi.items()
    }
    dj = np.array([s.side == "item" for s in schema.dense_slots], bool)
    d = dense[row]
    if dj.any():
        d[:, dj] = dense[plan.item_row][:, dj]
    return Dataset.build(
        schema.name,
        sparse=sparse,
        label=plan.label,
        ts=cols.ts[row],
        sample_rate=plan.rate,
        dense=d,
        dense_names=schema.dense_names,
        multi=multi,
        label_name=first,
    )


@dataclass(frozen=True, slots=True)
class Sampled:
    """Shape (c): examples in order (a click's positive, then its negatives): the click's row,
    the served item, the row whose item-side values it carries, label, rate, position."""

    row: np.ndarray
    item: np.ndarray
    item_row: np.ndarray
    label: np.ndarray
    rate: np.ndarray
    position: np.ndarray


def sample_positives(schema: Schema, cols: Columns) -> Sampled:
    """Shape (c): every click, then `negatives` items drawn from the trailing window before it
    (`sample_trailing_negatives`, the Globo loader's sampler); a negative's item-side slots come
    from that item's latest click before this one (never the future)."""
    from freshrec.data.globo import sample_trailing_negatives

    imp = schema.impressions
    clicked = cols.sparse[schema.item]
    ts_ms = np.round(cols.ts * 1000.0).astype(np.int64)
    src, neg_item, click_rate = sample_trailing_negatives(
        ts_ms, clicked, k=imp.negatives, window_s=imp.window_s, seed=imp.seed
    )
    n, m = len(clicked), len(src)
    per_click = np.bincount(src, minlength=n)
    pos_row = np.arange(n) + np.concatenate([[0], np.cumsum(per_click)[:-1]]).astype(np.int64)
    neg_row = np.setdiff1d(np.arange(n + m), pos_row, assume_unique=True)
    row = np.empty(n + m, np.int64)
    row[pos_row] = np.arange(n)
    row[neg_row] = src
    item = np.empty(n + m, np.int64)
    item[pos_row] = clicked
    item[neg_row] = neg_item
    label = np.zeros(n + m, np.float32)
    label[pos_row] = 1.0
    # the latest row before the click with the negative's item: keys item_code * (n + 1) + row
    uniq, code = np.unique(clicked, return_inverse=True)
    keys = np.sort(code.astype(np.int64) * (n + 1) + np.arange(n))
    ncode = np.searchsorted(uniq, neg_item)
    at = np.searchsorted(keys, ncode * (n + 1) + src) - 1
    item_row = np.empty(n + m, np.int64)
    item_row[pos_row] = np.arange(n)
    item_row[neg_row] = keys[np.clip(at, 0, None)] % (n + 1) if m else np.zeros(0, np.int64)
    position = np.zeros(n + m, np.int64)
    position[neg_row] = (
        np.arange(m) - np.repeat(np.concatenate([[0], np.cumsum(per_click)[:-1]]), per_click) + 1
    )
    return Sampled(row, item, item_row, label, click_rate[row], position)


def load_schema_dataset(
    schema: Schema, *, limit: int | None = None, stats_fraction: float = 1.0
) -> tuple[Dataset, Schema, Columns]:
    """(examples, the schema with its types resolved and the dense statistics of the first
    `stats_fraction` of rows in time order (the training part: never the test's future), the columns).
    Statistics already in `schema` are kept (a snapshot's)."""
    cols = read_columns(schema, limit=limit)
    resolved = schema.with_types(cols.types)
    if not schema.stats:
        cut = int(round(len(cols) * stats_fraction))
        part = Columns(
            ts=cols.ts[:cut],
            sparse={},
            multi={},
            dense=cols.dense[:cut],
            labels={},
            behaviour=None,
            row=cols.row[:cut],
            rows_read=cut,
        )
        resolved = resolved.with_stats(dense_stats(resolved, part))
    return to_dataset(resolved, cols), resolved, cols
