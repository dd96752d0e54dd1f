"""`freshrec demo`: the whole loop in one process, on the embedded default (no servers to install).

    simulated users ──HTTP /v1/rank──► model server (serving replica) ──► features log
          │ clicks (true P(click) of the simulated platform)                 │
          └──────────────────────────────────────────────► actions log ──────┤
                                                                             ▼
       serving replica ◄── parameter log ◄── sync publisher ◄── online trainer ◄── joiner ──► examples log

A simulated short-video platform (`freshrec.data.synthetic`: users whose tastes drift, new items
every few data-minutes that go stale within hours) sends requests to a real HTTP model server;
the shown items are logged as impressions; simulated users click with the platform's true
probability; the joiner joins clicks to impressions, the online trainer learns from the examples,
and every `sync_interval_s` the touched rows travel to the serving replica through the parameter
log. A frozen copy of the batch-trained starting model scores the same impressions, so the AUC
of the two over time shows what learning in real time buys.

Data time runs `speedup` times faster than wall time; the model server's impressions are stamped
with it. Every role runs in its own thread here; `freshrec join|train|serve` run them as processes.

With `ui` (the default) the model server also serves the demo's live page at /demo
(`freshrec.demo.page`): a feed to click in, through the same /v1/rank and /v1/actions, and the
charts of the run; and the replica's health at /.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from freshrec.data.synthetic import SyntheticConfig, SyntheticPlatform
from freshrec.demo.report import DemoTrace, RollingAUC, Sample
from freshrec.stream.events import ActionEvent, encode_action

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Shape of a demo run. Times marked (data) are data-time seconds, the rest wall seconds."""

    minutes: float = 3.0
    speedup: float = 240.0
    requests_per_s: float = 40.0
    candidates: int = 30
    shown: int = 4
    sync_interval_s: float = 1.0
    dense_interval_s: float = 10.0
    warmup_hours: float = 3.0  # (data) history the frozen batch model is trained on
    warmup_impressions: int = 60_000
    click_window_s: float = 60.0  # (data) join window of a click
    item_ttl_s: float = 4 * 3600.0  # (data) item rows expire after this long unseen
    user_min_count: int = 2  # a user gets a row after this many impressions
    n_users: int = 3000
    new_items_per_hour: float = 240.0
    drift_per_hour: float = 0.35
    report_every_s: float = 5.0  # a progress line this often
    sample_every_s: float = 1.0  # a point of the time series (the page's charts, the plots) this often
    ui: bool = True  # serve the live page at /demo
    port: int = 0  # of the model server (0: a free one)
    seed: int = 0
    out_dir: Path = Path("runs/demo")
    data: str = "synthetic"  # or "globo": replay the real Globo stream instead of the simulation
    globo_path: Path | None = None
    globo_warmup_clicks: int = 60_000
    globo_live_clicks: int = 400_000


class SimClock:
    """Data time = start + speedup x wall seconds since `start()`."""

    def __init__(self, start_ts: float, speedup: float, wall: Callable[[], float] = time.monotonic) -> None:
        self.start_ts = start_ts
        self.speedup = speedup
        self._wall = wall
        self._w0 = wall()

    def start(self) -> None:
        self._w0 = self._wall()

    def __call__(self) -> float:
        return self.start_ts + (self._wall() - self._w0) * self.speedup

    def wall_elapsed(self) -> float:
        return self._wall() - self._w0


def _platform(cfg: DemoConfig) -> SyntheticPlatform:
    duration = cfg.warmup_hours * 3600 + cfg.minutes * 60 * cfg.speedup + 3600
    return SyntheticPlatform(
        SyntheticConfig(
            n_users=cfg.n_users,
            n_items_start=300,
            new_items_per_hour=cfg.new_items_per_hour,
            duration_s=duration,
            drift_per_hour=cfg.drift_per_hour,
            freshness_half_life_s=2 * 3600.0,
            taste_scale=1.5,
            quality_std=1.0,
            seed=cfg.seed,
        )
    )


GLOBO_SLOTS = (
    "user_id", "item_id", "environment", "device_group", "os", "country", "region", "referrer_type"
)  # fmt: skip


