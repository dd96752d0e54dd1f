"""Examples-log records -> the columnar batches batch training uses (and back, for replays and tests).

This is the one place that turns joined `Example`s (`freshrec.stream.events`) into model inputs.
An `ExampleSchema` names what the model reads from an example:

    slots        single-valued slots: slot "user_id" reads example.user_id, "item_id" example.item_id,
                 any other example.sparse[slot][0] (the convention of `freshrec.ps.serving`)
    multi_slots  bags of ids: example.sparse[slot] is the bag (may be empty)
    dense        dense feature names, in column order (a missing name reads 0.0)
    label        the action whose label is the binary target; labels[label] > 0 -> 1.0, else 0.0
    labels       further actions kept as raw values (a value task's watch seconds, a second binary
                 task's label), 0.0 when the example lacks them (`Dataset.labels`)

`examples_to_dataset(examples, schema)` builds a `freshrec.data.Dataset` with exactly those columns
(ts, sample_rate carried over), so online training feeds it to the same
`freshrec.train.batch.iter_batches` as batch training: same tensors, same log-odds correction
(`offset = -log(sample_rate)`), same data time `now` = the batch's max ts.

`decode_dataset(records, schema)` is the online loop's path from polled records to that same
`Dataset` without a Python object per example: one numba pass (`freshrec.stream._example_kernels`)
turns every record in the canonical example layout into columns; the others are decoded one by
one (`decode_examples`) and merged in log order, so the dataset, and the bad records with their
reasons, equal `examples_to_dataset(decode_records(records)[0], schema)` and its bad list.
`decode_blocks(blocks, schema)` does the same for a block poll (`Consumer.poll_blocks`): the
bytes as the log read them, value spans, no `Record` at all unless a record is bad.

    schema = ExampleSchema(slots=("user_id", "item_id"), dense=("position",), label="click")
    ds = examples_to_dataset([Example(..., sparse={"user_id": [7], "item_id": [3]}, ...)], schema)
    ds.sparse["user_id"]  -> array([7])         ds.dense -> (1, 1) float32

A single-valued slot whose example holds no id reads `MISSING_ID` (its own row, like any id), one
holding several ids its first, exactly as the serving replica reads requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from freshrec.data.dataset import Dataset, Ragged, concat
from freshrec.errors import ConfigError, EventError
from freshrec.stream._example_kernels import decode_columns
from freshrec.stream.events import TS_MAX, Example, decode_examples, encode_example
from freshrec.stream.log import Record, RecordBlock

__all__ = [
    "MISSING_ID",
    "ExampleSchema",
    "dataset_to_examples",
    "decode_blocks",
    "decode_dataset",
    "decode_records",
    "examples_to_dataset",
    "write_examples",
]

MISSING_ID = -(2**63)  # a single-valued slot without an id reads this (as `freshrec.ps.serving` does)


@dataclass(frozen=True, kw_only=True)
class ExampleSchema:
    """What a model reads from an `Example` (see the module docstring)."""

    slots: tuple[str, ...]
    multi_slots: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    label: str = "click"
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [*self.slots, *self.multi_slots]
        if len(set(names)) != len(names) or not names:
            msg = f"ExampleSchema: slot names must be distinct and non-empty, got {names}"
            raise ConfigError(msg)
        object.__setattr__(self, "labels", tuple(x for x in dict.fromkeys(self.labels) if x != self.label))

    @classmethod
    def for_tasks(
        cls, spec, tasks, *, dense: Sequence[str] | None = None, label: str | None = None
    ) -> ExampleSchema:
        """The schema of a `FeatureSpec` and the labels its tasks read (the first task's label is
        the binary `label`; `label` renames it)."""
        targets = [t.target for t in tasks]
        first = label or targets[0]
        base = cls.for_spec(spec, dense=dense, label=first)
        return cls(
            slots=base.slots,
            multi_slots=base.multi_slots,
            dense=base.dense,
            label=first,
            labels=tuple(targets[1:]),
        )

    @classmethod
    def for_dataset(cls, ds: Dataset, *, label: str = "click") -> ExampleSchema:
        """The schema whose examples round-trip `ds`'s columns."""
        return cls(slots=ds.slots, multi_slots=ds.multi_slots, dense=tuple(ds.dense_names), label=label)

    @classmethod
    def for_spec(cls, spec, *, dense: Sequence[str] | None = None, label: str = "click") -> ExampleSchema:
        """The schema of a `FeatureSpec` (dense names default to dense_0.. as the serving replica's)."""
        names = tuple(dense) if dense is not None else tuple(f"dense_{i}" for i in range(spec.dense_dim))
        if len(names) != spec.dense_dim:
            msg = f"ExampleSchema.for_spec: {len(names)} dense names for dense_dim {spec.dense_dim}"
            raise ConfigError(msg)
        return cls(
            slots=tuple(s.name for s in spec.slots if not s.multi_valued),
            multi_slots=tuple(s.name for s in spec.slots if s.multi_valued),
            dense=names,
            label=label,
        )

    def to_dict(self) -> dict:
        return {
            "slots": list(self.slots),
            "multi_slots": list(self.multi_slots),
            "dense": list(self.dense),
            "label": self.label,
            "labels": list(self.labels),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ExampleSchema:
        return cls(
            slots=tuple(d["slots"]),
            multi_slots=tuple(d.get("multi_slots", ())),
            dense=tuple(d.get("dense", ())),
            label=d.get("label", "click"),
            labels=tuple(d.get("labels", ())),
        )


def _single(e: Example, slot: str) -> int:
    if slot == "user_id":
        return e.user_id
    if slot == "item_id":
        return e.item_id
    ids = e.sparse.get(slot)
    return ids[0] if ids else MISSING_ID


def examples_to_dataset(
    examples: Sequence[Example], schema: ExampleSchema, *, name: str = "examples"
) -> Dataset:
    """A time-ordered-as-given `Dataset` of `examples` with the columns `schema` names.

    Rows keep the examples' order (the log's order); nothing is sorted or dropped.
    """
    n = len(examples)
    sparse = {s: np.fromiter((_single(e, s) for e in examples), np.int64, n) for s in schema.slots}
    multi = {}
    for s in schema.multi_slots:
        bags = [e.sparse.get(s, ()) for e in examples]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum([len(b) for b in bags], out=offsets[1:])
        values = np.fromiter((i for b in bags for i in b), np.int64, int(offsets[-1]))
        multi[s] = Ragged(values, offsets)
    dense = np.zeros((n, len(schema.dense)), np.float32)
    for j, d in enumerate(schema.dense):
        dense[:, j] = np.fromiter((e.dense.get(d, 0.0) for e in examples), np.float64, n)
    label = np.fromiter(
        (1.0 if e.labels.get(schema.label, 0.0) > 0 else 0.0 for e in examples), np.float32, n
    )
    labels = {k: np.fromiter((e.labels.get(k, 0.0) for e in examples), np.float32, n) for k in schema.labels}
    return Dataset.build(
        name,
        sparse=sparse,
        label=label,
        ts=np.fromiter((e.ts for e in examples), np.float64, n),
        sample_rate=np.fromiter((e.sample_rate for e in examples), np.float32, n),
        dense=dense,
        dense_names=tuple(schema.dense),
        multi=multi,
        labels=labels,
        label_name=schema.label,
    )


def dataset_to_examples(ds: Dataset, *, label: str = "click", prefix: str = "ex") -> list[Example]:
    """One `Example` per row of `ds` (request_id `f"{prefix}:{row}"`), the inverse of
    `examples_to_dataset` under `ExampleSchema.for_dataset(ds, label=label)`."""
    n = len(ds)
    cols = {s: v.tolist() for s, v in ds.sparse.items()}
    bags = {}
    for s, r in ds.multi.items():
        vals, off = r.values.tolist(), r.offsets.tolist()
        bags[s] = [vals[off[i] : off[i + 1]] for i in range(n)]
    dense = ds.dense.tolist()
    names = ds.dense_names
    ts, rate, lab = ds.ts.tolist(), ds.sample_rate.tolist(), ds.label.tolist()
    user = cols.get("user_id", [0] * n)
    item = cols.get("item_id", [0] * n)
    out = []
    for i in range(n):
        sparse = {s: [c[i]] for s, c in cols.items()}
        sparse |= {s: b[i] for s, b in bags.items()}
        out.append(
            Example(
                request_id=f"{prefix}:{i}",
                user_id=user[i],
                item_id=item[i],
                sparse=sparse,
                dense=dict(zip(names, dense[i], strict=True)),
                labels={label: lab[i]},
                sample_rate=min(max(rate[i], 1e-12), 1.0),
                ts=ts[i],
            )
        )
    return out


def write_examples(log, examples: Iterable[Example], *, flush: bool = True) -> int:
    """Append `examples` (one record each, keyed by request_id) to an examples `Log`; returns the count."""
    n = 0
    for e in examples:
        log.append(encode_example(e), key=e.request_id.encode())
        n += 1
    if flush:
        log.flush()
    return n


def decode_records(records: Iterable[Record]) -> tuple[list[Example], list[tuple[Record, str]]]:
    """(examples, bad): every record decoded (single or batch form), and (record, reason) of those
    that are not valid examples. Bad records are reported, never raised: the trainer goes on."""
    good: list[Example] = []
    bad: list[tuple[Record, str]] = []
    for r in records:
        try:
            good.extend(decode_examples(r.value))
        except EventError as e:
            bad.append((r, str(e)))
    return good, bad


class _Tables(NamedTuple):
    """An `ExampleSchema` as the kernel's name tables (`decode_columns`)."""

    sp_names: np.ndarray
    sp_offs: np.ndarray
    sp_kind: np.ndarray
    sp_col: np.ndarray
    n_single: int
    n_multi: int
    user_col: int
    item_col: int
    de_names: np.ndarray
    de_offs: np.ndarray
    la_names: np.ndarray
    la_offs: np.ndarray


def _table(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    raw = [n.encode("utf-8", "surrogatepass") for n in names]
    offs = np.zeros(len(raw) + 1, np.int64)
    np.cumsum([len(b) for b in raw], out=offs[1:])
    return np.frombuffer(b"".join(raw) or b"\0", np.uint8).copy(), offs


@lru_cache(maxsize=32)
def _tables(schema: ExampleSchema) -> _Tables | None:
    """The kernel's tables of `schema`; None when the kernel cannot serve it (a dense name twice)."""
    if len(set(schema.dense)) != len(schema.dense):
        return None
    entries = [(s, 0, j) for j, s in enumerate(schema.slots) if s not in ("user_id", "item_id")]
    entries += [(s, 1, j) for j, s in enumerate(schema.multi_slots)]
    sp_names, sp_offs = _table([e[0] for e in entries])
    de_names, de_offs = _table(schema.dense)
    la_names, la_offs = _table((schema.label, *schema.labels))
    return _Tables(
        sp_names,
        sp_offs,
        np.array([e[1] for e in entries], np.int64),
        np.array([e[2] for e in entries], np.int64),
        len(schema.slots),
        len(schema.multi_slots),
        schema.slots.index("user_id") if "user_id" in schema.slots else -1,
        schema.slots.index("item_id") if "item_id" in schema.slots else -1,
        de_names,
        de_offs,
        la_names,
        la_offs,
    )


def decode_dataset(
    records: Sequence[Record], schema: ExampleSchema, *, name: str = "examples"
) -> tuple[Dataset, list[tuple[Record, str]]]:
    """(dataset, bad): `examples_to_dataset` of every example the records hold, in log order, and
    (record, reason) of those that are not valid examples, exactly as `decode_records` reports
    them (module docstring). Bad records are reported, never raised."""
    tables = _tables(schema)
    if tables is None:
        good, refused = decode_records(records)
        return examples_to_dataset(good, schema, name=name), refused
    values = [r.value for r in records]
    n = len(values)
    spans = np.empty((n, 2), np.int64)
    np.cumsum(np.fromiter(map(len, values), np.int64, n), out=spans[:, 1])
    spans[:, 0] = spans[:, 1] - np.fromiter(map(len, values), np.int64, n)
    return _decode(b"".join(values), spans, records.__getitem__, tables, schema, name)


def decode_blocks(
    blocks: Sequence[RecordBlock], schema: ExampleSchema, *, name: str = "examples"
) -> tuple[Dataset, list[tuple[Record, str]]]:
    """`decode_dataset` of the records of `blocks` (as `Consumer.poll_blocks` returns them), in
    order, without a `Record` per record: the blocks' bytes go to the kernel as read (joined
    into one buffer when there are several). Bad records come as `Record`s with key None."""
    tables = _tables(schema)
    if tables is None:
        return decode_dataset([r for b in blocks for r in b.records()], schema, name=name)
    if len(blocks) == 1:
        data, spans = blocks[0].data, blocks[0].spans
    else:
        sizes = np.fromiter((len(b.data) for b in blocks), np.int64, len(blocks))
        shift = np.cumsum(sizes) - sizes  # (k,) where each block's bytes start in the joined buffer
        data = b"".join(b.data for b in blocks)
        spans = (
            np.concatenate([b.spans + d for b, d in zip(blocks, shift.tolist(), strict=True)])
            if blocks
            else np.zeros((0, 2), np.int64)
        )
    counts = np.fromiter((len(b.spans) for b in blocks), np.int64, len(blocks))
    firsts = np.cumsum(counts) - counts  # (k,) the first record of each block

    def record_at(i: int) -> Record:
        k = int(np.searchsorted(firsts, i, side="right")) - 1
        b = blocks[k]
        s, e = spans[i].tolist()
        return Record(b.partition, b.offset + i - int(firsts[k]), None, data[s:e])

    return _decode(data, spans, record_at, tables, schema, name)


def _decode(
    data: bytes,
    spans: np.ndarray,
    record_at: Callable[[int], Record],
    tables: _Tables,
    schema: ExampleSchema,
    name: str,
) -> tuple[Dataset, list[tuple[Record, str]]]:
    """The kernel's pass over the values `data[spans[i, 0]:spans[i, 1]]` ((n, 2) int64), then the
    records it refused (`record_at(i)`) one by one, merged in log order."""
    n = len(spans)
    buf = np.frombuffer(data, np.uint8) if data else np.zeros(0, np.uint8)
    ok, single, offsets, ids, dense, labels, ts, ts_span, ts_exact, rate = decode_columns(buf, spans, *tables)
    for i in np.flatnonzero(ok & (ts_exact ^ 1)).tolist():  # ts of more digits than the kernel converts
        v = float(data[ts_span[i, 0] : ts_span[i, 1]])
        if v < TS_MAX:
            ts[i] = v
        else:
            ok[i] = 0  # out of range: the decoder words the error
    fast = Dataset.build(
        name,
        sparse={s: single[j] for j, s in enumerate(schema.slots)},
        label=labels[:, 0],
        ts=ts,
        sample_rate=rate,
        dense=dense,
        dense_names=tuple(schema.dense),
        multi={
            s: Ragged(ids[j, : offsets[j, n]], offsets[j]) for j, s in enumerate(schema.multi_slots)
        },
        labels={k: labels[:, j + 1] for j, k in enumerate(schema.labels)},
        label_name=schema.label,
    )
    slow = np.flatnonzero(ok == 0)
    if not slow.size:
        return fast, []
    # the records the kernel refused, one by one; rows of the result in log order
    counts = ok.astype(np.int64)
    starts = np.arange(n, dtype=np.int64)
    examples: list[Example] = []
    bad: list[tuple[Record, str]] = []
    for i in slow.tolist():
        starts[i] = n + len(examples)
        rec = record_at(i)
        try:
            got = decode_examples(rec.value)
        except EventError as e:
            bad.append((rec, str(e)))
            continue
        counts[i] = len(got)
        examples.extend(got)
    first = np.cumsum(counts) - counts  # (n,) the first result row of each record
    order = np.repeat(starts - first, counts) + np.arange(int(counts.sum()), dtype=np.int64)
    both = concat([fast, examples_to_dataset(examples, schema, name=name)]) if examples else fast
    return both.take(order), bad
