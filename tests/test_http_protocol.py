"""The body endpoints answered in the connection protocol: the same bytes as the ASGI path, and
HTTP's connection rules (keep-alive, close, HTTP/1.0, pipelining, 100-continue) over raw sockets
against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import pytest

from freshrec.model import FeatureSpec, SlotSpec
from freshrec.ps import ServingReplica
from freshrec.serve import AppConfig, ServerThread, create_app

SPEC = FeatureSpec(slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dense_dim=1, dim=8)
TOKEN = "pr0to-token"
CFG = AppConfig(max_body_bytes=2_000, api_token=TOKEN)
AUTH = f"authorization: Bearer {TOKEN}\r\n"


def _asgi_only(app):
    """The same app as an opaque ASGI callable: the server cannot answer its bodies itself."""

    async def plain(scope, receive, send):
        await app(scope, receive, send)

    return plain


@pytest.fixture(scope="module")
def servers():
    app = create_app(ServingReplica(SPEC, hidden=(16, 8)), config=CFG, new_request_id=lambda: "fixed")
    with ServerThread(app) as fast, ServerThread(_asgi_only(app)) as plain:
        assert fast.server.config.http.routes is app.body_routes is not None  # answered in the protocol
        assert plain.server.config.http.routes is None  # answered over ASGI
        yield fast, plain, app


def _post(
    path: str, body: bytes, *, extra: str = AUTH, ctype: str = "application/json", version="1.1"
) -> bytes:
    head = f"POST {path} HTTP/{version}\r\nhost: x\r\n{extra}"
    if ctype:
        head += f"content-type: {ctype}\r\n"
    return head.encode() + b"content-length: %d\r\n\r\n%b" % (len(body), body)


def _read_reply(f) -> bytes:
    """One whole reply's bytes (status line, headers, body by content-length), date blanked."""
    lines = [f.readline()]
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        lines.append(line)
    raw = b"".join(lines) + b"\r\n" + f.read(length)
    return re.sub(rb"date: [^\r]*\r\n", b"date: -\r\n", raw)


def _exchange(srv: ServerThread, data: bytes, replies: int) -> tuple[list[bytes], bool]:
    """Send `data` at once, read `replies` replies; and whether the server closed afterwards."""
    with socket.create_connection((srv.host, srv.port), timeout=10) as s:
        s.sendall(data)
        with s.makefile("rb") as f:
            out = [_read_reply(f) for _ in range(replies)]
            s.settimeout(2.0)
            try:
                closed = f.read(1) == b""
            except TimeoutError:
                closed = False
    return out, closed


