"""The columnar import path: the numba crc32 is zlib's; records built from columns are byte for
byte what pyarrow's string joins build (the layout `freshrec import` has always written) and the
local log's `encode` frames them into; `append_frames` writes what `append_many` writes; and a
whole import plan of each shape holds exactly the records of the pyarrow-joined oracle."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.data.dataset import Ragged
from freshrec.errors import LogError
from freshrec.stream.local_log import LocalBackend, LocalLogConfig
from freshrec.stream.local_segments import (
    MAX_KEY_BYTES,
    _crc32,
    encode,
    encode_many,
    frame_ends,
    seal_frames,
)
from freshrec.stream.record_columns import FrameBuffer, RecordsBuilder
from schema_fixtures import EXAMPLES, write_ads, write_behaviour, write_clicks


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 20))
def test_numba_crc32_is_zlibs(data, skip):
    buf = np.frombuffer(data, np.uint8)
    start = min(skip, len(data))
    assert int(_crc32(buf, start, len(data))) == zlib.crc32(data[start:])


def test_sealed_frames_are_encodes_bytes():
    rng = np.random.default_rng(0)
    recs = [
        (None if i % 5 == 0 else rng.bytes(int(rng.integers(0, 40))), rng.bytes(int(rng.integers(0, 500))))
        for i in range(400)
    ] + [(b"k" * MAX_KEY_BYTES, b"v"), (b"", b"")]
    klen = np.array([-1 if k is None else len(k) for k, _ in recs])
    vlen = np.array([len(v) for _, v in recs])
    ends = frame_ends(klen, vlen)
    buf = np.zeros(int(ends[-1]), np.uint8)  # keys and values in place, headers zero
    for (k, v), end in zip(recs, ends.tolist(), strict=True):
        body = (k or b"") + v
        buf[end - len(body) : end] = np.frombuffer(body, np.uint8)
    seal_frames(buf, ends, klen)
    assert buf.tobytes() == b"".join(encode_many(recs))
    with pytest.raises(LogError):
        frame_ends(np.array([MAX_KEY_BYTES + 1]), np.array([1]))


def _oracle_join(parts: list, n: int) -> list[bytes]:
    """The old way: each part cast to text by pyarrow, joined element-wise."""
    cols = [pa.scalar(p, pa.string()) if isinstance(p, str) else p for p in parts]
    return [x.encode() for x in pc.binary_join_element_wise(*cols, "").to_pylist()] if n else []


def _text(a) -> pa.Array:
    return pc.cast(pa.array(a), pa.string())


def test_records_from_columns_are_pyarrows_text():
    rng = np.random.default_rng(1)
    n = 3000
    ints = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)
    ints[:8] = [0, -1, 9, 10, -(2**63), 2**63 - 1, 99, -100]
    whole = rng.integers(0, 3_000_000_000, n).astype(np.float64)
    floats = np.concatenate(
        [
            [0.0, -0.0, 1.0, -3.0, 9_999_999_999.0, 1e10, -1e10, 1e15, 2.5, 1e-7, 1700000000.123],
            rng.normal(0, 1e6, n - 11),
        ]
    )
    f32 = rng.normal(0, 3, n)
    counts = rng.integers(0, 4, n)
    rag = Ragged(rng.integers(-(10**12), 10**12, int(counts.sum())), np.concatenate([[0], np.cumsum(counts)]))
    names = pa.array([f"s{i % 7}-\u00e9" for i in range(n)])
    b = RecordsBuilder(n)
    b.key.lit("r-").int(ints)
    v = b.value.lit('{"i":').int(ints).lit(',"w":').number(whole).lit(',"f":').number(floats)
    v.lit(',"g":').float32(f32).lit(',"l":[').ints(rag).lit('],"s":"').text(names).lit('"}')
    recs = b.build()
    lists = pa.LargeListArray.from_arrays(pa.array(rag.offsets), pa.array(rag.values))
    want_v = _oracle_join(
        [
            '{"i":',
            _text(ints),
            ',"w":',
            _text(whole),
            ',"f":',
            _text(floats),
            ',"g":',
            _text(f32.astype(np.float32)),
            ',"l":[',
            pc.binary_join(pc.cast(lists, pa.large_list(pa.string())), ",").cast(pa.string()),
            '],"s":"',
            names,
            '"}',
        ],
        n,
    )
    want_k = _oracle_join(["r-", _text(ints)], n)
    assert recs.pairs() == list(zip(want_k, want_v, strict=True))
    rows = rng.permutation(n)[:1000]
    frames = b"".join(bytes(buf) for buf, _ in recs.blocks(rows, scratch=FrameBuffer(), block_bytes=5000))
    assert frames == b"".join(encode(want_v[r], want_k[r]) for r in rows)
    assert recs.key_crcs(rows).tolist() == [zlib.crc32(want_k[r]) for r in rows]


@pytest.mark.parametrize("partitions", [1, 3])
def test_append_frames_writes_what_append_many_writes(tmp_path, partitions):
    cfg = LocalLogConfig(segment_bytes=4096, buffer_bytes=1000)  # rolls and write-outs inside a block
    rng = np.random.default_rng(2)
    recs = [(b"k%d" % rng.integers(50), rng.bytes(int(rng.integers(0, 300)))) for _ in range(600)]
    recs.append((b"big", b"x" * 5000))  # larger than a segment: alone in one
    a = LocalBackend(tmp_path / "a", config=cfg).log("x", partitions=partitions)
    b = LocalBackend(tmp_path / "b", config=cfg).log("x", partitions=partitions)
    a.append_many(recs)
    for p in range(partitions):
        mine = [(k, v) for k, v in recs if partitions == 1 or zlib.crc32(k) % partitions == p]
        for i in range(0, len(mine), 97):
            chunk = encode_many(mine[i : i + 97])
            b.append_frames(b"".join(chunk), np.cumsum([len(f) for f in chunk]), partition=p)
    assert a.end_offsets() == b.end_offsets()
    a.close()
    b.close()
    files = [
        {str(f.relative_to(r)): f.read_bytes() for f in sorted(r.rglob("*.seg"))}
        for r in (tmp_path / "a", tmp_path / "b")
    ]
    assert len(files[0]) > partitions and files[0] == files[1]
    c = LocalBackend(tmp_path / "c").log("x")
    with pytest.raises(LogError, match="does not chain"):
        c.append_frames(encode(b"v", b"k") + b"junk", np.array([13, 17]))
    assert c.end_offsets() == [0]
    c.close()


@pytest.mark.parametrize("threads", [1, 3])
def test_framing_threads_write_what_append_many_writes(tmp_path, threads):
    from freshrec.stream.importer import _Framer

    n = 5000
    rng = np.random.default_rng(3)
    b = RecordsBuilder(n)
    b.key.lit("k-").int(np.arange(n))
    b.value.lit('{"x":').int(rng.integers(-(10**15), 10**15, n)).lit(',"t":"').text(
        pa.array([f"t{i}" * (i % 9) for i in range(n)])
    )
    b.value.lit('"}')
    recs = b.build()
    rows = rng.permutation(n)
    cfg = LocalLogConfig(segment_bytes=20_000, buffer_bytes=3000)
    a = LocalBackend(tmp_path / "a", config=cfg).log("x")
    a.append_many(recs.pairs(rows))
    c = LocalBackend(tmp_path / "c", config=cfg).log("x")
    framer = _Framer(threads, block_bytes=5000)  # dozens of blocks in flight
    try:
        framer.append(c.append_frames, recs, rows, 0)
    finally:
        framer.close()
    a.close()
    c.close()
    files = [
        {str(f.relative_to(r)): f.read_bytes() for f in sorted(r.rglob("*.seg"))}
        for r in (tmp_path / "a", tmp_path / "c")
    ]
    assert len(files[0]) > 10 and files[0] == files[1]


# --------------------------------------------------------------------------- whole plans vs the old joins


def _rid(name, request, position):
    pos = np.broadcast_to(np.asarray(position, np.int64), np.shape(request))
    return pc.binary_join_element_wise(
        pa.scalar(f"{name}-"), _text(np.asarray(request)), pa.scalar(":"), _text(pos), ""
    )


def _oracle_features(schema, rid, user, item, sparse, multi, dense, ts) -> list[bytes]:
    parts: list = [
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
        if s.kind == "categorical":
            parts.append(_text(sparse[s.name]))
        else:
            r = multi[s.name]
            lists = pa.LargeListArray.from_arrays(pa.array(r.offsets), pa.array(r.values))
            parts.append(pc.binary_join(pc.cast(lists, pa.large_list(pa.string())), ",").cast(pa.string()))
        parts.append("]")
        first = False
    parts.append('},"dense":{')
    for j, s in enumerate(schema.dense_slots):
        parts += [("," if j else "") + f'"{s.name}":', _text(dense[:, j].astype(np.float32))]
    parts += ['},"ts":', _text(ts), "}"]
    return _oracle_join(parts, len(ts))


@pytest.mark.parametrize("shape", ["rows", "behaviour", "positives"])
def test_a_plan_holds_the_records_of_the_pyarrow_joins(tmp_path, shape):
    from freshrec.data.schema import load_schema
    from freshrec.data.schema_data import (
        attach_behaviours,
        dense_stats,
        read_columns,
        sample_positives,
        standardized,
    )
    from freshrec.stream.importer import plan_events

    config, data = {
        "rows": ("ads-impressions.toml", write_ads(tmp_path, n=800)),
        "behaviour": ("shop-behaviour.toml", write_behaviour(tmp_path, n=800)),
        "positives": ("clickstream.toml", write_clicks(tmp_path, n=500)),
    }[shape]
    schema = load_schema(EXAMPLES / config, overrides={"files": [str(data)]})
    cols = read_columns(schema)
    schema = schema.with_types(cols.types)
    schema = schema.with_stats(dense_stats(schema, cols))
    plan = plan_events(schema, cols, fingerprint="t")
    dense = standardized(schema, cols.dense)
    name, sp = schema.name, cols.sparse
    if shape == "rows":
        rid = _rid(name, np.arange(len(cols)), 0)
        feats = _oracle_features(
            schema, rid, sp[schema.user], sp[schema.item], sp, cols.multi, dense, cols.ts
        )
    elif shape == "behaviour":
        idx = attach_behaviours(schema, cols).impression
        rid = _rid(name, np.arange(len(idx)), 0)
        feats = _oracle_features(
            schema,
            rid,
            sp[schema.user][idx],
            sp[schema.item][idx],
            {k: v[idx] for k, v in sp.items()},
            {k: r.take(idx) for k, r in cols.multi.items()},
            dense[idx],
            cols.ts[idx],
        )
    else:
        smp = sample_positives(schema, cols)
        assert len(smp.row) > len(cols)  # negatives were drawn
        kinds = plan.kind
        keys = [k.decode() for k, kind in zip(plan.keys, kinds, strict=True) if kind == 0]
        want = _rid(name, smp.row, smp.position).to_pylist()
        assert keys == [want[i] for i in np.argsort(cols.ts[smp.row], kind="stable")]
        feats = None
    got = [v for v, k in zip(plan.values, plan.kind, strict=True) if k == 0]
    if feats is not None:
        assert got == feats  # shapes (a), (b): features in time order, already sorted
    actions = [v for v, k in zip(plan.values, plan.kind, strict=True) if k == 1]
    assert actions and all(a.startswith(b'{"request_id":"' + name.encode() + b"-") for a in actions)
    if shape == "rows":  # the old action joins, labels one after the other, merged by time
        want_a: list[bytes] = []
        t_all = []
        for lab in schema.labels:
            v = cols.labels[lab.name]
            val = (v >= lab.threshold).astype(np.float64) if lab.threshold is not None else v
            hit = np.flatnonzero(val > 0)
            t = cols.ts[hit] + schema.impressions.delay_s
            want_a += _oracle_join(
                [
                    '{"request_id":"',
                    rid.take(pa.array(hit)),
                    f'","action":"{lab.name}","value":',
                    _text(val[hit]),
                    ',"ts":',
                    _text(t),
                    "}",
                ],
                len(hit),
            )
            t_all.append(t)
        order = np.argsort(np.concatenate(t_all), kind="stable")
        assert actions == [want_a[i] for i in order]
    assert len(plan.keys) == len(plan) == len(plan.values)


def test_bench_import_quick_reports_its_fields():
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "freshrec.cli", "bench", "import", "--quick", "--json"]
    out = json.loads(
        subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()[-1]
    )
    assert out["rows"] == 20_000 and len(out["load_avg"]) == 3
    for fmt in ("csv", "parquet"):
        r = out[fmt]
        for f in (
            "import_rows_per_s",
            "import_rows_per_cpu_s",
            "pyarrow_read_rows_per_s",
            "pyarrow_read_1_thread_rows_per_s",
            "ratio_to_pyarrow_read",
            "ratio_to_pyarrow_read_1_thread",
            "log_mb",
            "disk_write_floor_s",
            "ratio_to_disk_write",
        ):
            assert r[f] > 0, f
        assert (
            r["events_per_s"] > r["import_rows_per_s"]
        )  # rows of shape (a): a feature event each, plus clicks
        assert set(r["stages_s"]) == {"read_s", "encode_s", "write_s"}


def test_a_full_disk_then_a_rerun_on_partitioned_local_logs_writes_every_event_once(tmp_path):
    """The framed path on 3 partitions, 2 framing threads: a flush failing midway and a rerun give,
    per partition, the records of an uninterrupted import through the (key, value) path."""
    from freshrec.data.schema import load_schema
    from freshrec.data.schema_data import read_columns
    from freshrec.stream.importer import import_to_logs, plan_events
    from freshrec.stream.log import MemoryBackend
    from test_import import LOGS, _FullDisk

    data = write_clicks(tmp_path, n=600)
    schema = load_schema(EXAMPLES / "clickstream.toml", overrides={"files": [str(data)]})
    cols = read_columns(schema)
    plan = plan_events(schema.with_types(cols.types), cols, fingerprint="t")
    whole = MemoryBackend()
    import_to_logs(
        plan, *(whole.log(n, partitions=3) for n in LOGS), state=tmp_path / "a.json", flush_every=333
    )
    local = LocalBackend(tmp_path / "logs")
    logs = [local.log(n, partitions=3) for n in LOGS]
    with pytest.raises(LogError, match="No space"):
        import_to_logs(
            plan,
            logs[0],
            _FullDisk(logs[1], fail_at=4),
            logs[2],
            state=tmp_path / "b.json",
            flush_every=333,
            threads=2,
        )
    local.close()
    local = LocalBackend(tmp_path / "logs")  # a fresh writer, as after a crash
    st = import_to_logs(
        plan,
        *(local.log(n, partitions=3) for n in LOGS),
        state=tmp_path / "b.json",
        flush_every=333,
        threads=2,
    )
    assert st.resumed and st.skipped > 0 and st.skipped + st.written == len(plan)
    for n in LOGS:
        for p in range(3):
            want = [(r.key, r.value) for r in whole.log(n).consumer("t", partitions=[p]).poll(10**6)]
            c = local.log(n).consumer("t", partitions=[p])
            assert [(r.key, r.value) for r in c.poll(10**6)] == want
            assert n == "dead-letters" or len(want) > 10
    assert all(seg.ok for log in LOGS for segs in local.log(log).check().values() for seg in segs)
    local.close()
