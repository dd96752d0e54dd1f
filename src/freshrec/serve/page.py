"""The model server's live page (`GET /`) and the JSON it reads (`GET /v1/stats`).

    GET /          one self-contained HTML document: the page's styles, scripts and charts are
                   inlined from the package's `serve/static/` folder (no other request, no CDN,
                   works on a machine without internet). Open, like /docs: it holds no data.
    GET /v1/stats  the replica's health as JSON (`StatsResponse`), behind the API token when
                   the server has one. The page polls it every second; so can anything else.

Stats. Model version, dense version, the wall seconds since the last parameter frame was applied
(`last_delta_age_s`, on the replica's own clock, which stamped it) and the server clock minus
the data time of the newest frame (`model_data_lag_s`; in `freshrec demo` the server clock is
the demo's data time), rows per serving table, what was applied, what the writers logged, and
the requests: per endpoint and for the API together (/v1/rank, /v1/predict, /v1/actions), the
rate, the error rate (status >= 400) and latency percentiles over the last `window_s` wall seconds,
plus totals since the server started. Percentiles come from the request-latency histogram of
`freshrec.serve.metrics` (`LATENCY_BUCKETS`), interpolated within a bucket as Prometheus'
`histogram_quantile` does; past the last finite bucket (1 s) they read as that bucket's bound.
The window is made of the counters as they stood at earlier calls (`ServerStats` keeps the last
`keep_s` of them), so its length is what lies between two calls: call it about once a second.

The page's token. The page's HTML is open, its data is not: with a token set, the page asks for
it (kept in the tab's sessionStorage, sent as `Authorization: Bearer`), or takes it from the URL
fragment (`http://host:8080/#token=...`: a fragment never reaches the server or its logs) and
removes it from the address bar.

Assets. `build_page(template, assets)` inlines `{{name}}` markers with the named assets and
returns the document with a Content-Security-Policy that allows exactly those inline scripts and
styles (by hash) and requests to the page's own origin, nothing else: a page that tried to load
anything from elsewhere would be refused by the browser.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import importlib.resources
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from freshrec.errors import ConfigError
from freshrec.serve.metrics import LATENCY_BUCKETS, ServeMetrics

__all__ = [
    "API_ENDPOINTS",
    "EndpointStats",
    "Page",
    "ServerStats",
    "StatsResponse",
    "Tally",
    "build_page",
    "quantile",
    "read_assets",
    "serve_page",
    "window_stats",
]

API_ENDPOINTS = ("/v1/rank", "/v1/predict", "/v1/actions")
_BOUNDS = (*LATENCY_BUCKETS, math.inf)


# ---- the JSON --------------------------------------------------------------------------------
class EndpointStats(BaseModel):
    """Requests of one endpoint (or of the API together): over the window, and totals."""

    requests_per_s: float
    errors_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int


class StatsResponse(BaseModel):
    """`GET /v1/stats` (see the module docstring). Ages are null until a frame was applied."""

    model_version: int
    dense_version: int
    last_delta_age_s: float | None
    model_data_lag_s: float | None
    tables: dict[str, int]
    deltas_applied: int
    rows_applied: int
    rows_deleted: int
    features_logged: int
    actions_logged: int
    log_errors: int
    uptime_s: float
    window_s: float
    api: EndpointStats
    endpoints: dict[str, EndpointStats]
    statuses: dict[str, int]


# ---- the window: pure functions of counter tallies ---------------------------------------------
@dataclass(frozen=True, slots=True)
class Tally:
    """Cumulative counts of one endpoint at one moment: requests by HTTP status, and the latency
    histogram's cumulative bucket counts at `LATENCY_BUCKETS` + (+Inf), i.e. `buckets[i]` = the
    requests that took at most `_BOUNDS[i]` seconds; `buckets[-1]` = all of them."""

    statuses: Mapping[int, float] = field(default_factory=dict)
    buckets: tuple[float, ...] = (0.0,) * len(_BOUNDS)

    def __add__(self, other: Tally) -> Tally:
        st = collections.Counter(self.statuses)
        st.update(other.statuses)
        return Tally(dict(st), tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)))

    def __sub__(self, other: Tally) -> Tally:
        st = {s: n - other.statuses.get(s, 0.0) for s, n in self.statuses.items()}
        return Tally(st, tuple(a - b for a, b in zip(self.buckets, other.buckets, strict=True)))

    @property
    def requests(self) -> float:
        return float(sum(self.statuses.values()))

    @property
    def errors(self) -> float:
        return float(sum(n for s, n in self.statuses.items() if s >= 400))


def quantile(q: float, buckets: Sequence[float], bounds: Sequence[float] = _BOUNDS) -> float | None:
    """The q-quantile (0..1) of a histogram given as cumulative bucket counts at `bounds` (the
    last bound +Inf), interpolated linearly within its bucket (the first bucket starts at 0), as
    Prometheus' `histogram_quantile`; a quantile in the +Inf bucket is the last finite bound.
    None for an empty histogram.

        quantile(0.5, [0, 10, 10], (0.001, 0.002, inf)) == 0.0015   # all 10 in (1 ms, 2 ms]
    """
    total = buckets[-1]
    if total <= 0:
        return None
    rank = q * total
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in zip(bounds, buckets, strict=True):
        if count >= rank and count > lo_count:
            if math.isinf(bound):
                return lo_bound
            return lo_bound + (bound - lo_bound) * (rank - lo_count) / (count - lo_count)
        lo_bound, lo_count = bound, count
    return lo_bound


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 3)


def window_stats(now: Tally, before: Tally, seconds: float, total: Tally | None = None) -> EndpointStats:
    """Rates and percentiles of the requests between two tallies `seconds` apart; totals from
    `total` (default `now`)."""
    d = now - before
    per_s = 1.0 / seconds if seconds > 0 else 0.0
    tot = now if total is None else total
    return EndpointStats(
        requests_per_s=round(d.requests * per_s, 3),
        errors_per_s=round(d.errors * per_s, 3),
        p50_ms=_ms(quantile(0.50, d.buckets)),
        p90_ms=_ms(quantile(0.90, d.buckets)),
        p99_ms=_ms(quantile(0.99, d.buckets)),
        requests=int(tot.requests),
        errors=int(tot.errors),
    )


def tallies(families: Mapping[str, Any]) -> dict[str, Tally]:
    """Each endpoint's `Tally` from the server's request metrics (`ServeMetrics.request_families`)."""
    statuses: dict[str, dict[int, float]] = collections.defaultdict(dict)
    buckets: dict[str, dict[float, float]] = collections.defaultdict(dict)
    for s in families["freshrec_requests"].samples:
        if s.name.endswith("_total"):
            statuses[s.labels["endpoint"]][int(s.labels["status"])] = s.value
    for s in families["freshrec_request_latency_seconds"].samples:
        if s.name.endswith("_bucket"):
            buckets[s.labels["endpoint"]][float(s.labels["le"])] = s.value
    out = {}
    for ep in set(statuses) | set(buckets):
        b = buckets.get(ep, {})
        out[ep] = Tally(dict(statuses.get(ep, {})), tuple(b.get(x, 0.0) for x in _BOUNDS))
    return out


def _count(families: Mapping[str, Any], name: str) -> int:
    """The total of counter `name` over all its labels (`ServeMetrics.request_families`)."""
    fam = families.get(name)
    return 0 if fam is None else int(sum(s.value for s in fam.samples if s.name.endswith("_total")))


def _sum(ts: Mapping[str, Tally], names: Sequence[str]) -> Tally:
    out = Tally()
    for n in names:
        if n in ts:
            out = out + ts[n]
    return out


class ServerStats:
    """What `GET /v1/stats` answers (see the module docstring).

    Args:
        replica: the ServingReplica served (read: version, tables, ages, apply counters).
        metrics: the app's ServeMetrics (request counters, latency histogram, log counters).
        clock: the server clock (as the app's): `model_data_lag_s` = clock() - replica.data_ts.
        now: monotonic wall seconds, for rates and the uptime.
        window_s: the span rates and percentiles are taken over (at least the last call's gap).
        keep_s: how long earlier tallies are kept; min_gap_s: the least time between two kept
            (calls closer together reuse the older one), so memory is bounded whoever calls.
    """

    def __init__(
        self,
        replica: Any,
        metrics: ServeMetrics,
        *,
        clock: Callable[[], float] = time.time,
        now: Callable[[], float] = time.monotonic,
        window_s: float = 10.0,
        keep_s: float = 60.0,
        min_gap_s: float = 0.5,
    ) -> None:
        if not 0 < window_s <= keep_s:
            msg = f"ServerStats needs 0 < window_s <= keep_s, got {window_s} and {keep_s}"
            raise ConfigError(msg)
        self.replica = replica
        self.metrics = metrics
        self.clock = clock
        self.now = now
        self.window_s = float(window_s)
        self.keep_s = float(keep_s)
        self.min_gap_s = float(min_gap_s)
        self._t0 = now()
        self._seen: collections.deque[tuple[float, dict[str, Tally]]] = collections.deque([(self._t0, {})])

    def _base(self, t: float) -> tuple[float, dict[str, Tally]]:
        """The oldest kept tally within the window, else the newest one before it."""
        while len(self._seen) > 1 and self._seen[1][0] <= t - self.keep_s:
            self._seen.popleft()
        base = self._seen[-1]
        for seen in reversed(self._seen):
            if seen[0] < t - self.window_s:
                break
            base = seen
        if base[0] >= t:  # called twice within the clock's resolution
            base = self._seen[0]
        return base

    def snapshot(self) -> dict[str, Any]:
        """The stats now, as plain JSON data (a `StatsResponse`)."""
        t = self.now()
        fams = self.metrics.request_families()  # one collection (every worker's, when shared)
        cur = tallies(fams)
        t_base, base = self._base(t)
        if t - self._seen[-1][0] >= self.min_gap_s:
            self._seen.append((t, cur))
        span = max(t - t_base, 1e-9)
        endpoints = {
            ep: window_stats(cur[ep], base.get(ep, Tally()), span).model_dump() for ep in sorted(cur)
        }
        api = window_stats(_sum(cur, API_ENDPOINTS), _sum(base, API_ENDPOINTS), span)
        statuses: collections.Counter[str] = collections.Counter()
        for tal in cur.values():
            for s, n in tal.statuses.items():
                statuses[str(s)] += int(n)
        r = self.replica
        age = None if r.last_apply_wall is None else max(0.0, r.clock() - r.last_apply_wall)
        lag = None if r.data_ts is None else self.clock() - r.data_ts
        return {
            "model_version": int(r.version),
            "dense_version": int(r.dense_version),
            "last_delta_age_s": None if age is None else round(age, 3),
            "model_data_lag_s": None if lag is None else round(lag, 3),
            "tables": {k: int(v) for k, v in r.table_sizes().items()},
            "deltas_applied": int(r.deltas_applied),
            "rows_applied": int(r.rows_applied),
            "rows_deleted": int(r.rows_deleted),
            "features_logged": _count(fams, "freshrec_features_logged"),
            "actions_logged": _count(fams, "freshrec_actions_logged"),
            "log_errors": _count(fams, "freshrec_log_errors"),
            "uptime_s": round(t - self._t0, 3),
            "window_s": round(span, 3),
            "api": api.model_dump(),
            "endpoints": endpoints,
            "statuses": dict(sorted(statuses.items())),
        }


# ---- the page --------------------------------------------------------------------------------
_MARK = re.compile(r"\{\{([A-Za-z0-9_.-]+)\}\}")
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


@dataclass(frozen=True, slots=True)
class Page:
    """An HTML document and the Content-Security-Policy it is served with."""

    html: bytes
    csp: str

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Security-Policy": self.csp,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }


def read_assets(package: str, folder: str = "static") -> dict[str, str]:
    """Every file of `package`'s `folder` (package data), by name."""
    root = importlib.resources.files(package) / folder
    return {
        p.name: p.read_text("utf-8") for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
    }


def build_page(template: str, assets: Mapping[str, str]) -> Page:
    """`template` with each `{{name}}` replaced by `assets[name]`, and a CSP that allows the
    document's inline scripts and styles (by their SHA-256) and same-origin requests only.

    Raises:
        ConfigError: a marker names no asset, or an inlined script holds `</script`.
    """

    def inline(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in assets:
            msg = f"page template: no asset {name!r} (have {sorted(assets)})"
            raise ConfigError(msg)
        text = assets[name]
        if "</script" in text.lower() or "</style" in text.lower():
            msg = f"page asset {name!r} holds a closing </script or </style tag"
            raise ConfigError(msg)
        return text

    html = _MARK.sub(inline, template)
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for m in _INLINE.finditer(html):
        digest = base64.b64encode(hashlib.sha256(m.group(2).encode()).digest()).decode()
        hashes[m.group(1)].append(f"'sha256-{digest}'")
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(hashes["script"]) or "'none'"),
            "style-src " + (" ".join(hashes["style"]) or "'none'"),
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(html.encode(), csp)


def serve_page() -> Page:
    """The model server's page (`GET /`)."""
    assets = read_assets("freshrec.serve")
    return build_page(assets["serve.html"], assets)
