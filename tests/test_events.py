"""Event wire format: round trips, precise errors, and a decoder fuzzed with hypothesis."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrec.errors import EventError
from freshrec.stream import events as ev
from freshrec.stream.events import (
    ActionEvent,
    DeadLetter,
    Example,
    FeatureEvent,
    decode_action,
    decode_dead_letter,
    decode_example,
    decode_examples,
    decode_feature,
    encode_action,
    encode_dead_letter,
    encode_example,
    encode_examples,
    encode_feature,
    example_from_feature_bytes,
)

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
NAME = st.text(min_size=1, max_size=20).filter(lambda s: ev._valid_str(s))
FLOAT = st.floats(allow_nan=False, allow_infinity=False)
TS = st.floats(min_value=0, max_value=1e11, exclude_max=True)

features = st.builds(
    FeatureEvent,
    request_id=NAME,
    user_id=I64,
    item_id=I64,
    sparse=st.dictionaries(NAME, st.lists(I64, max_size=4), max_size=3),
    dense=st.dictionaries(NAME, FLOAT, max_size=3),
    ts=TS,
)
actions = st.builds(ActionEvent, request_id=NAME, action=NAME, value=FLOAT, ts=TS)
examples = st.builds(
    Example,
    request_id=NAME,
    user_id=I64,
    item_id=I64,
    sparse=st.dictionaries(NAME, st.lists(I64, max_size=4), max_size=3),
    dense=st.dictionaries(NAME, FLOAT, max_size=3),
    labels=st.dictionaries(NAME, FLOAT, max_size=3),
    sample_rate=st.floats(min_value=1e-6, max_value=1.0),
    ts=TS,
)


def test_all_is_curated():
    assert set(ev.__all__) == {
        "ActionEvent",
        "DeadLetter",
        "Example",
        "FeatureEvent",
        "example_from_feature_bytes",
        "feature_wire",
        "action_fields",
        "feature_wires",
        "action_fields_many",
        *(
            f"{d}_{k}"
            for d in ("encode", "decode")
            for k in ("feature", "action", "example", "examples", "dead_letter")
        ),
    }
    assert all(hasattr(ev, n) for n in ev.__all__)


@settings(deadline=None)
@given(features)
def test_feature_round_trip(f):
    b = encode_feature(f)
    assert decode_feature(b) == f
    assert b == encode_feature(decode_feature(b))  # canonical
    assert ev.feature_wire(b) == (f.request_id, f.ts, b)  # clean input is spliced as is
    spaced = json.dumps(json.loads(b), ensure_ascii=False).encode() + b" "
    assert ev.feature_wire(spaced)[2] == b  # anything else is re-encoded


@settings(deadline=None)
@given(actions)
def test_action_round_trip(a):
    assert decode_action(encode_action(a)) == a


@settings(deadline=None)
@given(examples)
def test_example_round_trip_and_splice(e):
    assert decode_example(encode_example(e)) == e
    f = FeatureEvent(e.request_id, e.user_id, e.item_id, e.sparse, e.dense, e.ts)
    assert example_from_feature_bytes(encode_feature(f), e.labels, e.sample_rate) == encode_example(e)


@settings(deadline=None)
@given(st.lists(examples, max_size=4))
def test_example_batch_round_trip(es):
    assert decode_examples(encode_examples(es)) == es


def test_dead_letter_round_trip():
    d = DeadLetter("feature event: missing field 'ts'", "features", 3, 17, b"\x00\xff{")
    assert decode_dead_letter(encode_dead_letter(d)) == d


def test_wire_example_from_the_docs():
    b = (
        b'{"request_id":"r81f2:0","user_id":42,"item_id":1007,"sparse":{"category":[3],"tags":[17,29]},'
        b'"dense":{"price":9.5},"ts":1700000000.25}'
    )
    f = decode_feature(b)
    assert f.sparse["tags"] == [17, 29] and f.dense["price"] == 9.5 and f.ts == 1700000000.25
    assert encode_feature(f) == b
    a = decode_action(b'{"request_id":"r81f2:0","action":"click","value":1.0,"ts":1700000003.5}')
    assert a == ActionEvent("r81f2:0", "click", 1.0, 1700000003.5)


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ({"user_id": 1, "item_id": 2, "sparse": {}, "dense": {}, "ts": 1}, "missing field 'request_id'"),
        ({"request_id": "", "user_id": 1, "item_id": 2, "sparse": {}, "dense": {}, "ts": 1}, "'request_id'"),
        (
            {"request_id": "r", "user_id": 2**63, "item_id": 2, "sparse": {}, "dense": {}, "ts": 1},
            "'user_id': expected an integer within int64, got out of int64 range",
        ),
        (
            {"request_id": "r", "user_id": True, "item_id": 2, "sparse": {}, "dense": {}, "ts": 1},
            "'user_id': expected an integer within int64, got a boolean",
        ),
        (
            {"request_id": "r", "user_id": 1, "item_id": 2.0, "sparse": {}, "dense": {}, "ts": 1},
            "'item_id': expected an integer within int64, got a number",
        ),
        (
            {"request_id": "r", "user_id": 1, "item_id": 2, "sparse": {"a": [1, "2"]}, "dense": {}, "ts": 1},
            "'sparse'['a'][1]",
        ),
        (
            {"request_id": "r", "user_id": 1, "item_id": 2, "sparse": {"a": 3}, "dense": {}, "ts": 1},
            "'sparse'['a']: expected an array",
        ),
        (
            {"request_id": "r", "user_id": 1, "item_id": 2, "sparse": {}, "dense": {"x": "1"}, "ts": 1},
            "'dense'['x']: expected a finite number",
        ),
        (
            {"request_id": "r", "user_id": 1, "item_id": 2, "sparse": {}, "dense": {}, "ts": -1},
            "'ts': expected seconds since the epoch",
        ),
        (
            {"request_id": "r", "user_id": 1, "item_id": 2, "sparse": {}, "dense": {}, "ts": 1e12},
            "'ts': expected seconds since the epoch",
        ),
    ],
)
def test_feature_errors_name_the_field(obj, needle):
    with pytest.raises(EventError, match=None) as ei:
        decode_feature(json.dumps(obj).encode())
    assert needle in str(ei.value)


def test_non_finite_and_non_json_are_refused():
    with pytest.raises(EventError, match="non-finite"):
        decode_action(b'{"request_id":"r","action":"click","value":NaN,"ts":1}')
    with pytest.raises(EventError, match="finite number, got inf"):
        decode_action(b'{"request_id":"r","action":"click","value":1e999,"ts":1}')
    with pytest.raises(EventError, match="not UTF-8"):
        decode_action(b"\xff")
    with pytest.raises(EventError, match="expected a JSON object"):
        decode_action(b"[]")
    with pytest.raises(EventError, match="nested too deeply|not valid JSON"):
        decode_action(b"[" * 100_000)
    with pytest.raises(EventError, match="lone surrogate"):
        decode_action(b'{"request_id":"\\ud800","action":"click","value":1,"ts":1}')
    with pytest.raises(EventError, match="sample_rate"):
        decode_example(
            b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{},"dense":{},'
            b'"labels":{},"sample_rate":0,"ts":1}'
        )


DECODERS = [
    decode_feature,
    decode_action,
    decode_example,
    decode_examples,
    decode_dead_letter,
    ev.feature_wire,
    ev.action_fields,
]
json_ish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


def _only_event_error(data) -> None:
    for dec in DECODERS:
        try:
            dec(data)
        except EventError:
            pass
    # the joiner's fast paths accept exactly what the full decoders accept, with the same content
    try:
        f = decode_feature(data)
    except EventError:
        f = None
    try:
        rid, ts, wire = ev.feature_wire(data)
    except EventError:
        assert f is None
    else:
        assert f is not None and (rid, ts) == (f.request_id, f.ts) and decode_feature(wire) == f
    try:
        a = decode_action(data)
    except EventError:
        a = None
    try:
        fields = ev.action_fields(data)
    except EventError:
        assert a is None
    else:
        assert a is not None and fields == (a.request_id, a.action, a.value, a.ts)
    _batch_agrees([data])


def _one(fn, data):
    try:
        return fn(data)
    except EventError as e:
        return ("error", str(e))


def _batch_agrees(records: list[bytes]) -> None:
    """The batch decoders give, record by record, what `feature_wire` / `action_fields` give
    (the same tuple, or an error with the same message), whatever surrounds each record."""
    data = b"#".join(records)
    spans, pos = [], 0
    for r in records:
        spans.append((pos, pos + len(r)))
        pos += len(r) + 1
    for many, one in ((ev.feature_wires, ev.feature_wire), (ev.action_fields_many, ev.action_fields)):
        got = [("error", str(x)) if isinstance(x, EventError) else x for x in many(data, spans)]
        want = []
        for r in records:
            w = _one(one, r)
            want.append(w if w[0] == "error" else (w[0].encode("utf-8"), *w[1:]))
        assert got == want
        # exact float equality, -0.0 included
        assert [repr(x) for x in got] == [repr(x) for x in want]


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data):
    _only_event_error(data)


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(json_ish)
def test_fuzz_arbitrary_json(obj):
    _only_event_error(json.dumps(obj).encode())


FIELDS = [
    "request_id",
    "user_id",
    "item_id",
    "sparse",
    "dense",
    "ts",
    "action",
    "value",
    "labels",
    "sample_rate",
    "reason",
    "source",
    "partition",
    "offset",
    "data",
]


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(features.map(encode_feature), actions.map(encode_action), examples.map(encode_example)),
    st.lists(st.tuples(st.sampled_from(FIELDS), json_ish), max_size=3),
    st.lists(st.sampled_from(FIELDS), max_size=2),
)
def test_fuzz_near_miss_events(valid, replace, drop):
    """Valid events with fields replaced by arbitrary JSON values or dropped."""
    obj = json.loads(valid)
    for k, v in replace:
        obj[k] = v
    for k in drop:
        obj.pop(k, None)
    data = json.dumps(obj).encode()
    _only_event_error(data)
    _only_event_error(data[: len(data) // 2])  # truncated


@settings(deadline=None, max_examples=100)
@given(features, st.integers(min_value=1, max_value=60))
def test_fuzz_truncated_and_flipped(f, cut):
    b = encode_feature(f)
    _only_event_error(b[:-cut])
    flipped = bytearray(b)
    flipped[cut % len(b)] ^= 0x5A
    _only_event_error(bytes(flipped))


@settings(deadline=None, max_examples=200)
@given(st.lists(st.one_of(features.map(encode_feature), actions.map(encode_action)), max_size=6),
       st.data())
def test_batch_decoders_equal_one_by_one(records, data):
    """Whole polls of canonical records (the kernels' fast path), mutated here and there."""
    out = []
    for r in records:
        k = data.draw(st.integers(0, 3))
        if k == 1:
            r = r[: data.draw(st.integers(0, len(r)))]
        elif k == 2:
            i = data.draw(st.integers(0, len(r) - 1))
            r = r[:i] + bytes([data.draw(st.sampled_from(b'-0123456789.eE+,:{}[]" a\\x\xff'))]) + r[i + 1 :]
        out.append(r)
    _batch_agrees(out)


@pytest.mark.parametrize(
    "record",
    [
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{},"dense":{},"ts":1}',
        b'{"request_id":"r","user_id":-0,"item_id":123456789012345678,"sparse":{"a":[],"":[-1,0]},'
        b'"dense":{"x":-0,"y":1E+99,"z":-1.5e-07},"ts":0.0}',
        b'{"request_id":"r","user_id":1234567890123456789,"item_id":2,"sparse":{},"dense":{},"ts":1}',
        b'{"request_id":"r","user_id":9223372036854775808,"item_id":2,"sparse":{},"dense":{},"ts":1}',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{"a":[1.0]},"dense":{},"ts":1}',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{"a":[01]},"dense":{},"ts":1}',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{},"dense":{"x":1e999},"ts":1}',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{},"dense":{"x":1e400},"ts":1}',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{},"dense":{},"ts":1e11}',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{},"dense":{},"ts":99999999999.99999}',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{},"dense":{},"ts":-0.0}',
        b'{"request_id":"","user_id":1,"item_id":2,"sparse":{},"dense":{},"ts":1}',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{"a":[1],"a":[true]},"dense":{},"ts":1}',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{"a":[1.5],"a":[1]},"dense":{},"ts":1}',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{},"dense":{},"ts":1} ',
        b'{"request_id":"r","user_id":1,"item_id":2,"sparse":{},"dense":{},"ts":1,"x":1}',
        b'{"request_id":"r\\u0041","user_id":1,"item_id":2,"sparse":{},"dense":{},"ts":1}',
        b'{"request_id":"\xc3\xa9","user_id":1,"item_id":2,"sparse":{},"dense":{},"ts":1}',
        b'{"request_id":"r","action":"click","value":-0,"ts":1}',
        b'{"request_id":"r","action":"click","value":-0.0,"ts":1}',
        b'{"request_id":"r","action":"click","value":1e5,"ts":1}',
        b'{"request_id":"r","action":"","value":1,"ts":1}',
        b'{"request_id":"r","action":"click","value":1,"ts":-1}',
        b'{"request_id":"r","action":"click","value":1.,"ts":1}',
        b'{"request_id":"r","action":"click","value":1,"ts":1}}',
        b'{"request_id":"' + b"r" * 256 + b'","action":"' + b"c" * 257 + b'","value":1,"ts":1}',
    ],
)
def test_batch_decoders_edge_cases(record):
    _batch_agrees([record])
    _batch_agrees([record, record[:-1], record])


def test_docs_examples_decode():
    """The JSON examples in docs/wire-format.md are valid records of their kinds."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "wire-format.md"
    if not doc.is_file():
        pytest.skip(f"{doc} not found")
    blocks = re.findall(r"```json\n(.*?)\n```", doc.read_text(), flags=re.S)
    assert len(blocks) == 4
    f = decode_feature(blocks[0].encode())
    a = decode_action(blocks[1].encode())
    e = decode_example(blocks[2].encode())
    d = decode_dead_letter(blocks[3].encode())
    assert encode_feature(f) == blocks[0].encode() and encode_action(a) == blocks[1].encode()
    assert encode_example(e) == blocks[2].encode()
    assert e.labels == {"click": 1.0, "like": 0.0} and a.request_id == f.request_id == e.request_id
    with pytest.raises(EventError) as ei:
        decode_feature(d.data)
    assert str(ei.value) == d.reason
