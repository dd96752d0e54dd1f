"""freshrec.stream: events, the log seam, the online joiner and negative sampling.

- Events: `FeatureEvent` (a served impression), `ActionEvent` (a user action), `Example` (joined),
  `DeadLetter` (an input that failed validation, with the reason); `freshrec.stream.events` codes them.
- The log seam: `Log` / `Consumer` / `LogBackend` protocols; `open_backend(url)` opens a folder
  (the local log), `memory://` or `kafka://host:port`.
- `Joiner(JoinerConfig(...), ...)`: features + actions -> examples, over a `JoinStore`
  (`LmdbStore` on disk, `MemoryStore` in tests).
- `SamplingConfig`: negative sampling and the log-odds correction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freshrec._exports import lazy_exports

if TYPE_CHECKING:
    from freshrec.stream.backends import open_backend
    from freshrec.stream.events import ActionEvent, DeadLetter, Example, FeatureEvent
    from freshrec.stream.joiner import Joiner, JoinerConfig, JoinerStats
    from freshrec.stream.local_log import LocalBackend, LocalLog, LocalLogConfig
    from freshrec.stream.log import Consumer, Log, LogBackend, MemoryBackend, Record
    from freshrec.stream.sampling import SamplingConfig
    from freshrec.stream.store import JoinStore, LmdbStore, MemoryStore
else:  # type checkers read the imports above; a module __getattr__ would hide typos from them
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "freshrec.stream.events": (
                "ActionEvent",
                "DeadLetter",
                "Example",
                "FeatureEvent",
            ),
            "freshrec.stream.log": (
                "Consumer",
                "Log",
                "LogBackend",
                "MemoryBackend",
                "Record",
            ),
            "freshrec.stream.backends": (
                "open_backend",
            ),
            "freshrec.stream.local_log": (
                "LocalBackend",
                "LocalLog",
                "LocalLogConfig",
            ),
            "freshrec.stream.joiner": (
                "Joiner",
                "JoinerConfig",
                "JoinerStats",
            ),
            "freshrec.stream.store": (
                "JoinStore",
                "LmdbStore",
                "MemoryStore",
            ),
            "freshrec.stream.sampling": (
                "SamplingConfig",
            ),
        },
    )

__all__ = [
    "ActionEvent",
    "Consumer",
    "DeadLetter",
    "Example",
    "FeatureEvent",
    "JoinStore",
    "Joiner",
    "JoinerConfig",
    "JoinerStats",
    "LmdbStore",
    "LocalBackend",
    "LocalLog",
    "LocalLogConfig",
    "Log",
    "LogBackend",
    "MemoryBackend",
    "MemoryStore",
    "Record",
    "SamplingConfig",
    "open_backend",
]
