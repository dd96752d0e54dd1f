"""Open a log backend from a URL: the one place that maps configuration strings to backends.

    memory://                         MemoryBackend (in-process, not durable)
    local:///abs/path  or  /abs/path  LocalBackend(path) (relative plain paths are fine too)
    kafka://host:port[,host:port]     KafkaBackend(bootstrap); "?prefix=freshrec." sets the topic prefix,
                                      "?outage_timeout=600" how many seconds calls wait out a broker
                                      outage before they fail (default 300; "inf": forever)
"""

from __future__ import annotations

import math
from urllib.parse import parse_qs, unquote, urlsplit

from freshrec.errors import ConfigError
from freshrec.stream.log import LogBackend, MemoryBackend

__all__ = ["open_backend"]


def open_backend(url: str) -> LogBackend:
    """The backend `url` names (see the module docstring); raises ConfigError for anything else."""
    if not isinstance(url, str) or not url.strip():
        msg = f"log backend URL must be a non-empty string, got {url!r}"
        raise ConfigError(msg)
    if "://" not in url:
        from freshrec.stream.local_log import LocalBackend

        return LocalBackend(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            msg = f"log backend URL {url!r}: memory:// takes no host or path"
            raise ConfigError(msg)
        return MemoryBackend()
    if scheme in ("local", "file"):
        if parts.netloc not in ("", "localhost") or not parts.path:
            msg = f"log backend URL {url!r}: expected local:///absolute/path"
            raise ConfigError(msg)
        from freshrec.stream.local_log import LocalBackend

        return LocalBackend(unquote(parts.path))
    if scheme == "kafka":
        if not parts.netloc:
            msg = f"log backend URL {url!r}: expected kafka://host:port[,host:port][?prefix=...]"
            raise ConfigError(msg)
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"prefix", "outage_timeout"}
        if unknown:
            msg = (f"log backend URL {url!r}: unknown parameter(s) {sorted(unknown)}; "
                   "known: 'prefix', 'outage_timeout'")
            raise ConfigError(msg)
        from freshrec.stream.kafka_log import KafkaBackend, KafkaLogConfig

        config = KafkaLogConfig()
        if "outage_timeout" in query:
            text = query["outage_timeout"][-1]
            try:
                seconds = float(text)
            except ValueError:
                seconds = math.nan
            if not seconds > 0:
                msg = f"log backend URL {url!r}: outage_timeout must be seconds > 0 or 'inf', got {text!r}"
                raise ConfigError(msg)
            config = KafkaLogConfig(outage_timeout_s=seconds)
        if "prefix" in query:
            return KafkaBackend(parts.netloc, topic_prefix=query["prefix"][-1], config=config)
        return KafkaBackend(parts.netloc, config=config)
    msg = f"log backend URL {url!r}: unknown scheme {parts.scheme!r}; use memory://, local:///path or kafka://"
    raise ConfigError(msg)