class GloboStream:
    """The real Globo stream (`freshrec.stream.replay.globo_events`) cut into a history, for the
    batch-trained starting model, and a live part replayed at the demo's speed-up.

    Impressions are the replay's served articles (the clicked one plus 4 popular ones); a served
    impression's label is whether the replay clicks it, known here only to score predictions.
    """

    def __init__(self, path: Path, *, warmup_clicks: int, live_clicks: int, seed: int) -> None:
        from freshrec.stream.events import FeatureEvent
        from freshrec.stream.replay import globo_events, load_globo_clicks

        clicks = load_globo_clicks(path, limit=warmup_clicks + live_clicks)
        events = list(globo_events(clicks, k=4, seed=seed))
        self.clicked = {e.request_id for e in events if isinstance(e, ActionEvent)}
        self.start_ts = float(clicks.ts[min(warmup_clicks, len(clicks) - 1)])
        self.history = [e for e in events if isinstance(e, FeatureEvent) and e.ts < self.start_ts]
        self.live = [e for e in events if e.ts >= self.start_ts]
        self._pos = 0

    def history_dataset(self):
        from freshrec.stream.events import Example
        from freshrec.train.examples import ExampleSchema, examples_to_dataset

        ex = [
            Example(
                request_id=e.request_id,
                user_id=e.user_id,
                item_id=e.item_id,
                sparse=e.sparse,
                dense={},
                labels={"click": 1.0 if e.request_id in self.clicked else 0.0},
                sample_rate=1.0,
                ts=e.ts,
            )
            for e in self.history
        ]
        return examples_to_dataset(ex, ExampleSchema(slots=GLOBO_SLOTS), name="globo-history")

    def until(self, ts: float) -> list:
        """The live events with data time <= ts not returned yet, in order."""
        lo = self._pos
        while self._pos < len(self.live) and self.live[self._pos].ts <= ts:
            self._pos += 1
        return self.live[lo : self._pos]

    @property
    def done(self) -> bool:
        return self._pos >= len(self.live)


def _globo_tick(
    globo: GloboStream, now: float, client: httpx.Client, frozen_rep, features, actions, recent=None
):
    """Replay the Globo events up to `now`: score the impressions (online over HTTP, frozen in
    process) before logging them, then log impressions and clicks (their items, newest last, to
    `recent` when given). Returns (online, frozen, clicked, click data times) or None when nothing
    was due."""
    from freshrec.stream.events import FeatureEvent, encode_feature

    due = globo.until(now)
    if not due:
        return None
    imps = [e for e in due if isinstance(e, FeatureEvent)]
    online, frozen = [], []
    for lo in range(0, len(imps), 500):
        chunk = imps[lo : lo + 500]
        body = [
            {
                "user_id": e.user_id,
                "item_id": e.item_id,
                "sparse": {k: v for k, v in e.sparse.items() if k in GLOBO_SLOTS},
            }
            for e in chunk
        ]
        r = client.post("/v1/predict", json={"examples": body})
        r.raise_for_status()
        online.extend(r.json()["probabilities"])
        frozen.extend(frozen_rep.predict(body).tolist())
    for e in imps:
        features.append(encode_feature(e), key=e.request_id.encode())
        if recent is not None:
            recent.append((e.item_id, e.ts))
    features.flush()
    click_ts = []
    for e in due:
        if isinstance(e, ActionEvent):
            actions.append(encode_action(e), key=e.request_id.encode())
            click_ts.append(e.ts)
    actions.flush()
    clicked = np.array([e.request_id in globo.clicked for e in imps], dtype=bool)
    return np.array(online), np.array(frozen), clicked, click_ts


