"""The frequency filter against exact oracles (a dict with the same two-generation window)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError, SnapshotError
from freshrec.table.config import FilterConfig
from freshrec.table.filter import FrequencyFilter

I64 = np.iinfo(np.int64)


class WindowOracle:
    """Exact counts with the filter's window: generations of window_s, aligned to the first `now`."""

    def __init__(self, window_s: float) -> None:
        self.w = window_s
        self.start: float | None = None
        self.cur: dict[int, int] = {}
        self.prev: dict[int, int] = {}

    def advance(self, now: float) -> None:
        if self.start is None:
            self.start = now
            return
        k = math.floor((now - self.start) / self.w) if now - self.start >= self.w else 0
        if k == 1:
            self.prev, self.cur = self.cur, {}
        elif k >= 2:
            self.prev, self.cur = {}, {}
        self.start += k * self.w

    def record(self, ids, counts) -> np.ndarray:
        for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
            self.cur[i] = self.cur.get(i, 0) + c
        return self.count(ids)

    def count(self, ids) -> np.ndarray:
        return np.array([self.cur.get(i, 0) + self.prev.get(i, 0) for i in ids.tolist()], np.int64)


def wide(window_s: float = 100.0) -> FilterConfig:
    return FilterConfig(kind="count_min", width=1 << 18, depth=4, window_s=window_s)


@pytest.mark.parametrize("min_count", [2, 3, 7])
def test_admits_exactly_on_nth_occurrence(min_count: int) -> None:
    """Wide sketch, few ids: no collisions, so admission is exact, across batches and with counts > 1."""
    rng = np.random.default_rng(min_count)
    f = FrequencyFilter(wide(window_s=1e9), min_count=min_count, seed=5)
    oracle = WindowOracle(1e9)
    universe = np.concatenate(
        [rng.integers(I64.min, I64.max, 300, dtype=np.int64), [I64.min, I64.max, -1, 0]]
    )
    admitted: set[int] = set()
    for step in range(60):
        ids = np.unique(rng.choice(universe, size=40))
        ids = np.array([i for i in ids.tolist() if i not in admitted], np.int64)
        counts = rng.integers(1, 4, size=ids.shape[0]).astype(np.int64)
        got = f.admit(ids, counts, now=float(step))
        oracle.advance(float(step))
        true = oracle.record(ids, counts)
        np.testing.assert_array_equal(got, true >= min_count)
        np.testing.assert_array_equal(f.estimate(ids), true)
        admitted.update(ids[got].tolist())
    assert len(admitted) > 100  # many ids went through the admission point


def test_single_batch_with_count() -> None:
    f = FrequencyFilter(wide(), min_count=5)
    ids = np.array([10, 11, 12], np.int64)
    np.testing.assert_array_equal(f.admit(ids, np.array([4, 5, 9]), now=0.0), [False, True, True])
    np.testing.assert_array_equal(f.admit(ids[:1], np.array([1]), now=0.0), [True])


def test_counts_fade_after_two_windows() -> None:
    f = FrequencyFilter(wide(window_s=10.0), min_count=3)
    a = np.array([42], np.int64)
    one = np.array([1], np.int64)
    assert not f.admit(a, np.array([2]), now=0.0)[0]  # generation [0, 10)
    assert f.estimate(a)[0] == 2
    f.admit(np.array([7], np.int64), one, now=15.0)  # slides: [0,10) becomes previous, still counted
    assert f.estimate(a)[0] == 2
    assert f.admit(a, one, now=19.9)[0]  # 2 (previous) + 1 (current) = 3
    b = np.array([43], np.int64)
    f.admit(b, np.array([2]), now=19.9)
    f.admit(np.array([7], np.int64), one, now=20.0)  # [0,10) is gone, [10,20) is previous
    assert f.estimate(a)[0] == 1 and f.estimate(b)[0] == 2
    f.admit(np.array([7], np.int64), one, now=55.0)  # more than two windows later: all cleared
    assert f.estimate(a)[0] == 0 and f.estimate(b)[0] == 0
    assert not f.admit(b, np.array([2]), now=55.0)[0]  # counting starts over


def test_time_going_backwards_is_the_same_window() -> None:
    f = FrequencyFilter(wide(window_s=10.0), min_count=3)
    a = np.array([1], np.int64)
    f.admit(a, np.array([1]), now=100.0)
    f.admit(a, np.array([1]), now=50.0)
    assert f.admit(a, np.array([1]), now=float("nan"))[0]
    assert f.estimate(a)[0] == 3
    f.admit(a, np.array([1]), now=109.0)  # still the generation that began at 100
    assert f.estimate(a)[0] == 4


