"""The frequency filter: an id gets a table row only after it was seen `min_count` times.

Monolith keeps rare ids out of the table (most ids show up once or twice and would only waste
memory and add noise). The filter answers "has this id now been seen often enough?" in bounded
memory, whatever the number of distinct ids:

- ``count_min``: a count-min sketch of `depth` x `width` saturating uint16 counters, one
  independent 64-bit hash of (id, seed, row) per row, in two generations (current, previous).
  The estimate of an id is the minimum over rows of ``cur + prev``; it never under-counts the
  occurrences recorded in the two live generations, and over-counts only through collisions
  (cut by the conservative update: a record raises only the current-generation counters below
  the id's new current-generation estimate).
  Generations slide with data time: when `now` reaches the current generation's start +
  `window_s`, previous := current and current := 0 (two or more windows later both are
  cleared). So an occurrence counts for at least `window_s` and at most 2 * `window_s` seconds.
  Memory: 2 * depth * width * 2 bytes.
- ``probabilistic``: each occurrence admits the id with probability 1 / min_count; a batch with c
  occurrences admits with probability 1 - (1 - 1/min_count)^c. Draws are a pure function of
  (seed, id, draw counter); the counter (advanced by one per id offered) is the only state, so a
  restored filter makes the same future decisions. No per-id memory.

Time is data time passed by the caller; time going backwards (or a NaN/inf time) is treated as
the same window.
A filter is not thread-safe: callers serialize `admit` (the table does so under its lock).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from freshrec.errors import ConfigError, DataError, SnapshotError
from freshrec.table.config import FilterConfig

__all__ = ["FrequencyFilter"]

_MAX_COUNT = 65535  # uint16 saturation
_M64 = (1 << 64) - 1
_STATE_VERSION = 1


def _splitmix64(x: int) -> int:
    """Reference splitmix64 step on Python ints (used to derive per-row salts from the seed)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _salts(seed: int, depth: int, purpose: int) -> np.ndarray:
    """depth uint64 salts, a pure function of (seed, purpose, row)."""
    base = _splitmix64((seed & _M64) ^ _splitmix64(purpose))
    return np.array([_splitmix64(base ^ _splitmix64(r + 1)) for r in range(depth)], dtype=np.uint64)


@njit(nogil=True, cache=True, inline="always")
def _fmix64(x):
    # murmur3 finalizer; x is uint64, every constant uint64 so numba keeps integer arithmetic
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB93FE53A87CE)
    x ^= x >> np.uint64(33)
    return x


@njit(nogil=True, cache=True, inline="always")
def _hash(id_, salt):
    """64-bit hash of (id, salt): two finalizer rounds keyed by the salt; all int64 ids are valid."""
    x = np.uint64(id_) ^ salt
    x = _fmix64(x)
    x = _fmix64(x + salt)
    return x


@njit(nogil=True, cache=True)
def _cm_admit(cur, prev, salts, ids, counts, min_count, out):
    """Record ids[i] (counts[i] occurrences); out[i] = (estimate after recording) >= min_count.

    Conservative update within the current generation: with e = min_r cur[r, h_r(id)], raise each
    cur[r, h_r(id)] to at least e + c. (Not against cur + prev: a count hidden in the previous
    generation would vanish from the current one when the previous is dropped.) Each generation
    keeps the count-min bound on its own, so min_r (cur + prev) never under-counts.
    """
    depth = cur.shape[0]
    mask = np.uint64(cur.shape[1] - 1)
    idx = np.empty(depth, np.int64)
    for i in range(ids.shape[0]):
        est_cur = np.int64(1) << 40
        for r in range(depth):
            j = np.int64(_hash(ids[i], salts[r]) & mask)
            idx[r] = j
            v = np.int64(cur[r, j])
            if v < est_cur:
                est_cur = v
        c = counts[i]
        if c < 0:
            c = 0
        target = est_cur + c
        if target > _MAX_COUNT:
            target = _MAX_COUNT
        est = np.int64(1) << 40
        for r in range(depth):
            j = idx[r]
            if target > np.int64(cur[r, j]):
                cur[r, j] = np.uint16(target)
            v = np.int64(cur[r, j]) + np.int64(prev[r, j])
            if v < est:
                est = v
        out[i] = est >= min_count