RANK = json.dumps({"user_id": 3, "candidates": [1, 2, 3, 4]}).encode()
CASES = {
    "rank": _post("/v1/rank", RANK),
    "predict": _post("/v1/predict", json.dumps({"examples": [{"user_id": 1, "item_id": 2}]}).encode()),
    "422": _post("/v1/rank", b'{"user_id": "x", "candidates": [1]}'),
    "bad json": _post("/v1/rank", b'{"user_id": '),
    "unknown feature": _post("/v1/rank", b'{"user_id": 1, "candidates": [1], "sparse": {"nope": [1]}}'),
    "415": _post("/v1/rank", RANK, ctype="text/plain"),
    "401": _post("/v1/rank", RANK, extra=""),
    "413 declared": _post("/v1/rank", b"x" * 2_001),
    "404 actions": _post("/v1/actions", b'{"actions": []}'),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_body_endpoint_answers_the_same_bytes_in_the_protocol_as_over_asgi(servers, case):
    fast, plain, _ = servers
    got, got_closed = _exchange(fast, CASES[case], 1)
    want, want_closed = _exchange(plain, CASES[case], 1)
    assert got == want
    assert got_closed == want_closed
    assert got[0].startswith(b"HTTP/1.1 ")


def test_pipelined_requests_of_both_paths_are_answered_in_order_on_one_connection(servers):
    fast, _, _ = servers
    health = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    bodies = [
        json.dumps({"user_id": k, "candidates": [k, k + 1], "request_id": f"r{k}"}).encode() for k in range(6)
    ]
    data = b"".join(_post("/v1/rank", b) + (health if k % 2 else b"") for k, b in enumerate(bodies))
    replies, closed = _exchange(fast, data, 9)
    assert not closed  # keep-alive by default
    rids = [json.loads(r.split(b"\r\n\r\n", 1)[1]).get("request_id", "health") for r in replies]
    assert rids == ["r0", "r1", "health", "r2", "r3", "health", "r4", "r5", "health"]


def test_connection_close_and_http_1_0_close_after_the_reply(servers):
    fast, plain, _ = servers
    for srv in (fast, plain):
        (reply,), closed = _exchange(srv, _post("/v1/rank", RANK, extra=AUTH + "connection: close\r\n"), 1)
        assert closed and b"connection: close\r\n" in reply and b" 200 OK" in reply
        (reply,), closed = _exchange(srv, _post("/v1/rank", RANK, version="1.0"), 1)
        assert closed and b" 200 OK" in reply
    with socket.create_connection((fast.host, fast.port), timeout=10) as s:  # keep-alive: a second
        s.sendall(_post("/v1/rank", RANK))
        with s.makefile("rb") as f:
            assert b" 200 OK" in _read_reply(f)
            s.sendall(_post("/v1/rank", RANK))
            assert b" 200 OK" in _read_reply(f)


def test_a_rejection_closes_the_connection_without_answering_what_follows(servers):
    fast, _, _ = servers
    (reply,), closed = _exchange(fast, CASES["415"] + CASES["rank"], 1)
    assert b" 415 " in reply and closed


def test_expect_100_continue_is_answered_before_the_body_is_sent(servers):
    fast, _, _ = servers
    head = _post("/v1/rank", RANK, extra=AUTH + "expect: 100-continue\r\n")[: -len(RANK)]
    with socket.create_connection((fast.host, fast.port), timeout=10) as s:
        s.sendall(head)
        with s.makefile("rb") as f:
            assert f.readline() == b"HTTP/1.1 100 Continue\r\n" and f.readline() == b"\r\n"
            s.sendall(RANK)
            assert b" 200 OK" in _read_reply(f)


def test_a_streamed_body_past_the_limit_is_a_413_and_closes(servers):
    fast, _, _ = servers
    head = f"POST /v1/rank HTTP/1.1\r\nhost: x\r\n{AUTH}content-type: application/json\r\n"
    chunked = head.encode() + b"transfer-encoding: chunked\r\n\r\n"
    for _ in range(3):
        chunked += b"%x\r\n%b\r\n" % (1000, b" " * 1000)
    (reply,), closed = _exchange(fast, chunked, 1)
    assert b" 413 " in reply and closed
    assert b"exceeds the limit of 2000 bytes" in reply


def test_protocol_answers_are_counted_in_the_metrics(servers):
    fast, _, _ = servers
    url = fast.url

    def count(status: str) -> float:
        text = httpx.get(url + "/metrics", timeout=10).text
        pattern = r'freshrec_requests_total\{endpoint="/v1/rank",status="' + status + r'"\} (\S+)'
        m = re.search(pattern, text)
        return float(m.group(1)) if m else 0.0

    ok0, bad0, gone0 = count("200"), count("415"), count("499")
    _exchange(fast, CASES["rank"] * 3, 3)
    _exchange(fast, CASES["415"], 1)
    with socket.create_connection((fast.host, fast.port), timeout=10) as s:  # goes before its body
        s.sendall(CASES["rank"][:-5])
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while count("499") == gone0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count("200") == ok0 + 3
    assert count("415") == bad0 + 1
    assert count("499") == gone0 + 1


def test_a_burst_of_connections_is_taken_from_the_listening_queue_and_answered(servers):
    """Connections waiting in the listening socket's queue are accepted by the protocol in one go
    (`_accept_waiting`); each is a full connection of the server: answered, counted, closed."""
    fast, _, _ = servers
    socks = [socket.create_connection((fast.host, fast.port), timeout=10) for _ in range(80)]
    for s in socks:
        s.sendall(CASES["rank"])
    replies = []
    for s in socks:
        with s.makefile("rb") as f:
            replies.append(_read_reply(f))
    assert all(b" 200 OK" in r for r in replies)
    assert len(fast.server.server_state.connections) >= 80
    for s in socks:
        s.close()
    deadline = time.monotonic() + 10
    while len(fast.server.server_state.connections) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fast.server.server_state.connections) == 0
