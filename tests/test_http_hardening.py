"""Hostile clients against a real server (uvicorn in a thread on 127.0.0.1, real sockets).

Each test replays one finding of the hostile-client review (issue 14) and asserts the fixed
behaviour: a small, fast 4xx instead of a huge or slow reply or a 500; slow connections dropped
within a bound; /healthz fast while the attack runs; descriptors bounded.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import numpy as np
import psutil
import pytest

from freshrec.model import FeatureSpec, SlotSpec, Task
from freshrec.ps import ServingReplica
from freshrec.serve import AppConfig, ServerConfig, ServerThread, create_app
from freshrec.stream.log import MemoryBackend

SPEC = FeatureSpec(
    slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id"), SlotSpec(name="tags", multi_valued=True)),
    dense_dim=2,
    dim=4,
)
LIMITS = ServerConfig(
    header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1.0, write_timeout_s=1.0, max_connections=64
)
JSON = {"content-type": "application/json"}
HUGE = b'{"user_id":1,"candidates":[' + b",".join([b'""'] * 333_000) + b"]}"  # finding 2: ~1 MB


@pytest.fixture(scope="module")
def served():
    backend = MemoryBackend()
    replica = ServingReplica(SPEC, hidden=(16, 8))
    app = create_app(
        replica,
        features_log=backend.log("features"),
        actions_log=backend.log("actions"),
        config=AppConfig(max_candidates=100, max_body_bytes=1_100_000, flush_interval_s=0.1),
    )
    with ServerThread(app, config=LIMITS) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        yield {"srv": srv, "client": client, "backend": backend, "app": app}


def post(client: httpx.Client, path: str, body: bytes, headers: dict | None = None) -> httpx.Response:
    return client.post(path, content=body, headers=JSON if headers is None else headers)


def connect(srv: ServerThread) -> socket.socket:
    return socket.create_connection((srv.host, srv.port), timeout=5)


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server closed `s` (EOF or reset; anything it sent first is read away)."""
    s.setblocking(False)
    try:
        while s.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def wait_closed(s: socket.socket, within_s: float) -> float | None:
    """Seconds until the server closes `s`, or None when it is still open after `within_s`."""
    t0 = time.monotonic()
    s.settimeout(within_s)
    try:
        while s.recv(65536):
            s.settimeout(max(0.01, within_s - (time.monotonic() - t0)))
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - t0


def open_connections(srv: ServerThread) -> int:
    return len(srv.server.server_state.connections)


# ---- finding 2: huge lists fail fast with one small error ----------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/rank", HUGE),
        ("/v1/predict", b'{"examples":[' + b",".join([b"{}"] * 333_000) + b"]}"),
        ("/v1/actions", b'{"actions":[' + b",".join([b"{}"] * 333_000) + b"]}"),
    ],
)
def test_a_huge_list_fails_fast_with_one_small_error(served, path, body):
    t0 = time.perf_counter()
    r = post(served["client"], path, body)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 422
    assert len(r.content) < 300, r.content[:300]  # was 80 MB
    [err] = r.json()["detail"]
    assert err["type"] == "too_long" and "> max 100" in err["msg"]
    assert elapsed < 1.0  # was 7-10 s


def test_errors_are_capped_and_never_echo_the_input(served):
    c = served["client"]
    r = post(c, "/v1/rank", json.dumps({"user_id": 1, "candidates": ["x" * 1000] * 100}).encode())
    assert r.status_code == 422 and len(r.content) < 4096
    detail = r.json()["detail"]
    assert len(detail) == 21 and detail[-1]["type"] == "too_many_errors"
    assert all(set(d) == {"type", "loc", "msg"} for d in detail) and "xxxxxxxx" not in r.text
    secret = "s3cr3t" * 5000  # a 30 KB string where an int belongs, and as a 30 KB key
    r = post(
        c, "/v1/rank", json.dumps({"user_id": secret, "candidates": [1], "dense": {secret: 1.0}}).encode()
    )
    assert r.status_code == 422 and len(r.content) < 1024 and secret[:100] not in r.text
    assert all(len(x) <= 64 for d in r.json()["detail"] for x in d["loc"] if isinstance(x, str))
    r = post(c, "/v1/rank", b'{"user_id": 1, "candidates": [1], ' + b" " * 1000 + b"nope" + b"x" * 50_000)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid" and len(r.content) < 300


