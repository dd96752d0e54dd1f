"""Feedback over HTTP: POST /v1/actions appends ActionEvents to the actions log; /v1/rank takes
the impressions' data time; an impression served and a click posted over HTTP join into a
labelled example."""

from __future__ import annotations

import time

import httpx
import pytest

from freshrec.model import FeatureSpec, SlotSpec
from freshrec.ps import ServingReplica
from freshrec.serve import AppConfig, ServerThread, create_app
from freshrec.stream.events import ActionEvent, decode_action, decode_example, decode_feature
from freshrec.stream.joiner import JOIN_TABLES, Joiner, JoinerConfig
from freshrec.stream.local_log import LocalBackend
from freshrec.stream.log import MemoryBackend, partition_for
from freshrec.stream.store import MemoryStore

SPEC = FeatureSpec(slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dense_dim=1, dim=4)
NOW = 1_700_000_000.0


def records(log, group: str) -> list:
    return log.consumer(group).poll(1_000_000)


@pytest.fixture
def served():
    backend = MemoryBackend()
    flog, alog = backend.log("features", partitions=4), backend.log("actions", partitions=4)
    app = create_app(
        ServingReplica(SPEC, hidden=(8,)),
        features_log=flog,
        actions_log=alog,
        config=AppConfig(max_candidates=10, flush_interval_s=0.05),
        clock=lambda: NOW,
    )
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        yield {"client": client, "app": app, "flog": flog, "alog": alog, "backend": backend}


def flush(app) -> None:
    for w in (app.state.feature_logger, app.state.action_logger):
        assert w.flush()


def test_actions_are_appended_as_action_events(served):
    c, alog = served["client"], served["alog"]
    body = {
        "actions": [
            {"request_id": "r81f2:0", "action": "click", "value": 1.0, "ts": NOW + 0.5},
            {"request_id": "r81f2:1", "action": "watch", "value": 12.5},  # ts: the server clock
            {"request_id": "r81f2:2", "action": "like", "ts": 1_700_000_123},  # value 1.0; integer ts
        ]
    }
    r = c.post("/v1/actions", json=body)
    assert r.status_code == 202 and r.json() == {"accepted": 3}
    flush(served["app"])
    recs = records(alog, "check")
    got = sorted((decode_action(x.value) for x in recs), key=lambda e: e.request_id)
    assert got == [
        ActionEvent("r81f2:0", "click", 1.0, NOW + 0.5),
        ActionEvent("r81f2:1", "watch", 12.5, NOW),
        ActionEvent("r81f2:2", "like", 1.0, 1_700_000_123.0),
    ]
    for x in recs:  # keyed by request_id
        assert x.key == decode_action(x.value).request_id.encode()
        assert x.partition == partition_for(x.key, alog.partitions)


@pytest.mark.parametrize(
    "action",
    [
        {"request_id": "", "action": "click"},
        {"request_id": "x" * 257, "action": "click"},
        {"request_id": 7, "action": "click"},
        {"request_id": "r:0", "action": ""},
        {"request_id": "r:0", "action": "a" * 65},
        {"request_id": "r:0", "action": "cl ick"},
        {"request_id": "r:0", "action": "click", "value": "1"},
        {"request_id": "r:0", "action": "click", "value": True},
        {"request_id": "r:0", "action": "click", "value": 1e39},
        {"request_id": "r:0", "action": "click", "ts": -1.0},
        {"request_id": "r:0", "action": "click", "ts": 1e11},
        {"request_id": "r:0", "action": "click", "extra": 1},
        {"action": "click"},
    ],
)
def test_bad_actions_are_422_and_nothing_is_logged(served, action):
    r = served["client"].post(
        "/v1/actions", json={"actions": [{"request_id": "ok:0", "action": "click"}, action]}
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:3] == ["body", "actions", 1]
    flush(served["app"])
    assert records(served["alog"], "check") == []


def test_action_batches_are_bounded(served):
    c = served["client"]
    one = {"request_id": "r:0", "action": "click"}
    assert c.post("/v1/actions", json={"actions": [one] * 10}).status_code == 202
    r = c.post("/v1/actions", json={"actions": [one] * 11})
    assert (
        r.status_code == 422 and r.json()["detail"][0]["msg"] == "too many actions: 11 > max 10 per request"
    )
    assert c.post("/v1/actions", json={"actions": []}).status_code == 422


def test_without_an_actions_log_the_endpoint_is_404():
    app = create_app(ServingReplica(SPEC, hidden=(8,)))
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.post("/v1/actions", json={"actions": [{"request_id": "r:0", "action": "click"}]})
        assert r.status_code == 404 and "logs no actions" in r.json()["detail"]