def _live_page(cfg, app, pipe, trainer, publisher, replica, clock, trace, world, globo, recent):
    """With `cfg.ui`: the page's state and routes on the demo's app (`freshrec.demo.page`), its
    click tracker on the examples log (from its end) and the trainer; else None."""
    if not cfg.ui:
        return None
    from freshrec.demo.page import DemoLive, mount
    from freshrec.demo.tracker import ClickTracker

    ex_log = pipe.log(pipe.config.examples)
    watch = ex_log.consumer("demo-page")
    for p, end in enumerate(ex_log.end_offsets()):
        watch.seek(p, end)
    tracker = ClickTracker(
        watch, published_version=lambda: publisher.version, served_version=lambda: replica.version
    )
    trainer.add_hook(tracker.on_batch)
    rng = np.random.default_rng(cfg.seed + 2)  # used by the server's thread only
    if world is not None:
        born = dict(zip(world.item_ids.tolist(), world.item_born.tolist(), strict=True))
        users = [int(u) for u in rng.choice(world.user_ids, size=8, replace=False)]

        def candidates(n: int) -> list[tuple[int, float]]:
            now = clock()
            newest = world.live_items(now)[-200:]  # as the simulated requests: the newest items
            pick = rng.choice(newest, size=min(n, len(newest)), replace=False)
            return [(int(i), now - born[int(i)]) for i in pick]

    else:
        counts = collections.Counter(e.user_id for e in globo.history)
        users = [u for u, _ in counts.most_common(8)]

        def candidates(n: int) -> list[tuple[int, float]]:
            now, first = clock(), dict[int, float]()
            for item, ts in list(recent):
                first.setdefault(item, ts)
            newest = list(first)[-200:]
            if not newest:
                return []
            pick = rng.choice(len(newest), size=min(n, len(newest)), replace=False)
            return [(int(newest[i]), now - first[newest[i]]) for i in pick.tolist()]

    facts = {
        "data": cfg.data,
        "speedup": cfg.speedup,
        "sync_interval_s": cfg.sync_interval_s,
        "minutes": cfg.minutes,
        "click_window_s": cfg.click_window_s,
        "requests_per_s": cfg.requests_per_s,
    }
    live = DemoLive(
        candidates=candidates,
        users=users,
        clock=clock,
        tracker=tracker,
        freshness=trace.freshness_s,
        facts=facts,
    )
    mount(app, live)
    return live


def _progress_line(s: Sample, events_per_s: float, t_live: float) -> str:
    hours = (s.data_ts - t_live) / 3600
    return (
        f"[{s.wall_s:5.0f}s | data +{hours:4.1f}h] {events_per_s:6.0f} events/s | AUC online "
        f"{s.auc_online:.3f} vs frozen {s.auc_frozen:.3f} | fresh p50 {s.freshness_p50_s:.1f}s "
        f"p99 {s.freshness_p99_s:.1f}s | rows "
        + " ".join(f"{k}={v}" for k, v in s.rows.items())
        + f" | evicted {s.evictions} | v{s.model_version} | examples {s.examples}"
    )


