"""Launch, kill -9 and restart the roles of the loop (joiner, online trainer, serving replica) as
separate processes, for tests/test_chaos.py.

The loop under test, over one log backend (a local-log folder or kafka://...?prefix=...):

    features + actions (pre-written) -> `freshrec join` -> examples (1 partition)
        -> `freshrec train online --follow --whole-batches --stop-at N --params URL` (the shipped
           online loop, with fixed batch boundaries; snapshots + parameter log)
        -> `freshrec serve` (from an initial serving snapshot, following the parameter log)

`run_loop` starts the three roles, kills a role chosen by a seeded schedule `kills` times (each
killed role is restarted at once), waits for the joiner and the trainer to finish, and returns what
happened: the kill log, the windows in which the serving process was down, and the failures of a
client thread that polled /healthz every ~50 ms.

`freshrec serve` runs one process per core here (`--workers`: a supervisor, a zygote, the
workers). A kill -9 of the supervisor takes its workers down with it a few tens of milliseconds
later (each dies with its parent), and a poll in that moment may still be answered by a worker of
the killed tree. So a serving outage lasts from the kill until a process of the *restarted* server
answers: polls name their worker (`x-freshrec-worker: index/pid`), and answers from a worker seen
before the kill do not end the outage.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from freshrec.stream.events import ActionEvent, FeatureEvent, encode_action, encode_feature

LOG_NAMES = ("features", "actions", "examples", "dead-letters", "params")
SLOTS = "user_id,item_id"
DIM, HIDDEN, BATCH, SEED, SPARSE_LR, DENSE_LR = 4, (16,), 32, 7, 0.05, 1e-3


def simulate(n: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """`n` impressions (data time ~2 s apart) and their clicks (p ~0.5 when (user + item) % 3 == 0,
    else ~0.1; 1-300 s after the impression), each list in data-time order."""
    rng = random.Random(seed)
    feats, acts = [], []
    t = 1_700_000_000.0
    for i in range(n):
        t += rng.uniform(0.5, 3.5)
        u, it = rng.randrange(200), rng.randrange(100)
        rid = f"r{i}"
        feats.append(encode_feature(FeatureEvent(rid, u, it, {}, {}, t)))
        if rng.random() < (0.5 if (u + it) % 3 == 0 else 0.1):
            acts.append((t + rng.uniform(1.0, 300.0), rid))
    acts.sort()
    return feats, [encode_action(ActionEvent(rid, "click", 1.0, ts)) for ts, rid in acts]


def write_inputs(url: str, n: int, seed: int) -> None:
    """Create every log of the loop (1 partition) and write the features and actions."""
    from freshrec.stream.backends import open_backend

    feats, acts = simulate(n, seed)
    backend = open_backend(url)
    try:
        logs = {name: backend.log(name, partitions=1) for name in LOG_NAMES}
        for name, records in (("features", feats), ("actions", acts)):
            for r in records:
                logs[name].append(r)
            logs[name].flush()
    finally:
        backend.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Role:
    name: str
    cmd: list[str]
    logs: Path
    proc: subprocess.Popen | None = None
    starts: int = 0
    done: bool = False  # exited 0 on its own

    def start(self) -> None:
        self.starts += 1
        out = open(self.logs / f"{self.name}-{self.starts}.txt", "wb")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Mark a clean exit as done; raise on a failure that was not our kill."""
        if self.proc is None or self.done:
            return
        rc = self.proc.poll()
        if rc == 0:
            self.done = True
        elif rc is not None:
            raise RuntimeError(f"{self.name} exited with {rc}:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def lines(self) -> int:
        """Lines its current process has printed so far."""
        path = self.logs / f"{self.name}-{self.starts}.txt"
        return path.read_bytes().count(b"\n") if path.exists() else 0

    def wait_progress(self, lines: int, timeout_s: float = 30.0) -> bool:
        """Wait until the current process printed `lines` lines; False when it exited first."""
        deadline = time.monotonic() + timeout_s
        while self.alive() and self.lines() < lines and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.alive()

    def output(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.logs.glob(f"{self.name}-*.txt"))
        )


