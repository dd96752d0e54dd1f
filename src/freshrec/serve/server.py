"""Run the model server with uvicorn: in a background thread (tests, benchmarks) or in the foreground.

    srv = ServerThread(app).start()          # binds 127.0.0.1 on a free port
    httpx.post(srv.url + "/v1/rank", json=...)
    srv.stop()

The listening socket is bound before uvicorn starts (port 0 = a free port chosen by the OS), so
there is no race between picking a port and using it. The default host is 127.0.0.1: a server
is reachable from other machines only when asked (`host="0.0.0.0"`).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

__all__ = ["ServerThread", "bind_socket", "serve_forever"]


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _config(app: Any, host: str, port: int, log_level: str, access_log: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_keep_alive=30,
    )


class ServerThread:
    """uvicorn serving `app` in a daemon thread; `start()` returns once it accepts connections."""

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        self.sock = bind_socket(host, port)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.server = uvicorn.Server(_config(app, host, self.port, log_level, False))
        self._thread = threading.Thread(target=self._run, name="freshrec-uvicorn", daemon=True)
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as e:  # surfaced by start()
            self.error = e

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if self.error is not None or not self._thread.is_alive():
                msg = f"uvicorn failed to start: {self.error!r}"
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                msg = f"uvicorn did not start within {timeout_s} s"
                raise RuntimeError(msg)
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, finish in-flight requests, run the app's shutdown, join the thread."""
        self.server.should_exit = True
        self._thread.join(timeout_s)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn handles the signals); with `sock`, on
    that already-bound socket (see `bind_socket`)."""
    server = uvicorn.Server(_config(app, host, port, log_level, False))
    server.run(sockets=[sock] if sock is not None else None)
