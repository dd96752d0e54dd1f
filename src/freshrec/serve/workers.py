"""N server processes on one port over one set of shared tables, supervised by the applier.

    freshrec serve --workers N
      supervisor (this module, `Supervisor`) = the applier
        ├─ loads the snapshot into shared tables (`freshrec.serve.shared_replica.SharedApplier`)
        ├─ follows the parameter log (`SyncSubscriber` -> the applier): the only writer
        ├─ owns the features/actions logs: appends what the workers send (`freshrec.serve.logpipe`)
        └─ zygote (`freshrec.serve.zygote`): forked first, preloaded, forks the workers
             └─ worker 0..N-1 (`run_worker`): a `ServingReplica` over the shared tables
                (read-only), the HTTP app, uvicorn; the preloaded pages shared copy-on-write

One port: the supervisor binds N listening sockets on the same address with SO_REUSEPORT (the
kernel spreads new connections over them) and keeps them open; worker i serves socket i. When a
worker dies, its socket stays open in the supervisor, so connections that arrive meanwhile wait
in its queue for the replacement instead of being refused.

Supervision: a worker that exits is started again (at most once a second per slot), forked by
the zygote again (a zygote that died is replaced first). SIGTERM or SIGINT to the supervisor
stops every worker (SIGTERM, then SIGKILL after `stop_timeout_s`), then the zygote, the
subscriber, flushes the logs and removes the shared folder. The zygote dies with the supervisor
and a worker with the zygote (`PR_SET_PDEATHSIG`), so even a kill -9 of the supervisor leaves
no worker serving; the shared folder of a supervisor that died so is removed by the next one
started on the host.

Every response carries `x-freshrec-worker: <index>/<pid>`; /healthz, /metrics and /v1/stats
describe the worker that answered (its requests, latency), with the applier's versions and rows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freshrec.errors import RoleError
from freshrec.serve.logpipe import READY, LogLink, LogPump
from freshrec.serve.zygote import WorkerProcess, Zygote

__all__ = ["Supervisor", "WorkerSpec", "reuseport_sockets", "run_worker", "shared_root"]

WORKER_HEADER = "x-freshrec-worker"
_PREFIX = "freshrec-serve-"


def shared_root() -> Path:
    """A new private folder for the shared tables: under /dev/shm when there is one (memory),
    else the temp folder. Folders left by supervisors that are gone are removed first."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    for old in base.glob(f"{_PREFIX}*"):
        try:
            pid = int(old.name[len(_PREFIX) :].split("-")[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:
            pass  # another user's
    return Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))


