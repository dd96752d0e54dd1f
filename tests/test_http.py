"""The HTTP model server: a real uvicorn on 127.0.0.1 in a thread, a real httpx client."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from freshrec.model import FeatureSpec, SlotSpec
from freshrec.ps import ServingReplica, SyncPublisher, SyncSubscriber, TrainingPS
from freshrec.serve import AppConfig, ServerThread, create_app
from freshrec.stream.events import decode_feature
from freshrec.stream.local_log import LocalBackend

HIDDEN = (16, 8)
N_ITEMS = 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Training PS -> local parameter log -> subscriber -> replica -> uvicorn; local features log."""
    root = tmp_path_factory.mktemp("http")
    backend = LocalBackend(root / "logs")
    plog, flog = backend.log("params"), backend.log("features")
    spec = FeatureSpec(
        slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id"), SlotSpec(name="tags", multi_valued=True)),
        dense_dim=1,
        dim=4,
    )
    ps = TrainingPS(spec, shards=2, hidden=HIDDEN)
    rng = np.random.default_rng(0)
    width = ps.tables["item_id"].dim
    ps.tables["item_id"].assign(
        np.arange(N_ITEMS), rng.normal(0, 1, (N_ITEMS, width)).astype(np.float32), now=0.0
    )
    ps.tables["user_id"].assign(np.arange(5), rng.normal(0, 1, (5, width)).astype(np.float32), now=0.0)
    pub = SyncPublisher(ps, plog)
    pub.publish_once(0.0)
    replica = ServingReplica(spec, hidden=HIDDEN)
    sub = SyncSubscriber(replica, plog, group="serving", poll_timeout_s=0.02).start()
    app = create_app(
        replica,
        features_log=flog,
        subscriber=sub,
        config=AppConfig(max_candidates=100, max_body_bytes=50_000, flush_interval_s=0.2),
    )
    srv = ServerThread(app).start()
    client = httpx.Client(base_url=srv.url, timeout=10.0)
    deadline = time.monotonic() + 10
    while replica.version < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    yield {"ps": ps, "pub": pub, "replica": replica, "client": client, "app": app, "flog": flog, "srv": srv}
    client.close()
    srv.stop()
    sub.stop()
    backend.close()


def rank(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/rank", json=body)


def test_binds_loopback_by_default(stack):
    assert stack["srv"].host == "127.0.0.1" and stack["srv"].url.startswith("http://127.0.0.1:")


def test_rank_returns_sorted_scores(stack):
    r = rank(stack["client"], user_id=1, candidates=list(range(N_ITEMS)), sparse={"tags": [1]}, dense={})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"request_id", "items", "model_version"}
    scores = [it["score"] for it in body["items"]]
    assert sorted(it["item_id"] for it in body["items"]) == list(range(N_ITEMS))
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert body["model_version"] >= 1 and body["request_id"]
    # per-candidate features are accepted
    r = rank(stack["client"], user_id=1, candidates=[1, {"item_id": 2, "sparse": {"tags": [3]}, "dense": {}}])
    assert r.status_code == 200 and len(r.json()["items"]) == 2