def run_demo(cfg: DemoConfig, *, log: Callable[[str], None] = print) -> tuple[DemoTrace, dict]:
    """Run the loop for `cfg.minutes`; returns the trace and the objects' final stats."""
    from freshrec.data.splits import split_by_time
    from freshrec.pipeline import Pipeline, PipelineConfig
    from freshrec.ps.serving import ServingReplica
    from freshrec.serve.server import ServerThread
    from freshrec.stream.joiner import JOIN_TABLES, JoinerConfig
    from freshrec.stream.local_log import LocalBackend
    from freshrec.stream.store import LmdbStore
    from freshrec.train.batch import TrainConfig, load_checkpoint, save_checkpoint, train_model
    from freshrec.train.online import OnlineConfig

    out = Path(cfg.out_dir)
    work = out / "state"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    globo: GloboStream | None = None
    tcfg = TrainConfig(
        epochs=2,
        batch_size=512,
        dim=8,
        hidden=(64, 32),
        sparse_lr=0.05,
        seed=cfg.seed,
        table_overrides={"user_id": {"min_count": cfg.user_min_count}, "item_id": {"ttl_s": cfg.item_ttl_s}},
    )
    if cfg.data == "globo":
        from freshrec.data.paths import dataset_path

        path = cfg.globo_path or dataset_path("globo") / "clicks.csv.gz"
        log(f"[demo] loading the Globo stream from {path} ...")
        globo = GloboStream(
            path, warmup_clicks=cfg.globo_warmup_clicks, live_clicks=cfg.globo_live_clicks, seed=cfg.seed
        )
        t_live = globo.start_ts
        history = globo.history_dataset()
        log(f"[demo] batch-training the starting model on {len(history):,} Globo impressions ...")
        world = None
    else:
        world = _platform(cfg)
        t0 = world.config.start_ts
        t_live = t0 + cfg.warmup_hours * 3600
        log(
            f"[demo] batch-training the starting model on {cfg.warmup_impressions:,} impressions "
            f"({cfg.warmup_hours:g} h of history) ..."
        )
        history = world.log(cfg.warmup_impressions, start_ts=t0, end_ts=t_live, seed=cfg.seed)
    train, test = split_by_time(history, train_frac=0.9)
    result = train_model(train, test, tcfg)
    log(f"[demo] starting model: AUC {result.final.auc:.4f} on the last 10% of the history")
    assert result.ps is not None
    ckpt = save_checkpoint(result.ps, work / "batch-snapshot")
    frozen, _ = load_checkpoint(ckpt)
    frozen.eval()
    frozen_rep = ServingReplica.from_snapshot(ckpt) if globo is not None else None

    # 2. the loop's roles, built by one pipeline over the local log: joiner, trainer, publisher,
    #    replica, HTTP app
    backend = LocalBackend(work / "logs")
    pipe = Pipeline(
        PipelineConfig(
            log=str(work / "logs"),
            joiner=JoinerConfig(
                windows={"click": cfg.click_window_s},
                allowed_lateness_s=5.0,
                emit_early_positives=True,
                poll_timeout_s=0.05,
            ),
            online=OnlineConfig(batch_size=256, poll_timeout_s=0.2, evict_every=20, dense_lr=1e-3),
            init=ckpt,
            sync_interval_s=cfg.sync_interval_s,
            dense_interval_s=cfg.dense_interval_s,
        ),
        backend=backend,
    )
    features, actions = pipe.log("features"), pipe.log("actions")
    dead = pipe.log("dead-letters")
    joiner_box: dict[str, Any] = {}
    joiner_ready = threading.Event()

    def run_joiner() -> None:
        # An LMDB write transaction belongs to the thread that began it: the store is opened here.
        store = LmdbStore(work / "joiner", JOIN_TABLES, map_size=1 << 30, sync=False)
        j = pipe.joiner(store)
        joiner_box["j"] = j
        joiner_ready.set()
        try:
            j.run(should_stop=stop.is_set, idle_sleep_s=0.02)
        finally:
            j.close()
            store.close()

    trainer = pipe.trainer()
    publisher = pipe.publisher(trainer)
    stop = threading.Event()

    # 3. the serving replica (the trainer's state, then the parameter log) behind a real HTTP server
    replica, subscriber = pipe.replica(publisher=publisher, group="demo-serving")
    clock = SimClock(t_live, cfg.speedup)
    app = pipe.app(replica, subscriber, clock=clock)
    trace = DemoTrace()
    seen: collections.deque[tuple[int, float]] = collections.deque(maxlen=2000)  # globo: (item, ts)
    page = _live_page(cfg, app, pipe, trainer, publisher, replica, clock, trace, world, globo, seen)
    server = ServerThread(app, port=cfg.port).start()
    subscriber.start()
    log(
        f"[demo] model server on {server.url}; sync every {cfg.sync_interval_s:g} s, serving: "
        f"{cfg.minutes:g} min at {cfg.speedup:g}x data time."
    )
    if page is not None:
        log(f"[demo] live page: {server.url}/demo  (the model server's health: {server.url}/)")

    examples_log, consumer = pipe.examples_consumer(trainer, group="demo-trainer")
    threads = [
        threading.Thread(target=run_joiner, name="joiner"),
        threading.Thread(
            target=lambda: trainer.run(consumer, until_idle=False, stop=stop.is_set, log=examples_log),
            name="trainer",
        ),
    ]
    pub_thread, pub_stop = publisher.start()
    for th in threads:
        th.start()
    joiner_ready.wait(30)
    joiner = joiner_box["j"]

    roll_on, roll_fr = RollingAUC(4000), RollingAUC(4000)
    pending_fresh: collections.deque[tuple[float, float]] = collections.deque()
    rng = np.random.default_rng(cfg.seed + 1)
    client = httpx.Client(base_url=server.url, timeout=10.0)
    n_imp = n_click = 0
    events_mark, wall_mark = 0, 0.0
    next_report = cfg.report_every_s
    next_sample = cfg.sample_every_s
    sample_mark, sample_wall = 0, 0.0
    clock.start()
    deadline = cfg.minutes * 60.0
    budget = 0.0
    try:
        while (elapsed := clock.wall_elapsed()) < deadline:
            if globo is not None:
                if globo.done:
                    log("[demo] the Globo stream is exhausted")
                    break
                got = _globo_tick(globo, clock(), client, frozen_rep, features, actions, seen)
                if got is not None:
                    online, frozen_scores, clicks, click_ts = got
                    for ts_c in click_ts:
                        pending_fresh.append((ts_c, time.monotonic()))
                    trace.add_impressions(elapsed, online, frozen_scores, clicks.astype(float))
                    roll_on.push(online, clicks)
                    roll_fr.push(frozen_scores, clicks)
                    n_imp += len(clicks)
                    n_click += len(click_ts)
            n_req = 0
            if world is not None:
                budget += cfg.requests_per_s * 0.05
                n_req = int(budget)
                budget -= n_req
            for _ in range(n_req):
                assert world is not None
                now = clock()
                live = world.live_items(now)
                # candidates: recent items first (what a feed retrieves), plus some older ones
                recent = live[-200:]
                cands = rng.choice(recent, size=min(cfg.candidates, len(recent)), replace=False)
                user = int(world.user_ids[rng.integers(0, len(world.user_ids))])
                r = client.post(
                    "/v1/rank", json={"user_id": user, "candidates": cands.tolist(), "top_k": cfg.shown}
                )
                r.raise_for_status()
                body = r.json()
                items = np.array([it["item_id"] for it in body["items"]], dtype=np.int64)
                online = np.array([it["score"] for it in body["items"]], dtype=np.float64)
                p = world.click_prob(np.full(len(items), user, np.int64), items, now)
                clicks = rng.random(len(items)) < p
                with torch.no_grad():
                    frozen_scores = frozen(
                        {
                            "user_id": torch.full((len(items),), user, dtype=torch.int64),
                            "item_id": torch.from_numpy(items),
                        }
                    ).numpy()
                for pos in np.flatnonzero(clicks):
                    ev = ActionEvent(
                        request_id=f"{body['request_id']}:{pos}",
                        action="click",
                        value=1.0,
                        ts=now + float(rng.uniform(1.0, 20.0)),
                    )
                    actions.append(encode_action(ev), key=ev.request_id.encode())
                    pending_fresh.append((now, time.monotonic()))
                trace.add_impressions(elapsed, online, frozen_scores, clicks.astype(float))
                roll_on.push(online, clicks)
                roll_fr.push(frozen_scores, clicks)
                n_imp += len(items)
                n_click += int(clicks.sum())
            actions.flush()
            served_ts = replica.data_ts
            while pending_fresh and served_ts is not None and pending_fresh[0][0] <= served_ts:
                trace.freshness_s.append(time.monotonic() - pending_fresh.popleft()[1])
            if page is not None:
                page.tracker.poll()
            if elapsed >= next_sample:
                next_sample += cfg.sample_every_s
                ev_rate = (n_imp + n_click - sample_mark) / max(elapsed - sample_wall, 1e-9)
                sample_mark, sample_wall = n_imp + n_click, elapsed
                m = trainer.metrics()
                f = trace.freshness_s[-500:]
                s = Sample(
                    wall_s=elapsed,
                    data_ts=clock(),
                    impressions=n_imp,
                    clicks=n_click,
                    events_per_s=ev_rate,
                    auc_online=roll_on.value(),
                    auc_frozen=roll_fr.value(),
                    freshness_p50_s=float(np.percentile(f, 50)) if f else math.nan,
                    freshness_p99_s=float(np.percentile(f, 99)) if f else math.nan,
                    rows=dict(m.table_rows),
                    evictions=sum(t.evictions for t in trainer.tables.values()),
                    examples=joiner.stats.examples,
                    model_version=replica.version,
                )
                trace.samples.append(s)
                if page is not None:
                    page.add(s)
                if elapsed >= next_report:
                    next_report += cfg.report_every_s
                    rate = (n_imp + n_click - events_mark) / max(elapsed - wall_mark, 1e-9)
                    events_mark, wall_mark = n_imp + n_click, elapsed
                    log(_progress_line(s, rate, t_live))
            time.sleep(0.05)
    finally:
        if page is not None:
            page.done = True
        stop.set()
        pub_stop.set()
        for th in threads:
            th.join(timeout=30)
        pub_thread.join(timeout=30)
        client.close()
        server.stop()
        subscriber.stop()
        n_dead = int(sum(dead.end_offsets()))
        backend.close()
    return trace, {"dead_letters": n_dead}