def test_accepted_actions_are_durable_after_the_flush_interval_and_on_shutdown(tmp_path):
    """Another process's view of the local log: records appear within ~flush_interval_s of the
    202, and what is still buffered is flushed when the server stops."""
    backend = LocalBackend(tmp_path / "logs")
    reader = LocalBackend(tmp_path / "logs")
    one = {"actions": [{"request_id": "r:0", "action": "click"}]}
    try:
        for flush_s, stop_first in ((0.2, False), (3600.0, True)):
            log = backend.log(f"actions-{int(flush_s)}")
            app = create_app(
                ServingReplica(SPEC, hidden=(8,)), actions_log=log, config=AppConfig(flush_interval_s=flush_s)
            )
            srv = ServerThread(app).start()
            with httpx.Client(base_url=srv.url, timeout=10) as c:
                assert c.post("/v1/actions", json=one).status_code == 202
            if stop_first:
                srv.stop()  # lifespan shutdown flushes the actions log
            consumer = reader.log(log.name).consumer("check")
            deadline = time.monotonic() + 5
            got = []
            while not got and time.monotonic() < deadline:
                got = consumer.poll(10, timeout_s=0.1)
            assert [decode_action(r.value).request_id for r in got] == ["r:0"], (flush_s, stop_first)
            if not stop_first:
                srv.stop()
    finally:
        reader.close()
        backend.close()


def test_rank_ts_is_the_impressions_data_time(served):
    c, flog = served["client"], served["flog"]
    r = c.post(
        "/v1/rank", json={"user_id": 1, "candidates": [1, 2], "request_id": "a", "ts": 1_600_000_000.25}
    )
    assert r.status_code == 200
    r = c.post("/v1/rank", json={"user_id": 1, "candidates": [3], "request_id": "b"})  # default: clock
    assert r.status_code == 200
    flush(served["app"])
    events = {decode_feature(x.value).request_id: decode_feature(x.value) for x in records(flog, "check")}
    assert {k: e.ts for k, e in events.items()} == {
        "a:0": 1_600_000_000.25,
        "a:1": 1_600_000_000.25,
        "b:0": NOW,
    }
    for bad in (-1.0, 1e11, "1", True):
        r = c.post("/v1/rank", json={"user_id": 1, "candidates": [1], "ts": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "ts"]
    r = c.post(
        "/v1/rank",
        content=b'{"user_id":1,"candidates":[1],"ts":Infinity}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422


def test_an_impression_and_its_action_share_a_partition_number(served):
    c, flog, alog = served["client"], served["flog"], served["alog"]
    body = c.post("/v1/rank", json={"user_id": 5, "candidates": list(range(10))}).json()
    rid = body["request_id"]
    acts = [{"request_id": f"{rid}:{i}", "action": "click"} for i in range(10)]
    assert c.post("/v1/actions", json={"actions": acts}).status_code == 202
    flush(served["app"])
    f_part = {decode_feature(x.value).request_id: x.partition for x in records(flog, "p")}
    a_part = {decode_action(x.value).request_id: x.partition for x in records(alog, "p")}
    assert len(f_part) == 10 and f_part == a_part and len(set(f_part.values())) > 1


def test_served_over_http_clicked_over_http_joined_into_a_positive(served):
    """The loop closes over HTTP: rank (data time t), click position 0 (t + 2 s), and the joiner
    labels exactly that impression positive once the window has passed."""
    c, backend = served["client"], served["backend"]
    t = 1_650_000_000.0
    body = c.post("/v1/rank", json={"user_id": 3, "candidates": [4, 5, 6], "ts": t}).json()
    rid, best = body["request_id"], body["items"][0]["item_id"]
    r = c.post("/v1/actions", json={"actions": [{"request_id": f"{rid}:0", "action": "click", "ts": t + 2}]})
    assert r.status_code == 202
    c.post("/v1/rank", json={"user_id": 9, "candidates": [1], "ts": t + 1000})  # moves the watermark
    flush(served["app"])
    joiner = Joiner(
        config=JoinerConfig(windows={"click": 10.0}, allowed_lateness_s=1.0),
        features=backend.log("features"),
        actions=backend.log("actions"),
        examples=backend.log("examples"),
        dead_letters=backend.log("dead"),
        store=MemoryStore(JOIN_TABLES),
    )
    joiner.run(until_idle=True)
    examples = {
        e.request_id: e for e in map(decode_example, (x.value for x in records(backend.log("examples"), "t")))
    }
    assert {k: e.labels["click"] for k, e in examples.items() if k.startswith(rid)} == {
        f"{rid}:0": 1.0,
        f"{rid}:1": 0.0,
        f"{rid}:2": 0.0,
    }
    assert examples[f"{rid}:0"].item_id == best and examples[f"{rid}:0"].ts == t
    assert sum(backend.log("dead").end_offsets()) == 0