def test_healthz_stays_fast_while_hostile_clients_send_and_do_not_read(served):
    srv, c = served["srv"], served["client"]
    request = b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    request += b"Content-Length: %d\r\n\r\n%s" % (len(HUGE), HUGE)
    stop = threading.Event()
    sent = [0]

    def hostile() -> None:  # sends the 1 MB body again and again, never reads a reply
        for _ in range(3):
            s = connect(srv)
            s.sendall(request)
            sent[0] += 1
            if stop.wait(0.3):
                break
        stop.wait(2.0)

    clients = [threading.Thread(target=hostile, daemon=True) for _ in range(4)]
    for t in clients:
        t.start()
    latencies = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        assert c.get("/healthz").status_code == 200
        latencies.append(time.perf_counter() - t0)
        time.sleep(0.01)
    stop.set()
    for t in clients:
        t.join(5)
    assert sent[0] >= 8
    assert max(latencies) < 0.5, f"healthz max {max(latencies):.3f} s"  # was 18-25 s


# ---- finding 3: client input never gives a 500 ----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/rank", b'{"user_id":1,"candidates":[1],"dense":{"dense_0":NaN}}', "dense"),
        ("/v1/rank", b'{"user_id":1,"candidates":[1],"dense":{"dense_0":Infinity}}', "dense"),
        ("/v1/rank", b'{"user_id":1,"candidates":[1],"dense":{"dense_0":-Infinity}}', "dense"),
        ("/v1/rank", b'{"user_id":1,"candidates":[1],"dense":{"dense_0":1e39}}', "float32"),
        ("/v1/rank", b'{"user_id":1,"candidates":[{"item_id":1,"dense":{"dense_1":-1e39}}]}', "float32"),
        ("/v1/rank", b'{"user_id":1,"candidates":[1],"dense":{"dense_0":1e999}}', "dense"),
        ("/v1/rank", b'{"user_id":1,"candidates":[1],"request_id":"\xff\xfe"}', "json_invalid"),
        ("/v1/rank", b'{"user_id":1,"candidates":[1],"request_id":"\\ud800"}', "json_invalid"),
        ("/v1/rank", b'{"user_id":1,"candidates":[1],"sparse":{"\xc3":[1]}}', "json_invalid"),
        ("/v1/rank", b'{"user_id":1,"candidates":[1],"ts":NaN}', "ts"),
        ("/v1/rank", b'{"user_id":1,"candidates":[1],"top_k":1180591620717411303424}', "top_k"),
        ("/v1/predict", b'{"examples":[{"user_id":1,"item_id":2,"dense":{"dense_0":NaN}}]}', "dense"),
        ("/v1/predict", b'{"examples":[{"user_id":1,"item_id":2,"dense":{"x":3.5e38}}]}', "float32"),
        ("/v1/actions", b'{"actions":[{"request_id":"r:0","action":"click","value":NaN}]}', "value"),
        ("/v1/actions", b'{"actions":[{"request_id":"r:0","action":"click","value":1e39}]}', "float32"),
        ("/v1/actions", b'{"actions":[{"request_id":"\xff","action":"click"}]}', "json_invalid"),
    ],
)
def test_bad_numbers_and_bad_utf8_are_422_not_500(served, path, body, where):
    r = post(served["client"], path, body)
    assert r.status_code == 422, r.text
    assert where in r.text and len(r.content) < 1024


def test_finite_scores_are_required_and_the_fault_is_placed():
    """Dense values that make the scores non-finite are the client's fault (422); a model that
    gives non-finite scores without them is the server's (500)."""

    class Replica:  # the replica interface; NaN scores as configured
        spec, version, dense_version = SPEC, 3, 3
        dense_names = tuple(f"dense_{i}" for i in range(SPEC.dense_dim))
        tasks = (Task(name="click"),)
        last_apply_wall = data_ts = None
        deltas_applied = rows_applied = rows_deleted = dense_applied = 0

        def __init__(self, broken: bool) -> None:
            self.broken = broken

        def _p(self, n: int, dense: bool) -> np.ndarray:
            return np.full(n, np.nan if (self.broken or dense) else 0.5, np.float32)

        def rank(self, user_id, ids, *, sparse=None, dense=None, item_sparse=None, item_dense=None):
            return np.asarray(ids), self._p(len(ids), bool(dense) or any(item_dense or ()))

        def rank_many(self, queries):
            out = []
            for q in queries:
                p = self._p(len(q.item_ids), bool(q.dense) or any(q.item_dense or ()))
                out.append((np.asarray(q.item_ids), p, p[:, None]))
            return out

        def predict(self, examples):
            return self._p(len(examples), any(e.get("dense") for e in examples))

        def table_sizes(self):
            return {}

    bodies = [
        ("/v1/rank", {"user_id": 1, "candidates": [1, 2], "dense": {"dense_0": 3e38}}),
        ("/v1/rank", {"user_id": 1, "candidates": [1, {"item_id": 2, "dense": {"dense_0": 3e38}}]}),
        ("/v1/predict", {"examples": [{"user_id": 1, "item_id": 2, "dense": {"dense_0": 3e38}}]}),
    ]
    for broken, want in ((False, 422), (True, 500)):
        app = create_app(Replica(broken))
        with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
            for path, body in bodies:
                r = c.post(path, json=body)
                assert r.status_code == want, r.text
                assert "non-finite" in r.text or "not finite" in r.text
            r = c.post("/v1/rank", json={"user_id": 1, "candidates": [1, 2]})
            assert r.status_code == (500 if broken else 200)