@settings(max_examples=60, deadline=None)
@given(
    width_bits=st.integers(2, 8),
    depth=st.integers(1, 5),
    min_count=st.integers(2, 6),
    batches=st.lists(
        st.tuples(
            st.floats(-5.0, 30.0),  # time step (negative: clock going back)
            st.lists(
                st.tuples(st.integers(I64.min, I64.max) | st.integers(-50, 50), st.integers(1, 5)),
                max_size=30,
            ),
        ),
        max_size=25,
    ),
    seed=st.integers(0, 2**62),
)
def test_never_under_counts(width_bits, depth, min_count, batches, seed) -> None:
    """Count-min property on tiny sketches (many collisions): estimate >= true count in the window."""
    cfg = FilterConfig(kind="count_min", width=1 << width_bits, depth=depth, window_s=10.0)
    f = FrequencyFilter(cfg, min_count=min_count, seed=seed)
    oracle = WindowOracle(10.0)
    now, seen = 0.0, set()
    for dt, pairs in batches:
        now += dt
        d = dict(pairs)  # distinct ids
        ids = np.array(list(d), np.int64)
        counts = np.array(list(d.values()), np.int64)
        got = f.admit(ids, counts, now=now)
        oracle.advance(now)
        true = oracle.record(ids, counts)
        assert np.all(got[true >= min_count])  # no id is kept out once truly frequent enough
        seen.update(d)
        every = np.array(sorted(seen), np.int64)
        assert np.all(f.estimate(every) >= oracle.count(every))


def test_saturates_without_wrapping() -> None:
    f = FrequencyFilter(FilterConfig(width=16, depth=2), min_count=65535)
    a = np.array([3], np.int64)
    assert f.admit(a, np.array([100_000]), now=0.0)[0]
    f.admit(a, np.array([100_000]), now=0.0)
    assert f.estimate(a)[0] == 65535


def test_min_count_one_admits_all_and_records_nothing() -> None:
    f = FrequencyFilter(FilterConfig(width=64, depth=2), min_count=1)
    assert f.admit(np.arange(10), np.ones(10), now=0.0).all()
    assert not f.estimate(np.arange(10)).any()
    meta, arrays = f.state()
    assert meta["gen_start"] is None and not arrays["cur"].any()


def test_nbytes_is_the_configured_size() -> None:
    for width, depth in [(1 << 10, 4), (1 << 16, 2), (8, 8)]:
        f = FrequencyFilter(FilterConfig(width=width, depth=depth), min_count=2)
        assert f.nbytes == 2 * depth * width * 2
        f.admit(np.arange(1000), np.ones(1000), now=0.0)
        assert f.nbytes == 2 * depth * width * 2
    assert FrequencyFilter(FilterConfig(kind="probabilistic"), min_count=3).nbytes == 0


def test_bad_config_and_input() -> None:
    with pytest.raises(ConfigError):
        FrequencyFilter(FilterConfig(), min_count=0)
    with pytest.raises(ConfigError):
        FrequencyFilter(FilterConfig(), min_count=70_000)
    with pytest.raises(ConfigError):
        FrequencyFilter(FilterConfig(width=100), min_count=2)
    f = FrequencyFilter(FilterConfig(width=64), min_count=2)
    with pytest.raises(ValueError):
        f.admit(np.arange(3), np.ones(2), now=0.0)
    assert f.admit(np.zeros(0, np.int64), np.zeros(0, np.int64), now=0.0).shape == (0,)


# ---- probabilistic -----------------------------------------------------------------------------


@pytest.mark.parametrize("min_count", [2, 5, 20])
def test_probabilistic_rate_matches_theory(min_count: int) -> None:
    f = FrequencyFilter(FilterConfig(kind="probabilistic"), min_count=min_count, seed=11)
    n = 100_000
    p = 1.0 / min_count
    # one occurrence each: rate p; std of the mean <= 0.0016, bound 0.01 is > 6 sigma
    assert abs(f.admit(np.arange(n), np.ones(n), now=0.0).mean() - p) < 0.01
    # c occurrences in one batch: 1 - (1 - p)^c
    for c in (2, 5):
        rate = f.admit(np.arange(n, 2 * n), np.full(n, c), now=0.0).mean()
        assert abs(rate - (1 - (1 - p) ** c)) < 0.01
    # one occurrence per batch over k batches, offering only ids not yet admitted
    ids = np.arange(3 * n, 4 * n, dtype=np.int64)
    pending = np.ones(n, bool)
    for _ in range(min_count):
        a = f.admit(ids[pending], np.ones(int(pending.sum())), now=0.0)
        pending[np.flatnonzero(pending)[a]] = False
    expect = 1 - (1 - p) ** min_count  # ~63% after min_count sightings
    assert abs((~pending).mean() - expect) < 0.01