def test_scores_change_after_a_delta_is_published_and_applied(stack):
    client, ps, pub, replica = stack["client"], stack["ps"], stack["pub"], stack["replica"]
    before = rank(client, user_id=2, candidates=[7, 8, 9]).json()
    width = ps.tables["item_id"].dim
    ps.tables["item_id"].assign(np.array([8]), np.full((1, width), 3.0, np.float32), now=5.0)
    v = pub.publish_once(5.0).version
    deadline = time.monotonic() + 10
    after = before
    while time.monotonic() < deadline:
        after = rank(client, user_id=2, candidates=[7, 8, 9]).json()
        if after["model_version"] >= v:
            break
        time.sleep(0.02)
    assert after["model_version"] >= v, "the new version never showed"
    s0 = {it["item_id"]: it["score"] for it in before["items"]}
    s1 = {it["item_id"]: it["score"] for it in after["items"]}
    assert s1[8] != s0[8] and s1[7] == s0[7] and s1[9] == s0[9]
    assert replica.lookup("item_id", [8])[0, 0] == 3.0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"candidates": [1, 2]}, "user_id"),  # missing field
        ({"user_id": "7", "candidates": [1]}, "user_id"),  # wrong type (string id)
        ({"user_id": 1.5, "candidates": [1]}, "user_id"),  # float id
        ({"user_id": 1, "candidates": []}, "candidates"),  # empty
        ({"user_id": 1, "candidates": [1], "dense": {"x": "a"}}, "dense"),
        ({"user_id": 2**63, "candidates": [1]}, "user_id"),  # outside int64
        ({"user_id": 1, "candidates": [1], "bogus": 1}, "bogus"),  # unknown field
    ],
)
def test_bad_payloads_get_422_with_a_message(stack, body, needle):
    r = stack["client"].post("/v1/rank", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.text and r.json()["detail"]


def test_too_many_candidates_is_422_naming_the_limit(stack):
    r = rank(stack["client"], user_id=1, candidates=list(range(101)))
    assert r.status_code == 422
    [err] = r.json()["detail"]
    assert (
        err["loc"] == ["body", "candidates"]
        and err["msg"] == "too many candidates: 101 > max 100 per request"
    )


def test_not_json_is_422(stack):
    r = stack["client"].post("/v1/rank", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_too_large_body_is_413(stack):
    client = stack["client"]
    r = client.post("/v1/rank", content=b" " * 60_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the middleware counts the streamed bytes
        for _ in range(10):
            yield b" " * 10_000

    r = client.post("/v1/rank", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # the server still answers afterwards
    assert client.get("/healthz").status_code == 200


def test_predict(stack):
    ex = [{"user_id": 1, "item_id": i, "dense": {"dense_0": 0.5}} for i in range(5)]
    r = stack["client"].post("/v1/predict", json={"examples": ex})
    assert r.status_code == 200, r.text
    p = r.json()["probabilities"]
    want = stack["replica"].predict(ex)
    np.testing.assert_allclose(p, want, rtol=1e-6)
    assert stack["client"].post("/v1/predict", json={"examples": [{"user_id": 1}]}).status_code == 422


def test_ranked_features_are_logged(stack):
    client, app, flog = stack["client"], stack["app"], stack["flog"]
    r = rank(
        client,
        user_id=3,
        candidates=[4, 5, 6],
        sparse={"tags": [9]},
        dense={"dense_0": 1.5},
        request_id="abc",
    )
    assert r.status_code == 200
    served = [it["item_id"] for it in r.json()["items"]]
    assert app.state.feature_logger.flush()
    events = [decode_feature(rec.value) for rec in flog.consumer("check").poll(100_000)]
    mine = {e.request_id: e for e in events if e.request_id.startswith("abc:")}
    assert sorted(mine) == ["abc:0", "abc:1", "abc:2"]
    for pos, item in enumerate(served):
        e = mine[f"abc:{pos}"]
        assert (e.user_id, e.item_id) == (3, item)
        assert e.sparse == {"tags": [9]} and e.dense == {"dense_0": 1.5} and e.ts > 1e9


def test_metrics_parse_and_have_the_gauges(stack):
    from prometheus_client.parser import text_string_to_metric_families

    client = stack["client"]
    rank(client, user_id=1, candidates=[1, 2, 3])
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in (
        "freshrec_request_latency_seconds",
        "freshrec_model_version",
        "freshrec_last_delta_age_seconds",
        "freshrec_table_rows",
        "freshrec_deltas_applied",
        "freshrec_dense_updates_applied",
    ):
        assert name in fams, name
    version = fams["freshrec_model_version"].samples[0].value
    assert version == stack["replica"].version >= 1
    age = fams["freshrec_last_delta_age_seconds"].samples[0].value
    assert 0 <= age < 3600
    rows = {s.labels["table"]: s.value for s in fams["freshrec_table_rows"].samples}
    assert rows["item_id"] == N_ITEMS
    counts = [
        s.value
        for s in fams["freshrec_request_latency_seconds"].samples
        if s.name.endswith("_count") and s.labels["endpoint"] == "/v1/rank"
    ]
    assert counts and counts[0] >= 1
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["tables"]["item_id"] == N_ITEMS


def _thread_cpu(client: httpx.Client) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return {s.labels["thread"]: s.value for s in fams["freshrec_thread_cpu_seconds"].samples}


def test_background_threads_cpu_is_counted_by_thread(stack):
    """The sync subscriber's and the features logger's CPU show in /metrics, and each grows with
    the work its thread does (a delta applied; impressions written)."""
    client, ps, pub, replica, app = stack["client"], stack["ps"], stack["pub"], stack["replica"], stack["app"]
    before = _thread_cpu(client)
    assert set(before) == {"sync", "features_log"}  # no actions log in this stack
    width = ps.tables["item_id"].dim
    ids = np.arange(N_ITEMS)
    ps.tables["item_id"].assign(ids, np.ones((N_ITEMS, width), np.float32), now=7.0)
    v = pub.publish_once(7.0).version
    deadline = time.monotonic() + 10
    while replica.version < v and time.monotonic() < deadline:
        time.sleep(0.01)
    assert replica.version >= v
    for _ in range(20):
        assert rank(client, user_id=1, candidates=list(range(50))).status_code == 200
    assert app.state.feature_logger.flush()
    after = _thread_cpu(client)
    assert after["sync"] > before["sync"] and after["features_log"] > before["features_log"]


def test_feature_records_are_byte_identical_to_encode_feature():
    from freshrec.serve.app import feature_records
    from freshrec.stream.events import FeatureEvent, encode_feature

    sparse, dense = {"tags": [1, -(2**63)], "é": []}, {"dense_0": 0.1, "x": -2.5e-300}
    own_s, own_d = {8: {"tags": [4]}}, {9: {"dense_0": 3.0}}
    got = feature_records('r"ü', 2**63 - 1, [7, 8, 9], sparse, dense, 1.7e9 + 0.125, own_s, own_d)
    want = [
        encode_feature(FeatureEvent('r"ü:0', 2**63 - 1, 7, sparse, dense, 1.7e9 + 0.125)),
        encode_feature(FeatureEvent('r"ü:1', 2**63 - 1, 8, {**sparse, "tags": [4]}, dense, 1.7e9 + 0.125)),
        encode_feature(FeatureEvent('r"ü:2', 2**63 - 1, 9, sparse, {**dense, "dense_0": 3.0}, 1.7e9 + 0.125)),
    ]
    assert got == want


def test_freshrec_serve_command_in_a_subprocess(tmp_path):
    """`freshrec serve` boots from a snapshot, follows the parameter log, answers over HTTP."""
    import subprocess
    import sys

    backend = LocalBackend(tmp_path / "logs")
    plog = backend.log("params")
    spec = FeatureSpec(slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dim=4)
    ps = TrainingPS(spec, shards=2, hidden=HIDDEN)
    width = ps.tables["item_id"].dim
    ps.tables["item_id"].assign(
        np.arange(10), np.linspace(-1, 1, 10 * width, dtype=np.float32).reshape(10, -1)
    )
    pub = SyncPublisher(ps, plog)
    pub.publish_once(0.0)
    snap = pub.snapshot(tmp_path / "store" / "step-000000000001")
    cmd = [sys.executable, "-m", "freshrec.cli", "serve", "--params", str(tmp_path / "logs")]
    cmd += ["--snapshot", str(tmp_path / "store"), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in proc.stdout:
            if "listening on " in line:
                url = line.rsplit("listening on ", 1)[1].strip()
                break
        assert url is not None and url.startswith("http://127.0.0.1:"), "server did not start"
        with httpx.Client(base_url=url, timeout=10.0) as c:
            first = c.post("/v1/rank", json={"user_id": 1, "candidates": [1, 2, 3]}).json()
            assert first["model_version"] == 1 and snap.exists()
            ps.tables["item_id"].assign(np.array([2]), np.full((1, width), 5.0, np.float32))
            v = pub.publish_once(1.0).version
            deadline = time.monotonic() + 20
            body = first
            while body["model_version"] < v and time.monotonic() < deadline:
                time.sleep(0.05)
                body = c.post("/v1/rank", json={"user_id": 1, "candidates": [1, 2, 3]}).json()
            assert body["model_version"] == v
            assert body["items"] != first["items"]
    finally:
        proc.terminate()
        proc.wait(20)
        backend.close()


def test_openapi_documents_the_bodies(stack):
    o = stack["client"].get("/openapi.json").json()
    body = o["paths"]["/v1/rank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RankRequest"}
    assert {"RankRequest", "CandidateIn", "PredictRequest", "ExampleIn"} <= set(o["components"]["schemas"])


def test_rank_top_k_returns_and_logs_only_the_best_k(stack):
    c = stack["client"]
    full = rank(c, user_id=1, candidates=list(range(N_ITEMS))).json()
    top = rank(c, user_id=1, candidates=list(range(N_ITEMS)), top_k=3).json()
    assert [i["item_id"] for i in top["items"]] == [i["item_id"] for i in full["items"][:3]]
    assert rank(c, user_id=1, candidates=[1], top_k=0).status_code == 422
    want = [f"{top['request_id']}:{i}" for i in range(3)]
    consumer = stack["flog"].consumer("top-k-check")
    deadline = time.monotonic() + 10
    mine: list[str] = []
    while time.monotonic() < deadline and len(mine) < 3:
        for r in consumer.poll(1000, timeout_s=0.2):
            e = decode_feature(r.value)
            if e.request_id.startswith(top["request_id"] + ":"):
                mine.append(e.request_id)
    assert sorted(mine) == want


def test_unknown_feature_names_are_a_422_naming_them(stack):
    c = stack["client"]
    r = rank(c, user_id=1, candidates=[1, 2], sparse={"tagz": [1]})
    assert r.status_code == 422 and "tagz" in r.text and "'tags'" in r.text, r.text
    r = rank(c, user_id=1, candidates=[1, {"item_id": 2, "dense": {"price": 1.0}}])
    assert r.status_code == 422 and "price" in r.text and "dense_0" in r.text, r.text
    r = c.post("/v1/predict", json={"examples": [{"user_id": 1, "item_id": 2, "sparse": {"colour": [3]}}]})
    assert r.status_code == 422 and "colour" in r.text, r.text
    assert rank(c, user_id=1, candidates=[1], sparse={"tags": [1]}, dense={"dense_0": 0.5}).status_code == 200
