"""How the Kafka log rides out a broker outage: one `Link` to the cluster per `KafkaBackend`.

Every client of a backend (producers, consumers, the offset-lookup and admin clients) reports to
its link, so an outage is noticed, announced and bounded once, not per client:

- A call that fails with a transient error (`transient`: the broker down or restarting, a
  coordinator or leader moving) is retried with backoff (`Link.call`). Once it has failed for
  `GRACE_S` the link is *down*, and says so in one line (logger `freshrec.stream.kafka`)::

      kafka 127.0.0.1:9092 unavailable since 12:00:01 (Local: Broker transport failure); waiting up to 300 s

- The first call that succeeds again ends the outage, in one line::

      kafka 127.0.0.1:9092 available again after 7.2 s

- Waiting is bounded: a call that still fails `bound_s` after the outage began raises `LogError`
  naming the broker, how long it waited, and the error that began the outage. `bound_s` is the
  config's `outage_timeout_s` once the cluster has answered a call, `timeout_s` before (a broker
  that was never reached is a wrong address more likely than an outage). The bound is per
  outage, not per call: once it is spent, every call that fails in the same outage raises at once.
- Loops that see no errors of their own (a consumer's poll sees an empty queue while the broker
  is down) call `Link.check`, which costs one attribute test while all is well. After librdkafka
  reported that every broker connection is down (`on_error`), or records went unacknowledged for
  a second (`suspect`), `check` probes the cluster (a metadata request, at most every
  `PROBE_EVERY_S`) to tell an outage from an idle connection that the broker closed, and raises
  once the outage outlasted its bound.
- A librdkafka call that cannot time out (a synchronous commit blocks until the coordinator is
  back) runs inside `Link.blocking`: a watchdog thread probes the cluster while the call has been
  blocked for `GRACE_S`, so that outage is announced (and its end) like any other.

librdkafka's own log lines go through `LibrdkafkaLog` (the `logger=` of every client; served on
the thread that polls the client, never from librdkafka's threads) to the logger
`freshrec.stream.kafka.librdkafka`: each kind of line at most once per `every_s`, with a count of
the ones held back, instead of a reconnect line every ~50 ms per client.

The logic here is pure: the clock, the sleep and the probe (the only I/O) are injected.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

from freshrec.errors import LogError

__all__ = ["ATTEMPT_S", "GRACE_S", "PROBE_EVERY_S", "LibrdkafkaLog", "Link", "transient"]

T = TypeVar("T")

GRACE_S = 1.0  # a transient failure shorter than this is not announced as an outage
ATTEMPT_S = 2.0  # most seconds one attempt of a call may block (so an outage is announced soon)
PROBE_EVERY_S = 1.0  # least seconds between two probes of a cluster under suspicion
_BACKOFF_S = (0.05, 1.0)  # first and largest pause between two attempts of a failing call

logger = logging.getLogger("freshrec.stream.kafka")

_TRANSIENT = frozenset((
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._WAIT_COORD,
    KafkaError.UNKNOWN_TOPIC_OR_PART,  # a new topic's metadata is still spreading; a restarting broker
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.FENCED_LEADER_EPOCH,  # a client's metadata from before a broker restart
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._UNKNOWN_PARTITION,  # a client that lost its metadata in an outage
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._RESOLVE,
    KafkaError._DESTROY_BROKER,  # a broker handle the client tore down in a restart's reconnects
))


def transient(err: KafkaError | KafkaException | None) -> bool:
    """Whether a Kafka error is worth waiting out (retriable, or one of the states a cluster
    passes through while a broker, a coordinator or a leader comes back); fatal errors never are."""
    if isinstance(err, KafkaException):
        err = err.args[0] if err.args and isinstance(err.args[0], KafkaError) else None
    if err is None or err.fatal():
        return False
    return bool(err.retriable()) or err.code() in _TRANSIENT


def _cause(err: object) -> str:
    """The readable part of a Kafka error: its `str` (e.g. 'Local: Broker transport failure')."""
    if isinstance(err, KafkaException) and err.args and isinstance(err.args[0], KafkaError):
        err = err.args[0]
    if isinstance(err, KafkaError):
        return err.str() or err.name()
    return str(err)


def _clock_text(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _seconds(s: float) -> str:
    return "forever" if math.isinf(s) else f"up to {s:g} s"


class Link:
    """The reachability of one Kafka cluster, shared by every client of one backend.

    Args:
        bootstrap: the cluster's "host:port[,host:port]", for messages.
        outage_timeout_s: how long a call waits out an outage of a cluster that answered before
            (`math.inf`: forever).
        timeout_s: the same for a cluster that never answered. One attempt of a call blocks
            for at most `min(timeout_s, ATTEMPT_S)`.
        probe: a metadata request to the cluster that raises `KafkaException` when it fails;
            called with a timeout in seconds.
        clock / sleep: monotonic seconds and a pause (injected; tests pass fakes).
        wall: wall-clock seconds, only to print when an outage began.
    """

    def __init__(self, bootstrap: str, *, outage_timeout_s: float, timeout_s: float,
                 probe: Callable[[float], object], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, wall: Callable[[], float] = time.time) -> None:
        self.bootstrap = bootstrap
        self.outage_timeout_s = outage_timeout_s
        self.timeout_s = timeout_s
        self._probe = probe
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self._lock = threading.Lock()
        self.reached = False  # a call has succeeded since the link was made
        self.down_since: float | None = None  # monotonic start of the announced outage
        self.cause = ""  # the error that began it
        self.alarm: float | None = None  # set while down or suspected down: `check` has work to do
        self._suspect_cause = ""
        self._next_probe = -math.inf
        self.outages = 0  # announced outages so far
        self._blocked: dict[object, float] = {}  # calls inside `blocking` -> when they began
        self._watch = threading.Condition()
        self._watchdog: threading.Thread | None = None
        self._closed = False

    @property
    def bound_s(self) -> float:
        """How long an outage is waited out (see the module docstring)."""
        return self.outage_timeout_s if self.reached else self.timeout_s

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def deadline(self, since: float) -> float:
        """When waiting stops for a failure that began at `since` (an earlier outage's start wins)."""
        start = since if self.down_since is None else min(since, self.down_since)
        return start + self.bound_s

    # -- state changes --------------------------------------------------------------------

    def failing(self, cause: str, since: float) -> None:
        """Calls have failed since `since` (monotonic) with `cause`: announce the outage once."""
        with self._lock:
            if self.down_since is not None:
                return
            now = self._clock()
            self.down_since = since
            self.cause = cause
            self.alarm = since
            self.outages += 1
            began = self._wall() - (now - since)
            bound = self.bound_s
        logger.warning("kafka %s unavailable since %s (%s); waiting %s", self.bootstrap, _clock_text(began),
                       cause, _seconds(bound))

    def ok(self) -> None:
        """A call succeeded: the cluster answers. Ends an outage (one line) or a suspicion."""
        if self.alarm is None and self.reached:
            return
        with self._lock:
            self.reached = True
            since, self.down_since = self.down_since, None
            self.alarm = None
            self._suspect_cause = ""
        if since is not None:
            logger.warning("kafka %s available again after %.1f s", self.bootstrap, self._clock() - since)

    def suspect(self, cause: str) -> None:
        """Something hints at an outage (librdkafka: all broker connections down; a consumer's
        fetch error): the next `check` probes the cluster."""
        with self._lock:
            if self.alarm is None:
                self.alarm = self._clock()
                self._suspect_cause = cause
                self._next_probe = -math.inf

    def on_error(self, err: KafkaError) -> None:
        """The `error_cb` of every client: librdkafka's client-level errors."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.suspect(_cause(err))

    # -- waiting --------------------------------------------------------------------------

    def error(self, what: str, cause: object, since: float) -> LogError:
        """The LogError of a call given up on: names the broker, the wait and the first error."""
        waited = self._clock() - (since if self.down_since is None else min(since, self.down_since))
        first = self.cause or _cause(cause)
        bound = self.bound_s
        limit = "outage_timeout_s" if self.reached else "timeout_s; the broker never answered"
        msg = (f"{what}: kafka {self.bootstrap} unavailable for {waited:.1f} s "
               f"(limit {bound:g} s: {limit}): {first}")
        if _cause(cause) != first:
            msg += f"; last error: {_cause(cause)}"
        return LogError(msg)

    def check(self, what: str) -> None:
        """For loops that see no errors themselves (a consumer's poll): when the cluster is
        suspected or known down, probe it (at most every `PROBE_EVERY_S`); raise `LogError`
        once the outage outlasted its bound. One attribute test while all is well."""
        if self.alarm is None:
            return
        now = self._clock()
        since = self.alarm
        if now < self._next_probe:
            if self.down_since is not None and now > self.deadline(since):
                raise self.error(what, self.cause, since)
            return
        self._next_probe = now + PROBE_EVERY_S
        try:
            self._probe(min(0.5, self.timeout_s))
        except KafkaException as e:
            now = self._clock()
            if now - since >= GRACE_S or self.down_since is not None:
                self.failing(self._suspect_cause or _cause(e), since)
            if now > self.deadline(since):
                raise self.error(what, e, since) from e
            return
        self.ok()

    def wait_up(self, what: str) -> None:
        """Return once the cluster is neither known nor suspected to be down (probing it);
        `LogError` past the bound. Before calls that would block through an outage instead of
        failing (a consumer's commit)."""
        while self.alarm is not None:
            self.check(what)
            if self.alarm is not None:
                self._sleep(min(PROBE_EVERY_S, max(0.01, self._next_probe - self._clock())))

    @contextlib.contextmanager
    def blocking(self, what: str) -> Iterator[None]:
        """Around a librdkafka call that cannot time out: while it has been blocked for
        `GRACE_S`, a watchdog thread probes the cluster (every `PROBE_EVERY_S`) and announces an
        outage and its end. Costs a dict insert and delete per call."""
        token = object()
        with self._watch:
            if self._watchdog is None and not self._closed:
                self._watchdog = threading.Thread(target=self._watchdog_loop, daemon=True,
                                                  name=f"kafka-link {self.bootstrap}")
                self._watchdog.start()
            self._blocked[token] = self._clock()
            self._watch.notify()
        try:
            yield
        finally:
            with self._watch:
                del self._blocked[token]

    def _watchdog_loop(self) -> None:
        while True:
            with self._watch:
                while not self._blocked and not self._closed:
                    self._watch.wait()
                if self._closed:
                    return
                since = min(self._blocked.values())
            wait = since + GRACE_S - self._clock()
            if wait > 0:
                self._sleep(wait)
                continue
            try:
                self._probe(min(0.5, self.timeout_s))
            except KafkaException as e:
                self.failing(_cause(e), since)
            except LogError:  # the backend closed under the call
                return
            else:
                self.ok()
            self._sleep(PROBE_EVERY_S)

    def close(self) -> None:
        """Stop the watchdog thread (if one started)."""
        with self._watch:
            self._closed = True
            self._watch.notify_all()

    def call(self, what: str, attempt: Callable[[float], T], *, rebuild: Callable[[], None] | None = None,
             rebuild_after: int = 1) -> T:
        """`attempt(timeout_s)` until it returns, waiting out transient Kafka errors (see the module
        docstring). A non-transient error, or a transient one past the bound, raises `LogError`.

        `rebuild`, when given, replaces the client `attempt` uses after every `rebuild_after`
        consecutive failures (a client can stay broken after an outage while a new one works).
        Each attempt gets `min(timeout_s, ATTEMPT_S)`, or less when the bound is nearer.
        """
        since: float | None = None
        fails = 0
        pause = _BACKOFF_S[0]
        while True:
            t0 = self._clock()
            timeout = min(self.timeout_s, ATTEMPT_S)
            if since is not None:
                timeout = max(0.1, min(timeout, self.deadline(since) - t0))
            try:
                out = attempt(timeout)
            except KafkaException as e:
                if not transient(e):
                    msg = f"{what} failed: {e}"
                    raise LogError(msg) from e
                now = self._clock()
                if since is None:
                    since = t0
                fails += 1
                if now - since >= GRACE_S:
                    self.failing(_cause(e), since)
                if now >= self.deadline(since):
                    raise self.error(what, e, since) from e
                if rebuild is not None and fails % rebuild_after == 0:
                    rebuild()
                self._sleep(max(0.0, min(pause, self.deadline(since) - now)))
                pause = min(pause * 2, _BACKOFF_S[1])
                continue
            self.ok()
            return out


_DIGITS = re.compile(r"\d+")


@dataclass(slots=True)
class _Seen:
    """A kind of librdkafka line: when it was last logged, and how many were held back since."""

    logged_at: float
    held: int = 0


def _kind(level: int, text: str) -> tuple[int, str, str]:
    """What makes two librdkafka lines alike: level, facility and the last clause with its
    numbers blurred ("FAIL", "Connection refused (after #ms in state CONNECT)"), so the same
    event seen by every client, thread and broker connection of a backend is one kind."""
    fac = text.split(" ", 1)[0]
    return level, fac, _DIGITS.sub("#", text.rsplit(": ", 1)[-1])


class LibrdkafkaLog:
    """The `logger=` of librdkafka clients: their lines go to `log`, each kind (`_kind`) at most
    once per `every_s`.

    E.g. every "FAIL [rdkafka#consumer-4] [thrd:...]: ...: Connect to ipv4#127.0.0.1:9092 failed:
    Connection refused (after 0ms in state CONNECT)" of every client of a backend is one kind.
    The first line of a kind is logged at once; later ones within `every_s` are counted, and the
    next one logged after that says how many were held back.
    """

    def __init__(self, log: logging.Logger | None = None, *, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_kinds: int = 512) -> None:
        self._log = log or logging.getLogger("freshrec.stream.kafka.librdkafka")
        self.every_s = every_s
        self._clock = clock
        self._max_kinds = max_kinds
        self._seen: dict[tuple[int, str, str], _Seen] = {}
        self._lock = threading.Lock()

    def log(self, level: int, fmt: str, *args: object) -> None:
        """What confluent-kafka calls: `logger.log(level, fmt, *args)`."""
        if not self._log.isEnabledFor(level):
            return
        text = fmt % args if args else fmt
        kind = _kind(level, text)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(kind)
            if seen is not None and now - seen.logged_at < self.every_s:
                seen.held += 1
                return
            if seen is None and len(self._seen) >= self._max_kinds:
                cutoff = now - self.every_s
                self._seen = {k: v for k, v in self._seen.items() if v.logged_at >= cutoff}
            self._seen[kind] = _Seen(now)
        if seen is not None and seen.held:
            self._log.log(level, "librdkafka: %s (and %d more like it in the last %.0f s)", text, seen.held,
                          now - seen.logged_at)
        else:
            self._log.log(level, "librdkafka: %s", text)
