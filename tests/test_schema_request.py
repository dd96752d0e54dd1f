"""Serving speaks the schema: raw request values become the ids and dense values that import wrote
for the same row (the same hash, id parsing and transforms); unknown names are refused by name."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest

from freshrec.data.schema import load_schema, stable_hash
from freshrec.data.schema_data import dense_stats, read_columns
from freshrec.data.schema_request import (
    UnknownFeatures,
    encode_features,
    encode_predict_body,
    encode_rank_body,
)
from freshrec.errors import SchemaError
from freshrec.stream.events import decode_feature
from freshrec.stream.importer import plan_events
from schema_fixtures import EXAMPLES, write_ads


@pytest.fixture
def ads(tmp_path):
    path = write_ads(tmp_path, n=200)
    schema = load_schema(EXAMPLES / "ads-impressions.toml", overrides={"files": [str(path)]})
    cols = read_columns(schema)
    schema = schema.with_types(cols.types)
    schema = schema.with_stats(dense_stats(schema, cols))
    with gzip.open(path, "rt") as f:
        rows = list(csv.DictReader(f))
    return schema, cols, rows


def test_raw_values_become_what_import_wrote(ads):
    schema, cols, rows = ads
    plan = plan_events(schema, cols)
    events = {
        e.request_id: e
        for e in (decode_feature(v) for k, v in zip(plan.kind, plan.values, strict=True) if k == 0)
    }
    order = np.argsort([r["hour"] for r in rows], kind="stable")  # import's time order
    for n, i in enumerate(order[:60]):
        raw = rows[i]
        feats = {s.name: raw[s.column] for s in schema.slots}
        feats["banner_pos"] = int(feats["banner_pos"])  # a client sends a number, the file had text
        sparse, dense = encode_features(schema, feats)
        e = events[f"ads-{n}:0"]
        assert sparse == e.sparse
        assert dense.keys() == e.dense.keys()
        assert np.float32(dense["bid"]) == np.float32(e.dense["bid"])


def test_unknown_feature_names_are_named(ads):
    schema = ads[0]
    with pytest.raises(UnknownFeatures, match=r"unknown features \['colour', 'sizes'\]") as e:
        encode_features(schema, {"site_category": "s1", "sizes": [1], "colour": "red"})
    assert e.value.names == ["colour", "sizes"] and isinstance(e.value, SchemaError)
    with pytest.raises(SchemaError, match="'banner_pos': expected an integer id"):
        encode_features(schema, {"banner_pos": "top"})
    with pytest.raises(SchemaError, match="'bid': expected a number"):
        encode_features(schema, {"bid": "cheap"})


def test_rank_and_predict_bodies(ads):
    schema = ads[0]
    body = {
        "user_id": "d0001a",
        "features": {"site_category": "s1", "keywords": "kw1|kw2", "bid": 3.5},
        "candidates": ["ad-1", {"item_id": "ad-2", "features": {"app_category": "a1"}}],
        "top_k": 1,
    }
    out = encode_rank_body(schema, body)
    h = stable_hash(["d0001a", "ad-1", "ad-2", "s1", "kw1", "kw2", "a1"]).tolist()
    assert out["user_id"] == h[0] and out["top_k"] == 1
    assert out["sparse"]["device_id"] == [h[0]] and out["sparse"]["keywords"] == [h[4], h[5]]
    assert out["candidates"] == [
        {"item_id": h[1], "sparse": {"ad_id": [h[1]]}, "dense": {}},
        {"item_id": h[2], "sparse": {"app_category": [h[6]], "ad_id": [h[2]]}, "dense": {}},
    ]
    mean, std = schema.stats["bid"]
    assert out["dense"]["bid"] == pytest.approx((np.log1p(3.5) - mean) / std, rel=1e-6)
    pred = encode_predict_body(schema, {"examples": [{"user_id": "d0001a", "item_id": "ad-1", "sparse": {}}]})
    assert pred["examples"] == [
        {"user_id": h[0], "item_id": h[1], "sparse": {"device_id": [h[0]], "ad_id": [h[1]]}, "dense": {}}
    ]
