"""Dataset loaders (MovieLens, Globo, Criteo), the columnar Dataset, and time-ordered splits."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.data.criteo import CATEGORICAL, INTEGER, load_criteo, parse_hex
from freshrec.data.dataset import Dataset, Ragged, concat, stable_ids
from freshrec.data.globo import load_globo, sample_trailing_negatives
from freshrec.data.movielens import load_movielens
from freshrec.data.paths import dataset_path
from freshrec.data.splits import split_by_order, split_by_time, time_shards, time_windows
from freshrec.data.synthetic import SyntheticConfig, SyntheticPlatform

ML100K = dataset_path("movielens-100k")
CRITEO = dataset_path("criteo-sample")
GLOBO = dataset_path("globo")

needs_ml = pytest.mark.shared_data("movielens-100k/u.data")
needs_criteo = pytest.mark.shared_data("criteo-sample/train.csv")
needs_globo = pytest.mark.shared_data("globo/clicks.csv.gz")


# ---------------------------------------------------------------- Dataset


def small_dataset(n: int = 10) -> Dataset:
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 4, n)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    return Dataset.build(
        "small",
        sparse={"user_id": np.arange(n) + 100, "item_id": np.arange(n) * 7},
        label=(np.arange(n) % 2).astype(np.float32),
        ts=rng.permutation(n).astype(np.float64),
        dense=np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        multi={"tags": Ragged(np.arange(offsets[-1]) + 1000, offsets)},
    )


def ragged_rows(r: Ragged) -> list[list[int]]:
    return [r.values[r.offsets[i] : r.offsets[i + 1]].tolist() for i in range(len(r))]


def test_dataset_take_and_columns() -> None:
    ds = small_dataset()
    assert len(ds) == 10 and ds.slots == ("user_id", "item_id") and ds.multi_slots == ("tags",)
    assert ds.dense_names == ("d0", "d1") and ds.has_time
    rows = ragged_rows(ds.multi["tags"])
    idx = np.array([3, 0, 3, 9])
    sub = ds.take(idx)
    assert sub.sparse["user_id"].tolist() == [103, 100, 103, 109]
    assert ragged_rows(sub.multi["tags"]) == [rows[i] for i in idx]
    assert sub.dense.tolist() == ds.dense[idx].tolist()
    mask = ds.label == 1
    assert ds.take(mask).sparse["item_id"].tolist() == (np.flatnonzero(mask) * 7).tolist()
    sl = ds.take(slice(2, 6))
    assert ragged_rows(sl.multi["tags"]) == rows[2:6] and sl.ts.tolist() == ds.ts[2:6].tolist()
    assert ragged_rows(ds.take(slice(None, None, -3)).multi["tags"]) == rows[::-3]
    srt = ds.sorted_by_time()
    assert srt.is_time_sorted() and not ds.is_time_sorted()
    assert sorted(srt.sparse["user_id"].tolist()) == ds.sparse["user_id"].tolist()


@settings(max_examples=60, deadline=None)
@given(
    lens=st.lists(st.integers(0, 4), max_size=12),
    picks=st.lists(st.integers(0, 1000), max_size=15),
    sl=st.tuples(st.integers(-15, 15), st.integers(-15, 15), st.sampled_from([1, 2, -1, -2])),
)
def test_ragged_take_matches_lists(lens: list[int], picks: list[int], sl: tuple[int, int, int]) -> None:
    offsets = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
    r = Ragged(np.arange(offsets[-1], dtype=np.int64) * 3, offsets)
    rows = ragged_rows(r)
    idx = np.array([p % len(lens) for p in picks] if lens else [], dtype=np.int64)
    assert ragged_rows(r.take(idx)) == [rows[i] for i in idx]
    assert ragged_rows(r.take(slice(*sl))) == rows[slice(*sl)]


def test_dataset_batches_cover_every_row_once() -> None:
    ds = small_dataset(23)
    batches = list(ds.batches(5))
    assert [len(b["label"]) for b in batches] == [5, 5, 5, 5, 3]
    assert np.concatenate([b["user_id"] for b in batches]).tolist() == ds.sparse["user_id"].tolist()
    b = batches[1]
    assert set(b) == {
        "user_id",
        "item_id",
        "tags.values",
        "tags.offsets",
        "dense",
        "label",
        "ts",
        "sample_rate",
    }
    assert b["dense"].shape == (5, 2) and b["tags.offsets"][0] == 0 and len(b["tags.offsets"]) == 6
    rows = ragged_rows(ds.multi["tags"])
    assert ragged_rows(Ragged(b["tags.values"], b["tags.offsets"])) == rows[5:10]
    shuffled = list(ds.batches(4, shuffle=True, seed=3))
    seen = np.concatenate([x["user_id"] for x in shuffled])
    assert (
        sorted(seen.tolist()) == ds.sparse["user_id"].tolist()
        and seen.tolist() != ds.sparse["user_id"].tolist()
    )
    again = np.concatenate([x["user_id"] for x in ds.batches(4, shuffle=True, seed=3)])
    assert again.tolist() == seen.tolist()
    assert [len(x["label"]) for x in ds.batches(10, drop_last=True)] == [10, 10]


def test_dataset_validation_and_concat() -> None:
    with pytest.raises(ValueError, match="shape"):
        Dataset.build("bad", sparse={"a": np.arange(3)}, label=np.zeros(4))
    with pytest.raises(ValueError, match="slot name"):
        Dataset.build("bad", sparse={"label": np.arange(4)}, label=np.zeros(4))
    with pytest.raises(ValueError, match="slot name"):
        Dataset.build("bad", sparse={"a.b": np.arange(4)}, label=np.zeros(4))
    with pytest.raises(ValueError):
        Ragged(np.arange(3), np.array([0, 2]))
    no_time = Dataset.build("n", sparse={"a": np.arange(4)}, label=np.zeros(4))
    assert not no_time.has_time and no_time.ts.tolist() == [0, 1, 2, 3] and no_time.dense.shape == (4, 0)
    ds = small_dataset()
    both = concat([ds.take(slice(0, 4)), ds.take(slice(4, 10))])
    assert ragged_rows(both.multi["tags"]) == ragged_rows(ds.multi["tags"])
    assert both.sparse["item_id"].tolist() == ds.sparse["item_id"].tolist()
    ids = stable_ids(["Action", "Comedy", "Action"])
    assert ids[0] == ids[2] != ids[1] and ids.dtype == np.int64 and (ids >= 0).all()


# ---------------------------------------------------------------- MovieLens


@needs_ml
def test_movielens_100k() -> None:
    ds = load_movielens(ML100K)
    assert len(ds) == 100_000 and ds.slots == ("user_id", "item_id")
    assert ds.is_time_sorted() and ds.has_time and ds.ts[0] > 8e8  # 1997+
    assert 0.45 < ds.label.mean() < 0.65
    assert ds.sparse["user_id"].min() == 1 and ds.sparse["user_id"].max() == 943
    assert len(np.unique(ds.sparse["item_id"])) == 1682
    assert load_movielens(ML100K / "u.data", limit=10).ts.tolist() == ds.ts[:10].tolist()


@needs_ml
def test_movielens_100k_side_info() -> None:
    ds = load_movielens(ML100K, side_info=True)
    assert set(ds.slots) == {"user_id", "item_id", "age", "gender", "occupation"}
    assert set(np.unique(ds.sparse["gender"])) == {1, 2} and (ds.sparse["age"] > 0).all()
    genre = ds.multi["genre"]
    toy_story = np.flatnonzero(ds.sparse["item_id"] == 1)[0]
    want = set(stable_ids(["Animation", "Children's", "Comedy"]).tolist())
    assert set(ragged_rows(genre)[toy_story]) == want
    assert genre.lengths().min() >= 1


def test_movielens_ratings_csv(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,3.5,300\n1,20,3.0,100\n2,10,5.0,200\n3,30,0.5,200\n"
    )
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n10,"Heat, the movie (1995)",Action|Crime\n20,X (2000),(no genres listed)\n'
    )
    ds = load_movielens(tmp_path, side_info=True)
    assert ds.name == f"movielens-{tmp_path.name}"
    assert ds.ts.tolist() == [100, 200, 200, 300]  # sorted by time, stable on ties
    assert ds.sparse["user_id"].tolist() == [1, 2, 3, 1]
    assert ds.sparse["item_id"].tolist() == [20, 10, 30, 10]
    assert ds.label.tolist() == [0, 1, 0, 1]  # 3.5 is a positive, 3.0 is not
    action_crime = set(stable_ids(["Action", "Crime"]).tolist())
    assert [set(r) for r in ragged_rows(ds.multi["genre"])] == [set(), action_crime, set(), action_crime]
    assert load_movielens(tmp_path / "ratings.csv").slots == ("user_id", "item_id")


def test_movielens_ratings_dat(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1357::4::978298709\n"
    )
    ds = load_movielens(tmp_path)
    assert len(ds) == 3 and ds.sparse["item_id"].tolist() == [1357, 1193, 661]
    assert ds.label.tolist() == [1, 1, 0]
    with pytest.raises(FileNotFoundError):
        load_movielens(tmp_path / "nothing-here")


# ---------------------------------------------------------------- Criteo


def test_parse_hex() -> None:
    col = pa.chunked_array([["68fd1e64", "", "0A", "ffffffffffffffff"], [None, "10"]])
    assert parse_hex(col).tolist() == [0x68FD1E64, 0, 10, -1, 0, 16]
    assert parse_hex(pa.array(["a", "b", "c"]).slice(1)).tolist() == [11, 12]
    with pytest.raises(ValueError, match="not hexadecimal"):
        parse_hex(pa.array(["12", "xyz"]))


@needs_criteo
def test_criteo_tsv() -> None:
    ds = load_criteo(CRITEO / "train.csv")
    assert len(ds) == 7200 and ds.slots == CATEGORICAL and ds.dense_names == INTEGER
    assert ds.dense.shape == (7200, 13) and not ds.has_time
    assert 0.1 < ds.label.mean() < 0.4 and set(np.unique(ds.label)) == {0.0, 1.0}
    # first row: 0 1 1 5 0 1382 4 15 2 181 1 2 <empty> 2 | 68fd1e64 80e26c9b ... C22 empty
    assert ds.label[0] == 0
    np.testing.assert_allclose(ds.dense[0, :3], np.log1p([1, 1, 5]), rtol=1e-6)
    assert ds.dense[0, 11] == 0.0  # I12 empty
    assert ds.sparse["C1"][0] == 0x68FD1E64 and ds.sparse["C2"][0] == 0x80E26C9B
    assert ds.sparse["C22"][0] == 0  # empty -> missing id
    assert len(load_criteo(CRITEO / "dev.csv")) == 409 and len(load_criteo(CRITEO / "test.csv")) == 391
    assert len(load_criteo(CRITEO / "train.csv", limit=100)) == 100


@needs_criteo
def test_criteo_csv_with_header() -> None:
    ds = load_criteo(CRITEO / "criteo_sample.txt")
    assert len(ds) == 200
    # 0,,3,260.0,,17668.0,,,33.0,,,,0.0,,05db9164,...
    np.testing.assert_allclose(
        ds.dense[0, :6], [0, math.log(4), math.log(261), 0, math.log(17669), 0], rtol=1e-6
    )
    assert ds.sparse["C1"][0] == 0x05DB9164 and ds.sparse["C19"][0] == 0
    assert (ds.dense[:, 1] < 0).any()  # I2 holds -1: sign(x) * log(1 + |x|)


def test_criteo_gz_tsv(tmp_path: Path) -> None:
    row = ["1", *[str(i) for i in range(13)], *([f"{i:08x}" for i in range(25)] + [""])]
    with gzip.open(tmp_path / "day_0.gz", "wt") as f:
        f.write("\t".join(row) + "\n" + "\t".join(["0"] + [""] * 39) + "\n")
    ds = load_criteo(tmp_path / "day_0.gz")
    assert ds.label.tolist() == [1, 0]
    assert ds.sparse["C2"].tolist() == [1, 0] and ds.sparse["C26"].tolist() == [0, 0]
    np.testing.assert_allclose(ds.dense[0], np.log1p(np.arange(13)), rtol=1e-6)
    assert (ds.dense[1] == 0).all()
    (tmp_path / "short.txt").write_text("\t".join(row[:30]) + "\n")
    with pytest.raises(ValueError):  # a row with missing fields is refused, not padded
        load_criteo(tmp_path / "short.txt")
    (tmp_path / "nothex.txt").write_text("\t".join(row[:20] + ["zzzz"] + row[21:]) + "\n")
    with pytest.raises(ValueError, match="C7"):
        load_criteo(tmp_path / "nothex.txt")


# ---------------------------------------------------------------- Globo


def test_trailing_negatives_rule() -> None:
    #            click: 0    1    2     3     4     5
    ts = np.array([0, 1000, 2000, 5000, 5000, 5500])  # ms
    item = np.array([7, 8, 7, 9, 7, 6])
    src, neg, rate = sample_trailing_negatives(ts, item, k=1, window_s=2.5)
    # 0: empty window. 1: window {7} -> 7. 2: window {7, 8} minus 7 -> 8.
    # 3 (t=5 s, window from 2.5 s): nothing since t=2.5 s -> none. 4: window {9} (click 3, same time) -> 9.
    # 5: window {9, 7} (clicks 3, 4), one of the two drawn -> rate 1/2
    assert src.tolist() == [1, 2, 4, 5]
    assert neg.tolist()[:3] == [7, 8, 9] and neg[3] in (7, 9)
    assert rate.tolist() == [1, 1, 1, 1, 1, 0.5]
    src, neg, rate = sample_trailing_negatives(ts, item, k=3, window_s=2.5)
    assert src.tolist() == [1, 2, 4, 5, 5] and sorted(neg[3:].tolist()) == [7, 9]  # distinct per click
    assert rate.tolist() == [1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="sorted"):
        sample_trailing_negatives(ts[::-1], item, k=1, window_s=1)


@needs_globo
def test_globo_limit_negatives_from_the_past() -> None:
    limit, k, window = 20_000, 4, 3600.0
    ds = load_globo(GLOBO, k=k, limit=limit, window_s=window, seed=1)
    pos = ds.label == 1
    assert pos.sum() == limit and ds.is_time_sorted() and ds.has_time
    assert 3.5 * limit < (~pos).sum() <= k * limit
    assert ((ds.sample_rate > 0) & (ds.sample_rate <= 1)).all() and ds.sample_rate.mean() < 0.5
    assert set(ds.slots) == {
        "user_id",
        "item_id",
        "environment",
        "device_group",
        "os",
        "country",
        "region",
        "referrer_type",
    }
    # group rows by click: each positive row starts a group that its negatives follow
    group = np.cumsum(pos) - 1
    assert pos[0]
    item, ts, user = ds.sparse["item_id"], ds.ts, ds.sparse["user_id"]
    pos_idx = np.flatnonzero(pos)
    neg_idx = np.flatnonzero(~pos)
    clicked = item[pos_idx][group[neg_idx]]
    assert (item[neg_idx] != clicked).all()  # never the clicked article
    assert (ts[neg_idx] == ts[pos_idx][group[neg_idx]]).all()  # same request time and context
    assert (user[neg_idx] == user[pos_idx][group[neg_idx]]).all()
    # a click's positive and its negatives carry the same rate (the correction must not see the label)
    assert (ds.sample_rate[neg_idx] == ds.sample_rate[pos_idx][group[neg_idx]]).all()
    # never from the future: each negative's article was clicked at or before the example, within the window
    first_click = {}
    for it, t in zip(item[pos_idx].tolist(), ts[pos_idx].tolist(), strict=True):
        first_click.setdefault(it, t)
    clicks_by_item: dict[int, np.ndarray] = {}
    order = np.lexsort((ts[pos_idx], item[pos_idx]))
    pi, pt = item[pos_idx][order], ts[pos_idx][order]
    bounds = np.flatnonzero(np.diff(pi)) + 1
    for a, b in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(pi)]]), strict=True):
        clicks_by_item[int(pi[a])] = pt[a:b]
    for j in neg_idx[:: max(1, len(neg_idx) // 5000)]:
        times = clicks_by_item[int(item[j])]
        t = ts[j]
        latest_before = times[np.searchsorted(times, t, side="right") - 1]
        assert first_click[int(item[j])] <= t and t - window <= latest_before <= t
    # distinct negatives per click
    keys = group[neg_idx] * (item.max() + 1) + item[neg_idx]
    assert len(np.unique(keys)) == len(keys)
    again = load_globo(GLOBO, k=k, limit=limit, window_s=window, seed=1)
    assert np.array_equal(again.sparse["item_id"], item)


# ---------------------------------------------------------------- splits


def stamped(ts: list[float]) -> Dataset:
    n = len(ts)
    return Dataset.build(
        "t", sparse={"i": np.arange(n)}, label=np.zeros(n), ts=np.array(ts, dtype=np.float64)
    )


def test_split_by_time_keeps_ties_together() -> None:
    ds = stamped([5, 1, 2, 2, 2, 3, 4, 4])  # unsorted on purpose
    train, test = split_by_time(ds, train_frac=0.25)  # position 2 in time order has ts 2
    assert train.ts.tolist() == [1] and test.ts.tolist() == [2, 2, 2, 3, 4, 4, 5]
    train, test = split_by_time(ds, cutoff_ts=4)
    assert train.ts.max() <= test.ts.min() and len(train) == 5 and len(test) == 3
    train, test = split_by_time(ds, train_frac=1.0)
    assert len(train) == 8 and len(test) == 0
    with pytest.raises(ValueError):
        split_by_time(ds)
    with pytest.raises(ValueError):
        split_by_time(ds, train_frac=0.5, cutoff_ts=3)


def test_time_shards_and_windows() -> None:
    ds = stamped([0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 7, 9])
    shards = time_shards(ds, 4)
    assert len(shards) == 4 and sum(len(s) for s in shards) == len(ds)
    assert np.concatenate([s.ts for s in shards]).tolist() == sorted(ds.ts.tolist())
    for a, b in zip(shards[:-1], shards[1:], strict=True):
        if len(a) and len(b):
            assert a.ts.max() < b.ts.min()  # ties never cut apart
    wins = time_windows(ds, 3.0)
    assert [w.ts.tolist() for w in wins] == [[0, 1, 1, 1, 2], [3, 4, 5], [6, 7, 7], [9]]
    assert [w.ts.tolist() for w in time_windows(ds, 5.0, start_ts=4)] == [[4, 5, 6, 7, 7], [9]]


@needs_ml
def test_movielens_split_is_time_ordered() -> None:
    ds = load_movielens(ML100K)
    train, test = split_by_time(ds, train_frac=0.8)
    assert len(train) + len(test) == len(ds) and 0.79 < len(train) / len(ds) <= 0.8
    assert train.ts.max() <= test.ts.min()
    shards = time_shards(ds, 10)
    for a, b in zip(shards[:-1], shards[1:], strict=True):
        assert a.ts.max() <= b.ts.min()


@needs_criteo
def test_criteo_split_by_order() -> None:
    ds = load_criteo(CRITEO / "train.csv")
    train, test = split_by_order(ds, 0.9)
    assert (len(train), len(test)) == (6480, 720)
    assert np.array_equal(test.sparse["C1"], ds.sparse["C1"][6480:])
    assert train.ts.max() < test.ts.min()  # row numbers stand in for time


# ---------------------------------------------------------------- synthetic


def test_synthetic_platform() -> None:
    cfg = SyntheticConfig(n_users=300, n_items_start=50, new_items_per_hour=20, duration_s=6 * 3600, seed=3)
    world = SyntheticPlatform(cfg)
    ds = world.log(20_000, seed=1)
    assert len(ds) == 20_000 and ds.is_time_sorted() and ds.slots == ("user_id", "item_id")
    assert cfg.start_ts <= ds.ts[0] and ds.ts[-1] < world.end_ts
    assert np.array_equal(world.log(20_000, seed=1).label, ds.label)  # deterministic
    assert not np.array_equal(world.log(20_000, seed=2).label, ds.label)
    # labels follow the ground truth: the mean click rate matches the mean true probability
    p = world.click_prob(ds.sparse["user_id"], ds.sparse["item_id"], ds.ts)
    assert ((p > 0) & (p < 1)).all()
    assert abs(ds.label.mean() - p.mean()) < 4 * math.sqrt(p.mean() / len(ds))
    # items are born over time: the last hour shows items that did not exist in the first
    first = set(world.live_items(cfg.start_ts).tolist())
    late = set(ds.take(ds.ts > world.end_ts - 3600).sparse["item_id"].tolist())
    assert len(late - first) > 0
    assert set(ds.take(ds.ts < cfg.start_ts + 60).sparse["item_id"].tolist()) <= first
    # tastes drift: the same pairs get other probabilities hours later (beyond the freshness decay)
    users, items = world.user_ids[:50], np.repeat(world.live_items(cfg.start_ts)[:1], 50)
    early, late_p = (
        world.click_prob(users, items, cfg.start_ts),
        world.click_prob(users, items, cfg.start_ts + 5 * 3600),
    )
    ratio = late_p / early
    assert ratio.std() > 0.05  # a pure freshness decay would scale every pair by the same factor
    with pytest.raises(KeyError):
        world.click_prob(np.array([-5]), items[:1], cfg.start_ts)
