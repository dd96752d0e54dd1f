"""`Pipeline`: the whole loop's roles built from one config, for any model.

    served impressions ─► features log ─┐
    /v1/actions ────────► actions log ──┴─► joiner ─► examples log ─► trainer (TrainingPS) ─┐
                                                                                           │ publisher
    /v1/rank ◄── HTTP app ◄── replica ◄── subscriber ◄── parameter log ◄───────────────────┘

One `PipelineConfig` names the logs (one backend URL, the log names), the joiner's options, the
online trainer's, the snapshots and the sync cadences; `Pipeline(config)` opens the backend once
and builds each role on demand, wired to the same logs:

    pipe = Pipeline(PipelineConfig(log="./logs", init=Path("snap-batch"), snapshots=Path("snaps")))
    joiner = pipe.joiner(store)                 # features + actions -> examples
    trainer = pipe.trainer()                    # from `init` (any snapshot), recovered from `snapshots`
    publisher = pipe.publisher(trainer)         # touched rows every sync_interval_s, dense slower
    replica, subscriber = pipe.replica()        # from a snapshot, following the parameter log
    app = pipe.app(replica, subscriber)         # FastAPI: /v1/rank, /v1/predict, /v1/actions, ...

The commands `freshrec join`, `freshrec train online` and `freshrec serve` are these roles as
processes (so are the chaos tests' roles); the demo and the freshness benchmark run them as threads
of one process. Nothing here constructs a model class: the trainer's model comes from a snapshot or
from `model` + `features` + `tasks`, and the replica's from a snapshot or the trainer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freshrec.checkpoint.periodic import PeriodicSnapshotter, RecoveryInfo, SnapshotPolicy
from freshrec.errors import ConfigError, OffsetOutOfRange
from freshrec.model import FeatureSpec, ModelSpec, Task
from freshrec.ps.serving import ServingConfig, ServingReplica
from freshrec.ps.sync import SyncPublisher, SyncSubscriber
from freshrec.stream.backends import open_backend
from freshrec.stream.joiner import Joiner, JoinerConfig
from freshrec.stream.log import LogBackend
from freshrec.train.online import OnlineConfig, OnlineTrainer

__all__ = ["SNAPSHOT_GROUP", "Pipeline", "PipelineConfig"]

SNAPSHOT_GROUP = "snapshots"  # the group whose committed positions are the snapshots' replay floor


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """Everything the roles share (see the module docstring).

    log: the backend URL (a folder for the local log, `kafka://host:port`, `memory://`).
    features / actions / examples / dead_letters / params: log names; partitions: of logs created.
    joiner: JoinerConfig. online: OnlineConfig.
    init: the snapshot the trainer starts from (any a command wrote); without it, a new
        `model` over `features` with `tasks`.
    snapshots: periodic-snapshot folder of the trainer (recovered from when not empty); policy.
    sync_interval_s / dense_interval_s: the publisher's cadences (wall seconds).
    serving: ServingConfig of replicas. dense_names: the dense features' names in column order.
    """

    log: str
    params_url: str | None = None  # the parameter log's backend when not `log`
    features: str = "features"
    actions: str = "actions"
    examples: str = "examples"
    dead_letters: str = "dead-letters"
    params: str = "params"
    partitions: int = 1
    joiner: JoinerConfig = field(default_factory=lambda: JoinerConfig(windows={"click": 3600.0}))
    online: OnlineConfig = field(default_factory=OnlineConfig)
    init: Path | None = None
    model: ModelSpec | None = None
    features_spec: FeatureSpec | None = None
    tasks: tuple[Task, ...] | None = None
    dense_names: tuple[str, ...] | None = None
    snapshots: Path | None = None
    policy: SnapshotPolicy = field(default_factory=SnapshotPolicy)
    sync_interval_s: float = 1.0
    dense_interval_s: float = 10.0
    serving: ServingConfig = field(default_factory=ServingConfig)

    def __post_init__(self) -> None:
        if not self.sync_interval_s > 0 or not self.dense_interval_s > 0:
            got = (self.sync_interval_s, self.dense_interval_s)
            msg = f"PipelineConfig: sync intervals must be > 0, got {got}"
            raise ConfigError(msg)


class Pipeline:
    """The loop's roles over one backend (see the module docstring)."""

    def __init__(self, config: PipelineConfig, *, backend: LogBackend | None = None) -> None:
        self.config = config
        self.backend = backend if backend is not None else open_backend(config.log)
        self._own_backend = backend is None
        same = config.params_url is None or config.params_url == config.log
        self.params_backend = self.backend if same else open_backend(config.params_url)  # type: ignore[arg-type]
        self.recovered: RecoveryInfo | None = None
        self.snapshotter: PeriodicSnapshotter | None = None

    def log(self, name: str):
        if name == self.config.params:
            return self.params_backend.log(name, partitions=1)
        p = 1 if name == self.config.dead_letters else self.config.partitions
        return self.backend.log(name, partitions=p)

    # ---- joiner --------------------------------------------------------------------------------
    def joiner(self, store: Any) -> Joiner:
        """The online joiner over the features and actions logs, writing examples and dead letters."""
        c = self.config
        return Joiner(
            config=c.joiner,
            features=self.log(c.features),
            actions=self.log(c.actions),
            examples=self.log(c.examples),
            dead_letters=self.log(c.dead_letters),
            store=store,
        )

    # ---- trainer -------------------------------------------------------------------------------
    def trainer(self, *, fallback: bool = True) -> OnlineTrainer:
        """The online trainer: from `init` or a new model; then, with `snapshots`, its periodic
        snapshotter attached (as a hook) and the state recovered from it when it holds snapshots
        (`self.recovered`; seek the consumer with `trainer.seek`)."""
        c = self.config
        if c.init is not None:
            trainer = OnlineTrainer.from_checkpoint(c.init, c.online, dense=c.dense_names)
            trainer.ps.reset_windows()  # online metrics: online predictions only (recovery restores its own)
        else:
            if c.features_spec is None:
                msg = "Pipeline.trainer: the config needs `init` (a snapshot) or `features_spec` (+ tasks)"
                raise ConfigError(msg)
            trainer = OnlineTrainer.from_spec(
                c.features_spec, c.online, model=c.model, tasks=c.tasks, dense=c.dense_names
            )
        if c.snapshots is not None:
            carried: dict = {}  # the data schema of the snapshot trained from, kept in every snapshot
            self.snapshotter = PeriodicSnapshotter(c.snapshots, c.policy, extra_state=lambda: carried)
            self.recovered = self.snapshotter.recover(trainer, fallback=fallback)
            carried.update(_schema_extra(c.init, self.recovered))
        return trainer

    def publisher(
        self, trainer: OnlineTrainer, *, every_batch: bool = False, dense_every: int = 10
    ) -> SyncPublisher:
        """The sync publisher of `trainer` on the parameter log, continuing the recovered version.

        every_batch: publish from a trainer hook after every batch (dense weights every
        `dense_every` batches) instead of on the clock (`publisher.start()`); the hook goes before
        the snapshotter's, so every snapshot stores parameter-log offsets that match its tables."""
        c = self.config
        start = self.recovered.params_version if self.recovered is not None else 0
        pub = SyncPublisher(
            trainer,
            self.log(c.params),
            interval_s=c.sync_interval_s,
            dense_interval_s=c.dense_interval_s,
            start_version=start,
        )
        if self.snapshotter is not None:
            self.snapshotter.publisher = pub
        if every_batch:
            every = max(1, int(dense_every))
            trainer.hooks.insert(0, lambda tr, info: pub.publish_once(dense=tr.step % every == 0))
        self.snapshots_hook(trainer)
        return pub

    def snapshots_hook(self, trainer: OnlineTrainer) -> None:
        """Attach the snapshotter (when no publisher is): snapshots, then the replay floor."""
        if self.snapshotter is not None and self.snapshotter not in trainer.hooks:
            trainer.add_hook(self.snapshotter)
            trainer.add_hook(self._commit_replay_floor)

    def _commit_replay_floor(self, trainer: OnlineTrainer, info: Any = None) -> None:
        """After a snapshot, commit what the oldest kept snapshot needs for replay under the group
        "snapshots" of the examples and parameter logs, so retention registered with that group
        never deletes it (`LocalLog.retain(groups=["snapshots", ...])`)."""
        snap = self.snapshotter
        if snap is None or not snap.history or snap.history[-1].step != trainer.step:
            return
        floor = snap.replay_floor()
        if floor.get("trained"):
            c = self.log(self.config.examples).consumer(SNAPSHOT_GROUP)
            c.commit(floor["trained"])
            c.close()
        if floor.get("params"):
            c = self.log(self.config.params).consumer(SNAPSHOT_GROUP)
            c.commit(dict(enumerate(floor["params"])))
            c.close()

    def retain(
        self, *, max_bytes: int | None = None, max_age_s: float | None = None, groups: Sequence[str] = ()
    ) -> list[str]:
        """Register retention on the local logs the trainer owns (examples, params), held by the
        snapshots' replay floor ("snapshots") and `groups`; Kafka logs keep the broker's retention.
        Returns the names of the logs it applies to."""
        from freshrec.stream.local_log import LocalLog

        done = []
        for name in (self.config.examples, self.config.params):
            log = self.log(name)
            if isinstance(log, LocalLog):
                log.retain(groups=[SNAPSHOT_GROUP, *groups], max_bytes=max_bytes, max_age_s=max_age_s)
                done.append(name)
        return done

    def examples_consumer(
        self, trainer: OnlineTrainer, *, group: str = "online-trainer", start: str = "earliest"
    ):
        """A consumer of the examples log at the trainer's positions (recovered), else at offset 0
        (`start="earliest"`) or at the group's committed positions (`start="committed"`)."""
        log = self.log(self.config.examples)
        consumer = log.consumer(group)
        if trainer.positions:
            try:
                trainer.seek(consumer)
            except OffsetOutOfRange as e:
                consumer.close()
                msg = (
                    f"cannot replay the examples log from the positions the snapshot holds "
                    f"({trainer.positions}): {e}; retention removed records the recovery needs (register "
                    f"retention with the group {SNAPSHOT_GROUP!r}, or start from a newer snapshot)"
                )
                raise OffsetOutOfRange(msg) from e
        elif start == "earliest":
            for p in range(log.partitions):
                consumer.seek(p, 0)
        return log, consumer

    # ---- serving -------------------------------------------------------------------------------
    def replica(
        self,
        *,
        snapshot: Path | None = None,
        publisher: SyncPublisher | None = None,
        group: str = "serving",
        clock: Callable[[], float] = time.time,
    ) -> tuple[ServingReplica, SyncSubscriber]:
        """A serving replica from `snapshot` (any a command wrote), or from the current state of
        `publisher`'s trainer (taken under the publish lock with the parameter log's offsets, exactly
        as a snapshot), caught up on the parameter log from there, with its subscriber (not started:
        `subscriber.start()` follows the log in a thread)."""
        if (snapshot is None) == (publisher is None):
            msg = "Pipeline.replica: give a snapshot or a publisher"
            raise ConfigError(msg)
        if snapshot is not None:
            replica = ServingReplica.from_snapshot(snapshot, config=self.config.serving, clock=clock)
        else:
            assert publisher is not None
            meta, arrays = publisher.snapshot_state()
            replica = ServingReplica.bootstrap(meta, arrays, config=self.config.serving, clock=clock)
        start = replica.positions.get("params")
        sub = SyncSubscriber(
            replica, self.log(self.config.params), group=group, start=start if start else [0]
        )
        sub.catch_up()
        return replica, sub

    def app(self, replica: ServingReplica, subscriber: SyncSubscriber | None = None, **kwargs: Any):
        """The HTTP app over `replica`, logging impressions to the features log and taking
        feedback into the actions log (kwargs go to `freshrec.serve.create_app`)."""
        from freshrec.serve.app import create_app

        c = self.config
        if "features_log" not in kwargs:
            kwargs["features_log"] = self.log(c.features)
        if "actions_log" not in kwargs:
            kwargs["actions_log"] = self.log(c.actions)
        return create_app(replica, subscriber=subscriber, **kwargs)

    def close(self) -> None:
        if self.params_backend is not self.backend:
            self.params_backend.close()
        if self._own_backend:
            self.backend.close()


def _schema_extra(init: Path | None, recovered: RecoveryInfo | None) -> dict:
    """{"schema": ...} of the recovered chain, else of the `init` snapshot, else {}."""
    if recovered is not None and "schema" in recovered.extra:
        return {"schema": recovered.extra["schema"]}
    if init is None:
        return {}
    from freshrec.ps.schema_check import SCHEMA_KEY, snapshot_schema

    stored = snapshot_schema(init)
    return {SCHEMA_KEY: stored.to_dict()} if stored is not None else {}
