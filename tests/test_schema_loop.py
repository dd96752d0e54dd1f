"""The whole loop driven by a config file, one per shape, as processes: batch training from the
files, import into the logs, the joiner, online training from the batch snapshot, then serving
raw request values through the schema (`freshrec.data.schema_request`).

    freshrec train --config C --data F --out snap
    freshrec import --config C --files F --log logs --snapshot snap
    freshrec join --config C --log logs --store joiner --until-idle
    freshrec train online --config C --log logs --init snap --snapshots snaps
"""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from freshrec.data.schema import load_schema
from freshrec.data.schema_request import encode_predict_body
from freshrec.ps import ServingReplica
from freshrec.ps.schema_check import snapshot_schema
from schema_fixtures import EXAMPLES, write_ads, write_behaviour, write_clicks
from serve_process import serve_process


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "freshrec.cli", *args], capture_output=True, text=True, timeout=300
    )
    if check and res.returncode != 0:
        raise AssertionError(f"freshrec {' '.join(args[:2])} failed ({res.returncode}): {res.stderr[-2000:]}")
    return res


def _train(config: str, data, snap: str, *flags: str) -> subprocess.CompletedProcess:
    """`freshrec train --config` of a small model (1 epoch, dim 4) on `data` into `snap`."""
    cmd = ["train", "--config", config, "--data", str(data), "--out", snap, "--epochs", "1"]
    return _run(*cmd, "--dim", "4", "--hidden", "8", "--no-progress", *flags)


def _last_json(res: subprocess.CompletedProcess) -> dict:
    return json.loads(res.stdout.strip().splitlines()[-1])


def _raw_rows(shape: str, path) -> list[dict]:
    if shape == "ads-impressions":
        with gzip.open(path, "rt") as f:
            return [{k: v for k, v in r.items() if k not in ("click", "hour")} for r in csv.DictReader(f)][
                :20
            ]
    if shape == "shop-behaviour":
        rows = [ln.split(",") for ln in path.read_text().splitlines()[:20]]
        return [{"user_id": int(r[0]), "item_id": int(r[1]), "category": r[2]} for r in rows if r[0] and r[4]]
    with gzip.open(path, "rt") as f:
        rows = [json.loads(ln) for ln in f][:20]
    return [{"user_id": r["user"], "item_id": r["item"], "device": r["device"]} for r in rows]


@pytest.mark.parametrize(
    ("shape", "write", "n"),
    [
        ("ads-impressions", write_ads, 1500),
        ("shop-behaviour", write_behaviour, 1500),
        ("clickstream", write_clicks, 1200),
    ],
)
def test_the_loop_from_one_config(tmp_path, shape, write, n):
    data = write(tmp_path, n=n)
    config = str(EXAMPLES / f"{shape}.toml")
    snap, logs, snaps = str(tmp_path / "snap"), str(tmp_path / "logs"), str(tmp_path / "snaps")
    trained = _last_json(_train(config, data, snap, "--json"))
    assert 0.0 <= trained["auc"] <= 1.0
    stored = snapshot_schema(snap, required=True)
    assert (
        stored is not None
        and stored.name == load_schema(config).name
        and all(s.type != "auto" for s in stored.slots if s.kind != "dense")
    )
    imported = _last_json(
        _run(
            "import",
            "--config",
            config,
            "--files",
            str(data),
            "--log",
            logs,
            "--snapshot",
            snap,
            "--no-progress",
            "--json",
        )
    )
    assert imported["features_written"] == imported["impressions"] > 0 and imported["actions_written"] > 0
    res = _run(
        "join",
        "--config",
        config,
        "--log",
        logs,
        "--store",
        str(tmp_path / "joiner"),
        "--until-idle",
        "--stats-every",
        "0",
    )
    joined = json.loads(res.stdout.strip().splitlines()[-1])["stats"]
    assert (
        joined["features"] == imported["features_written"]
        and joined["actions"] == imported["actions_written"]
    )
    assert joined["examples"] > 0 and joined["positives"] > 0 and joined["unknown_actions"] == 0
    online = _last_json(
        _run(
            "train",
            "online",
            "--config",
            config,
            "--log",
            logs,
            "--init",
            snap,
            "--snapshots",
            snaps,
            "--json",
        )
    )
    assert online["positions"] == {"0": joined["examples"]}
    # the online snapshots carry the schema (with the batch statistics) for serving and resuming
    carried = snapshot_schema(snaps, required=True)
    assert carried is not None and carried.to_dict() == stored.to_dict()
    replica = ServingReplica.from_snapshot(snaps)
    rows = [_example(carried, r) for r in _raw_rows(shape, data)]
    encoded = encode_predict_body(carried, {"examples": rows})["examples"]
    assert all(e["user_id"] != 0 and e["item_id"] != 0 for e in encoded)
    scores = replica.predict(encoded)
    assert len(scores) > 5 and np.all((scores > 0) & (scores < 1))
    _served_raw(tmp_path, config, logs, snaps, rows, scores)


