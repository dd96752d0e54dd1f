"""Prometheus metrics of the model server, in a registry of its own (one per app).

Exposed at `GET /metrics` (text format 0.0.4):

    freshrec_request_latency_seconds{endpoint}      histogram of request handling time (server side)
    freshrec_requests_total{endpoint,status}        requests answered, by HTTP status
    freshrec_features_logged_total                  feature events written to the features log
    freshrec_actions_logged_total                   action events written to the actions log
    freshrec_log_errors_total{log}                  failed writes to the features or actions log
    freshrec_model_version                          highest parameter-log version applied
    freshrec_dense_version                          version of the dense weights in use
    freshrec_last_delta_age_seconds                 wall seconds since the last frame was applied
    freshrec_model_data_age_seconds                 wall now minus the data time of the newest frame
    freshrec_table_rows{table}                      rows per serving table
    freshrec_deltas_applied_total                   table deltas (frames) applied
    freshrec_rows_applied_total / _rows_deleted_total
    freshrec_dense_updates_applied_total
    freshrec_param_frames_bad_total                 frames the subscriber could not decode
    freshrec_thread_cpu_seconds_total{thread}       CPU time of this process's background threads:
                                                    "sync" (following the parameter log, applying
                                                    deltas), "features_log", "actions_log" (encoding
                                                    and appending); the rest of the process's CPU is
                                                    the request path

Ages are NaN until something was applied.

Several worker processes on one port (`freshrec serve --workers N`) share their request metrics:
`share_between_processes(folder)`, called in each worker before its app is made, keeps every
counter and histogram of the process in a file of `folder` (prometheus_client's multiprocess
mode), and whichever worker answers `/metrics` or `/v1/stats` sums the files of all of them, the
workers that died and were replaced included, so a counter never goes back when a worker restarts.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS", "ServeMetrics", "share_between_processes"]

_shared_folder: Path | None = None  # set by `share_between_processes`


def share_between_processes(folder: Path) -> None:
    """Keep the metrics this process makes from now on in files of `folder`, which every process
    sharing it sums (module docstring). Call before the app is made (a forked worker: at once)."""
    global _shared_folder
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)  # where prometheus_client's files go
    values.ValueClass = values.MultiProcessValue()  # what new metrics keep their values in
    _shared_folder = folder


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class _ReplicaCollector(Collector):
    def __init__(self, replica: Any, subscriber: Any, clock: Callable[[], float]) -> None:
        self.replica = replica
        self.subscriber = subscriber
        self.clock = clock
        self.threads: dict[str, Any] = {}  # thread name -> what keeps its CPU seconds in `cpu_s`

    def collect(self) -> Iterator[Metric]:
        r = self.replica
        now = self.clock()
        yield GaugeMetricFamily("freshrec_model_version", "Highest parameter-log version applied", r.version)
        yield GaugeMetricFamily(
            "freshrec_dense_version", "Version of the dense weights in use", r.dense_version
        )
        age = math.nan if r.last_apply_wall is None else max(0.0, now - r.last_apply_wall)
        yield GaugeMetricFamily(
            "freshrec_last_delta_age_seconds", "Wall seconds since the last parameter frame was applied", age
        )
        dage = math.nan if r.data_ts is None else now - r.data_ts
        yield GaugeMetricFamily(
            "freshrec_model_data_age_seconds",
            "Wall now minus the data time of the newest frame applied",
            dage,
        )
        rows = GaugeMetricFamily("freshrec_table_rows", "Rows per serving table", labels=["table"])
        for name, n in r.table_sizes().items():
            rows.add_metric([name], n)
        yield rows
        yield CounterMetricFamily("freshrec_deltas_applied", "Table delta frames applied", r.deltas_applied)
        yield CounterMetricFamily("freshrec_rows_applied", "Embedding rows upserted", r.rows_applied)
        yield CounterMetricFamily("freshrec_rows_deleted", "Embedding rows deleted", r.rows_deleted)
        yield CounterMetricFamily(
            "freshrec_dense_updates_applied", "Dense weight updates swapped in", r.dense_applied
        )
        if self.threads:
            cpu = CounterMetricFamily(
                "freshrec_thread_cpu_seconds", "CPU time of the background threads", labels=["thread"]
            )
            for name, owner in self.threads.items():
                cpu.add_metric([name], owner.cpu_s)
            yield cpu
        if self.subscriber is not None:
            yield CounterMetricFamily(
                "freshrec_param_frames_bad",
                "Parameter frames that failed to decode",
                self.subscriber.bad_frames,
            )


class ServeMetrics:
    """The server's metrics; `render()` is the /metrics body."""

    def __init__(
        self, replica: Any, *, subscriber: Any = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "freshrec_request_latency_seconds",
            "Request handling time (server side)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "freshrec_requests", "Requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.features_logged = Counter(
            "freshrec_features_logged", "Feature events written to the features log", registry=self.registry
        )
        self.actions_logged = Counter(
            "freshrec_actions_logged", "Action events written to the actions log", registry=self.registry
        )
        self.rank_calls = Counter(
            "freshrec_rank_calls",
            "Model calls that scored /v1/rank requests on the event loop (concurrent ones in one call)",
            registry=self.registry,
        )
        self.log_errors = Counter(
            "freshrec_log_errors", "Failed writes to a log of the server", ["log"], registry=self.registry
        )
        collector = self._collector = _ReplicaCollector(replica, subscriber, clock)
        self.registry.register(collector)
        self.shared: CollectorRegistry | None = None  # every process's request metrics, summed
        if _shared_folder is not None:
            self.shared = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self.shared, path=str(_shared_folder))
            self.shared.register(collector)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        if hasattr(subscriber, "cpu_s"):  # a SyncSubscriber (the workers' follower counts none)
            self.count_cpu_of("sync", subscriber)

    def count_cpu_of(self, thread: str, owner: Any) -> None:
        """Report `owner.cpu_s` (a background thread's CPU seconds) as
        freshrec_thread_cpu_seconds_total{thread=`thread`}."""
        self._collector.threads[thread] = owner

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request (its handling time and status); the labelled children are
        looked up once per label set (prometheus' `labels()` costs more than the update)."""
        children = self._children.get((endpoint, status))
        if children is None:
            children = (self.latency.labels(endpoint), self.requests.labels(endpoint, str(status)))
            self._children[(endpoint, status)] = children
        children[0].observe(seconds)
        children[1].inc()

    def request_families(self) -> dict[str, Metric]:
        """The request metrics (latency, requests, logged counts, ...) by family name (a
        counter's without "_total"), in one collection: this process's, or summed over every
        sharing process (`share_between_processes`)."""
        own = (self.latency, self.requests, self.features_logged, self.actions_logged, self.rank_calls,
               self.log_errors)  # fmt: skip
        if self.shared is None:
            return {f.name: f for m in own for f in m.collect()}
        names = {next(iter(m.describe())).name for m in own}
        return {f.name: f for f in self.shared.collect() if f.name in names}

    def render(self) -> bytes:
        return generate_latest(self.registry if self.shared is None else self.shared)
