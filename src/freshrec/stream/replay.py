"""Replay the Globo.com clicks as a live stream of served impressions and clicks.

The Globo dataset has clicks only. To make a serving log out of it, every click becomes one
*request* at the click's time that served `k + 1` articles: the clicked one plus `k` others that
were live then, drawn from the articles clicked in a trailing window before this click (so in
proportion to their recent popularity, never from the future). Each served article is one
`FeatureEvent` with request_id `"g<click index>:<position>"` (positions 0..k, the clicked article
at a random one); the click itself is an `ActionEvent("click", 1.0)` on the clicked impression,
`click_delay_s` later. Events come out in data-time order.

Features of an impression (all from the click's row; slot names are the keys of `sparse`):

    sparse: user_id, item_id, environment, device_group, os, country, region, referrer_type
            (one id each: the slot names of `freshrec.data.globo.load_globo`)
    dense:  position (0..k, the slot in the served list)

`globo_events` is the generator that online training, the demo and the experiments read;
`replay_to_logs` writes it into a features log and an actions log, optionally paced.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freshrec.errors import ConfigError
from freshrec.stream.events import ActionEvent, FeatureEvent, encode_action, encode_feature
from freshrec.stream.log import Log

__all__ = ["GloboClicks", "ReplayStats", "globo_events", "load_globo_clicks", "replay_to_logs"]

_COLUMNS = {
    "user_id": "user",
    "click_article_id": "item",
    "click_environment": "env",
    "click_deviceGroup": "device",
    "click_os": "os",
    "click_country": "country",
    "click_region": "region",
    "click_referrer_type": "referrer",
}
# slot names of the impressions: the same as `freshrec.data.globo.load_globo`'s, so a model batch
# trained on the files reads the replayed stream's features under the same names
SLOT_NAMES = {
    "user": "user_id",
    "item": "item_id",
    "env": "environment",
    "device": "device_group",
    "os": "os",
    "country": "country",
    "region": "region",
    "referrer": "referrer_type",
}


@dataclass(frozen=True, slots=True)
class GloboClicks:
    """The clicks sorted by time: `ts` in seconds (float64) and one int64 array per slot."""

    ts: np.ndarray
    slots: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ts)


def load_globo_clicks(path: str | os.PathLike, *, limit: int | None = None) -> GloboClicks:
    """Read `clicks.csv(.gz)` with pyarrow, sort by `click_timestamp` (stable), keep the first `limit`.

    Raises `ConfigError` when the file is missing or lacks a column.
    """
    import pyarrow.compute as pc
    from pyarrow import csv

    path = Path(path)
    if not path.is_file():
        msg = f"Globo clicks file {path} not found (expected .../globo/clicks.csv.gz)"
        raise ConfigError(msg)
    wanted = ["click_timestamp", *_COLUMNS]
    table = csv.read_csv(path, convert_options=csv.ConvertOptions(include_columns=wanted))
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        msg = f"Globo clicks file {path}: missing columns {missing}"
        raise ConfigError(msg)
    order = pc.sort_indices(table, sort_keys=[("click_timestamp", "ascending")])
    if limit is not None:
        order = order[: max(int(limit), 0)]
    table = table.take(order)
    ts = table.column("click_timestamp").to_numpy().astype(np.float64) / 1000.0
    slots = {slot: table.column(col).to_numpy().astype(np.int64) for col, slot in _COLUMNS.items()}
    return GloboClicks(ts=ts, slots=slots)


def globo_events(
    path: str | os.PathLike | GloboClicks,
    *,
    limit: int | None = None,
    k: int = 4,
    seed: int = 0,
    click_delay_s: float = 1.0,
    trailing_s: float = 3600.0,
    trailing_max: int = 100_000,
) -> Iterator[FeatureEvent | ActionEvent]:
    """The replay stream, in data-time order (see the module docstring).

    Args:
        path: the clicks file, or clicks already loaded with `load_globo_clicks`.
        limit: use the first `limit` clicks (in time order); None for all.
        k: non-clicked articles served with each click (fewer while the trailing window is young).
        seed: seed of the negative draws and positions.
        click_delay_s: data time between an impression and its click.
        trailing_s / trailing_max: the window of past clicks the negatives are drawn from.
    """
    if k < 0 or click_delay_s < 0 or trailing_s <= 0 or trailing_max < 1:
        msg = f"globo_events: bad k={k}, click_delay_s={click_delay_s}, trailing_s={trailing_s}"
        raise ConfigError(msg)
    clicks = path if isinstance(path, GloboClicks) else load_globo_clicks(path, limit=limit)
    n = len(clicks) if limit is None else min(len(clicks), limit)
    rng = np.random.default_rng(seed)
    ts_all = clicks.ts
    items = clicks.slots["item"]
    cols = {s: a.tolist() for s, a in clicks.slots.items()}
    # trailing window of past clicks: a ring of (ts, item)
    ring_item = np.zeros(trailing_max, dtype=np.int64)
    ring_ts = np.zeros(trailing_max, dtype=np.float64)
    head = tail = 0  # live entries are [head, tail) modulo trailing_max
    pending: deque[ActionEvent] = deque()
    # random numbers in blocks: k draws + 1 position per click, with spare draws for rejections
    block = 4096
    draws = rng.random((block, 3 * k + 1))
    di = 0
    for i in range(n):
        t = float(ts_all[i])
        while pending and pending[0].ts <= t:
            yield pending.popleft()
        while tail > head and ring_ts[head % trailing_max] < t - trailing_s:
            head += 1
        live = tail - head
        if di == block:
            draws, di = rng.random((block, 3 * k + 1)), 0
        row = draws[di]
        di += 1
        clicked = int(items[i])
        served = [clicked]
        if live and k:
            for u in row[: 3 * k]:
                a = int(ring_item[(head + int(u * live)) % trailing_max])
                if a not in served:
                    served.append(a)
                    if len(served) == k + 1:
                        break
        pos_clicked = int(row[3 * k] * len(served))
        served[0], served[pos_clicked] = served[pos_clicked], served[0]
        base = {SLOT_NAMES[s]: [c[i]] for s, c in cols.items() if s != "item"}
        uid = cols["user"][i]
        for pos, item in enumerate(served):
            sparse = dict(base)
            sparse["item_id"] = [item]
            yield FeatureEvent(f"g{i}:{pos}", uid, item, sparse, {"position": float(pos)}, t)
        pending.append(ActionEvent(f"g{i}:{pos_clicked}", "click", 1.0, t + click_delay_s))
        ring_item[tail % trailing_max] = clicked
        ring_ts[tail % trailing_max] = t
        tail += 1
        if tail - head > trailing_max:
            head = tail - trailing_max
    yield from pending


@dataclass(slots=True)
class ReplayStats:
    """What `replay_to_logs` wrote."""

    features: int = 0
    actions: int = 0
    first_ts: float | None = None
    last_ts: float | None = None


def replay_to_logs(
    events: Iterable[FeatureEvent | ActionEvent],
    features: Log,
    actions: Log,
    *,
    speedup: float = 0.0,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    flush_every: int = 50_000,
    progress: Callable[[int], None] | None = None,
) -> ReplayStats:
    """Append `events` to the features/actions logs (keyed by request_id), then flush both.

    With `speedup > 0` the replay is paced: an event with data time t is appended no earlier than
    `(t - t_first) / speedup` seconds of `clock()` after the start (the logs are flushed before
    each wait, so readers see the events on time). `speedup == 0` writes as fast as possible.
    `clock`/`sleep` are injected (the CLI passes `time.monotonic`/`time.sleep`).
    `progress(n)` is called with the number of events written since its last call.
    """
    if speedup < 0:
        msg = f"speedup must be >= 0 (0 = as fast as possible), got {speedup}"
        raise ConfigError(msg)
    if speedup > 0 and (clock is None or sleep is None):
        msg = "a paced replay (speedup > 0) needs clock and sleep"
        raise ConfigError(msg)
    stats = ReplayStats()
    wall0 = clock() if clock is not None and speedup > 0 else 0.0
    since = 0
    for e in events:
        if stats.first_ts is None:
            stats.first_ts = e.ts
        stats.last_ts = e.ts
        if speedup > 0:
            assert clock is not None and sleep is not None
            wait = wall0 + (e.ts - stats.first_ts) / speedup - clock()
            if wait > 0:
                features.flush()
                actions.flush()
                sleep(wait)
        key = e.request_id.encode("utf-8")
        if isinstance(e, FeatureEvent):
            features.append(encode_feature(e), key=key)
            stats.features += 1
        else:
            actions.append(encode_action(e), key=key)
            stats.actions += 1
        since += 1
        if since >= flush_every:
            features.flush()
            actions.flush()
            if progress is not None:
                progress(since)
            since = 0
    features.flush()
    actions.flush()
    if progress is not None and since:
        progress(since)
    return stats
