"""The model server's live page and its JSON (`GET /`, `GET /v1/stats`; `freshrec.serve.page`),
without a browser: the stats against counts made by hand, the token rules, and the page's
self-containment (nothing loaded from elsewhere, every asset shipped as package data).
The browser test is tests/test_page_browser.py."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from freshrec.errors import ConfigError
from freshrec.ps import ServingReplica
from freshrec.serve import AppConfig, ServerThread, create_app
from freshrec.serve.metrics import LATENCY_BUCKETS, ServeMetrics
from freshrec.serve.page import (
    ServerStats,
    StatsResponse,
    Tally,
    build_page,
    quantile,
    read_assets,
    serve_page,
)
from serve_process import HIDDEN, SPEC

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "page-t0ken"
RANK = {"user_id": 1, "candidates": [1, 2, 3]}


# ---- the window, against counts made by hand ---------------------------------------------------
def test_quantile_interpolates_within_a_bucket_like_prometheus():
    inf = math.inf
    assert quantile(0.5, [0, 10, 10], (0.001, 0.002, inf)) == pytest.approx(0.0015)
    assert quantile(0.5, [10, 10, 10], (0.001, 0.002, inf)) == pytest.approx(0.0005)  # from 0
    assert quantile(0.99, [0, 0, 5], (0.001, 0.002, inf)) == 0.002  # +Inf bucket: the last bound
    assert quantile(0.5, [0, 0, 0], (0.001, 0.002, inf)) is None
    # 90 fast requests (<= 1 ms) and 10 slow (2-5 ms): p50 in the first bucket, p99 in the slow one
    b = (90.0, 90.0, 90.0, 100.0, 100.0)
    bounds = (0.001, 0.002, 0.003, 0.005, inf)
    assert quantile(0.5, b, bounds) == pytest.approx(0.001 * 50 / 90)
    assert quantile(0.99, b, bounds) == pytest.approx(0.003 + 0.002 * 9 / 10)


class FakeReplica:
    version, dense_version, data_ts, last_apply_wall = 7, 5, 1000.0, 99.5
    deltas_applied, rows_applied, rows_deleted = 3, 40, 2

    def clock(self) -> float:
        return 100.0

    def table_sizes(self) -> dict[str, int]:
        return {"user_id": 10, "item_id": 30}


def test_stats_are_rates_and_percentiles_over_the_window():
    t = [0.0]
    metrics = ServeMetrics(FakeReplica())
    stats = ServerStats(FakeReplica(), metrics, clock=lambda: 1060.0, now=lambda: t[0], window_s=10.0)
    for _ in range(40):
        metrics.observe("/v1/rank", 200, 0.0015)
    metrics.observe("/v1/predict", 422, 0.0004)
    t[0] = 4.0
    s = StatsResponse.model_validate(stats.snapshot()).model_dump()
    assert s["window_s"] == 4.0 and s["uptime_s"] == 4.0
    assert s["endpoints"]["/v1/rank"]["requests_per_s"] == 10.0
    assert s["endpoints"]["/v1/rank"]["p50_ms"] == pytest.approx(1.5)  # in (1 ms, 2 ms]
    assert s["api"]["requests"] == 41 and s["api"]["errors"] == 1
    assert s["api"]["errors_per_s"] == 0.25
    assert s["statuses"] == {"200": 40, "422": 1}
    assert (
        s["model_version"] == 7 and s["dense_version"] == 5 and s["tables"] == {"user_id": 10, "item_id": 30}
    )
    assert s["last_delta_age_s"] == 0.5  # the replica's clock minus its own stamp
    assert s["model_data_lag_s"] == 60.0  # the server clock minus the data time applied
    # 4 s later, 8 more requests, all slow: the window holds only them
    for _ in range(8):
        metrics.observe("/v1/rank", 200, 0.3)
    t[0] = 8.0
    s = stats.snapshot()
    assert s["window_s"] == 8.0  # from the start: still within the 10 s window
    t[0] = 20.0
    s = stats.snapshot()
    assert s["window_s"] == 12.0  # from the newest call before the window (t=8)
    assert s["endpoints"]["/v1/rank"]["requests_per_s"] == 0.0 and s["api"]["p50_ms"] is None
    assert s["endpoints"]["/v1/rank"]["requests"] == 48


def test_stats_memory_is_bounded_whoever_calls():
    t = [0.0]
    stats = ServerStats(
        FakeReplica(), ServeMetrics(FakeReplica()), now=lambda: t[0], keep_s=5.0, window_s=2.0
    )
    for i in range(10_000):
        t[0] = i * 0.01  # 100 calls a second for 100 s
        stats.snapshot()
    assert len(stats._seen) <= 5 / 0.5 + 2


def test_stats_window_must_fit_in_what_is_kept():
    with pytest.raises(ConfigError, match="window_s"):
        ServerStats(FakeReplica(), ServeMetrics(FakeReplica()), window_s=30.0, keep_s=10.0)


def test_tally_arithmetic():
    a = Tally({200: 3.0, 500: 1.0}, (1.0,) * (len(LATENCY_BUCKETS) + 1))
    b = Tally({200: 1.0}, (0.5,) * (len(LATENCY_BUCKETS) + 1))
    assert (a + b).statuses == {200: 4.0, 500: 1.0} and (a - b).requests == 3.0 and a.errors == 1.0


# ---- the endpoints over HTTP --------------------------------------------------------------------
@pytest.fixture(scope="module")
def secured():
    app = create_app(ServingReplica(SPEC, hidden=HIDDEN), config=AppConfig(api_token=TOKEN))
    srv = ServerThread(app).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            yield c
    finally:
        srv.stop()


def test_stats_need_the_token_and_the_page_does_not(secured):
    assert secured.get("/v1/stats").status_code == 401
    r = secured.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert b"/v1/stats" in r.content and TOKEN.encode() not in r.content


def test_stats_count_the_requests_served(secured):
    auth = {"authorization": f"Bearer {TOKEN}"}
    for _ in range(5):
        assert secured.post("/v1/rank", json=RANK, headers=auth).status_code == 200
    assert secured.post("/v1/rank", json={"user_id": 1}, headers=auth).status_code == 422
    r = secured.get("/v1/stats", headers=auth)
    assert r.status_code == 200
    s = StatsResponse.model_validate(r.json())
    assert s.endpoints["/v1/rank"].requests == 6 and s.endpoints["/v1/rank"].errors == 1
    assert s.api.requests_per_s > 0 and s.api.p50_ms is not None and s.api.p50_ms > 0
    assert s.statuses["422"] == 1 and s.statuses["401"] >= 1
    assert s.tables == {"user_id": 0, "item_id": 0, "tags": 0}


def test_stats_are_in_the_openapi_schema_behind_the_token(secured):
    o = secured.get("/openapi.json").json()
    op = o["paths"]["/v1/stats"]["get"]
    assert set(op["responses"]) == {"200", "401"} and op["security"] == [{"bearerAuth": []}]
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/StatsResponse")
    assert "/" not in o["paths"]  # the page is not part of the API


# ---- self-contained: nothing from elsewhere, everything in the package ----------------------------
def test_the_page_loads_nothing_from_elsewhere():
    page = serve_page()
    html = page.html.decode()
    assert "://" not in html and not re.search(r"""["'(]//""", html), "a URL of another origin"
    assert re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html) == [
        "data:,",
        "/docs",
        "/metrics",
        "/docs",
    ]
    assert "{{" not in html  # every marker inlined
    csp = dict(part.split(" ", 1) for part in page.csp.split("; "))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert csp["script-src"].count("'sha256-") == 3 and "unsafe" not in page.csp


def test_build_page_refuses_unknown_markers_and_closing_tags():
    with pytest.raises(ConfigError, match="no asset"):
        build_page("<script>{{nope.js}}</script>", {})
    with pytest.raises(ConfigError, match="closing"):
        build_page("<script>{{a.js}}</script>", {"a.js": "x = '</script>'"})


def test_every_asset_is_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    src = ROOT / "src" / "freshrec"
    declared = {p for pattern in data["freshrec"] for p in src.glob(pattern)}
    for package, folder in (("freshrec.serve", "serve"), ("freshrec.demo", "demo")):
        names = set(read_assets(package))
        assert names, package
        missing = {n for n in names if src / folder / "static" / n not in declared}
        assert not missing, f"{package}: not declared as package data in pyproject.toml: {missing}"