@dataclass
class LoopResult:
    seed: int
    kills: list[tuple[float, str]] = field(default_factory=list)  # (wall time, role)
    down: list[tuple[float, float]] = field(default_factory=list)  # serving down windows (monotonic)
    polls: int = 0
    failures: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, why)
    ok_times: list[float] = field(default_factory=list)  # start times of successful polls
    ok_workers: list[str] = field(default_factory=list)  # their x-freshrec-worker ("" for one process)
    serving_kills: list[float] = field(default_factory=list)  # monotonic times
    broker_faults: list[tuple[float, str, float]] = field(default_factory=list)  # (wall time, how, down s)
    seconds: float = 0.0
    starts: dict[str, int] = field(default_factory=dict)
    trainer_output: str = ""

    def down_windows(self) -> list[tuple[float, float]]:
        """From each kill of the serving process to the first successful poll that began after it
        and was answered by the restarted server (not by a worker of the killed tree: see the
        module docstring)."""
        import bisect

        out = []
        for t in self.serving_kills:
            i = bisect.bisect_right(self.ok_times, t)
            before = {w for w in self.ok_workers[:i] if w}
            while i < len(self.ok_times) and self.ok_workers[i] in before:
                i += 1
            out.append((t, self.ok_times[i] if i < len(self.ok_times) else float("inf")))
        return out

    def unexplained_failures(self, slack: float = 0.1) -> list[tuple[float, float, str]]:
        """Poll failures that overlap no window in which the serving process was down."""
        return [
            f for f in self.failures
            if not any(f[0] <= hi + slack and f[1] >= lo - slack for lo, hi in self.down)
        ]


def commands(url: str, work: Path, port: int, expect: int, init_snapshot: Path) -> dict[str, list[str]]:
    py = [sys.executable, "-m", "freshrec.cli"]
    return {
        "joiner": py + [
            "join", "--log", url, "--store", str(work / "joiner-state"), "--windows", "click=600",
            "--lateness", "60", "--batch", "10", "--poll", "5", "--map-size-gb", "0.0625",
            "--partitions", "1", "--until-idle", "--stats-every", "0.000001",
        ],
        "trainer": py + [
            "train", "online", "--log", url, "--slots", SLOTS, "--dim", str(DIM),
            "--hidden", ",".join(map(str, HIDDEN)), "--seed", str(SEED), "--sparse-lr", str(SPARSE_LR),
            "--dense-lr", str(DENSE_LR), "--batch-size", str(BATCH), "--snapshots", str(work / "snapshots"),
            "--snapshot-every", "4", "--full-every", "3", "--keep", "2", "--params", url,
            "--dense-every", "5", "--follow", "--whole-batches", "--stop-at", str(expect), "--deterministic",
            "--progress-every", "1", "--json",
        ],
        "serving": py + [
            "serve", "--params", url, "--snapshot", str(init_snapshot), "--no-features",
            "--host", "127.0.0.1", "--port", str(port),
        ],
    }


