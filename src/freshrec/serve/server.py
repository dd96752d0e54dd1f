"""Run the model server with uvicorn: in a background thread (tests, benchmarks) or in the foreground.

    srv = ServerThread(app).start()          # binds 127.0.0.1 on a free port
    httpx.post(srv.url + "/v1/rank", json=...)
    srv.stop()

The listening socket is bound before uvicorn starts (port 0 = a free port chosen by the OS), so
there is no race between picking a port and using it. The default host is 127.0.0.1: a server
is reachable from other machines only when asked (`host="0.0.0.0"`), and `check_exposure` (run
by `freshrec serve`) refuses that without a token unless the user says `--insecure`.

Slow and idle clients are dropped (`ServerConfig`; uvicorn alone keeps a connection that never
finishes its headers forever). Per connection, one deadline runs at a time:

- from connect, and from the first byte of each later request, the request line and headers must
  arrive within `header_timeout_s` (and be at most `max_header_bytes`: 431 past it);
- after the headers, the body must arrive within `body_timeout_s`;
- between requests an idle keep-alive connection is closed after `keep_alive_s`;
- a reply the client does not read for `write_timeout_s` drops the connection.

A dropped connection is aborted (its descriptor freed at once). At most `max_connections` are open:
a new one past it pushes out the connection that has waited longest for a request (idle, or
still sending headers); when every connection has a request in progress, the new one is closed.
So descriptors stay bounded and a flood of slow connections cannot keep /healthz out.

Connections waiting in the listening socket's queue are accepted as soon as one arrives (up to
64 at a time), not one per turn of the event loop. The app's body endpoints are answered by the
protocol itself (`freshrec.serve._protocol`), everything else over ASGI.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from freshrec.errors import ConfigError, RoleError
from freshrec.serve._protocol import ARRIVED, BodyProtocol, BodyRoutes, HasBodyRoutes

__all__ = [
    "ARRIVED",
    "ServerConfig",
    "ServerThread",
    "bind_socket",
    "check_exposure",
    "is_loopback",
    "serve_forever",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Connection limits of the server (see the module docstring); seconds and counts."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    write_timeout_s: float = 30.0
    max_connections: int = 1000
    max_header_bytes: int = 65_536

    def __post_init__(self) -> None:
        times = (self.header_timeout_s, self.body_timeout_s, self.keep_alive_s, self.write_timeout_s)
        if not min(times) > 0 or self.max_connections < 1 or self.max_header_bytes < 1024:
            msg = f"ServerConfig limits must be positive (max_header_bytes >= 1024), got {self}"
            raise ConfigError(msg)


_ACCEPT_BATCH = 64  # connections taken from the listening queue per new connection at most


class _HeadersTooLarge(Exception):
    pass


class _OneWrite:
    """The transport as one response's cycle sees it: the status line and headers (uvicorn's first
    write) are held until the first body write and leave with it, so a reply with a body costs one
    write (one syscall, one segment) instead of two. Everything else is the transport's."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._head: bytes | None = b""  # b"": nothing written yet; None: passing through

    def write(self, data: bytes) -> None:
        head = self._head
        if head is None:
            self._transport.write(data)
        elif not head:
            self._head = data
        else:
            self._head = None
            self._transport.write(head + data)

    def close(self) -> None:
        if self._head:
            self._transport.write(self._head)
        self._head = None
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _GuardedProtocol(BodyProtocol):
    """uvicorn's httptools protocol with the deadlines and the connection cap of `ServerConfig`,
    answering the app's body endpoints itself (`freshrec.serve._protocol`).

    `_waiting` (one dict per server, insertion-ordered = oldest first) holds the connections that
    wait for a request: connected or idle between requests, headers not complete.
    """

    limits: ClassVar[ServerConfig]
    _waiting: ClassVar[dict[_GuardedProtocol, None]]
    listen: ClassVar[socket.socket | None] = None  # the listening socket, when the server was given it
    _accepting: ClassVar[set[asyncio.Task[Any]]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._too_large = False
        self._running: Any = None  # the request cycle whose app task runs

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # ---- deadlines ---------------------------------------------------------------------------
    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._drop, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _drop(self, what: str) -> None:
        log.debug("dropping connection from %s: %s", self.client, what)
        self._waiting.pop(self, None)
        self.transport.abort()
        # What connection_lost does (it comes a loop turn later), for the running request too
        # (with pipelining, self.cycle is the last one parsed): its send/receive return at once.
        for cycle in (self._running, self.cycle):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self.flow.resume_writing()

    def _wait_for_request(self) -> None:
        self._waiting.pop(self, None)
        self._waiting[self] = None  # to the end: the newest waiter

    # ---- uvicorn / asyncio callbacks -----------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._accept_waiting()
        if len(self.connections) > self.limits.max_connections:
            victim = next(iter(self._waiting), None)
            if victim is None:
                self._drop("connection limit reached")
                return
            victim._drop("connection limit reached (longest waiting)")
        self._wait_for_request()
        self._arm(self.limits.header_timeout_s, "headers not complete in time")

    def _accept_waiting(self) -> None:
        """Take up the connections already waiting in the listening socket's queue now, not one
        per turn of the event loop (the loop's own accept), so under load a burst of new
        connections does not wait a loop turn each (64 connections on a busy loop: seconds)."""
        listen = self.listen
        if listen is None or listen.fileno() < 0 or listen.getblocking():
            return  # none, closed, or not yet the loop's (non-blocking) socket
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # closed (shutting down), or out of descriptors: the loop's accept decides
                return
            conn.setblocking(False)
            make = functools.partial(
                type(self), config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            task = self.loop.create_task(self.loop.connect_accepted_socket(make, conn))
            self._accepting.add(task)  # held until done (the loop keeps only weak references)
            task.add_done_callback(self._accepting.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
        self._waiting.pop(self, None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm(self.limits.header_timeout_s, "headers not complete in time")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge  # httptools turns it into HttpParserError: send_400_response

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:
            super().send_400_response(msg)
            return
        body = f"request line and headers exceed {self.limits.max_header_bytes} bytes".encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._waiting.pop(self, None)
        self._arm(self.limits.body_timeout_s, "body not complete in time")
        extensions: dict[str, Any] = {ARRIVED: time.monotonic()}  # the app sheds by it (max_queue_s)
        self.scope["extensions"] = extensions  # type: ignore[typeddict-item]
        super().on_headers_complete()
        if self.scope["method"] != "HEAD":  # a HEAD reply has no body write to carry its head
            self.cycle.transport = _OneWrite(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn now waits keep_alive_s for a request
            self._wait_for_request()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(
                self.limits.write_timeout_s, self._drop, "reply not read in time"
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None


def guarded_protocol(
    limits: ServerConfig, routes: BodyRoutes | None = None, listen: socket.socket | None = None
) -> type[HttpToolsProtocol]:
    """The protocol class of one server (its own limits, its own waiting list, the body
    endpoints it answers itself, and the listening socket it accepts from)."""
    attrs = {"limits": limits, "_waiting": {}, "routes": routes, "listen": listen, "_accepting": set()}
    return type("GuardedProtocol", (_GuardedProtocol,), attrs)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) only reaches this machine."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(h, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_exposure(host: str, *, token: str | None, insecure: bool) -> None:
    """Raise ConfigError when `host` is not loopback, no API token is set and `insecure` is off."""
    if token is None and not insecure and not is_loopback(host):
        msg = (
            f"refusing to serve on {host} (not a loopback address) without a token: pass --token "
            "or set FRESHREC_TOKEN, or pass --insecure to serve it to anyone who can connect"
        )
        raise ConfigError(msg)


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _config(
    app: Any, host: str, port: int, log_level: str, limits: ServerConfig, sock: socket.socket | None = None
) -> uvicorn.Config:
    routes = app.body_routes if isinstance(app, HasBodyRoutes) else None
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        http=guarded_protocol(limits, routes, sock),
        ws="none",
        timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]
        server_header=False,
    )


class ServerThread:
    """uvicorn serving `app` in a daemon thread; `start()` returns once it accepts connections."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        config: ServerConfig | None = None,
    ) -> None:
        self.sock = bind_socket(host, port)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.config = config or ServerConfig()
        self.server = uvicorn.Server(_config(app, host, self.port, log_level, self.config, self.sock))
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
                msg = f"the HTTP server on {self.host}:{self.port} failed to start: {self.error!r}"
                raise RoleError(msg)
            if time.monotonic() > deadline:
                msg = f"the HTTP server on {self.host}:{self.port} did not start within {timeout_s} s"
                raise RoleError(msg)
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
    config: ServerConfig | None = None,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn handles the signals); with `sock`, on
    that already-bound socket (see `bind_socket`)."""
    server = uvicorn.Server(_config(app, host, port, log_level, config or ServerConfig(), sock))
    # The start-up objects (the model, the app, torch's and the tables' Python side: hundreds of
    # thousands) leave the cyclic collector: a full collection then walks only what serving
    # allocated since. Left in, one gen-2 pass over them stalled the event loop 265-320 ms, the
    # whole of the p99 and max under 64 connections (`freshrec bench serve --connections 64`).
    gc.collect()
    gc.freeze()
    server.run(sockets=[sock] if sock is not None else None)