@njit(nogil=True, cache=True)
def _cm_estimate(cur, prev, salts, ids, out):
    depth = cur.shape[0]
    mask = np.uint64(cur.shape[1] - 1)
    for i in range(ids.shape[0]):
        est = np.int64(1) << 40
        for r in range(depth):
            j = np.int64(_hash(ids[i], salts[r]) & mask)
            v = np.int64(cur[r, j]) + np.int64(prev[r, j])
            if v < est:
                est = v
        out[i] = est


@njit(nogil=True, cache=True)
def _prob_admit(salt, draw0, ids, counts, log1m_p, out):
    """out[i] = u(seed, id, draw0 + i) < 1 - (1 - p)^counts[i], u uniform in [0, 1) (53 bits)."""
    for i in range(ids.shape[0]):
        h = _hash(ids[i], salt)
        h = _fmix64(h ^ _fmix64(np.uint64(draw0 + i) + salt))
        u = np.float64(h >> np.uint64(11)) * (1.0 / 9007199254740992.0)
        c = counts[i]
        if c <= 0:
            out[i] = False
        else:
            out[i] = u < -math.expm1(np.float64(c) * log1m_p)


class FrequencyFilter:
    """Admission after `min_count` occurrences, in bounded memory (see the module docstring).

    min_count == 1 admits everything without recording anything. For "count_min", min_count must
    be <= 65535 (the counters saturate there).
    """

    def __init__(self, config: FilterConfig, *, min_count: int, seed: int = 0) -> None:
        config.validate()
        if min_count < 1:
            msg = f"filter min_count must be >= 1, got {min_count}"
            raise ConfigError(msg)
        if config.kind == "count_min" and min_count > _MAX_COUNT:
            msg = f"count_min filter min_count must be <= {_MAX_COUNT}, got {min_count}"
            raise ConfigError(msg)
        self.config = config
        self.min_count = int(min_count)
        self.seed = int(seed)
        self._gen_start: float | None = None
        self._draws = 0
        if config.kind == "count_min":
            self._salts = _salts(self.seed, config.depth, purpose=1)
            self._cur = np.zeros((config.depth, config.width), np.uint16)
            self._prev = np.zeros((config.depth, config.width), np.uint16)
        else:
            self._salts = _salts(self.seed, 1, purpose=2)
            self._cur = np.zeros((0, 1), np.uint16)
            self._prev = np.zeros((0, 1), np.uint16)

    # -- the sliding window ------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Slide generations to data time `now` (backwards or non-finite time: no change)."""
        if not math.isfinite(now):
            return
        if self._gen_start is None:
            self._gen_start = float(now)
            return
        w = self.config.window_s
        elapsed = float(now) - self._gen_start
        if not elapsed >= w:  # also catches NaN and time going backwards
            return
        k = math.floor(elapsed / w)
        if k == 1:
            self._cur, self._prev = self._prev, self._cur
            self._cur.fill(0)
        else:
            self._cur.fill(0)
            self._prev.fill(0)
        self._gen_start += k * w

    # -- the API ---------------------------------------------------------------------------------

    def admit(self, ids: np.ndarray, counts: np.ndarray, now: float) -> np.ndarray:
        """Record `counts[i]` occurrences of distinct `ids[i]` at data time `now` (s).

        Returns a bool mask (n,): True where the id has now been seen >= min_count times within
        the window ("count_min") or passed its draw ("probabilistic"). Ids should be ones not in
        the table yet; a repeated id is recorded once per listing.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        counts = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
        if ids.shape != counts.shape:
            msg = f"filter admit: ids and counts differ in length ({ids.shape[0]} vs {counts.shape[0]})"
            raise DataError(msg)
        n = ids.shape[0]
        if self.min_count == 1:
            return np.ones(n, dtype=np.bool_)
        out = np.empty(n, dtype=np.bool_)
        if self.config.kind == "count_min":
            self._advance(now)
            if n:
                _cm_admit(self._cur, self._prev, self._salts, ids, counts, self.min_count, out)
        elif n:
            log1m_p = math.log1p(-1.0 / self.min_count)
            _prob_admit(self._salts[0], self._draws, ids, counts, log1m_p, out)
            self._draws += n
        return out

    def estimate(self, ids: np.ndarray) -> np.ndarray:
        """Estimated occurrences (int64) of each id in the live window, without recording or sliding.

        "count_min" only (an upper bound of the true count in the two live generations); the
        probabilistic filter keeps no counts and returns zeros.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        out = np.zeros(ids.shape[0], dtype=np.int64)
        if self.config.kind == "count_min" and ids.shape[0]:
            _cm_estimate(self._cur, self._prev, self._salts, ids, out)
        return out

    def forget(self, ids: np.ndarray) -> None:
        """No-op: a sketch cannot remove one id's counts without hurting others' (counts fade with
        the window instead). Kept so that callers can tell the filter an id left the table."""
        return None

    @property
    def nbytes(self) -> int:
        """Bytes of counters held: 2 * depth * width * 2 for "count_min", 0 for "probabilistic"."""
        return int(self._cur.nbytes + self._prev.nbytes) if self.config.kind == "count_min" else 0

    # -- snapshots -------------------------------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able meta, arrays): everything needed for `from_state` to make identical decisions."""
        meta = {
            "version": _STATE_VERSION,
            "kind": self.config.kind,
            "width": self.config.width,
            "depth": self.config.depth,
            "window_s": self.config.window_s,
            "min_count": self.min_count,
            "seed": self.seed,
            "gen_start": self._gen_start,
            "draws": self._draws,
        }
        arrays: dict[str, np.ndarray] = {}
        if self.config.kind == "count_min":
            arrays = {"cur": self._cur.copy(), "prev": self._prev.copy()}
        return meta, arrays

    @classmethod
    def from_state(
        cls,
        config: FilterConfig,
        meta: dict,
        arrays: dict[str, np.ndarray],
        *,
        min_count: int,
        seed: int,
    ) -> FrequencyFilter:
        """Rebuild a filter from `state()`; raises SnapshotError if it does not fit `config`/`seed`.

        min_count and window_s may differ from the saved ones (counts stay meaningful); kind,
        width, depth and seed may not (the hashes would point elsewhere).
        """
        f = cls(config, min_count=min_count, seed=seed)
        if meta.get("version") != _STATE_VERSION:
            msg = f"filter state version {meta.get('version')!r} is not {_STATE_VERSION}"
            raise SnapshotError(msg)
        for key, want in (
            ("kind", config.kind),
            ("width", config.width),
            ("depth", config.depth),
            ("seed", seed),
        ):
            if meta.get(key) != want:
                msg = f"filter state has {key}={meta.get(key)!r} but the table config wants {want!r}"
                raise SnapshotError(msg)
        gs = meta.get("gen_start")
        f._gen_start = None if gs is None else float(gs)
        f._draws = int(meta.get("draws", 0))
        if config.kind == "count_min":
            shape = (config.depth, config.width)
            for name in ("cur", "prev"):
                a = arrays.get(name)
                if a is None or a.shape != shape or a.dtype != np.uint16:
                    got = None if a is None else (a.shape, str(a.dtype))
                    msg = f"filter state array {name!r} should be uint16 {shape}, got {got}"
                    raise SnapshotError(msg)
            f._cur = np.ascontiguousarray(arrays["cur"]).copy()
            f._prev = np.ascontiguousarray(arrays["prev"]).copy()
        return f
