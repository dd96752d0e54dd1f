"""The columnar decoding of a poll (`decode_dataset`) equals the per-Example reference path
(`decode_records` + `examples_to_dataset`) bit for bit, and trains the same parameters."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch

from freshrec.model import FeatureSpec, SlotSpec, Task
from freshrec.stream._example_kernels import decode_columns
from freshrec.stream.events import Example, encode_example, encode_examples
from freshrec.stream.log import MemoryLog, Record
from freshrec.table import Adagrad
from freshrec.train.batch import iter_batches
from freshrec.train.examples import (
    ExampleSchema,
    _tables,
    decode_dataset,
    decode_records,
    examples_to_dataset,
    write_examples,
)
from freshrec.train.online import OnlineConfig, OnlineTrainer

SCHEMA = ExampleSchema(
    slots=("user_id", "item_id", "cat", "city"),
    multi_slots=("tags",),
    dense=("price", "age", "score"),
    label="click",
    labels=("like", "watch"),
)
TASKS = (Task(name="click"), Task(name="like"), Task(name="watch", kind="value"))
I64 = (-(2**63), 2**63 - 1)


def _example(rng: np.random.Generator, i: int, *, wild: bool = True) -> Example:
    """A random example: full-range ids, bags empty to long, dense and labels present or not
    (`wild`: dense values of any magnitude, else ones a model trains on without diverging)."""
    big = int(rng.integers(I64[0], I64[1], endpoint=True))
    sparse: dict[str, list[int]] = {"cat": [int(rng.integers(0, 50))]}
    if rng.random() < 0.7:
        sparse["city"] = [big]
    if rng.random() < 0.8:
        sparse["tags"] = [int(x) for x in rng.integers(I64[0], I64[1], int(rng.choice([0, 1, 3, 120])))]
    if rng.random() < 0.2:
        sparse["other"] = [1, 2]
    dense = {}
    if rng.random() < 0.8:
        dense["price"] = float(np.float32(rng.normal() * 100))  # a float32 value, as loaders write
    if rng.random() < 0.8:
        dense["age"] = float(rng.normal())  # a full double (17 digits)
    if rng.random() < 0.5:
        dense["score"] = float(
            rng.choice([0.0, -0.0, 1e-7, 3.5e21, 12345.0, 1e-30] if wild else [0.0, -0.0, 0.5])
        )
    labels = {"click": float(rng.random() < 0.3)}
    if rng.random() < 0.7:
        labels["like"] = float(rng.choice([0.0, 1.0, 0.5]))
    if rng.random() < 0.7:
        labels["watch"] = float(rng.exponential(30 if wild else 1))
    return Example(
        request_id=f"r{i}:{int(rng.integers(0, 9))}",
        user_id=int(rng.choice([0, 7, I64[0], I64[1], big])),
        item_id=int(rng.integers(-(10**12), 10**12)),
        sparse=sparse,
        dense=dense,
        labels=labels,
        sample_rate=float(rng.choice([1.0, 0.25, 0.1, 0.013])),
        ts=float(rng.choice([1.7e9 + rng.random(), 1.7e9 + rng.integers(0, 9), 0.0, 99999999999.99998])),
    )


def _spaced(e: Example) -> bytes:
    return json.dumps(json.loads(encode_example(e))).encode()  # spaces after , and :


def _reordered(e: Example) -> bytes:
    d = json.loads(encode_example(e))
    return json.dumps(dict(reversed(list(d.items()))), separators=(",", ":")).encode()


def _escaped(e: Example) -> bytes:
    return encode_example(e).replace(b'"cat"', b'"\\u0063at"', 1)  # the same key, escaped


NON_CANONICAL = [
    lambda e: encode_example(
        Example(**{**_fields(e), "request_id": "ré:0"})  # non-ASCII request id
    ),
    lambda e: encode_example(Example(**{**_fields(e), "sparse": {**e.sparse, "vïlle": [3]}})),
    lambda e: encode_example(e)[:-1] + b',"extra":{"x":[1]}}',  # an unknown field
    lambda e: encode_example(e).replace(b'"sparse":{', b'"sparse":{"cat":[99],', 1),  # a slot twice
    lambda e: encode_example(e).replace(b'"ts":', b'"ts":1.7e9,"ts":', 1),  # ts twice
    lambda e: encode_examples([e, e]),  # the batch form: two examples in one record
]

BAD = [
    b"{not json",
    b"",
    b"[1, 2]",
    b"\xff\xfe",
    b'{"request_id":"x","user_id":1.5,"item_id":1,"sparse":{},"dense":{},"ts":1.0,"labels":{},"sample_rate":1.0}',
    b'{"request_id":"x","user_id":9223372036854775808,"item_id":1,"sparse":{},"dense":{},"ts":1.0,'
    b'"labels":{},"sample_rate":1.0}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{"a":[-9223372036854775809]},"dense":{},'
    b'"ts":1.0,"labels":{},"sample_rate":1.0}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{},"dense":{},"ts":-1.0,"labels":{},"sample_rate":1.0}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{},"dense":{},"ts":1e11,"labels":{},"sample_rate":1.0}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{},"dense":{},"ts":100000000000.00001,"labels":{},'
    b'"sample_rate":1.0}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{},"dense":{},"ts":1.0,"labels":{},"sample_rate":0.0}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{},"dense":{},"ts":1.0,"labels":{},"sample_rate":1.5}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{},"dense":{"price":NaN},"ts":1.0,"labels":{},'
    b'"sample_rate":1.0}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{},"dense":{"price":1e999},"ts":1.0,"labels":{},'
    b'"sample_rate":1.0}',
    b'{"request_id":"","user_id":1,"item_id":1,"sparse":{},"dense":{},"ts":1.0,"labels":{},"sample_rate":1.0}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{"cat":[1,]},"dense":{},"ts":1.0,"labels":{},'
    b'"sample_rate":1.0}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{"cat":[01]},"dense":{},"ts":1.0,"labels":{},'
    b'"sample_rate":1.0}',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{},"dense":{},"ts":1.0,"labels":{},"sample_rate":1.0}x',
    b'{"request_id":"x","user_id":1,"item_id":1,"sparse":{},"dense":{},"ts":1.0,"labels":{"click":true},'
    b'"sample_rate":1.0}',
]


def _fields(e: Example) -> dict:
    return {k: getattr(e, k) for k in Example.__slots__}


def _log(n: int = 600, seed: int = 0, *, wild: bool = True) -> list[Record]:
    """Canonical records with non-canonical and bad ones mixed in."""
    rng = np.random.default_rng(seed)
    values = []
    for i in range(n):
        e = _example(rng, i, wild=wild)
        r = rng.random()
        if r < 0.08:
            values.append(NON_CANONICAL[int(rng.integers(0, len(NON_CANONICAL)))](e))
        elif r < 0.12:
            values.append(_spaced(e))
        elif r < 0.15:
            values.append(_reordered(e))
        elif r < 0.17:
            values.append(_escaped(e))
        elif r < 0.22:
            values.append(BAD[int(rng.integers(0, len(BAD)))])
        else:
            values.append(encode_example(e))
    values += BAD  # every bad form at least once
    return [Record(0, i, f"k{i}".encode(), v) for i, v in enumerate(values)]


def _same_dataset(a, b) -> None:
    assert len(a) == len(b)
    assert a.slots == b.slots and a.multi_slots == b.multi_slots and a.dense_names == b.dense_names
    for k in a.sparse:
        assert a.sparse[k].dtype == b.sparse[k].dtype and a.sparse[k].tobytes() == b.sparse[k].tobytes(), k
    for k in a.multi:
        assert a.multi[k].values.tobytes() == b.multi[k].values.tobytes(), k
        assert a.multi[k].offsets.tobytes() == b.multi[k].offsets.tobytes(), k
    for name in ("dense", "label", "ts", "sample_rate"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name
    assert a.labels.keys() == b.labels.keys()
    for k in a.labels:
        assert a.labels[k].tobytes() == b.labels[k].tobytes(), k
    assert a.label_name == b.label_name and a.has_time == b.has_time


def _same_batch(x, y) -> None:
    assert x.sparse.keys() == y.sparse.keys()
    for k in x.sparse:
        xs, ys = x.sparse[k], y.sparse[k]
        pairs = zip(xs, ys, strict=True) if isinstance(xs, tuple) else [(xs, ys)]
        for p, q in pairs:
            assert p.dtype == q.dtype and torch.equal(p, q), k
    for name in ("dense", "targets", "offset", "weight"):
        p, q = getattr(x, name), getattr(y, name)
        assert (p is None) == (q is None), name
        if p is not None:
            assert p.dtype == q.dtype and p.shape == q.shape
            assert p.numpy().tobytes() == q.numpy().tobytes(), name
    assert x.now == y.now


def test_columns_equal_the_per_example_path_on_a_mixed_log():
    records = _log()
    got, bad = decode_dataset(records, SCHEMA)
    good, ref_bad = decode_records(records)
    want = examples_to_dataset(good, SCHEMA)
    _same_dataset(got, want)
    assert bad == ref_bad  # the same records, in order, with the same reasons (the dead letters)
    assert len(bad) >= len(BAD)
    # the kernel took the canonical records itself (the comparison is not the fallback's alone)
    values = [r.value for r in records]
    ends = np.cumsum([len(v) for v in values])
    spans = np.stack([ends - [len(v) for v in values], ends], axis=1).astype(np.int64)
    ok = decode_columns(np.frombuffer(b"".join(values), np.uint8), spans, *_tables(SCHEMA))[0]
    assert 0.6 * len(records) < ok.sum() < len(good)
    # and the batches built from both are the same tensors
    for x, y in zip(iter_batches(got, 128, tasks=TASKS), iter_batches(want, 128, tasks=TASKS), strict=True):
        _same_batch(x, y)


def test_columns_of_a_clean_poll_take_no_fallback_and_equal_the_reference():
    rng = np.random.default_rng(3)
    records = [Record(0, i, None, encode_example(_example(rng, i))) for i in range(400)]
    got, bad = decode_dataset(records, SCHEMA)
    assert bad == []
    _same_dataset(got, examples_to_dataset(decode_records(records)[0], SCHEMA))


def _random_doubles(rng: np.random.Generator, n: int) -> list[float]:
    """Finite doubles from random bit patterns (every exponent), plus float32 values and short decimals."""
    out = []
    while len(out) < n:
        (x,) = struct.unpack("<d", rng.bytes(8))
        if math.isfinite(x):
            out.append(x)
    out += [float(np.float32(v)) for v in rng.normal(size=n) * 10.0 ** rng.integers(-8, 8, n)]
    out += [
        round(float(v), int(d)) for v, d in zip(rng.normal(size=n) * 1000, rng.integers(0, 8, n), strict=True)
    ]
    # float32 rounding boundaries: midpoints between neighbours and their neighbouring doubles
    f = np.float32(rng.normal(size=n)).astype(np.float64)
    mid = (f + np.nextafter(np.float32(f), np.float32(np.inf)).astype(np.float64)) / 2
    out += mid.tolist() + np.nextafter(mid, np.inf).tolist() + np.nextafter(mid, -np.inf).tolist()
    return out


def _number_texts(rng: np.random.Generator, n: int) -> list[str]:
    """Decimal texts of random digits and exponents, as any JSON writer may spell numbers."""
    out = []
    for _ in range(n):
        digits = "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(1, 25))))
        digits = digits.lstrip("0") or "0"
        k = int(rng.integers(0, len(digits) + 1))
        text = digits if k == 0 else (digits[:k] or "0") + "." + (digits[k:] or "0")
        if rng.random() < 0.5:
            text += f"e{int(rng.integers(-40, 40))}"
        out.append(("-" if rng.random() < 0.3 else "") + text)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_numbers_convert_exactly_as_python_float(seed):
    rng = np.random.default_rng(seed)
    texts = [repr(x) for x in _random_doubles(rng, 2000)] + _number_texts(rng, 4000)
    texts += [
        "0",
        "-0",
        "-0.0",
        "0e5",
        "-0e-5",
        "1",
        "1.0",
        "1e22",
        "1e23",
        "9007199254740993",
        "3.4028235e38",
        "1.1754943e-38",
        "1e-45",
        "123456789012345678",
        "0.30000001192092896",
    ]
    texts = [t for t in texts if abs(float(t)) < 1e300]  # `1e999`-like overflow is a bad record
    head = '{"request_id":"r","user_id":1,"item_id":2,"sparse":{},"dense":{"price":'
    records = []
    for i, t in enumerate(texts):
        ts = t.lstrip("-") if float(t.lstrip("-")) < 1e11 else "1.5"
        label = '{"click":' + t + ',"watch":' + t + "}"
        records.append(
            Record(
                0,
                i,
                None,
                (head + t + '},"ts":' + ts + ',"labels":' + label + ',"sample_rate":1.0}').encode(),
            )
        )
    with np.errstate(over="ignore"):  # doubles past float32's range are inf in both paths
        got, bad = decode_dataset(records, SCHEMA)
        good, ref_bad = decode_records(records)
        want = examples_to_dataset(good, SCHEMA)
    assert bad == ref_bad == []
    _same_dataset(got, want)
    # what JSON means: an integer literal is an int ("-0" is 0), converted by float()
    values = [float(int(t)) if t.lstrip("-").isdigit() else float(t) for t in texts]
    with np.errstate(over="ignore"):
        exact = np.array(values, np.float64).astype(np.float32)
    assert got.dense[:, 0].tobytes() == exact.tobytes()
    assert got.labels["watch"].tobytes() == exact.tobytes()
    assert got.label.tolist() == [1.0 if v > 0 else 0.0 for v in values]


def test_trained_parameters_are_the_same_with_either_decoding():
    records = _log(900, seed=5, wild=False)
    spec = FeatureSpec(
        slots=(
            SlotSpec(name="user_id"),
            SlotSpec(name="item_id"),
            SlotSpec(name="cat"),
            SlotSpec(name="city"),
            SlotSpec(name="tags", multi_valued=True),
        ),
        dense_dim=3,
        dim=4,
        optimizer=Adagrad(lr=0.05),
    )

    def train(columnar: bool) -> OnlineTrainer:
        log = MemoryLog("examples")
        for r in records:
            log.append(r.value, key=r.key)
        log.flush()
        config = OnlineConfig(batch_size=64, columnar=columnar, whole_batches=True)
        tr = OnlineTrainer.from_spec(spec, config, tasks=TASKS, hidden=(8,), seed=1, dense=SCHEMA.dense)
        assert tr.schema.multi_slots == ("tags",) and tr.schema.labels == ("like", "watch")
        consumer = log.consumer("t")
        tr.run(consumer, until_idle=True)
        return tr

    fast, ref = train(True), train(False)
    assert fast.step == ref.step > 10
    assert fast.trained_records() == ref.trained_records() == len(records)
    assert fast.ps.bad_records == ref.ps.bad_records >= len(BAD)
    assert math.isfinite(ref.metrics().log_loss)
    assert fast.metrics().log_loss == ref.metrics().log_loss
    a, b = fast.dense_state(), ref.dense_state()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    for slot, t in fast.tables.items():
        sa, sb = t.state()[1], ref.tables[slot].state()[1]
        oa, ob = np.argsort(sa["ids"]), np.argsort(sb["ids"])
        assert sa["ids"][oa].tobytes() == sb["ids"][ob].tobytes(), slot
        assert sa["rows"][oa].tobytes() == sb["rows"][ob].tobytes(), slot


def test_examples_written_by_write_examples_decode_on_the_kernel():
    rng = np.random.default_rng(9)
    log = MemoryLog("examples")
    examples = [_example(rng, i) for i in range(50)]
    write_examples(log, examples)
    records = log.consumer("c").poll(max_records=100)
    got, bad = decode_dataset(records, SCHEMA)
    assert bad == [] and len(got) == 50
    _same_dataset(got, examples_to_dataset(examples, SCHEMA))