# ---- finding 4: slow clients are dropped, descriptors stay bounded --------------------------------


def test_unfinished_headers_are_dropped_and_connections_stay_bounded(served):
    srv = served["srv"]
    socks = []
    for _ in range(200):  # > max_connections (64)
        s = connect(srv)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        socks.append(s)
    time.sleep(0.2)
    assert open_connections(srv) <= LIMITS.max_connections
    t0 = time.perf_counter()  # a new client is still served: it pushes out the longest waiting
    with httpx.Client(base_url=srv.url, timeout=5) as fresh:
        assert fresh.get("/healthz").status_code == 200
    assert time.perf_counter() - t0 < 0.5
    time.sleep(LIMITS.header_timeout_s + 0.5)
    assert sum(closed_by_server(s) for s in socks) == len(socks)  # all dropped (before: open forever)
    assert open_connections(srv) <= 1
    for s in socks:
        s.close()


@pytest.mark.parametrize(
    ("what", "data", "bound_s"),
    [
        ("nothing sent", b"", LIMITS.header_timeout_s),
        ("headers dribbled", b"GET /healthz HTTP/1.1\r\n", LIMITS.header_timeout_s),
        (
            "body unfinished",
            b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"user_id": 1,',
            LIMITS.header_timeout_s + LIMITS.body_timeout_s,
        ),
    ],
)
def test_a_slow_connection_is_dropped_within_its_deadline(served, what, data, bound_s):
    s = connect(served["srv"])
    if data:
        s.sendall(data)
    if what == "headers dribbled":  # a byte every 0.2 s keeps no deadline from running out
        for b in b"Host: x\r\n":
            time.sleep(0.2)
            try:
                s.send(bytes([b]))
            except OSError:
                break
    took = wait_closed(s, bound_s + 1.0)
    s.close()
    assert took is not None, f"{what}: still open after {bound_s + 1.0} s"


def test_a_dropped_request_counts_as_499_not_500(served):
    from prometheus_client.parser import text_string_to_metric_families

    s = connect(served["srv"])
    s.sendall(
        b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99\r\n\r\n{"
    )
    assert wait_closed(s, LIMITS.header_timeout_s + LIMITS.body_timeout_s + 1.0) is not None
    s.close()
    text = served["client"].get("/metrics").text
    counts = {
        (x.labels["endpoint"], x.labels["status"]): x.value
        for f in text_string_to_metric_families(text)
        if f.name == "freshrec_requests"
        for x in f.samples
        if x.name == "freshrec_requests_total"
    }
    assert counts.get(("/v1/rank", "499"), 0) >= 1
    assert not [k for k in counts if k[1] == "500"], counts


def test_an_idle_keep_alive_connection_is_closed(served):
    s = connect(served["srv"])
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 200 " in s.recv(65536)
    took = wait_closed(s, LIMITS.keep_alive_s + 1.0)
    s.close()
    assert took is not None and took >= 0.5


def test_oversized_headers_get_431(served):
    s = connect(served["srv"])
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 100_000 + b"\r\n\r\n")
    reply = s.recv(65536)
    s.close()
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_a_client_that_does_not_read_its_replies_is_dropped():
    """Pipelined requests whose replies pile up unread: dropped write_timeout_s after the
    server's send buffer is full (seen from the server: the client may still get the bytes
    the kernel had queued, then EOF)."""
    app = create_app(ServingReplica(SPEC, hidden=(16, 8)))
    with ServerThread(app, config=LIMITS) as srv:
        fds = psutil.Process().num_fds()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((srv.host, srv.port))
        body = json.dumps({"user_id": 1, "candidates": list(range(1000))}).encode()  # 40 KB replies
        req = b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        req += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        s.settimeout(0.5)
        with contextlib.suppress(OSError):
            for _ in range(1000):  # stops when the server stops reading
                s.sendall(req)
        deadline = time.monotonic() + 20
        while open_connections(srv) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # accepted
        while open_connections(srv) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # never reads
        assert open_connections(srv) == 0  # dropped; its descriptor is freed:
        assert psutil.Process().num_fds() <= fds + 1  # (+1: the client's own socket)
        s.close()