def test_probabilistic_is_deterministic_and_seeded() -> None:
    ids = np.arange(10_000, dtype=np.int64)
    one = np.ones(10_000, np.int64)
    a = FrequencyFilter(FilterConfig(kind="probabilistic"), min_count=3, seed=1)
    b = FrequencyFilter(FilterConfig(kind="probabilistic"), min_count=3, seed=1)
    c = FrequencyFilter(FilterConfig(kind="probabilistic"), min_count=3, seed=2)
    ra, rb, rc = a.admit(ids, one, 0.0), b.admit(ids, one, 0.0), c.admit(ids, one, 0.0)
    np.testing.assert_array_equal(ra, rb)
    assert (ra != rc).sum() > 1000
    assert (a.admit(ids, one, 0.0) != ra).sum() > 1000  # the draw counter moved: fresh draws


# ---- snapshots ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["count_min", "probabilistic"])
def test_state_round_trip_gives_identical_future(kind: str) -> None:
    cfg = FilterConfig(kind=kind, width=1 << 8, depth=3, window_s=10.0)
    rng = np.random.default_rng(0)
    batches = [
        (np.unique(rng.integers(-500, 500, 200)), float(t) * 3.0) for t in range(30)
    ]  # small width: collisions matter, windows slide
    f = FrequencyFilter(cfg, min_count=4, seed=9)
    for ids, now in batches[:15]:
        f.admit(ids, np.ones_like(ids), now)
    meta, arrays = f.state()
    meta = json.loads(json.dumps(meta))  # JSON-able
    g = FrequencyFilter.from_state(cfg, meta, {k: v.copy() for k, v in arrays.items()}, min_count=4, seed=9)
    for ids, now in batches[15:]:
        np.testing.assert_array_equal(
            f.admit(ids, np.ones_like(ids), now), g.admit(ids, np.ones_like(ids), now)
        )
        np.testing.assert_array_equal(f.estimate(ids), g.estimate(ids))
    m2, a2 = g.state()
    assert m2 == f.state()[0]
    for k in a2:
        np.testing.assert_array_equal(a2[k], f.state()[1][k])


def test_from_state_refuses_mismatch() -> None:
    cfg = FilterConfig(width=64, depth=2)
    f = FrequencyFilter(cfg, min_count=2, seed=1)
    f.admit(np.arange(5), np.ones(5), now=0.0)
    meta, arrays = f.state()
    with pytest.raises(SnapshotError, match="width"):
        FrequencyFilter.from_state(FilterConfig(width=128, depth=2), meta, arrays, min_count=2, seed=1)
    with pytest.raises(SnapshotError, match="seed"):
        FrequencyFilter.from_state(cfg, meta, arrays, min_count=2, seed=2)
    with pytest.raises(SnapshotError, match="cur"):
        FrequencyFilter.from_state(cfg, meta, {"prev": arrays["prev"]}, min_count=2, seed=1)
    with pytest.raises(SnapshotError, match="prev"):
        bad = {"cur": arrays["cur"], "prev": arrays["prev"].astype(np.int32)}
        FrequencyFilter.from_state(cfg, meta, bad, min_count=2, seed=1)
    with pytest.raises(SnapshotError, match="version"):
        FrequencyFilter.from_state(cfg, {**meta, "version": 99}, arrays, min_count=2, seed=1)
    # a different min_count is allowed: the counts keep their meaning
    g = FrequencyFilter.from_state(cfg, meta, arrays, min_count=3, seed=1)
    assert g.admit(np.array([0]), np.array([2]), now=1.0)[0]


def test_bench_replay_on_a_synthetic_stream() -> None:
    """`freshrec bench filter`'s replay: count-min never misses, a wide sketch is exact."""
    from freshrec.bench.filter import run

    rng = np.random.default_rng(0)
    n = 20_000
    clicks = {
        "user_id": rng.zipf(1.5, n).clip(max=5000).astype(np.int64),
        "click_article_id": rng.integers(0, 3000, n).astype(np.int64),
        "click_timestamp": np.sort(rng.integers(0, 3 * 86_400_000, n)).astype(np.int64),
    }
    rows = run(
        clicks,
        batch=1000,
        window_s=86_400.0,
        widths=[1 << 6, 1 << 16],
        depth=4,
        min_counts=[3],
        progress=False,
    )
    assert {r["ids"] for r in rows} == {"article", "user"}
    for r in rows:
        if r["filter"].startswith("count_min"):
            assert r["missed"] == 0
        if r["width"] == 1 << 16:
            exact = next(x for x in rows if x["ids"] == r["ids"] and x["filter"] == "exact (dict)")
            assert r["false_admits"] == 0 and r["admitted"] == exact["admitted"] > 100
        if r["width"] == 1 << 6:
            assert r["false_admits"] > 0  # a tiny sketch over-admits: the measurement can see it