def reuseport_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """n listening sockets on (host, port) with SO_REUSEPORT (port 0: the first picks one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    out: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            port = s.getsockname()[1]
            s.listen(2048)
    except OSError:
        for s in out:
            s.close()
        raise
    return out


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """What every worker runs (written to ROOT/worker.json; tokens go by environment).

    app / server: keyword arguments of `AppConfig` / `ServerConfig` (JSON; no tokens). logs:
    the names and partition counts of the logs the workers write, in log-number order, with
    None for a log that is off: [features, actions]. schema: the data schema the workers speak
    (`Schema.to_dict()`; None: encoded ids)."""

    host: str
    port: int
    app: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    logs: tuple[tuple[str, int] | None, ...] = (None, None)
    threads: int = 1
    log_level: str = "warning"
    schema: dict[str, Any] | None = None


@dataclass
class _Slot:
    index: int
    sock: socket.socket
    proc: WorkerProcess | None = None
    pump: LogPump | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0
    restarts: int = 0


class Supervisor:
    """Starts, watches and stops the workers (module docstring).

    Args:
        root: the shared folder (replica.json, tables, state). spec: WorkerSpec.
        sockets: one listening socket per worker. logs: the real logs by log number (None: off).
        zygote: the preloaded process that forks the workers (`Zygote.fork`, done first thing).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        root: Path,
        spec: WorkerSpec,
        sockets: Sequence[socket.socket],
        logs: Sequence[Any],
        *,
        zygote: Zygote,
        stop_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self.spec = spec
        self.logs = list(logs)
        self.locks = [threading.Lock() for _ in self.logs]
        self.zygote = zygote
        self.stop_timeout_s = stop_timeout_s
        self.clock = clock
        self.slots = [_Slot(i, s) for i, s in enumerate(sockets)]
        doc = {
            "host": spec.host,
            "port": spec.port,
            "app": spec.app,
            "server": spec.server,
            "logs": [list(x) if x is not None else None for x in spec.logs],
            "threads": spec.threads,
            "log_level": spec.log_level,
            "schema": spec.schema,
        }
        (self.root / "worker.json").write_text(json.dumps(doc))
        self._stopping = False

    # ---- workers -------------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        slot.ready = threading.Event()
        try:
            if not self.zygote.alive():
                self.zygote.stop(0.0)
                self.zygote = Zygote.spawn(self.root, env=self.zygote.env)
            slot.proc = self.zygote.start_worker(slot.index, slot.sock.fileno(), theirs.fileno())
        finally:
            theirs.close()
        slot.started = self.clock()
        slot.pump = LogPump(mine, self.logs, self.locks, on_ready=slot.ready.set).start()

    def start(self, timeout_s: float = 300.0) -> Supervisor:
        """Start every worker; return once all of them serve (RoleError if one exits first)."""
        for slot in self.slots:
            self._spawn(slot)
        deadline = self.clock() + timeout_s
        for slot in self.slots:
            while not slot.ready.wait(0.1):
                assert slot.proc is not None
                if slot.proc.poll() is not None:
                    self.stop()
                    msg = f"worker {slot.index} exited while starting"
                    raise RoleError(msg)
                if self.clock() > deadline:
                    self.stop()
                    msg = f"worker {slot.index} did not start serving within {timeout_s} s"
                    raise RoleError(msg)
        return self

    def check(self) -> int:
        """Start again each worker that exited (at most once a second per slot); returns how many."""
        n = 0
        for slot in self.slots:
            if self._stopping or slot.proc is None or slot.proc.poll() is None:
                continue
            if self.clock() - slot.started < 1.0:
                continue
            if slot.pump is not None:
                slot.pump.join(5.0)  # what the dead worker had sent is appended first
            slot.restarts += 1
            self._spawn(slot)
            n += 1
        return n

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None]

    def watch(
        self, stop: threading.Event, *, every_s: float = 0.2, tick: Callable[[], None] | None = None
    ) -> None:
        """Restart dead workers until `stop` is set (calling `tick` each round)."""
        while not stop.wait(every_s):
            self.check()
            if tick is not None:
                tick()

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL the ones still running after stop_timeout_s, wait for
        all, stop the zygote, append what the workers sent, close the sockets."""
        self._stopping = True
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = self.clock() + self.stop_timeout_s
        for p in procs:
            if not p.wait(max(0.1, deadline - self.clock())):
                p.send_signal(signal.SIGKILL)
                p.wait(10.0)
        self.zygote.stop()
        for slot in self.slots:
            if slot.pump is not None:
                slot.pump.join(5.0)
                slot.pump.sock.close()
            slot.sock.close()


# ---- the worker process -------------------------------------------------------------------------
class _WorkerApp:
    """The app with the worker header on every response and a READY frame once started."""

    def __init__(self, app: Any, tag: str, on_ready: Callable[[], None]) -> None:
        self.app = app
        self.header = (WORKER_HEADER.encode(), tag.encode())
        self.on_ready = on_ready

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":

            async def send_lifespan(msg: dict) -> None:
                await send(msg)
                if msg["type"] == "lifespan.startup.complete":
                    self.on_ready()

            await self.app(scope, receive, send_lifespan)
            return

        async def send_tagged(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", ()), self.header]}
            await send(msg)

        await self.app(scope, receive, send_tagged)


def run_worker(root: Path, index: int, listen_fd: int, link_fd: int) -> int:
    """A worker, in a process the zygote just forked: serve socket `listen_fd` over the shared
    replica in ROOT, logging through `link_fd`, until SIGTERM (see the module docstring)."""
    doc = json.loads((root / "worker.json").read_text())
    import torch

    torch.set_num_threads(max(1, int(doc["threads"])))  # this process's setting, as the CLI's
    from freshrec.serve.app import AppConfig, create_app
    from freshrec.serve.logpipe import ForwardedLog
    from freshrec.serve.metrics import share_between_processes
    from freshrec.serve.server import ServerConfig, serve_forever
    from freshrec.serve.shared_replica import attach_replica

    share_between_processes(root / "metrics")  # /metrics and /v1/stats: every worker's requests

    link = LogLink(socket.socket(fileno=link_fd))
    replica, follower = attach_replica(root)
    logs: list[ForwardedLog | None] = []
    for i, spec in enumerate(doc["logs"]):
        logs.append(None if spec is None else ForwardedLog(link, i, name=spec[0], partitions=spec[1]))
    app_config = AppConfig(
        **doc["app"],
        api_token=os.environ.get("FRESHREC_WORKER_TOKEN") or None,
        metrics_token=os.environ.get("FRESHREC_WORKER_METRICS_TOKEN") or None,
    )
    schema = None
    if doc.get("schema") is not None:
        from freshrec.data.schema import Schema

        schema = Schema.from_dict(doc["schema"], origin=str(root / "worker.json"))
    app = create_app(
        replica,
        features_log=logs[0],
        actions_log=logs[1],
        subscriber=follower,
        config=app_config,
        schema=schema,
    )
    wrapped = _WorkerApp(app, f"{index}/{os.getpid()}", lambda: link.send(READY, 0))
    sock = socket.socket(fileno=listen_fd)
    serve_forever(
        wrapped,
        host=doc["host"],
        port=int(doc["port"]),
        log_level=doc["log_level"],
        sock=sock,
        config=ServerConfig(**doc["server"]),
    )
    return 0
