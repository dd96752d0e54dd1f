"""Concurrent /v1/rank requests are scored in one model call, each answered as it would be alone:
a real server on 127.0.0.1, real connections, a real replica and features log."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from freshrec.model import FeatureSpec, SlotSpec
from freshrec.ps import Delta, ServingReplica
from freshrec.serve import AppConfig, ServerThread, create_app
from freshrec.stream.events import decode_feature
from freshrec.stream.local_log import LocalBackend

SPEC = FeatureSpec(
    slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id"), SlotSpec(name="tags", multi_valued=True)),
    dense_dim=1,
    dim=4,
)


def _replica() -> ServingReplica:
    rng = np.random.default_rng(0)
    rep = ServingReplica(SPEC, hidden=(16,))
    for name, n in (("user_id", 50), ("item_id", 200), ("tags", 20)):
        width = rep.tables[name].dim
        emb = rng.normal(0, 0.5, (n, width)).astype(np.float32)
        rep.apply(Delta(table=name, version=1, ids=np.arange(n, dtype=np.int64), embeddings=emb, ts=1.0))
    return rep


def _body(k: int) -> dict:
    return {
        "user_id": k,
        "candidates": [(7 * k + 3 * j) % 200 for j in range(10 + k)],
        "sparse": {"tags": list(range(k % 5 + 1))},
        "dense": {"dense_0": 0.1 * k},
        "request_id": f"req-{k}",
        "top_k": 5 + k,
    }


def _send(sock: socket.socket, body: dict) -> None:
    data = json.dumps(body).encode()
    head = b"POST /v1/rank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    sock.sendall(head + b"content-length: %d\r\n\r\n" % len(data) + data)


def _reply(f) -> tuple[int, dict]:
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, json.loads(f.read(length))


def _calls(sock: socket.socket, f) -> float:
    sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    text = f.read(length).decode()
    assert status == 200
    line = next(ln for ln in text.splitlines() if ln.startswith("freshrec_rank_calls_total "))
    return float(line.split()[1])


@pytest.mark.parametrize("batch_rows", [4096, 40])
def test_requests_that_arrive_together_share_one_model_call_and_get_their_own_answers(tmp_path, batch_rows):
    rep = _replica()
    flog = LocalBackend(tmp_path / "logs").log("features")
    app = create_app(rep, features_log=flog, config=AppConfig(batch_max_rows=batch_rows))
    n = 8
    with ServerThread(app) as srv:
        socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(n + 2)]
        files = [s.makefile("rb") for s in socks]
        try:
            for s, f in zip(socks, files, strict=True):  # every connection open and answered once
                _send(s, _body(0))
                assert _reply(f)[0] == 200
            before = _calls(socks[-1], files[-1])
            # The loop is held in the first request's lookup (a delta's write lock on the item
            # table, as a long apply would), while the other requests arrive on their connections.
            with rep.tables["item_id"]._lock.write():
                _send(socks[0], _body(100))
                time.sleep(0.2)
                for k in range(1, n + 1):
                    _send(socks[k], _body(k))
                time.sleep(0.5)
            first = _reply(files[0])
            replies = [_reply(files[k]) for k in range(1, n + 1)]
            calls = _calls(socks[-1], files[-1]) - before
            app.state.feature_logger.flush()
        finally:
            for s in socks:
                s.close()
    assert first[0] == 200
    rows = sum(len(_body(k)["candidates"]) for k in range(1, n + 1))  # 116
    # the first alone, then the 8 that arrived together: in one call, or in calls of <= 40 rows
    want = 2 if batch_rows >= rows else 1 + 4  # of 11..18 candidates: [11 12 13] [14 15] [16 17] [18]
    assert calls == want
    for k, (status, out) in enumerate(replies, start=1):
        body = _body(k)
        assert status == 200
        assert out["request_id"] == f"req-{k}"
        items, scores = rep.rank(k, body["candidates"], sparse=body["sparse"], dense=body["dense"])
        assert [i["item_id"] for i in out["items"]] == items[: body["top_k"]].tolist()
        np.testing.assert_allclose([i["score"] for i in out["items"]], scores[: body["top_k"]], rtol=1e-5)
    logged: dict[str, list[int]] = {}
    for rec in flog.consumer("t").poll(10_000):
        ev = decode_feature(rec.value)
        rid, _, pos = ev.request_id.rpartition(":")
        logged.setdefault(rid, []).append(ev.item_id)
    for k in range(1, n + 1):  # each request's impressions, its own items in its own order
        assert logged[f"req-{k}"] == [i["item_id"] for i in replies[k - 1][1]["items"]]


def test_a_negative_batch_size_is_refused_by_name():
    from freshrec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"batch_max_rows must be >= 0 \(got batch_max_rows=-1\)"):
        AppConfig(batch_max_rows=-1)
    with pytest.raises(ConfigError, match="max_queue_s must be > 0"):
        AppConfig(max_queue_s=0)