def wait_ready(role: Role, base: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not role.alive():
            raise RuntimeError(f"serving died while starting:\n{role.output()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"serving not ready after {timeout_s} s:\n{role.output()[-3000:]}")


class Poller(threading.Thread):
    """GET /healthz every ~50 ms; records (start, end, why) of every failure."""

    def __init__(self, base: str, result: LoopResult) -> None:
        super().__init__(daemon=True, name="chaos-poller")
        self.base, self.result, self.halt = base, result, threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=2.0) as client:
            while not self.halt.is_set():
                t0 = time.monotonic()
                try:
                    r = client.get("/healthz")
                    why = "" if r.status_code == 200 else f"status {r.status_code}"
                    worker = r.headers.get("x-freshrec-worker", "")
                except httpx.HTTPError as e:
                    why = type(e).__name__
                t1 = time.monotonic()
                self.result.polls += 1
                if why:
                    self.result.failures.append((t0, t1, why))
                else:
                    self.result.ok_workers.append(worker)
                    self.result.ok_times.append(t0)
                self.halt.wait(max(0.0, 0.05 - (t1 - t0)))


def run_loop(
    url: str,
    work: Path,
    *,
    expect: int,
    init_snapshot: Path,
    kills: int,
    seed: int,
    gap_s: tuple[float, float] = (0.2, 1.0),
    timeout_s: float = 240.0,
    keep_serving: bool = True,
    serving: bool = True,
    broker=None,
    broker_faults: int = 0,
) -> tuple[LoopResult, Role | None]:
    """Run the loop with `kills` kill -9s on a seeded schedule; returns the result and the (still
    running, when `keep_serving`) serving role. The first kills go to each role once, in a seeded
    order, while it still runs; the rest to a random running role.

    With `broker` (a `tests.kafka_broker.Broker` the run's URL points at), `broker_faults` of the
    kills hit the broker instead, alternately a clean stop and a kill -9, each followed, after a
    seeded 1-4 s outage, by a restart with its data on its port; the roles must ride them out. The
    faults are made from this thread (the broker process dies with the thread that started it)."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmds = commands(url, work, port, expect, init_snapshot)
    roles = {name: Role(name, cmd, work / "logs") for name, cmd in cmds.items()}
    rng = random.Random(seed)
    result = LoopResult(seed=seed)
    t_start = time.monotonic()
    if not serving:  # the uninterrupted reference run of the joiner and the trainer
        assert kills == 0
        for name in ("joiner", "trainer"):
            roles[name].start()
        for name in ("joiner", "trainer"):
            r = roles[name]
            assert r.proc is not None
            try:
                r.proc.wait(timeout=timeout_s)
            finally:
                r.stop()
            r.check()
        result.seconds = time.monotonic() - t_start
        result.trainer_output = roles["trainer"].output()
        return result, None
    serving_role = roles["serving"]
    serving_role.start()
    roles["trainer"].start()  # its start (torch) overlaps serving's; it waits for examples anyway
    wait_ready(serving_role, base)
    poller = Poller(base, result)
    poller.start()
    roles["joiner"].start()
    first = ["trainer", "serving"]
    rng.shuffle(first)
    first.insert(0, "joiner")  # it finishes first
    faults_left = broker_faults if broker is not None else 0
    ok = False
    try:
        while len(result.kills) < kills:
            if faults_left and rng.random() < faults_left / max(1, kills - len(result.kills)):
                faults_left -= 1
                how = "stop" if len(result.broker_faults) % 2 == 0 else "kill -9"
                running_roles = [r for r in roles.values() if r.alive()]
                if running_roles:  # during the work of a running role
                    running_roles[0].wait_progress(rng.randint(1, 3))
                t_fault = time.monotonic()
                if how == "stop":
                    broker.stop(keep_data=True)
                else:
                    broker.kill()
                time.sleep(rng.uniform(1.0, 4.0))
                broker.restart()
                result.broker_faults.append((t_fault - t_start, how, time.monotonic() - t_fault))
                result.kills.append((t_fault - t_start, "broker"))
                continue
            if time.monotonic() - t_start > timeout_s:
                raise RuntimeError(f"chaos loop: no time left after {len(result.kills)} kills")
            for r in roles.values():
                r.check()
            running = [n for n, r in roles.items() if r.alive()]
            serving_ready = not result.serving_kills or result.down_windows()[-1][1] != float("inf")
            if not serving_ready and len(running) > 1:
                running.remove("serving")  # it is still starting: kill another role meanwhile
            elif not serving_ready:
                time.sleep(0.05)
                continue
            pick = next((n for n in first if n in running), None)
            name = pick if pick is not None else rng.choice(running)
            if pick is not None:
                first.remove(pick)
            role = roles[name]
            # a random moment of its work: after it printed a few progress lines (joiner: one per
            # committed batch; trainer: one per batch; serving: after the poller saw it answer)
            if name == "serving":
                time.sleep(rng.uniform(*gap_s))
            elif not role.wait_progress(rng.randint(1, 4)):
                continue
            time.sleep(rng.uniform(0.0, 0.05))
            if not role.alive():
                continue
            t_kill = time.monotonic()
            role.kill()
            if role.proc is not None and role.proc.returncode == 0:  # it finished just before
                role.done = True
                continue
            result.kills.append((t_kill - t_start, name))
            role.start()
            if name == "serving":
                result.serving_kills.append(t_kill)
        if result.serving_kills:
            wait_ready(serving_role, base)
            deadline = time.monotonic() + 10
            while result.down_windows()[-1][1] == float("inf"):
                assert time.monotonic() < deadline, "the poller never saw the restarted serving"
                time.sleep(0.05)
        for name in ("joiner", "trainer"):
            r = roles[name]
            remaining = max(1.0, timeout_s - (time.monotonic() - t_start))
            assert r.proc is not None
            try:
                r.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{name} did not finish:\n{r.output()[-3000:]}") from None
            r.check()
        ok = True
    finally:
        poller.halt.set()
        poller.join(timeout=5)
        for name in ("joiner", "trainer") if keep_serving and ok else ("joiner", "trainer", "serving"):
            roles[name].stop()
    result.down = result.down_windows()
    result.seconds = time.monotonic() - t_start
    result.starts = {n: r.starts for n, r in roles.items()}
    result.trainer_output = roles["trainer"].output()
    if not keep_serving:
        serving_role.stop()
    return result, serving_role
