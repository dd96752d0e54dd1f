"""A real single-node Kafka broker (KRaft, loopback) for the tests, run by `scripts/kafka.sh run`.

The broker is a child of the test process and gets SIGKILL if that process dies (Linux
PR_SET_PDEATHSIG), so an interrupted test run leaves no broker behind. For fault tests a broker
can be stopped keeping its data (`stop(keep_data=True)`, a clean shutdown), killed (`kill()`,
SIGKILL) and started again on the same port with the same data (`restart()`).
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka.sh"
NEEDS = "Kafka tests need Java 17+ and Maven to fetch the broker jars (scripts/kafka.sh fetch)"


def _libs_dir() -> Path:
    out = subprocess.run(
        ["bash", "-c", f'source <(sed -n "/^VERSION=/p;/^HOME_DIR=/p" {SCRIPT}); echo "$HOME_DIR/libs"'],
        capture_output=True, text=True, check=True,
    )
    return Path(out.stdout.strip())


def _java_major() -> int | None:
    if shutil.which("java") is None:
        return None
    out = subprocess.run(["java", "-XshowSettings:properties", "-version"], capture_output=True, text=True)
    for line in out.stderr.splitlines():
        if "java.specification.version" in line:
            return int(line.split("=")[1].strip().split(".")[0])
    return None


def unavailable_reason(*, fetch_timeout_s: float = 600.0) -> str | None:
    """Why a broker cannot be started here (None when it can); fetches the jars when Maven exists."""
    major = _java_major()
    if major is None or major < 17:
        return f"{NEEDS}: java {'not found' if major is None else f'{major} is too old'}"
    if (_libs_dir() / ".complete").exists():
        return None
    if shutil.which("mvn") is None:
        return f"{NEEDS}: the jars are not in {_libs_dir()} and mvn is not installed"
    try:
        out = subprocess.run(["bash", str(SCRIPT), "fetch"], capture_output=True, text=True,
                             timeout=fetch_timeout_s)
    except subprocess.TimeoutExpired:
        return f"{NEEDS}: 'scripts/kafka.sh fetch' took longer than {fetch_timeout_s:.0f}s"
    if out.returncode != 0:
        return f"{NEEDS}: 'scripts/kafka.sh fetch' failed: {out.stderr.strip()[-500:]}"
    return None


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Broker:
    """A running broker: `bootstrap` is "127.0.0.1:PORT"; `dir` holds its config, data and logs.

    The process dies with the thread that started (or restarted) it (PR_SET_PDEATHSIG)."""

    bootstrap: str
    dir: Path
    proc: subprocess.Popen[str]

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, *, keep_data: bool = False, timeout_s: float = 60.0) -> None:
        """Stop the broker. `keep_data`: a clean shutdown (SIGTERM) that keeps `dir` for
        `restart()`; otherwise SIGKILL and `dir` is removed (its data is thrown away)."""
        if not keep_data:
            self.kill()
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the broker (a crash); `dir` is kept for `restart()`."""
        if self.running():
            self.proc.kill()
        self.proc.wait(30)

    def restart(self, *, timeout_s: float = 90.0) -> None:
        """Start the stopped or killed broker again: same port, same data. Returns once its port
        accepts connections."""
        assert not self.running(), "restart() needs a stopped broker"
        self.proc = _launch(self.dir)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("bootstrap="):
                got = line.strip().split("=", 1)[1]
                assert got == self.bootstrap, f"restarted on {got}, not {self.bootstrap}"
                break
        _wait_listening(self, timeout_s)

    def logs(self) -> str:
        parts = []
        for name in ("format.log", "stdout.log", "server.log"):
            p = self.dir / name
            if p.exists():
                parts.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)


PREFIX = "freshrec-kafka-test."


def _sweep_stale(min_age_s: float = 600.0) -> None:
    """Remove broker dirs left by killed test runs: their broker is dead (or never started)."""
    for d in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            pid = int((d / "pid").read_text())
            alive = Path(f"/proc/{pid}").exists()
        except (OSError, ValueError):
            alive = time.time() - d.stat().st_mtime < min_age_s  # maybe still starting
        if not alive:
            shutil.rmtree(d, ignore_errors=True)


def _launch(d: Path) -> subprocess.Popen[str]:
    """`kafka.sh run DIR` as a child that dies with this thread (a DIR with a broker: restarted)."""
    return subprocess.Popen(["bash", str(SCRIPT), "run", str(d)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)


def _wait_listening(broker: Broker, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _port_open(broker.port):
        if broker.proc.poll() is not None or time.monotonic() > deadline:
            logs = broker.logs()
            broker.stop()
            exited = broker.proc.returncode is not None
            why = "exited" if exited else f"did not listen within {timeout_s:.0f}s"
            msg = f"the Kafka broker {why}:\n{logs}"
            raise RuntimeError(msg)
        time.sleep(0.1)


def start(*, timeout_s: float = 90.0) -> Broker:
    """Start a broker in a new temp dir and return once its port accepts connections."""
    _sweep_stale()
    d = Path(tempfile.mkdtemp(prefix=PREFIX))
    proc = _launch(d)
    assert proc.stdout is not None
    bootstrap = ""
    for line in proc.stdout:
        if line.startswith("bootstrap="):
            bootstrap = line.strip().split("=", 1)[1]
            break
    broker = Broker(bootstrap, d, proc)
    if not bootstrap:
        err = proc.stderr.read() if proc.stderr else ""
        broker.stop()
        msg = f"scripts/kafka.sh run printed no bootstrap line: {err.strip()[-2000:]}"
        raise RuntimeError(msg)
    _wait_listening(broker, timeout_s)
    return broker


class BackgroundBroker:
    """Starts a broker (after checking it can) on a thread of its own, so that the start overlaps
    with other tests; the thread lives until `stop()`, since the broker dies with the thread that
    started it (PR_SET_PDEATHSIG)."""

    def __init__(self) -> None:
        self.bootstrap: str | None = None
        self.skip_reason: str | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-broker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        broker = None
        try:
            self.skip_reason = unavailable_reason()
            if self.skip_reason is None:
                broker = start()
                self.bootstrap = broker.bootstrap
        except BaseException as e:  # reported by the fixture, on the tests' thread
            self.error = e
        self._ready.set()
        if broker is not None:
            self._stop.wait()
            broker.stop()

    def wait(self, timeout_s: float = 900.0) -> None:
        """Block until the broker is up, or it is known that it cannot be."""
        if not self._ready.wait(timeout_s):
            self.error = TimeoutError(f"the Kafka broker was not up within {timeout_s:.0f}s")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
