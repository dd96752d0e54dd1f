"""The online joiner: served impressions + user actions -> labelled training examples.

Inputs are the features log (`FeatureEvent`, one per impression) and the actions log
(`ActionEvent`); outputs are the examples log (`Example`, keyed by request_id) and the dead-letter
log (`DeadLetter`). Actions join impressions by `request_id`.

Time. Everything runs on data time. Each input partition is a *source* with the largest `ts` it
has processed (`max_ts`). The watermark is

    wm = max(wm, min(max_ts of the non-idle sources) - allowed_lateness)

(all sources idle, i.e. every input read to its end: the max over all sources instead). A source
is idle when a poll at its position returned nothing (within `poll_timeout_s`) and its consumer is
at the end of its partition (`Consumer.at_end`, by offsets: a poll can come back empty with records
ahead, e.g. while a Kafka broker is away, and such a source must keep holding the watermark). Sources are read
ahead (one poll each) and merged on data time: every round processes, features first, the
records up to the *frontier* = the smallest of the sources' read-ahead maxima, so the inputs
advance together and an action is rarely seen before its impression. The watermark promises: if
within each partition an event's ts is never more than `allowed_lateness` below a ts seen earlier
in that partition, no event with ts < wm arrives after wm was reached. Events that break the
promise are late and are counted, not joined (see below). An idle partition does not hold the
watermark back; if it later delivers old events, those are late.

Join. An impression (`ts = t`) is *pending* until `wm > t + W` (W = the largest window), then
closed and emitted once: `labels[a]` = the max value of the actions of type `a` with
`action.ts <= t + windows[a]` that arrived while it was pending (0.0 when none). Max is
idempotent, so a duplicated action never doubles a label. Consequences:

- Latency: an impression's example appears W + allowed_lateness of data time after it was
  served (a 1 h click window means examples an hour late), so late actions inside the window
  still count. Monolith emits a positive at join time instead: `emit_early_positives=True` does
  that (still one example per impression: the first positive join emits it with the labels
  joined so far, later actions do not change it; negatives wait for the window). A model that
  needs fresher negatives uses a shorter window.
- An action that arrives before its impression is *early*: buffered in the store under its
  request_id (at most `max_early_actions`) until `wm > action.ts + early_action_ttl`, and applied
  when the impression arrives. An action with no pending impression after that is dropped as
  late (counted). Actions of types absent from `windows` are counted and ignored.
- A feature whose window already closed (`wm > t + W`) is late and dropped; so is any duplicate of
  an impression still pending (same request_id). A duplicate of an emitted impression is always
  late (it has the same ts), so no emitted-set is needed for deduplication in steady state.

Storage. Pending impressions (features + labels so far), their close-time index, early actions
and the joiner's positions live in a `JoinStore` (LMDB on disk). A bounded `LruCache` of the
impressions that actions joined sits in front, so further actions on them skip the store's read;
memory is bounded by the cache and the early-action cap, not by the stream's length or the windows.

Speed. The work is done a poll at a time where it can be: a poll of the local log comes as whole
reads (`LocalConsumer.poll_blocks`, no object per record), its records are validated in one
kernel pass (`events.feature_wires`, `events.action_fields_many`), a new impression is stored
with one insert-if-absent (which is also the duplicate check), closing takes due keys off the
index with a cursor and pops the impression in one call, an example is spliced from the
impression's bytes as they arrived, and the batch's examples are framed in one call
(`LocalLog.append_many`). One store commit and one flush per output log per batch.

Commit protocol (exactly-once effect). One batch:

1. process up to `batch_records` input records (store writes staged in the open transaction);
   a source's position is the offset of its first record not yet processed (read-ahead excluded);
2. advance the watermark; close due impressions (negative sampling, `freshrec.stream.sampling`)
   and expire early actions;
3. append the examples and dead letters; `flush()` both logs (durable);
4. write the state record (input positions, per-source max_ts, wm, the examples log's end
   offsets) and commit the store transaction - state and positions move together, atomically;
5. commit the consumers' positions (informational; the store's positions are the truth): at
   most once per `commit_consumers_s` of wall time, when the inputs run dry, and at `close()`,
   so that a batch costs one fsync per written log plus the store's commit.

A crash before 4 loses nothing: the restarted joiner seeks the inputs to the positions in the
store and redoes the batch. But examples of that batch may already be in the log (after 3, or
written out partway through it), which the store does not know of. On start the joiner reads the
examples log from the end offsets in its state record to the log's end, puts those request_ids in
the `ahead` table and commits; an impression found there when it closes is not written again.
So every impression reaches the examples log at most once, and once its window closes, exactly
once. This needs the joiner to be the only writer of its examples log. Dead letters are
at-least-once (a crash before 4 can repeat a batch's dead letters).
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from freshrec.errors import ConfigError, EventError
from freshrec.stream.events import DeadLetter, action_fields_many, encode_dead_letter, feature_wires
from freshrec.stream.log import Consumer, Log
from freshrec.stream.sampling import SamplingConfig, keep_negative
from freshrec.stream.store import JoinStore, LruCache

__all__ = ["JOIN_TABLES", "Joiner", "JoinerConfig", "JoinerStats"]

RECOVERY_READ_S = 60.0  # how long a restarted joiner waits for the examples it wrote ahead of its state

JOIN_TABLES = ("pending", "due", "early", "early_due", "ahead", "meta")
_STATE_KEY = b"state"
_HEAD = struct.Struct("<dIB")  # pending value: ts, len(labels json), emitted flag; labels, feature
_T0 = 1 << 63
_U64BE = struct.Struct(">Q").pack


def _us(t: float) -> int:
    return math.floor(t * 1e6)


def _tkey(us: int) -> bytes:
    """Sortable 8-byte key of a time in microseconds (sign flipped, big endian)."""
    return _U64BE(us + _T0)


@dataclass(frozen=True, kw_only=True, slots=True)
class JoinerConfig:
    """Configuration of a `Joiner`.

    Attributes:
        windows: action type -> join window in seconds of data time (an action joins when
            `action.ts <= impression.ts + window`).
        allowed_lateness_s: how far (seconds) events may arrive out of order within a partition.
        early_action_ttl_s: how long an action may wait for its impression, past the watermark.
        max_early_actions: cap on buffered early request_ids; more are dropped (counted).
        cache_entries / cache_bytes: bounds of the in-memory cache of pending impressions that
            actions joined.
        poll_records: records per poll of one input partition.
        poll_timeout_s: how long a poll waits for records (wall time). An empty poll marks the
            partition idle, so over Kafka give it a fetch round trip (e.g. 0.2); 0 suits the
            local and in-memory logs, whose polls see every record already written.
        batch_records: input records per batch (one store commit + one log flush per batch).
        max_batch_s: wall-time bound of one batch, so that a steady stream (polls never empty)
            still emits examples at least this often; batch boundaries do not affect results.
        sampling: negative sampling of the emitted examples.
        emit_early_positives: emit an impression's example as soon as a positive action joins
            (Monolith's behaviour) instead of at window close; actions joining later do not
            change it. Negatives still wait for the window to close.
        group: consumer group name of the joiner on its input logs.
        commit_consumers_s: least wall time (seconds) between two commits of the consumers'
            positions to the input logs (for lag monitoring; the store's positions are what a
            restart uses). 0: after every batch.
    """

    windows: Mapping[str, float]
    allowed_lateness_s: float = 60.0
    early_action_ttl_s: float = 60.0
    max_early_actions: int = 100_000
    cache_entries: int = 200_000
    cache_bytes: int = 256 << 20
    poll_records: int = 2_000
    poll_timeout_s: float = 0.0
    batch_records: int = 20_000
    max_batch_s: float = 0.25
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    emit_early_positives: bool = False
    group: str = "joiner"
    commit_consumers_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.windows:
            msg = "JoinerConfig.windows must name at least one action type"
            raise ConfigError(msg)
        for a, w in self.windows.items():
            if not (isinstance(w, int | float) and 0 <= w < 1e9):
                msg = f"JoinerConfig.windows[{a!r}] must be seconds in [0, 1e9), got {w!r}"
                raise ConfigError(msg)
        for name in ("allowed_lateness_s", "early_action_ttl_s", "poll_timeout_s", "max_batch_s",
                     "commit_consumers_s"):
            v = getattr(self, name)
            if not 0 <= v < 1e9:
                msg = f"JoinerConfig.{name} must be seconds in [0, 1e9), got {v!r}"
                raise ConfigError(msg)
        for name in ("poll_records", "batch_records"):
            if getattr(self, name) < 1:
                msg = f"JoinerConfig.{name} must be >= 1, got {getattr(self, name)}"
                raise ConfigError(msg)
        if self.max_early_actions < 0 or self.cache_entries < 0 or self.cache_bytes < 0:
            msg = "JoinerConfig max_early_actions, cache_entries and cache_bytes must be >= 0"
            raise ConfigError(msg)


@dataclass(slots=True)
class JoinerStats:
    """Counters since this `Joiner` object started (not persisted)."""

    features: int = 0
    actions: int = 0
    examples: int = 0
    positives: int = 0
    sampled_out: int = 0
    joined: int = 0
    early_buffered: int = 0
    early_joined: int = 0
    early_expired: int = 0
    early_overflow: int = 0
    duplicate_features: int = 0
    late_features: int = 0
    late_actions: int = 0
    outside_window: int = 0
    unknown_actions: int = 0
    dead_letters: int = 0
    skipped_ahead: int = 0
    early_emitted: int = 0
    batches: int = 0


class _Source:
    """One input partition: its consumer, the largest ts processed, and records read ahead.

    `buf` holds decoded records polled but not yet processed, in log order, as tuples
    `(ts, offset, request_id as UTF-8 bytes, ...)`; `buf_max` is the largest ts among them.
    """

    __slots__ = ("at_end", "buf", "buf_max", "consumer", "idle", "is_feature", "log", "max_ts", "name",
                 "partition", "poll_blocks")

    def __init__(self, log: Log, partition: int, consumer: Consumer, is_feature: bool) -> None:
        self.log = log
        self.partition = partition
        self.consumer = consumer
        # the local log hands out whole reads (`LocalConsumer.poll_blocks`): no object per record
        self.poll_blocks: Callable[..., list] | None = getattr(consumer, "poll_blocks", None)
        self.is_feature = is_feature
        self.name = f"{log.name}/{partition}"
        self.max_ts = -math.inf
        self.idle = False  # polled empty in this batch
        self.at_end = False  # ... and read to the end of its partition then
        self.buf: deque[tuple] = deque()
        self.buf_max = -math.inf

    def next_offset(self) -> int:
        """The offset of the first record not yet processed (where a restart resumes)."""
        return self.buf[0][1] if self.buf else self.consumer.position()[self.partition]


class Joiner:
    """Joins the features and actions logs into the examples log (see the module docstring).

    Args:
        config: the joiner's configuration.
        features, actions: input logs.
        examples: output log of examples (this joiner must be its only writer).
        dead_letters: output log of records that failed to decode.
        store: the joiner's state (`LmdbStore` for crash safety, `MemoryStore` in tests);
            opened with the tables in `JOIN_TABLES`. Use it from the thread that created it
            (an LMDB write transaction belongs to its thread).
        clock: monotonic wall seconds, for `max_batch_s` and `commit_consumers_s` only (never
            for data time).
    """

    def __init__(self, *, config: JoinerConfig, features: Log, actions: Log, examples: Log,
                 dead_letters: Log, store: JoinStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.examples = examples
        self.dead_letters = dead_letters
        self.store = store
        self.stats = JoinerStats()
        self._windows = dict(config.windows)
        self._actions = sorted(self._windows)
        self._w_max = max(self._windows.values())
        self._lateness = float(config.allowed_lateness_s)
        self._ttl = float(config.early_action_ttl_s)
        self._cache = LruCache(max_entries=config.cache_entries, max_bytes=config.cache_bytes,
                               size_of=lambda v: len(v[2]) + 200)
        self._sources = [
            _Source(log, p, log.consumer(config.group, partitions=[p]), log is features)
            for log in (features, actions)
            for p in range(log.partitions)
        ]
        self._wm = -math.inf
        self._wm_us = -(1 << 62)
        self._out_offsets: list[int] = []
        self._label_memo: dict[tuple[float, ...], bytes] = {}
        self._saved_labels: dict[tuple, bytes] = {}  # labels as stored with a pending impression
        self._have_early = True
        self._check_ahead = True
        self._out: list[tuple[bytes, bytes]] = []  # (key, example) of the batch being processed
        self._due: list[tuple[bytes, bytes]] = []  # ("due" key, b"") of the batch's new impressions
        self._early_positives = config.emit_early_positives
        self._consumers_behind = False  # a store commit moved positions the consumers lack
        self._consumers_due = -math.inf
        self._rate = config.sampling.negative_rate
        self._rate_tail = b',"sample_rate":' + json.dumps(float(self._rate)).encode() + b"}"
        self._no_labels = self._labels_json({})
        self._recover()

    # ------------------------------------------------------------------ recovery and state

    def _recover(self) -> None:
        """Load the committed state (positions, times, output offsets) and reconcile the output.

        A fresh store gets a state at once (inputs at the consumers' committed positions, the
        examples log's current end as the output offsets), so there is always one to return to.
        """
        for s in self._sources:
            s.buf.clear()
            s.buf_max = -math.inf
        raw = self.store.get("meta", _STATE_KEY)
        if raw is None:
            for s in self._sources:
                s.consumer.seek(s.partition, s.consumer.committed().get(s.partition, 0))
                s.max_ts = -math.inf
            self._wm, self._wm_us = -math.inf, -(1 << 62)
            self._out_offsets = list(self.examples.end_offsets())
            self._commit_state()
            return
        state = json.loads(raw)
        for s in self._sources:
            s.consumer.seek(s.partition, int(state["pos"].get(s.name, 0)))
            mt = state["max_ts"].get(s.name)
            s.max_ts = -math.inf if mt is None else float(mt)
        self._wm = -math.inf if state["wm"] is None else float(state["wm"])
        self._wm_us = -(1 << 62) if state["wm"] is None else _us(self._wm)
        self._out_offsets = [int(x) for x in state["out"]]
        ends = self.examples.end_offsets()
        if len(self._out_offsets) != len(ends):
            msg = (f"joiner state names {len(self._out_offsets)} partitions of examples log "
                   f"{self.examples.name!r}, which has {len(ends)}")
            raise ConfigError(msg)
        if any(e > o for e, o in zip(ends, self._out_offsets, strict=True)):
            self._mark_ahead(ends)
            self._out_offsets = list(ends)
            self._commit_state()

    def _mark_ahead(self, ends: list[int]) -> None:
        """Remember request_ids written to the examples log after the last store commit."""
        for p, (start, end) in enumerate(zip(self._out_offsets, ends, strict=True)):
            if end <= start:
                continue
            c = self.examples.consumer(f"{self.config.group}-recovery", partitions=[p])
            c.seek(p, start)
            pos = start
            idle_since = time.monotonic()
            while pos < end:
                recs = c.poll(max_records=10_000, timeout_s=1.0)
                if not recs:
                    # an empty poll proves nothing (a first Kafka poll, a broker just restarted):
                    # give up only after RECOVERY_READ_S without a record while some are due
                    if time.monotonic() - idle_since < RECOVERY_READ_S:
                        continue
                    msg = (
                        f"examples log {self.examples.name!r} partition {p}: cannot read {pos}..{end} "
                        f"(nothing for {RECOVERY_READ_S:g} s)"
                    )
                    raise EventError(msg)
                idle_since = time.monotonic()
                for r in recs:
                    if r.offset >= end:
                        break
                    try:
                        rid = json.loads(r.value)["request_id"]
                        self.store.put("ahead", rid.encode("utf-8"), b"")
                    except (ValueError, KeyError, TypeError, AttributeError):
                        pass  # not one of ours: nothing to skip later
                pos = recs[-1].offset + 1
            c.close()

    def _commit_state(self) -> None:
        state = {
            "pos": {s.name: s.next_offset() for s in self._sources},
            "max_ts": {s.name: (None if s.max_ts == -math.inf else s.max_ts) for s in self._sources},
            "wm": None if self._wm == -math.inf else self._wm,
            "out": self._out_offsets,
        }
        self.store.put("meta", _STATE_KEY, json.dumps(state).encode())
        self.store.commit()

    @property
    def watermark(self) -> float:
        """The current watermark (data time, seconds; -inf before any event)."""
        return self._wm

    def pending(self) -> int:
        """Impressions waiting for their windows to close."""
        return self.store.count("pending")

    def early(self) -> int:
        """Request_ids with buffered early actions."""
        return self.store.count("early")

    # ------------------------------------------------------------------ pending impressions

    def _load(self, key: bytes) -> list | None:
        entry = self._cache.get(key)
        if entry is not None:
            return entry
        raw = self.store.get("pending", key)
        if raw is None:
            return None
        ts, n, emitted = _HEAD.unpack_from(raw)
        labels = json.loads(raw[_HEAD.size : _HEAD.size + n]) if n else {}
        entry = [ts, labels, bytes(raw[_HEAD.size + n :]), bool(emitted)]
        self._cache.put(key, entry)
        return entry

    def _save(self, key: bytes, entry: list) -> None:
        got = entry[1]
        if got:
            memo = tuple(got.items())
            lab = self._saved_labels.get(memo)
            if lab is None:
                if len(self._saved_labels) > 4096:
                    self._saved_labels.clear()
                lab = self._saved_labels[memo] = json.dumps(got).encode()
        else:
            lab = b""
        self.store.put("pending", key, b"".join((_HEAD.pack(entry[0], len(lab), entry[3]), lab, entry[2])))

    def _apply(self, entry: list, action: str, value: float, ts: float) -> bool:
        """Join one action to a pending impression; True when its labels changed."""
        if ts > entry[0] + self._windows[action]:
            self.stats.outside_window += 1
            return False
        self.stats.joined += 1
        old = entry[1].get(action)
        if old is None or value > old:
            entry[1][action] = value
            return True
        return False

    # ------------------------------------------------------------------ records

    def _dead(self, src: _Source, offset: int, value: bytes, err: Exception, out: list[bytes]) -> None:
        self.stats.dead_letters += 1
        letter = DeadLetter(str(err), src.log.name, src.partition, offset, value)
        out.append(encode_dead_letter(letter))

    def _poll(self, src: _Source) -> list[tuple[bytes, np.ndarray, Any]]:
        """One poll of `src` as (data, value spans (n, 2), offsets) pieces; [] when empty."""
        cfg = self.config
        if src.poll_blocks is not None:
            return [(b.data, b.spans, range(b.offset, b.offset + len(b.spans)))
                    for b in src.poll_blocks(max_records=cfg.poll_records, timeout_s=cfg.poll_timeout_s)]
        recs = src.consumer.poll(max_records=cfg.poll_records, timeout_s=cfg.poll_timeout_s)
        if not recs:
            return []
        values = [r.value for r in recs]
        ends = np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=len(values)))
        spans = np.empty((len(values), 2), dtype=np.int64)
        spans[:, 1] = ends
        spans[0, 0] = 0
        spans[1:, 0] = ends[:-1]
        return [(b"".join(values), spans, [r.offset for r in recs])]

    def _decode(self, src: _Source, pieces: list[tuple[bytes, np.ndarray, Any]], dead: list[bytes]) -> None:
        """Decode polled records into `src.buf`; records that fail go to the dead letters."""
        buf = src.buf
        add = buf.append
        top = src.buf_max
        for data, spans, offsets in pieces:
            if src.is_feature:
                for i, (fres, off) in enumerate(zip(feature_wires(data, spans), offsets, strict=True)):
                    if isinstance(fres, EventError):
                        self._dead(src, off, data[spans[i, 0] : spans[i, 1]], fres, dead)
                        continue
                    key, ts, fb = fres
                    add((ts, off, key, fb))
                    if ts > top:
                        top = ts
            else:
                for i, (ares, off) in enumerate(zip(action_fields_many(data, spans), offsets, strict=True)):
                    if isinstance(ares, EventError):
                        self._dead(src, off, data[spans[i, 0] : spans[i, 1]], ares, dead)
                        continue
                    key, action, value, ts = ares
                    add((ts, off, key, action, value))
                    if ts > top:
                        top = ts
        src.buf_max = top

    def _feature(self, src: _Source, item: tuple) -> None:
        ts, _, key, fb = item
        self.stats.features += 1
        if ts > src.max_ts:
            src.max_ts = ts
        deadline = _us(ts + self._w_max)
        if deadline < self._wm_us:
            self.stats.late_features += 1
            return
        store = self.store
        if self._have_early:
            if store.get("pending", key) is not None:
                self.stats.duplicate_features += 1
                return
            early = store.get("early", key)
            if early is not None:
                self._feature_with_early(key, ts, fb, early)
            else:
                store.put("pending", key, _HEAD.pack(ts, 0, False) + fb)
        elif not store.insert("pending", key, _HEAD.pack(ts, 0, False) + fb):
            self.stats.duplicate_features += 1
            return
        self._due.append((_U64BE(deadline + _T0) + key, b""))  # stored in one call before closing

    def _feature_with_early(self, key: bytes, ts: float, fb: bytes, early: bytes) -> None:
        """Store a new impression that has early actions waiting: apply them first."""
        entry: list[Any] = [ts, {}, fb, False]
        exp, acts = json.loads(early)
        self.store.delete("early", key)
        self.store.delete("early_due", _tkey(exp) + key)
        for a, v, t_a in acts:
            self.stats.early_joined += 1
            self._apply(entry, a, v, t_a)
        if self._early_positives and any(v > 0.0 for v in entry[1].values()):
            self._emit(key, entry[1], fb)
            entry[3] = True
            self.stats.early_emitted += 1
        self._save(key, entry)

    def _action(self, src: _Source, item: tuple) -> None:
        ts, _, key, action, value = item
        self.stats.actions += 1
        if ts > src.max_ts:
            src.max_ts = ts
        if action not in self._windows:
            self.stats.unknown_actions += 1
            return
        entry = self._load(key)
        if entry is not None:
            if self._apply(entry, action, value, ts):
                if self._early_positives and not entry[3] and value > 0.0:
                    self._emit(key, entry[1], entry[2])
                    entry[3] = True
                    self.stats.early_emitted += 1
                self._save(key, entry)
            return
        exp = _us(ts + self._ttl)
        if exp < self._wm_us:
            self.stats.late_actions += 1
            return
        raw = self.store.get("early", key)
        if raw is None:
            if self.store.count("early") >= self.config.max_early_actions:
                self.stats.early_overflow += 1
                return
            old_exp, acts = exp, []
        else:
            old_exp, acts = json.loads(raw)
        if [action, value, ts] in acts:
            return  # a duplicate
        acts.append([action, value, ts])
        new_exp = max(exp, old_exp)
        if raw is not None and new_exp != old_exp:
            self.store.delete("early_due", _tkey(old_exp) + key)
        self.store.put("early", key, json.dumps([new_exp, acts]).encode())
        self._have_early = True
        self.store.put("early_due", _tkey(new_exp) + key, b"")
        self.stats.early_buffered += 1

    # ------------------------------------------------------------------ closing

    def _labels_json(self, got: dict[str, float]) -> bytes:
        """`{"a":v,...}` over every configured action (0.0 when absent), memoized."""
        vals = tuple(got.get(a, 0.0) for a in self._actions)
        lab = self._label_memo.get(vals)
        if lab is None:
            if len(self._label_memo) > 4096:
                self._label_memo.clear()
            lab = json.dumps(dict(zip(self._actions, vals, strict=True)), separators=(",", ":"),
                             allow_nan=False).encode()
            self._label_memo[vals] = lab
        return lab

    def _advance(self) -> None:
        active = [s.max_ts for s in self._sources if not (s.idle and s.at_end)]
        if active:
            cand = min(active) - self._lateness
        else:
            cand = max(s.max_ts for s in self._sources) - self._lateness
        if cand > self._wm:
            self._wm = cand
            self._wm_us = _us(cand)

    def _emit(self, key: bytes, got: dict[str, float] | None, fb: bytes | memoryview) -> None:
        """Append the example of impression `key` (labels `got`, feature bytes `fb`) to this
        batch's output, unless it was written ahead or is sampled out."""
        if self._check_ahead and self.store.delete("ahead", key):
            self.stats.skipped_ahead += 1
            return
        if got and any(v > 0.0 for v in got.values()):
            self.stats.positives += 1
        elif self._rate < 1.0 and not keep_negative(key.decode("utf-8"), self.config.sampling):
            self.stats.sampled_out += 1
            return
        lab = self._labels_json(got) if got else self._no_labels
        self._out.append((key, b"".join((fb[:-1], b',"labels":', lab, self._rate_tail))))

    def _close(self) -> int:
        """Emit impressions whose windows closed and expire early actions; returns how many."""
        if self._wm == -math.inf:
            return 0
        stop = _tkey(self._wm_us)
        done = 0
        store = self.store
        cache = self._cache
        head = _HEAD.size
        while True:
            rows = store.take("due", stop, limit=10_000)
            if not rows:
                break
            for dkey, _ in rows:
                key = dkey[8:]
                if len(cache):
                    cache.pop(key)
                raw = store.pop("pending", key)
                done += 1
                if raw is None:  # cannot happen
                    continue
                _, n, emitted = _HEAD.unpack_from(raw)
                if emitted:
                    continue
                got = json.loads(raw[head : head + n]) if n else None
                self._emit(key, got, memoryview(raw)[head + n :])
        while True:
            rows = store.take("early_due", stop, limit=10_000)
            if not rows:
                break
            for dkey, _ in rows:
                if store.delete("early", dkey[8:]):
                    self.stats.early_expired += 1
                done += 1
        return done

    # ------------------------------------------------------------------ the loop

    def step(self) -> int:
        """Run one batch (poll, join, close, write, commit).

        Returns the work done: input records consumed + impressions closed + early actions
        expired; 0 means nothing arrived and nothing is due (`drained()` tells whether the
        inputs are read to their ends, or just had nothing to give, e.g. during an outage).
        """
        try:
            return self._step()
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Drop the uncommitted batch (store transaction, cache, read-ahead) and recover."""
        self.store.abort()
        self._cache.clear()
        self._recover()

    def _step(self) -> int:
        cfg = self.config
        srcs = self._sources
        for s in srcs:
            s.idle = False
        self._have_early = self.store.count("early") > 0
        self._check_ahead = self.store.count("ahead") > 0
        self._out = []
        self._due = []
        dead: list[bytes] = []
        consumed = 0
        deadline = self._clock() + cfg.max_batch_s
        while consumed < cfg.batch_records and (consumed == 0 or self._clock() < deadline):
            # every source that has nothing read ahead polls once (an empty poll: idle)
            for s in srcs:
                if not s.buf and not s.idle:
                    pieces = self._poll(s)
                    if pieces:
                        self._decode(s, pieces, dead)
                    else:
                        s.idle = True  # polled empty: not polled again in this batch
                        s.at_end = s.consumer.at_end()
            live = [s for s in srcs if s.buf]
            if not live:
                break
            # process, features first, every record up to the frontier: the smallest of the
            # sources' read-ahead maxima. The source that sets it drains, so each round progresses.
            frontier = min(s.buf_max for s in live)
            for s in live:
                buf = s.buf
                handle = self._feature if s.is_feature else self._action
                while buf and buf[0][0] <= frontier:
                    handle(s, buf.popleft())
                    consumed += 1
                if not buf:
                    s.buf_max = -math.inf
        if self._due:
            self.store.put_many("due", self._due)
        wm0 = self._wm
        self._advance()
        closed = self._close()
        out = self._out
        if consumed == 0 and closed == 0 and self._wm == wm0:
            if self._consumers_behind:
                self._commit_consumers()
            return 0
        append_many = getattr(self.examples, "append_many", None)
        if append_many is not None:  # the local log frames a whole batch at once
            append_many(out)
        else:
            for key, value in out:
                self.examples.append(value, key=key)
        for value in dead:
            self.dead_letters.append(value)
        if out:
            self.examples.flush()
            self._out_offsets = list(self.examples.end_offsets())
        if dead:
            self.dead_letters.flush()
        self.stats.examples += len(out)
        self.stats.batches += 1
        self._commit_state()
        self._consumers_behind = True
        if self._clock() >= self._consumers_due:
            self._commit_consumers()
        return consumed + closed

    def _commit_consumers(self) -> None:
        """Commit the inputs' positions (those of the last store commit) to the consumer groups."""
        for s in self._sources:
            try:
                s.consumer.commit({s.partition: s.next_offset()})
            except Exception:
                pass  # informational only; the store holds the truth
        self._consumers_behind = False
        self._consumers_due = self._clock() + self.config.commit_consumers_s

    def run(self, *, until_idle: bool = False, should_stop: Callable[[], bool] | None = None,
            idle_sleep_s: float = 0.05, sleep: Callable[[float], None] = time.sleep,
            on_batch: Callable[[Joiner], Any] | None = None) -> JoinerStats:
        """Run batches until `should_stop()` is true, or (with `until_idle`) the inputs are drained.

        Drained means a batch did no work (`step() == 0`) and every input was read to its end
        (`drained()`). Between empty batches the loop calls `sleep(idle_sleep_s)` (injected; the
        CLI passes `time.sleep`).
        """
        while not (should_stop is not None and should_stop()):
            n = self.step()
            if on_batch is not None:
                on_batch(self)
            if n == 0:
                if until_idle and self.drained():
                    break
                sleep(idle_sleep_s)
        return self.stats

    def drained(self) -> bool:
        """Whether the last batch found every input read to its end (by offsets)."""
        return all(s.idle and s.at_end for s in self._sources)

    def close(self) -> None:
        """Commit the consumers' positions and close them (the logs and the store belong to the
        caller)."""
        if self._consumers_behind:
            self._commit_consumers()
        for s in self._sources:
            s.consumer.close()
