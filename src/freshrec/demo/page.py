"""The demo's live page: watch the loop learn, and be a user of it.

Routes added to the demo's model server (`mount(app, live)`), next to the API the page uses:

    GET /demo                    the page (one self-contained HTML document; `demo/static/`)
    GET /demo/state?since=N      the demo's time series from sample N on, the freshness
                                 histogram, the simulated users to pick from, run facts
    GET /demo/candidates         a fresh set of candidate items (the demo's live items), with ages
    GET /demo/click?request_id=  how far a click has gone through the loop (`ClickTracker`)

The feed. The page ranks the candidates for the chosen user (a simulated one, or the person as a
new user with a fresh id) with `POST /v1/rank`, the API every client uses; the shown items are
impressions in the features log like any other. A click is a real action through
`POST /v1/actions`. One thing differs from a simulated user: the demo's data time runs
`speedup` times faster than the person (240x: a 5 s look at the feed is 20 data-minutes), and
the joiner closes an impression `click_window_s` of data time (60 s: a quarter of a wall second)
after it was served, so an action on the shown impression would arrive late and be dropped.
So the page serves the clicked item once more at the moment of the click (a one-candidate
`/v1/rank`, data time now) and posts the click on that impression: the example is the clicked
item for this user at the click's data time, a positive, emitted at once (early positives). The
page then asks `/demo/click` until the served model includes the example, ranks the feed again
and shows what moved, with the seconds from the click.

`DemoLive` is the state the page reads, written by the demo's loop (samples, freshness) and read
by the server's thread; the lists only grow and are read by length, so readers take no lock but
the one around the samples.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Query
from fastapi.responses import Response

from freshrec.demo.report import Sample
from freshrec.demo.tracker import ClickTracker
from freshrec.serve.page import Page, build_page, read_assets

__all__ = ["DemoLive", "demo_page", "mount"]


def demo_page() -> Page:
    """The demo's page: its template and script, with the model server page's styles, client and charts."""
    assets = {**read_assets("freshrec.serve"), **read_assets("freshrec.demo")}
    return build_page(assets["demo.html"], assets)


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 5)


@dataclass
class DemoLive:
    """What the demo page shows (see the module docstring).

    candidates: n -> [(item id, age in data seconds)], the demo's live items to rank.
    users: simulated user ids to pick from. clock: the demo's data time. freshness: the loop's
    list of freshness seconds (appended to by the demo). facts: run settings shown on the page.
    """

    candidates: Callable[[int], list[tuple[int, float]]]
    users: Sequence[int]
    clock: Callable[[], float]
    tracker: ClickTracker
    freshness: list[float]
    facts: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    done: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def state(self, since: int = 0) -> dict[str, Any]:
        with self._lock:
            new = self.samples[max(0, since) :]
            n = len(self.samples)
        f = np.asarray(self.freshness[: len(self.freshness)], dtype=np.float64)
        hist: dict[str, Any] = {"edges": [], "counts": [], "n": int(f.size), "p50": None, "p99": None}
        if f.size:
            hi = max(1.0, float(np.ceil(np.percentile(f, 99.5) * 4) / 4))
            counts, edges = np.histogram(np.minimum(f, hi), bins=40, range=(0.0, hi))
            hist.update(
                edges=[round(float(e), 4) for e in edges],
                counts=counts.tolist(),
                p50=_num(float(np.percentile(f, 50))),
                p99=_num(float(np.percentile(f, 99))),
            )
        rows = []
        for s in new:
            d = asdict(s)
            rows.append({k: (_num(v) if isinstance(v, float) else v) for k, v in d.items()})
        return {
            "since": since,
            "next": n,
            "samples": rows,
            "freshness": hist,
            "users": [str(u) for u in self.users],
            "data_ts": _num(self.clock()),
            "done": self.done,
            **self.facts,
        }


def _json(data: Any) -> Response:
    import json

    return Response(json.dumps(data, allow_nan=False), media_type="application/json")


def mount(app: FastAPI, live: DemoLive) -> None:
    """Add the demo page's routes (module docstring) to the demo's model server app."""
    page = demo_page()

    @app.get("/demo", include_in_schema=False)
    async def demo() -> Response:
        return Response(page.html, media_type="text/html; charset=utf-8", headers=page.headers)

    @app.get("/demo/state", include_in_schema=False)
    async def state(since: int = Query(0, ge=0)) -> Response:
        return _json(live.state(since))

    @app.get("/demo/candidates", include_in_schema=False)
    async def candidates(n: int = Query(30, ge=1, le=200)) -> Response:
        items = [{"item_id": str(i), "age_s": round(a, 1)} for i, a in live.candidates(n)]
        return _json({"items": items, "data_ts": _num(live.clock())})

    @app.get("/demo/click", include_in_schema=False)
    async def click(request_id: str = Query(..., min_length=1, max_length=256)) -> Response:
        return _json(live.tracker.status(request_id))
