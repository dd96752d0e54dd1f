"""The reply kernel writes each score as `%.9g` does, and the scores round-trip float32."""

from __future__ import annotations

import json

import numpy as np

from freshrec.serve._reply_kernels import write_ranked
from freshrec.serve.replies import rank_body

SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.1, 0.5, 1e-4, 9.99999999e-5, 1e-5, 1e9, 999999999.0, 123456789.0,
           1e-45, -1e-45, 1.17549435e-38, 3.4028235e38, -3.4028235e38, 0.99999999, 1e8, 5e-5, 100.0, 0.3,
           2.0**-126, 2.0**24, 16777217.0]  # fmt: skip


def test_scores_are_written_as_percent_9g_writes_them_for_every_exponent():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    vals = np.concatenate([
        np.array(SPECIAL, np.float32),
        bits[np.isfinite(bits)],  # every exponent, denormals included
        rng.random(50_000).astype(np.float32),  # probabilities, as most scores are
    ])  # fmt: skip
    items = rng.integers(-(2**63), 2**63 - 1, len(vals), dtype=np.int64)
    items[:3] = [0, -(2**63), 2**63 - 1]
    got = write_ranked(items, vals).decode()
    pairs = zip(items.tolist(), vals.tolist(), strict=True)
    want = ",".join('{"item_id":%d,"score":%.9g}' % (i, v) for i, v in pairs)  # noqa: UP031 (the reference)
    assert got == want
    back = np.array([float(x["score"]) for x in json.loads(f"[{got}]")]).astype(np.float32)
    assert np.array_equal(back, vals)


def test_rank_body_is_the_documented_json():
    scores = np.array([0.75, 1e-7, 0.0], np.float32)
    body = rank_body("ab\"c", np.array([3, -1, 2**40]), scores, 12)
    assert body == (
        b'{"request_id":"ab\\"c","items":[{"item_id":3,"score":0.75},{"item_id":-1,"score":1.00000001e-07},'
        b'{"item_id":1099511627776,"score":0}],"model_version":12}'
    )
    assert rank_body("r", np.array([], np.int64), np.array([], np.float32), 1) == (
        b'{"request_id":"r","items":[],"model_version":1}'
    )
    two = {"tasks": ["click", "watch"], "per_task": np.array([[0.5, 3.0]])}
    multi = json.loads(rank_body("r", [5], scores[:1], 2, **two))
    assert multi["items"] == [{"item_id": 5, "score": 0.75, "scores": {"click": 0.5, "watch": 3.0}}]
