"""Access control (bearer tokens), binding rules of `freshrec serve`, and the OpenAPI schema."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import pytest

from freshrec.errors import ConfigError
from freshrec.model import FeatureSpec, SlotSpec
from freshrec.ps import ServingReplica
from freshrec.serve import AppConfig, ServerThread, check_exposure, create_app, is_loopback
from freshrec.stream.log import MemoryBackend

SPEC = FeatureSpec(slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dim=4)
API, METRICS = "api-t0ken", "metr1cs-t0ken"
RANK = {"user_id": 1, "candidates": [1, 2]}


def serve(**cfg):
    backend = MemoryBackend()
    app = create_app(
        ServingReplica(SPEC, hidden=(8,)),
        features_log=backend.log("features"),
        actions_log=backend.log("actions"),
        config=AppConfig(**cfg),
    )
    return ServerThread(app)


@pytest.fixture(scope="module")
def secured():
    with serve(api_token=API, metrics_token=METRICS) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), bearer(METRICS), {"authorization": API}, {"authorization": f"Basic {API}"}],
)
def test_the_api_needs_its_token(secured, headers):
    for method, path, body in (
        ("POST", "/v1/rank", RANK),
        ("POST", "/v1/predict", {"examples": [{"user_id": 1, "item_id": 2}]}),
        ("POST", "/v1/actions", {"actions": [{"request_id": "r:0", "action": "click"}]}),
        ("GET", "/nope", None),
    ):
        r = secured.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and "bearer token" in r.json()["detail"]


def test_with_the_token_the_api_answers(secured):
    assert secured.post("/v1/rank", json=RANK, headers=bearer(API)).status_code == 200
    assert secured.post("/v1/rank", json=RANK, headers={"authorization": f"bearer  {API}"}).status_code == 200
    r = secured.post(
        "/v1/actions", json={"actions": [{"request_id": "r:0", "action": "click"}]}, headers=bearer(API)
    )
    assert r.status_code == 202


def test_401_comes_before_the_body_is_read(secured):
    """An unauthenticated client cannot make the server read (or wait for) a body."""
    url = httpx.URL(str(secured.base_url))
    with socket.create_connection((url.host, url.port), timeout=5) as s:
        s.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        s.sendall(b"Content-Length: 999999\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 401 ")


def test_metrics_has_its_own_token_and_healthz_is_open(secured):
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/openapi.json").status_code == 200
    assert secured.get("/metrics").status_code == 401
    assert secured.get("/metrics", headers=bearer(API)).status_code == 401
    r = secured.get("/metrics", headers=bearer(METRICS))
    assert r.status_code == 200 and "freshrec_requests_total" in r.text


def test_without_tokens_everything_is_open():
    with serve() as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.post("/v1/rank", json=RANK).status_code == 200
        assert c.get("/metrics").status_code == 200


def test_metrics_token_alone_leaves_the_api_open():
    with serve(metrics_token=METRICS) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.post("/v1/rank", json=RANK).status_code == 200
        assert c.get("/metrics").status_code == 401


@pytest.mark.parametrize("token", ["", "has space", "ünïcode", "tab\t"])
def test_tokens_must_be_plain(token):
    with pytest.raises(ConfigError, match="api_token"):
        AppConfig(api_token=token)


def test_tokens_do_not_show_in_the_config_repr():
    assert API not in repr(AppConfig(api_token=API, metrics_token=METRICS))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("10.0.0.1", False),
    ],
)
def test_non_loopback_binding_needs_a_token_or_insecure(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        check_exposure(host, token=None, insecure=False)
    else:
        with pytest.raises(ConfigError, match="without a token"):
            check_exposure(host, token=None, insecure=False)
    check_exposure(host, token="t", insecure=False)
    check_exposure(host, token=None, insecure=True)


def test_freshrec_serve_refuses_a_public_host_without_a_token(tmp_path):
    """One line on stderr, exit code 2, before anything is loaded."""
    cmd = [
        sys.executable,
        "-m",
        "freshrec.cli",
        "serve",
        "--params",
        str(tmp_path),
        "--snapshot",
        str(tmp_path),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
    p = subprocess.run([*cmd, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and p.stdout == ""
    assert (
        p.stderr.count("\n") == 1 and "refusing to serve on 0.0.0.0" in p.stderr and "--insecure" in p.stderr
    )


@pytest.mark.parametrize(
    ("extra", "env", "passes"),
    [
        ((), {}, False),
        (("--token", "t"), {}, True),
        ((), {"FRESHREC_TOKEN": "t"}, True),
        ((), {"FRESHREC_TOKEN": ""}, False),  # empty is no token
        (("--metrics-token", "t"), {}, False),  # the metrics token does not guard the API
        (("--insecure",), {}, True),
    ],
)
def test_the_token_comes_from_the_flag_or_the_environment(tmp_path, monkeypatch, capsys, extra, env, passes):
    import torch

    from freshrec import cli

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # process-wide: not in a test
    for k in ("FRESHREC_TOKEN", "FRESHREC_METRICS_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    missing = str(tmp_path / "missing")
    assert cli.main(["serve", "--params", missing, "--snapshot", missing, "--host", "0.0.0.0", *extra]) == 2
    err = capsys.readouterr().err
    assert ("refusing to serve" not in err) is passes, err
    if passes:
        assert "--snapshot" in err  # got past the check: the missing snapshot is the error


def test_openapi_lists_every_status_and_metrics_as_text(secured):
    o = secured.get("/openapi.json").json()
    paths = o["paths"]
    assert set(paths) == {"/v1/rank", "/v1/predict", "/v1/actions", "/v1/stats", "/healthz", "/metrics"}
    for p in ("/v1/rank", "/v1/predict"):
        assert set(paths[p]["post"]["responses"]) == {"200", "401", "413", "415", "422", "500", "503"}
        assert paths[p]["post"]["security"] == [{"bearerAuth": []}]
    assert set(paths["/v1/actions"]["post"]["responses"]) == {"202", "401", "404", "413", "415", "422", "503"}
    for code in ("401", "413", "415", "503"):
        ref = paths["/v1/rank"]["post"]["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorOut")
    ref = paths["/v1/rank"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ValidationErrorOut")
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain"}
    assert o["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    schemas = o["components"]["schemas"]
    cand = schemas["RankRequest"]["properties"]["candidates"]
    assert cand["maxItems"] == 1000 and cand["minItems"] == 1  # the limit is in the schema
    assert schemas["ActionsRequest"]["properties"]["actions"]["maxItems"] == 1000
