"""The README's role sequence as real processes, with a model class defined in this file.

    freshrec train --dataset globo ... --model test_readme_sequence:MeanTower --out snap-batch
    freshrec replay globo --log LOG ...
    freshrec join --log LOG --store joiner --early-positives            (running)
    freshrec train online --log LOG --init snap-batch --params LOG --snapshots snaps --follow (running)
    freshrec serve --params LOG --snapshot snap-batch                     (running)

then, over HTTP: /v1/rank, /v1/actions on the top item; its score must move within a few sync
intervals; after the trainer stops (SIGTERM: final publish + snapshot) the served scores must equal
the trainer's own. Each command reads what the one before wrote. Local log always; Kafka too
(under CI=true it must run).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from freshrec.model import SlotModel
from freshrec.ps import ServingReplica

HERE = Path(__file__).resolve().parent


class MeanTower(SlotModel):
    """A user's own model (the contract of freshrec.model.contract): every slot's embedding
    concatenated, one MLP, one output per task."""

    def __init__(self, spec, embeddings, *, tasks=None, hidden=(16,), seed=0):
        super().__init__()
        k = self._set_embeddings(spec, embeddings, tasks)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mlp = nn.Sequential(
                nn.Linear(len(spec.slots) * k + spec.dense_dim, int(hidden[0])),
                nn.ReLU(),
                nn.Linear(int(hidden[0]), len(self.tasks)),
            )

    def forward(self, sparse, dense=None):
        E = self.embed(sparse)  # (B, F, k)
        x = E.reshape(E.shape[0], -1)  # (B, F * k)
        if dense is not None:
            x = torch.cat([x, dense], dim=1)
        return self.mlp(x)  # (B, T)


def _globo() -> Path:
    from freshrec.data.paths import dataset_path

    p = dataset_path("globo") / "clicks.csv.gz"
    if not p.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                f"Globo clicks not found at {p}: under CI the shared data must be there", pytrace=False
            )
        pytest.skip(f"Globo clicks not found at {p} (set FRESHREC_DATA)")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Roles:
    """The commands of one run: each a real `freshrec` process in `work`."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, *args: str, timeout: float = 300.0) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "freshrec.cli", *args],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.returncode == 0, (
            f"freshrec {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
        )
        return out.stdout

    def start(self, name: str, *args: str) -> None:
        f = open(self.work / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "freshrec.cli", *args],
            cwd=self.work,
            env=self.env,
            stdout=f,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text()

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            assert p.poll() is None, f"{name} exited with {p.returncode}:\n{self.log(name)}"

    def stop(self, name: str, timeout: float = 60.0) -> int:
        p = self.procs.pop(name)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return int(p.returncode)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name, timeout=10)


def _wait(cond, timeout: float, what: str, roles: Roles, step: float = 0.25):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        roles.check_alive()
        got = cond()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _sequence(work: Path, log_url: str) -> dict:
    clicks = _globo()
    roles = Roles(work)
    t0 = time.monotonic()
    try:
        model = ["--model", "test_readme_sequence:MeanTower", "--model-kwargs", '{"hidden": [16], "seed": 1}']
        roles.run(
            "train", "--dataset", "globo", "--data", str(clicks), "--limit", "20000", "--epochs", "1",
            "--dim", "8", *model, "--out", "snap-batch", "--no-progress",
        )  # fmt: skip
        roles.run(
            "replay", "globo", "--log", log_url, "--data", str(clicks), "--limit", "2000", "--no-progress"
        )
        roles.start(
            "join",
            "join",
            "--log",
            log_url,
            "--store",
            "joiner",
            "--early-positives",
            "--poll-timeout",
            "0.2",
        )
        roles.start(
            "trainer", "train", "online", "--log", log_url, "--init", "snap-batch", "--params", log_url,
            "--snapshots", "snaps", "--snapshot-every", "20", "--batch-size", "256", "--dense-every", "1",
            "--follow", "--json", "--progress-every", "0",
        )  # fmt: skip
        port = _free_port()
        roles.start("serve", "serve", "--params", log_url, "--snapshot", "snap-batch", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10.0) as client:

            def up():
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            _wait(up, 120, "the server", roles)
            req = {"user_id": 424242, "candidates": [1, 2, 3, 4, 5], "sparse": {"os": [17], "country": [1]}}
            # the replayed examples reach serving first (the trainer publishes after every batch);
            # once the version stops moving, the trainer has drained them: from then on only the
            # click below can change what is served
            seen: list[int] = []

            def settled():
                seen.append(client.get("/healthz").json()["model_version"])
                return len(seen) > 12 and seen[-1] > 1 and len(set(seen[-12:])) == 1

            _wait(settled, 180, "the replayed examples to be trained and synced", roles)
            settled_version = seen[-1]
            r = client.post("/v1/rank", json=req).json()
            top, before = r["items"][0]["item_id"], r["items"][0]["score"]
            acts = [{"request_id": f"{r['request_id']}:0", "action": "click"}]
            a = client.post("/v1/actions", json={"actions": acts})
            assert a.status_code == 202, a.text

            def moved():
                got = client.post("/v1/rank", json=req).json()
                items = {it["item_id"]: it["score"] for it in got["items"]}
                return abs(items[top] - before) > 1e-6 and (items[top], got["model_version"])

            t_click = time.monotonic()
            after, moved_version = _wait(
                moved, 60, f"the score of clicked item {top} to move from {before}", roles
            )
            moved_s = time.monotonic() - t_click
            assert moved_version > settled_version  # moved by a new delta: the click's
            assert after > before, f"a click on item {top} lowered its score: {before} -> {after}"
            # final sync: the trainer publishes once more, snapshots and exits; serving catches up
            assert roles.stop("trainer") == 0, roles.log("trainer")
            final = json.loads(roles.log("trainer").strip().splitlines()[-1])
            version = int(final["params_version"])
            _wait(
                lambda: client.get("/healthz").json()["model_version"] >= version,
                60,
                f"version {version}",
                roles,
            )
            served = client.post("/v1/rank", json=req).json()
        trainer_view = ServingReplica.from_snapshot(work / "snaps")
        items, scores = trainer_view.rank(req["user_id"], req["candidates"], sparse=req["sparse"])
        got = {it["item_id"]: it["score"] for it in served["items"]}
        want = dict(zip(items.tolist(), scores.tolist(), strict=True))
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-6, atol=1e-7)
        assert type(trainer_view.model).__name__ == "MeanTower"
        return {"wall_s": time.monotonic() - t0, "moved_s": moved_s, "version": version}
    finally:
        roles.close()


def test_readme_sequence_local_log(tmp_path):
    got = _sequence(tmp_path, str(tmp_path / "logs"))
    print(f"README sequence (local log): {got}")


@pytest.mark.kafka
def test_readme_sequence_kafka(tmp_path, kafka_bootstrap):
    run = int(time.time() * 1000)
    got = _sequence(tmp_path, f"kafka://{kafka_bootstrap}?prefix=readme-{run}.")
    print(f"README sequence (Kafka): {got}")
