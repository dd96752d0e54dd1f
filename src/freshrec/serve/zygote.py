"""The zygote of `freshrec serve --workers N`: a preloaded process that forks the workers.

A worker started as a fresh interpreter pays for its own copy of the interpreter's heap, torch,
numba's loaded kernels and the app's modules (about 350 MB each). Forked from one preloaded
process instead, the workers share those pages copy-on-write with it and with each other, so a
worker costs only what it writes after the fork.

Forking a process that runs threads is unsafe (a lock held by another thread stays held in the
child; torch's OpenMP pool does not survive a fork). So the supervisor forks the zygote first,
from its main thread, before it loads the snapshot or starts a thread of its own; the zygote

  1. dies with the supervisor (`PR_SET_PDEATHSIG` SIGKILL) and ignores SIGINT (the supervisor
     stops the tree), reaps its children itself (SIGCHLD ignored: no zombies);
  2. on the first request, preloads: imports the app, runs one rank over the shared replica of
     ROOT (torch ops with one intra-op thread, so no OpenMP pool exists; every numba kernel of
     the serving path loaded), drops it, `gc.collect()` then `gc.freeze()` (the collector never
     touches, and so never unshares, what the zygote holds);
  3. forks one worker per request and answers its pid. It never starts a thread.

Requests, supervisor -> zygote, over a Unix socket pair: b"W" + u32 worker index, with the
worker's listening socket and log link passed as SCM_RIGHTS; the answer is an i64 pid (-1: the
fork failed). End of file on the socket: the zygote exits. numpy's BLAS may keep an idle thread
pool; OpenBLAS shuts it down around fork itself (`pthread_atfork`).

A zygote that died is replaced by a fresh interpreter (`python -m freshrec.serve.zygote FD`),
which preloads the same way: the supervisor cannot fork safely once its threads run.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from freshrec.errors import RoleError

__all__ = ["WorkerProcess", "Zygote", "die_with_parent"]

_REQ = struct.Struct("<cI")
_PID = struct.Struct("<q")


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Get `sig` when the parent (the thread that forked this process) dies (Linux); exit now
    if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


class WorkerProcess:
    """A worker forked by the zygote (not this process's child): watched through a pidfd."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._fd, self.returncode = None, -1

    def poll(self) -> int | None:
        """None while it runs; -1 once it exited (the zygote reaped it: no exit status)."""
        if self._fd is not None and select.select([self._fd], [], [], 0)[0]:
            os.close(self._fd)
            self._fd, self.returncode = None, -1
        return self.returncode

    def wait(self, timeout_s: float) -> bool:
        """Whether it exited within timeout_s."""
        if self._fd is not None:
            select.select([self._fd], [], [], max(0.0, timeout_s))
        return self.poll() is not None

    def send_signal(self, sig: int) -> None:
        if self._fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._fd, sig)


