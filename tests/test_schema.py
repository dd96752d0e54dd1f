"""The data schema: THE hash, the three shapes, the shipped schemas, and mistakes refused by name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from freshrec.data.criteo import load_criteo
from freshrec.data.movielens import load_movielens
from freshrec.data.schema import Schema, load_schema, shipped_schema, stable_hash
from freshrec.data.schema_data import attach_behaviours, load_schema_dataset, read_columns
from freshrec.errors import ConfigError, SchemaError
from schema_fixtures import EXAMPLES, write_ads, write_behaviour, write_clicks


def test_the_hash_is_pinned():
    # blake2b(utf-8, digest_size=8) read little-endian, >> 1; any non-string value hashed as its text
    assert stable_hash(["", "a", "user-42", "é", 12]).tolist() == [
        6510301506637419378,
        1702698405120146464,
        6014543273495187511,
        1697006002183834981,
        8185401468342549813,
    ]
    d = hashlib.blake2b(b"a", digest_size=8).digest()
    assert stable_hash(["a"])[0] == int.from_bytes(d, "little") >> 1
    assert stable_hash([12])[0] == stable_hash(["12"])[0]


def _same(a, b) -> None:
    assert a.slots == b.slots and a.multi_slots == b.multi_slots and len(a) == len(b)
    for k in a.slots:
        np.testing.assert_array_equal(a.sparse[k], b.sparse[k], err_msg=k)
    for f in ("label", "ts", "sample_rate", "dense"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert set(a.labels) == set(b.labels) and a.has_time == b.has_time
    for k in a.labels:
        np.testing.assert_array_equal(a.labels[k], b.labels[k], err_msg=k)


def test_shipped_movielens_schema_gives_the_loaders_examples(tmp_path):
    rng = np.random.default_rng(0)
    n = 500
    rows = zip(
        rng.integers(1, 40, n),
        rng.integers(1, 90, n),
        rng.integers(1, 6, n),
        rng.integers(880_000_000, 890_000_000, n),
        strict=True,
    )
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    got, schema, _ = load_schema_dataset(shipped_schema("movielens", tmp_path / "u.data"))
    _same(got, load_movielens(tmp_path))
    assert schema.slot("user_id").type == "int"


def test_shipped_criteo_schema_gives_the_loaders_examples(tmp_path):
    rng = np.random.default_rng(1)
    head = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    lines = [",".join(head)]
    for _ in range(200):
        ints = [str(int(x)) if x >= 0 else "" for x in rng.integers(-3, 500, 13)]
        cats = [f"{x:08x}" if x % 7 else "" for x in rng.integers(0, 2**32, 26)]
        lines.append(",".join([str(int(rng.random() < 0.3)), *ints, *cats]))
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    got, _, _ = load_schema_dataset(shipped_schema("criteo", tmp_path / "c.txt"))
    _same(got, load_criteo(tmp_path / "c.txt", name="criteo"))


@pytest.mark.parametrize("name", ["movielens", "globo"])
def test_shipped_schemas_on_the_shared_data(name):
    from freshrec.data.globo import load_globo
    from freshrec.data.paths import dataset_path

    folder = dataset_path("movielens-100k" if name == "movielens" else "globo")
    if not folder.is_dir():
        pytest.skip(f"shared dataset {folder} absent")
    if name == "movielens":
        _same(load_schema_dataset(shipped_schema(name))[0], load_movielens(folder))
    else:
        _same(load_schema_dataset(shipped_schema(name), limit=3000)[0], load_globo(folder, limit=3000))


def test_shape_b_attaches_actions_to_the_last_impression_within_the_window(tmp_path):
    (tmp_path / "UserBehavior.csv").write_text(
        "1,10,c,pv,100\n1,10,c,pv,200\n1,10,c,cart,250\n2,10,c,buy,260\n1,11,c,pv,300\n"
        "1,11,c,buy,400000\n1,10,c,fav,205\n1,10,c,click,210\n1,11,c,buy,350\n"
    )
    s = load_schema(
        EXAMPLES / "shop-behaviour.toml", overrides={"files": [str(tmp_path / "UserBehavior.csv")]}
    )
    cols = read_columns(s)
    att = attach_behaviours(s, cols)
    assert cols.ts[att.impression].tolist() == [100.0, 200.0, 300.0]
    assert att.actions["cart"][0].tolist() == [1]  # the pv at 200, not the one at 100
    assert att.actions["fav"][0].tolist() == [1]
    assert att.actions["buy"][0].tolist() == [2]  # user 2 saw nothing; the buy at 400000 is past the day
    assert att.unattached == 2 and att.ignored == 1
    data, _, _ = load_schema_dataset(s)
    assert data.label.tolist() == [0.0, 1.0, 0.0] and data.label_name == "cart"
    assert data.labels["buy"].tolist() == [0.0, 0.0, 1.0]


def test_shape_c_negatives_never_come_from_the_future(tmp_path):
    write_clicks(tmp_path, n=800)
    s = load_schema(EXAMPLES / "clickstream.toml", overrides={"files": [str(tmp_path / "clicks-0.jsonl.gz")]})
    cols = read_columns(s)
    data, _, _ = load_schema_dataset(s)
    items, ts = cols.sparse["item_id"], cols.ts
    neg = np.flatnonzero(data.label == 0)
    assert len(neg) > 2 * len(cols)
    first_seen = {}
    for i, t in zip(items.tolist(), ts.tolist(), strict=True):
        first_seen.setdefault(i, t)
    assert all(
        first_seen[i] <= t
        for i, t in zip(data.sparse["item_id"][neg].tolist(), data.ts[neg].tolist(), strict=True)
    )
    assert 0 < data.sample_rate.min() and data.sample_rate.max() <= 1


def test_shape_a_types_transforms_and_multi_values(tmp_path):
    write_ads(tmp_path, n=300)
    s = load_schema(
        EXAMPLES / "ads-impressions.toml", overrides={"files": [str(tmp_path / "ads-day1.csv.gz")]}
    )
    data, resolved, cols = load_schema_dataset(s, stats_fraction=0.8)
    assert data.multi_slots == ("keywords",) and data.dense_names == ("bid",)
    cut = int(round(len(cols) * 0.8))
    assert abs(float(data.dense[:cut, 0].mean())) < 1e-4  # standardized with the training part's stats
    assert resolved.stats["bid"][1] > 0
    assert data.is_time_sorted() and data.has_time
    # a string id is THE hash of its text, whatever file it came from
    assert data.sparse["ad_id"][0] in set(stable_hash([f"ad-{i}" for i in range(1, 40)]).tolist())
    again = Schema.from_dict(resolved.to_dict())
    assert again.to_dict() == resolved.to_dict()


def _ads(tmp_path, **over):
    write_ads(tmp_path, n=100)
    table = {**load_schema(EXAMPLES / "ads-impressions.toml").to_dict(), **over}
    table["source"]["paths"] = [str(tmp_path / "ads-day1.csv.gz")]
    return Schema.from_dict(table, origin="ads.toml")


def test_a_slot_not_in_the_data_is_refused_by_name(tmp_path):
    s = _ads(tmp_path)
    slots = [dict(x) for x in s.to_dict()["slots"]]
    slots[2] = {**slots[2], "name": "site_categroy", "column": "site_categroy"}
    bad = Schema.from_dict({**s.to_dict(), "slots": slots})
    with pytest.raises(SchemaError, match="slot 'site_categroy'.*ads-day1.csv.gz") as e:
        read_columns(bad)
    assert e.value.field == "site_categroy" and e.value.file.endswith("ads-day1.csv.gz")
    assert isinstance(e.value, ConfigError)


def test_a_label_with_no_positive_is_refused(tmp_path):
    s = _ads(tmp_path, labels=[{"name": "click", "column": "click", "threshold": 5.0}])
    with pytest.raises(SchemaError, match="label 'click' .*no positive") as e:
        load_schema_dataset(s)
    assert e.value.field == "click"


def test_a_timestamp_that_does_not_sort_is_refused(tmp_path):
    s = _ads(tmp_path, timestamp="site_category", time_unit="s")  # text ("s3"): no number of seconds
    with pytest.raises(SchemaError, match="timestamp column 'site_category' .*not monotone-sortable") as e:
        read_columns(s)
    assert e.value.field == "site_category" and e.value.file.endswith("ads-day1.csv.gz")


def test_a_schema_that_does_not_match_its_snapshot_is_refused(tmp_path):
    s = _ads(tmp_path)
    other = Schema.from_dict({**s.to_dict(), "slots": s.to_dict()["slots"][:-1]})
    s.check_matches(s.to_dict(), where="snap")
    with pytest.raises(SchemaError, match="does not match the snapshot snap: slots"):
        other.check_matches(s.to_dict(), where="snap")
    changed = [dict(x) for x in s.to_dict()["slots"]]
    changed[-1]["log1p"] = False
    with pytest.raises(SchemaError, match="slot 'bid' log1p"):
        Schema.from_dict({**s.to_dict(), "slots": changed}).check_matches(s.to_dict(), where="snap")


def test_malformed_schemas_name_the_field():
    with pytest.raises(SchemaError, match="files"):
        Schema.from_dict({"name": "x", "slots": {}, "labels": {}, "user": "u", "item": "i"})
    base = {"name": "x", "files": "f.csv", "user": "u", "item": "i", "slots": {"u": {}, "i": {}}}
    with pytest.raises(SchemaError, match="at least one label"):
        Schema.from_dict(base)
    with pytest.raises(SchemaError, match="user = 'nobody'"):
        Schema.from_dict({**base, "user": "nobody", "labels": {"click": {"column": "c"}}})
    with pytest.raises(SchemaError, match="needs a `behaviour`"):
        Schema.from_dict(
            {
                **base,
                "labels": {"buy": {}},
                "impressions": {"shape": "behaviour", "column": "b", "impression": "pv"},
            }
        )
    with pytest.raises(SchemaError, match="no file matches"):
        Schema.from_dict({**base, "labels": {"click": {"column": "c"}}}, base="/nonexistent").source.files()


def test_refused_rows_are_counted_with_their_reason(tmp_path):
    write_behaviour(tmp_path, n=200)
    s = load_schema(
        EXAMPLES / "shop-behaviour.toml", overrides={"files": [str(tmp_path / "UserBehavior.csv")]}
    )
    cols = read_columns(s)
    assert sorted(r.reason for r in cols.refused) == [
        "timestamp 'ts' is missing",
        "user_id column 'user' is missing",
    ]
    assert all(r.file.endswith("UserBehavior.csv") for r in cols.refused)


def test_every_example_config_is_a_valid_schema():
    for p in sorted(Path(EXAMPLES).glob("*.toml")):
        assert load_schema(p).name


def test_parquet_and_globbed_csv_give_the_same_examples(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    write_ads(tmp_path, n=300)
    table = pacsv.read_csv(
        tmp_path / "ads-day1.csv.gz",
        convert_options=pacsv.ConvertOptions(column_types={"device_id": pa.string(), "ad_id": pa.string()}),
    )
    pq.write_table(table, tmp_path / "ads.parquet")
    (tmp_path / "parts").mkdir()
    pacsv.write_csv(table.slice(0, 100), tmp_path / "parts" / "a-0.csv")
    pacsv.write_csv(table.slice(100), tmp_path / "parts" / "a-1.csv")
    base = load_schema(EXAMPLES / "ads-impressions.toml")
    got = [
        load_schema_dataset(Schema.from_dict({**base.to_dict(), "source": {"paths": [p]}}))[0]
        for p in (
            str(tmp_path / "ads-day1.csv.gz"),
            str(tmp_path / "ads.parquet"),
            str(tmp_path / "parts" / "a-*.csv"),
        )
    ]
    _same(got[0], got[1])
    _same(got[0], got[2])


def test_a_list_column_and_a_separated_text_column_give_the_same_ids(tmp_path):
    import json

    rows = [(1, 10, ["x", "y"], 5), (2, 11, [], 6), (1, 12, ["y"], 7)]
    (tmp_path / "e.jsonl").write_text(
        "".join(json.dumps({"u": u, "i": i, "tags": t, "ts": s, "c": 1}) + "\n" for u, i, t, s in rows)
    )
    (tmp_path / "e.tsv").write_text(
        "u\ti\ttags\tts\tc\n" + "".join(f"{u}\t{i}\t{'|'.join(t)}\t{s}\t1\n" for u, i, t, s in rows)
    )
    table = {
        "name": "t",
        "timestamp": "ts",
        "user": "u",
        "item": "i",
        "labels": {"c": {"column": "c"}},
        "slots": {"u": {}, "i": {}, "tags": {"kind": "multi", "separator": "|"}},
    }
    a = read_columns(Schema.from_dict({**table, "files": str(tmp_path / "e.jsonl")}))
    b = read_columns(Schema.from_dict({**table, "files": str(tmp_path / "e.tsv")}))
    h = stable_hash(["x", "y"]).tolist()
    for c in (a, b):
        assert c.multi["tags"].values.tolist() == [h[0], h[1], h[1]]
        assert c.multi["tags"].offsets.tolist() == [0, 2, 2, 3]


def test_pair_search_against_a_loop():
    from freshrec.data.schema_data import _search_pairs

    rng = np.random.default_rng(0)
    for _ in range(200):
        m, q = rng.integers(0, 30), rng.integers(0, 30)
        sk, st = rng.integers(0, 5, m), rng.integers(0, 10, m).astype(float)
        o = np.lexsort((st, sk))
        sk, st = sk[o], st[o]
        k, t = rng.integers(0, 6, q), rng.integers(0, 10, q).astype(float)
        want = [sum(1 for a, b in zip(sk, st, strict=True) if (a, b) <= (k[i], t[i])) for i in range(q)]
        assert _search_pairs(sk, st, k, t).tolist() == want