def _example(schema, row: dict) -> dict:
    """A file's row as a /v1/predict example: its user and item ids, the other columns as features."""
    ukey = "user_id" if "user_id" in row else schema.user
    ikey = "item_id" if "item_id" in row else schema.item
    rest = {k: v for k, v in row.items() if k not in (ukey, ikey)}
    return {"user_id": row[ukey], "item_id": row[ikey], "features": rest}


def _served_raw(tmp_path, config, logs, snaps, rows, scores) -> None:
    """`freshrec serve` on the online snapshots speaks the schema: raw values score as in-process,
    a misspelled feature is a 422 naming it, and another config is refused at start."""
    cmd = [sys.executable, "-m", "freshrec.cli", "serve", "--params", logs, "--snapshot", snaps]
    cmd += ["--port", "0", "--config", config, "--no-features"]
    with serve_process(tmp_path, command=cmd) as url, httpx.Client(base_url=url, timeout=30) as http:
        got = http.post("/v1/predict", json={"examples": rows})
        assert got.status_code == 200, got.text
        assert np.allclose(got.json()["probabilities"], scores, atol=1e-6)
        user = rows[0]["user_id"]
        cands = [r["item_id"] for r in rows[:5]]
        ranked = http.post("/v1/rank", json={"user_id": user, "candidates": cands})
        assert ranked.status_code == 200, ranked.text
        assert len(ranked.json()["items"]) == len(cands)
        one = http.post(
            "/v1/rank",
            json={"user_id": user, "features": rows[0]["features"], "candidates": [rows[0]["item_id"]]},
        )
        assert one.status_code == 200 and abs(one.json()["items"][0]["score"] - scores[0]) < 1e-6, one.text
        misplaced = http.post("/v1/predict", json={"examples": [{**rows[0], "colour": "red"}]})
        assert misplaced.status_code == 422 and "colour" in misplaced.text, misplaced.text
        bad = http.post(
            "/v1/rank", json={"user_id": user, "features": {"colour": "red"}, "candidates": cands}
        )
        assert bad.status_code == 422 and "colour" in bad.text, bad.text
    text = open(config).read()
    if "[schema.slots.device]" in text:
        other = tmp_path / "other.toml"
        other.write_text(text.replace("[schema.slots.device]", "[schema.slots.os]"))
        cmd = ["serve", "--params", logs, "--snapshot", snaps, "--port", "0", "--config", str(other)]
        res = _run(*cmd, check=False)
        assert res.returncode == 2 and "does not match the snapshot" in res.stderr, res.stderr


def test_a_trainer_resumed_with_another_schema_is_refused(tmp_path):
    data = write_clicks(tmp_path, n=400)
    config = EXAMPLES / "clickstream.toml"
    snap = str(tmp_path / "snap")
    _train(str(config), data, snap)
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace("[schema.slots.device]", "[schema.slots.os]"))
    res = _run(
        "train",
        "online",
        "--config",
        str(other),
        "--log",
        str(tmp_path / "logs"),
        "--init",
        snap,
        check=False,
    )
    assert res.returncode == 2  # a configuration error
    assert "does not match the snapshot" in res.stderr and "'os'" in res.stderr
    res = _run(
        "import",
        "--config",
        str(other),
        "--files",
        str(data),
        "--log",
        str(tmp_path / "logs"),
        "--snapshot",
        snap,
        check=False,
    )
    assert res.returncode == 2 and "does not match the snapshot" in res.stderr