# ---- finding 5: loose inputs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/jsonx",
    ],
)
def test_post_needs_application_json(served, ctype):
    c, flog = served["client"], served["backend"].log("features")
    assert served["app"].state.feature_logger.flush()  # what earlier requests logged is in
    before = sum(flog.end_offsets())
    headers = {} if ctype is None else {"content-type": ctype}
    body = b'{"user_id":1,"candidates":[1,2]}'
    for path in ("/v1/rank", "/v1/predict", "/v1/actions"):
        r = post(c, path, body, headers)
        assert r.status_code == 415 and "application/json" in r.json()["detail"], (path, r.text)
    assert served["app"].state.feature_logger.flush()
    assert sum(flog.end_offsets()) == before  # nothing was logged as an impression
    r = post(c, "/v1/rank", body, {"content-type": "Application/JSON; charset=UTF-8"})
    assert r.status_code == 200


@pytest.mark.parametrize("value", ['"1"', "true", "false", "null", "[1]", '{"a":1}'])
def test_dense_values_are_strict_numbers(served, value):
    body = b'{"user_id":1,"candidates":[1],"dense":{"dense_0":%s}}' % value.encode()
    r = post(served["client"], "/v1/rank", body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "dense", "dense_0"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"user_id":1.0,"candidates":[1]}',
        b'{"user_id":1,"candidates":[2.0]}',
        b'{"user_id":true,"candidates":[1]}',
        b'{"user_id":1,"candidates":[{"item_id":"2"}]}',
        b'{"user_id":1,"candidates":[1],"sparse":{"tags":[3.0]}}',
    ],
)
def test_ids_are_integer_literals(served, body):
    """JSON Schema counts 2.0 as an integer; ids refuse it (a float cannot carry every int64)."""
    assert post(served["client"], "/v1/rank", body).status_code == 422


def test_integer_dense_values_are_numbers(served):
    r = post(served["client"], "/v1/rank", b'{"user_id":1,"candidates":[1],"dense":{"dense_0":2}}')
    assert r.status_code == 200


# ---- overload: 503 instead of an unbounded queue -----------------------------------------------


def scored(ids):
    """A fake replica's ranking of `ids`: all 0.5, in their order (`ServingReplica.rank_many`'s form)."""
    p = np.full(len(ids), 0.5, np.float32)
    return np.asarray(ids), p, p[:, None]


def test_overload_is_503_and_healthz_stays_fast():
    class SlowReplica:
        spec, version, dense_version = SPEC, 1, 1
        dense_names = ("dense_0", "dense_1")
        tasks = (Task(name="click"),)
        last_apply_wall = data_ts = None
        deltas_applied = rows_applied = rows_deleted = dense_applied = 0

        def rank_many(self, queries):
            time.sleep(0.3)
            return [scored(q.item_ids) for q in queries]

        def table_sizes(self):
            return {}

    app = create_app(SlowReplica(), config=AppConfig(workers=1, max_pending=2, inline_max_bytes=0))
    with ServerThread(app) as srv:
        statuses: list[int] = []
        retry: list[str | None] = []

        def call() -> None:
            with httpx.Client(base_url=srv.url, timeout=10) as c:
                r = c.post("/v1/rank", json={"user_id": 1, "candidates": [1]})
                statuses.append(r.status_code)
                retry.append(r.headers.get("retry-after"))

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            t0 = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            assert time.perf_counter() - t0 < 0.2  # answered while the worker is busy
        for t in threads:
            t.join(10)
    assert sorted(statuses) == [200, 200, 503, 503, 503, 503]
    assert retry.count("1") == 4


def test_cheap_requests_do_not_wait_behind_an_expensive_one():
    """A request with many ids for the model goes to the worker; a cheap one is answered on the
    event loop meanwhile."""

    class Replica:
        spec, version, dense_version = SPEC, 1, 1
        dense_names = ("dense_0", "dense_1")
        tasks = (Task(name="click"),)
        last_apply_wall = data_ts = None
        deltas_applied = rows_applied = rows_deleted = dense_applied = 0

        def rank_many(self, queries):
            if any(len(q.item_ids) > 50 for q in queries):
                time.sleep(1.0)
            return [scored(q.item_ids) for q in queries]

        def table_sizes(self):
            return {}

    app = create_app(Replica(), config=AppConfig(inline_max_ids=100))
    with ServerThread(app) as srv:
        slow: list[int] = []
        t = threading.Thread(
            target=lambda: slow.append(
                httpx.post(
                    srv.url + "/v1/rank", json={"user_id": 1, "candidates": list(range(60))}
                ).status_code
            )
        )
        t.start()
        time.sleep(0.2)
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            t0 = time.perf_counter()
            assert c.post("/v1/rank", json={"user_id": 1, "candidates": [1, 2]}).status_code == 200
            assert time.perf_counter() - t0 < 0.3
        t.join(10)
    assert slow == [200]
