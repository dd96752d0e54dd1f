"""The demo page's parts without a browser: the click tracker's stages against a scripted loop
(an in-memory examples log, trainer batches and replica versions set by hand), the page's state
JSON, and the page document (self-contained, every asset shipped)."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

from freshrec.demo.page import DemoLive, demo_page
from freshrec.demo.report import Sample
from freshrec.demo.tracker import ClickTracker
from freshrec.stream.log import MemoryLog


class Loop:
    """A scripted loop: the examples log, the publisher's and the replica's versions, a clock."""

    def __init__(self) -> None:
        self.examples = MemoryLog("examples", partitions=2)
        self.published = 3
        self.served = 3
        self.t = 100.0
        self.tracker = ClickTracker(
            self.examples.consumer("page"),
            published_version=lambda: self.published,
            served_version=lambda: self.served,
            now=lambda: self.t,
        )

    def join(self, rid: str) -> None:
        self.examples.append(b"{}", key=rid.encode())
        self.examples.flush()

    def batch(self) -> None:
        """The trainer took everything in the log."""
        info = SimpleNamespace(positions=dict(enumerate(self.examples.end_offsets())))
        self.tracker.on_batch(None, info)


def test_a_click_is_joined_then_trained_then_served():
    loop = Loop()
    rid = "page-abc:0"
    st = loop.tracker.status(rid)
    assert (st["joined_s"], st["trained_s"], st["served_s"]) == (None, None, None)
    loop.join("r-sim:1")  # not the page's: not followed
    loop.t += 0.3
    loop.join(rid)
    loop.tracker.poll()
    assert loop.tracker.status(rid)["joined_s"] == 0.3 and loop.tracker.status(rid)["trained_s"] is None
    loop.t += 0.2
    loop.batch()  # trained while the publisher was at version 3: its rows go out in 4 at the latest
    loop.tracker.poll()
    st = loop.tracker.status(rid)
    assert st["trained_s"] == 0.5 and st["needs_version"] == 4 and st["served_s"] is None
    loop.t += 0.4
    loop.published = loop.served = 4
    loop.tracker.poll()
    st = loop.tracker.status(rid)
    assert st["served_s"] == 0.9 and st["waited_s"] == 0.9


def test_a_batch_before_the_example_does_not_train_it():
    loop = Loop()
    rid = "page-x:0"
    loop.tracker.status(rid)
    loop.batch()  # an empty log: positions 0
    loop.join(rid)
    loop.served = 99
    loop.tracker.poll()
    st = loop.tracker.status(rid)
    assert st["joined_s"] == 0.0 and st["trained_s"] is None and st["served_s"] is None


def test_trained_before_the_tracker_read_the_log_counts_as_joined_then():
    loop = Loop()
    rid = "page-y:0"
    loop.tracker.status(rid)
    loop.t += 0.1
    loop.join(rid)
    loop.batch()  # the trainer took it at t+0.1 ...
    loop.t += 0.2
    loop.tracker.poll()  # ... the tracker read the log at t+0.3
    st = loop.tracker.status(rid)
    assert st["joined_s"] == st["trained_s"] == 0.1


def test_what_is_followed_is_bounded():
    loop = Loop()
    loop.tracker.keep = 50
    for i in range(500):
        loop.join(f"page-{i}:0")
        loop.tracker.status(f"page-{i}:1")
        loop.batch()
    loop.tracker.poll()
    assert len(loop.tracker._seen) <= 50 and len(loop.tracker._clicks) <= 50


def _sample(i: int, auc: float) -> Sample:
    return Sample(
        wall_s=float(i),
        data_ts=1e9 + i,
        impressions=10 * i,
        clicks=i,
        events_per_s=11.0,
        auc_online=auc,
        auc_frozen=math.nan,
        freshness_p50_s=math.nan,
        freshness_p99_s=math.nan,
        rows={"user_id": i},
        evictions=0,
        examples=i,
        model_version=i,
    )


def test_state_is_json_from_a_sample_on_with_the_freshness_histogram():
    fresh: list[float] = []
    live = DemoLive(
        candidates=lambda n: [(2**62 + 1, 60.0)] * n,
        users=[2**63 - 1],
        clock=lambda: 1e9,
        tracker=Loop().tracker,
        freshness=fresh,
        facts={"speedup": 240.0},
    )
    st = live.state()
    assert st["samples"] == [] and st["freshness"]["n"] == 0 and st["next"] == 0
    for i in range(3):
        live.add(_sample(i, 0.6 + i / 100))
    fresh.extend([0.5, 1.0, 1.5, 9.0])
    st = json.loads(json.dumps(live.state(since=1), allow_nan=False))
    assert [s["wall_s"] for s in st["samples"]] == [1.0, 2.0] and st["next"] == 3
    assert st["samples"][0]["auc_frozen"] is None  # NaN is null
    assert st["users"] == [str(2**63 - 1)]  # ids as strings: a JS number is exact only to 2^53
    f = st["freshness"]
    assert f["n"] == 4 and sum(f["counts"]) == 4 and len(f["edges"]) == len(f["counts"]) + 1
    assert f["p50"] == 1.25 and st["speedup"] == 240.0


def test_the_demo_page_is_self_contained():
    page = demo_page()
    html = page.html.decode()
    assert "{{" not in html and "://" not in html
    for path in ("/v1/rank", "/v1/actions", "/demo/state", "/demo/click", "/demo/candidates"):
        assert path in html, path
    assert re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html) == ["data:,", "/", "/docs"]
    assert page.csp.count("'sha256-") == 5  # 3 scripts, 2 styles


def test_status_sees_trained_and_served_without_waiting_for_the_next_poll():
    loop = Loop()
    rid = "page-z:0"
    loop.tracker.status(rid)
    loop.join(rid)
    loop.tracker.poll()
    loop.t += 0.2
    loop.batch()
    loop.t += 0.5
    loop.served = 4
    st = loop.tracker.status(rid)  # no poll since the batch
    assert st["trained_s"] == 0.2 and st["served_s"] == 0.7
