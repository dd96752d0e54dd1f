"""The body endpoints answered in the connection protocol, without ASGI.

A POST to /v1/rank, /v1/predict or /v1/actions costs the model a fraction of a millisecond; the
ASGI cycle around it (a task per request, the scope, receive/send messages, header checks) cost
about as much again. So the server's protocol (`freshrec.serve.server`) answers those requests
itself, from the parser's callbacks:

    headers complete ─► the Guard's rules (`Guard.refuse`: token 401, media type 415, declared
                        size 413) ─► a rejection is written at once and closes the connection
    body chunks      ─► collected here; past `max_bytes`: 413, connection closed
    message complete ─► `BodyRoutes.answer(path, body, arrived)`: a `Reply` (answered on the
                        loop), a `Pending` one (scored with the other rank requests of this
                        turn, in the next: `freshrec.serve.batching`), or an awaitable of one (a
                        worker thread scores it); the reply goes out in one `transport.write`

Everything the ASGI path promises holds: replies are byte-identical (same status line, `date`,
headers in the same order, body), HTTP/1.1 keep-alive by default, `Connection: close` and
HTTP/1.0 close after the reply, pipelined requests are answered in order (uvicorn's pipeline
queue holds them, ASGI and body requests alike), `Expect: 100-continue` is answered once the
headers pass the rules, each request's handling time and status go to the metrics (499 for a
client gone before its body was in). Other methods and paths, and an app mounted under a
root_path, go the ASGI way.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from freshrec.serve.batching import Pending
from freshrec.serve.bodies import Reply
from freshrec.serve.guard import Guard, endpoint_label

__all__ = ["ARRIVED", "BodyProtocol", "BodyRoutes", "HasBodyRoutes"]

ARRIVED = "freshrec.arrived"  # scope["extensions"][ARRIVED]: time.monotonic() when the headers were in
_STARTED = "freshrec.started"  # scope["extensions"][_STARTED]: perf_counter() when taken up
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, kw_only=True)
class BodyRoutes:
    """What the protocol needs of an app to answer its body endpoints itself.

    paths: the POST paths answered this way. guard: the rules applied before the body is read
    (and its metrics, where each request is counted). answer(path, body, arrived): the reply (or
    an awaitable of it) to a body that passed the rules; `arrived` is `time.monotonic()` when the
    headers were in (the app sheds requests that waited too long).
    """

    paths: frozenset[str]
    guard: Guard
    answer: Callable[[str, bytes, float | None], Reply | Awaitable[Reply]]


@runtime_checkable
class HasBodyRoutes(Protocol):
    """An ASGI app whose body endpoints the protocol may answer (`freshrec.serve.create_app`'s)."""

    body_routes: BodyRoutes | None


def _extensions(cycle: RequestResponseCycle) -> dict[str, Any]:
    return cast(dict[str, Any], cycle.scope["extensions"])  # stamped by the server's protocol


class BodyProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol answering `routes` itself (module docstring); with `routes`
    None it is uvicorn's protocol unchanged."""

    routes: ClassVar[BodyRoutes | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._serving: RequestResponseCycle | None = None  # the body request taken up, not answered
        self._answering = False  # ... and its reply is being computed by a worker
        self._draining: RequestResponseCycle | None = None  # answered, waiting for the transport
        self._next: RequestResponseCycle | None = None  # body complete, to be answered
        self._busy = False  # parsing a buffer or answering: `_next` waits for it

    def _is_body(self, cycle: RequestResponseCycle) -> bool:
        r = self.routes
        scope = cycle.scope
        if r is None or scope["method"] != "POST":
            return False
        return scope["path"] in r.paths and not scope["root_path"]

    def _observe(self, cycle: RequestResponseCycle, status: int) -> None:
        """Count the request's status and handling time (from being taken up) in the metrics."""
        routes = self.routes
        assert routes is not None
        seconds = time.perf_counter() - _extensions(cycle)[_STARTED]
        routes.guard.metrics.observe(endpoint_label(cycle.scope["path"]), status, seconds)

    def on_message_begin(self) -> None:
        # A reply written while the parser was still feeding this buffer armed the keep-alive
        # timer (uvicorn cancels it only when data arrives); the next request in it cancels it.
        self._unset_keepalive_if_required()
        super().on_message_begin()

    # ---- taking a request up (at once, or when the one before it is answered) --------------------
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        routes = self.routes
        if routes is None or not self._is_body(cycle):
            super()._start_asgi_task(cycle, app)
            return
        scope = cycle.scope
        _extensions(cycle)[_STARTED] = time.perf_counter()
        self._serving = cycle
        self._answering = False
        refusal = routes.guard.refuse(scope["path"], "POST", scope["headers"])  # type: ignore[arg-type]
        if refusal is None and len(cycle.body) > routes.guard.max_bytes:  # a pipelined body, read ahead
            refusal = routes.guard.too_large()
        if refusal is not None:
            self._reply(cycle, refusal)
            return
        if cycle.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(_CONTINUE)
            cycle.waiting_for_100_continue = False
        if cycle.more_body:
            self.flow.resume_reading()  # as an ASGI receive() would
        else:
            self._ready(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if not self._is_body(cycle):
            super().on_body(body)
            return
        if cycle.response_complete:
            return
        cycle.body += body
        routes = self.routes
        assert routes is not None
        if cycle is self._serving and len(cycle.body) > routes.guard.max_bytes:
            self._reply(cycle, routes.guard.too_large())

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self.cycle
        if cycle is self._serving and not cycle.response_complete and not self._answering:
            self._ready(cycle)

    # ---- answering ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        # Every request in `data` is parsed (and stamped) before the first is answered, as on the
        # ASGI path, so a burst that waited in the socket is shed by the app's max_queue_s.
        self._busy = True
        try:
            super().data_received(data)
        finally:
            self._busy = False
        self._answer_ready()

    def _ready(self, cycle: RequestResponseCycle) -> None:
        """`cycle` (taken up, body complete) is to be answered: now, or once the parser is done
        with its buffer, or when the answer in progress returns (no recursion along a pipeline)."""
        self._next = cycle
        if not self._busy:
            self._answer_ready()

    def _answer_ready(self) -> None:
        self._busy = True
        try:
            while (cycle := self._next) is not None:
                self._next = None
                self._answer(cycle)
        finally:
            self._busy = False

    def _answer(self, cycle: RequestResponseCycle) -> None:
        routes = self.routes
        assert routes is not None
        body = bytes(cycle.body)
        cycle.body = bytearray()
        scope = cycle.scope
        r = routes.answer(scope["path"], body, _extensions(cycle).get(ARRIVED))
        if isinstance(r, Reply):
            self._reply(cycle, r)
            return
        self._answering = True
        if isinstance(r, Pending):  # queued for a batched model call in the loop's next turn
            r.then(functools.partial(self._reply, cycle))
            return
        task = self.loop.create_task(self._await_reply(cycle, r))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _await_reply(self, cycle: RequestResponseCycle, pending: Awaitable[Reply]) -> None:
        self._reply(cycle, await pending)

    def _reply(self, cycle: RequestResponseCycle, reply: Reply) -> None:
        """Write `reply` in one write and count it; the request is complete once the transport
        takes more (a client that does not read its replies holds up the next request, and its
        connection is dropped by the write deadline, as on the ASGI path)."""
        self._observe(cycle, reply.status)
        self._answering = False
        if cycle.response_complete:
            return
        keep_alive = cycle.keep_alive and not reply.close
        if cycle.disconnected or self.transport.is_closing():
            self._complete(cycle)
            return
        out = [STATUS_LINE[reply.status]]
        for name, value in self.server_state.default_headers:
            out += (name, b": ", value, b"\r\n")
        for name, value in reply.headers:
            out += (name, b": ", value, b"\r\n")
        if not keep_alive and not reply.close:  # a rejection carries its own connection: close
            out.append(b"connection: close\r\n")
        out += (b"\r\n", reply.body)
        self.transport.write(b"".join(out))
        if not keep_alive:
            cycle.keep_alive = False
            self.transport.close()
        if self.flow.write_paused and keep_alive:
            self._draining = cycle  # completed by resume_writing
            self.flow.pause_reading()
            return
        self._complete(cycle)

    def _complete(self, cycle: RequestResponseCycle) -> None:
        """The request is answered: uvicorn's bookkeeping (the next pipelined request, keep-alive)."""
        if self._serving is cycle:
            self._serving = None
        self._draining = None
        cycle.response_complete = True
        cycle.message_event.set()
        self.on_response_complete()

    def resume_writing(self) -> None:
        super().resume_writing()
        cycle = self._draining
        if cycle is not None:
            self._complete(cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self._serving
        waiting = cycle is not None and not self._answering and self._draining is None
        if cycle is not None and waiting and not cycle.response_complete:
            self._observe(cycle, 499)  # gone before its body was in
            cycle.response_complete = True
            self._serving = None
        super().connection_lost(exc)
