"""freshrec.serve: the HTTP model server (FastAPI + uvicorn) over a `ServingReplica`.

    app = create_app(replica, features_log=flog, actions_log=alog, subscriber=sub)   # FastAPI app
    srv = ServerThread(app).start()                                  # 127.0.0.1, free port

The API, its statuses and its limits: docs/http.md.
"""

from freshrec.serve.app import AppConfig, create_app
from freshrec.serve.metrics import ServeMetrics
from freshrec.serve.server import (
    ServerConfig,
    ServerThread,
    bind_socket,
    check_exposure,
    is_loopback,
    serve_forever,
)
from freshrec.serve.writers import ActionLogger, FeatureLogger

__all__ = [
    "ActionLogger",
    "AppConfig",
    "FeatureLogger",
    "ServeMetrics",
    "ServerConfig",
    "ServerThread",
    "bind_socket",
    "check_exposure",
    "create_app",
    "is_loopback",
    "serve_forever",
]
