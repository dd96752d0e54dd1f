"""The ASGI middleware in front of the app: access control, media type, body size, timing.

For every HTTP request, in this order, before any of the body is read:

1. access: with an API token set, every path but the open ones (`OPEN_PATHS`: /healthz, the
   OpenAPI docs and the page at /, which holds no data and asks for the token itself) needs
   `Authorization: Bearer <token>`; `/metrics` needs the metrics token when one is set (and is
   open when none is). Otherwise 401 with `WWW-Authenticate: Bearer`.
2. media type: a POST to a body endpoint needs `Content-Type: application/json` (a `charset`
   parameter, if any, must be utf-8): 415 otherwise. A page in a browser can POST text/plain to a
   local server without a CORS preflight, but not application/json.
3. size: a Content-Length past `max_bytes`, or a streamed body that grows past it: 413.

A rejection closes the connection (the rest of its body is never read). The body is read here
once and replayed to the app. Each request's handling time and status go to the metrics (499
for a client that went, or was dropped, before its body was in). The rules are `Guard.refuse`
(and `too_large`), which the server's connection protocol also applies to the body endpoints it
answers itself (`freshrec.serve._protocol`).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

from freshrec.serve.bodies import Reply, error_json
from freshrec.serve.metrics import ServeMetrics

__all__ = ["OPEN_PATHS", "Guard", "endpoint_label"]

OPEN_PATHS = frozenset({"/", "/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
ENDPOINTS = frozenset({"/v1/rank", "/v1/predict", "/v1/actions", "/v1/stats", "/healthz", "/metrics", "/"})


def endpoint_label(path: str) -> str:
    """The `endpoint` label of a request path in the metrics: the path, or "other"."""
    return path if path in ENDPOINTS else "other"


def _bearer_ok(headers: list[tuple[bytes, bytes]], token: bytes) -> bool:
    for k, v in headers:
        if k == b"authorization":
            scheme, _, cred = v.strip().partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(), token)
    return False


def _json_media_type(value: bytes) -> bool:
    media, *params = value.split(b";")
    if media.strip().lower() != b"application/json":
        return False
    for p in params:
        k, _, v = p.partition(b"=")
        if k.strip().lower() == b"charset" and v.strip().strip(b'"').lower() not in (b"utf-8", b"utf8"):
            return False
    return True


class Guard:
    """Pure ASGI middleware (see the module docstring). Tokens are str or None (no check)."""

    def __init__(
        self,
        app: Any,
        *,
        body_paths: frozenset[str],
        max_bytes: int,
        metrics: ServeMetrics,
        api_token: str | None = None,
        metrics_token: str | None = None,
    ) -> None:
        self.app = app
        self.body_paths = body_paths
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.api_token = api_token.encode() if api_token else None
        self.metrics_token = metrics_token.encode() if metrics_token else None

    def rejection(self, status: int, detail: str, *extra: tuple[bytes, bytes]) -> Reply:
        """A refusal: a small JSON error that closes the connection (the body is never read)."""
        body = error_json(detail)
        headers = (
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *extra,
        )
        return Reply(status, headers, body, close=True)

    async def _send(self, send: Callable, reply: Reply) -> None:
        await send({"type": "http.response.start", "status": reply.status, "headers": list(reply.headers)})
        await send({"type": "http.response.body", "body": reply.body})

    def _token_for(self, path: str) -> bytes | None:
        if path in OPEN_PATHS:
            return None
        if path == "/metrics":
            return self.metrics_token
        return self.api_token

    def refuse(self, path: str, method: str, headers: list[tuple[bytes, bytes]]) -> Reply | None:
        """Rules 1-3 of the module docstring on the request line and headers: the rejection, or
        None when the request may go on (its body, if any, still to be held to `max_bytes`)."""
        token = self._token_for(path)
        if token is not None and not _bearer_ok(headers, token):
            detail = "missing or wrong bearer token (send Authorization: Bearer <token>)"
            return self.rejection(401, detail, (b"www-authenticate", b"Bearer"))
        if method != "POST" or path not in self.body_paths:
            return None
        ctype = next((v for k, v in headers if k == b"content-type"), None)
        if ctype is None or not _json_media_type(ctype):
            got = "none" if ctype is None else repr(ctype.decode("latin-1")[:64])
            return self.rejection(415, f"Content-Type must be application/json, got {got}")
        for k, v in headers:
            if k == b"content-length" and (not v.isdigit() or int(v) > self.max_bytes):
                detail = (
                    f"request body of {v.decode('latin-1')[:24]} bytes exceeds the limit "
                    f"of {self.max_bytes} bytes"
                )
                return self.rejection(413, detail)
        return None

    def too_large(self) -> Reply:
        """The 413 of a streamed body that grew past `max_bytes`."""
        return self.rejection(413, f"request body exceeds the limit of {self.max_bytes} bytes")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope.get("path", "")
        status = [500]

        async def send_status(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            refusal = self.refuse(path, scope.get("method", ""), scope.get("headers", []))
            if refusal is not None:
                await self._send(send_status, refusal)
                return
            if scope.get("method") != "POST" or path not in self.body_paths:
                await self.app(scope, receive, send_status)
                return
            chunks: list[bytes] = []
            total = 0
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    status[0] = 499  # the client went (or was dropped) before its body was in
                    return
                chunk = msg.get("body", b"")
                total += len(chunk)
                if total > self.max_bytes:
                    await self._send(send_status, self.too_large())
                    return
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_status)
        finally:
            self.metrics.observe(endpoint_label(path), status[0], time.perf_counter() - t0)