class Zygote:
    """The supervisor's handle on the zygote (module docstring). `fork` it first thing."""

    def __init__(
        self, sock: socket.socket, pid: int, *, env: dict[str, str], proc: subprocess.Popen | None = None
    ) -> None:
        self.sock = sock
        self.pid = pid
        self.env = env
        self.proc = proc
        self._fd = os.pidfd_open(pid)

    @classmethod
    def fork(
        cls, root: Path, worker: Callable[[int, int, int], int], *, env: dict[str, str] | None = None
    ) -> Zygote:
        """Fork the zygote from this (still single-threaded) process. `worker(index, listen_fd,
        link_fd)` is what each forked worker runs; ROOT holds replica.json by the first request.
        env: extra environment of the zygote and its workers (tokens)."""
        env = dict(env or {})
        if threading_count() > 1:
            msg = "the zygote must be forked before any thread starts"
            raise RoleError(msg)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the zygote
            code = 1
            try:
                mine.close()
                die_with_parent(parent, signal.SIGKILL)
                os.environ.update(env)
                code = serve_requests(theirs, Path(root), worker)
            finally:
                os._exit(code)
        theirs.close()
        return cls(mine, pid, env=env)

    @classmethod
    def spawn(cls, root: Path, *, env: dict[str, str] | None = None) -> Zygote:
        """A zygote in a fresh interpreter (the replacement of one that died)."""
        env = dict(env or {})
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [sys.executable, "-m", "freshrec.serve.zygote", str(root), str(theirs.fileno())]
        try:
            proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env={**os.environ, **env})
        finally:
            theirs.close()
        return cls(mine, proc.pid, env=env, proc=proc)

    def alive(self) -> bool:
        return not select.select([self._fd], [], [], 0)[0]

    def start_worker(self, index: int, listen_fd: int, link_fd: int) -> WorkerProcess:
        """Ask for a worker (RoleError if the zygote is gone or the fork failed)."""
        try:
            socket.send_fds(self.sock, [_REQ.pack(b"W", index)], [listen_fd, link_fd])
            got = b""
            while len(got) < _PID.size:
                part = self.sock.recv(_PID.size - len(got))
                if not part:
                    break
                got += part
        except OSError as e:
            msg = f"the zygote failed: {e}"
            raise RoleError(msg) from e
        if len(got) < _PID.size:
            msg = "the zygote exited"
            raise RoleError(msg)
        (pid,) = _PID.unpack(got)
        if pid < 0:
            msg = f"the zygote could not fork worker {index}"
            raise RoleError(msg)
        return WorkerProcess(pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the request socket (the zygote exits on end of file); SIGKILL it after timeout_s.
        Idempotent."""
        if self.sock.fileno() < 0:
            return
        self.sock.close()
        if select.select([self._fd], [], [], timeout_s)[0] == []:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._fd, signal.SIGKILL)
            select.select([self._fd], [], [], 5.0)
        if self.proc is not None:
            self.proc.wait(5.0)
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        os.close(self._fd)


def threading_count() -> int:
    """Python threads of this process (the OS may add BLAS pool threads; see the docstring)."""
    import threading

    return threading.active_count()


def preload(root: Path) -> None:
    """Import and run once what a worker runs (module docstring, step 2)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)  # no OpenMP pool before a fork; each worker sets its own count
    import freshrec.serve.app
    import freshrec.serve.logpipe
    import freshrec.serve.server  # noqa: F401
    from freshrec.serve.shared_replica import attach_replica

    replica, follower = attach_replica(root, follow=False)
    with contextlib.suppress(Exception):  # best effort: a model the warm-up ids don't fit
        replica.rank(1, np.arange(1, 9))
    from freshrec.serve.replies import rank_body
    from freshrec.serve.writers import impression_block
    from freshrec.stream.local_frames import seal_frames

    rank_body("warm", np.arange(2), np.zeros(2, np.float32), 0)  # the reply and impression kernels
    seal_frames(*impression_block([("warm", 1, [1, 2], {}, {}, 0.0)]))
    del replica, follower
    gc.collect()
    gc.freeze()


def serve_requests(sock: socket.socket, root: Path, worker: Callable[[int, int, int], int]) -> int:
    """The zygote's loop (module docstring): returns its exit code once the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    loaded = False
    zygote = os.getpid()
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, _REQ.size, 2)
        except OSError:
            return 1
        if len(msg) < _REQ.size or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return 0
        _, index = _REQ.unpack(msg)
        if not loaded:
            preload(root)
            loaded = True
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:  # the worker
            code = 1
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                die_with_parent(zygote, signal.SIGKILL)  # at once: no worker outlives a kill -9
                code = worker(index, fds[0], fds[1])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        for fd in fds:
            os.close(fd)
        sock.sendall(_PID.pack(pid))


def _main(argv: list[str]) -> int:
    """`python -m freshrec.serve.zygote ROOT FD`: a replacement zygote (module docstring)."""
    from freshrec.serve.workers import run_worker

    root, fd = Path(argv[0]), int(argv[1])
    die_with_parent(os.getppid(), signal.SIGKILL)
    return serve_requests(socket.socket(fileno=fd), root, lambda i, lf, kf: run_worker(root, i, lf, kf))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
