"""A drifting synthetic platform: users whose tastes move, items that are born and go stale.

It exists for demos and for experiments that need a ground truth (the true click probability of
any user-item pair at any time), which no logged dataset has. The world:

- users u have a taste vector that drifts: `taste_u(t) = base_u + L_u @ w(hour(t))`, where `w` is
  a shared 4-dimensional Gaussian random walk (`drift_per_hour` std per hour and component) and
  `L_u` (dim x 4) is each user's own loading, so every user drifts their own way (memory stays
  O(users x dim), whatever the duration);
- items i are born over time (`n_items_start` at the start, then `new_items_per_hour`), each with
  a fixed vector `v_i` and a quality bias `b_i`; their appeal decays with age with half-life
  `freshness_half_life_s`, so fresh items matter, as on a news site;
- `P(click | u, i, t) = sigmoid(base_logit + taste_u(t) . v_i + b_i + log(freshness(age)))`.

Ids are raw, sparse-looking int64 values (63-bit, derived from the seed) so that they exercise
the collisionless tables as real ids do; new ids keep appearing all the time.

`SyntheticPlatform.log(n, ...)` draws a time-sorted `Dataset` of impressions (uniform random
users, items shown in proportion to their current appeal) with sampled click labels; the
`click_prob` method answers the ground truth for any request, for closed-loop demos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freshrec.data.dataset import Dataset
from freshrec.errors import ConfigError, NotFoundError

__all__ = ["SyntheticConfig", "SyntheticPlatform"]

_HOUR = 3600.0
_WALKS = 4


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """The world's shape. Times in seconds."""

    n_users: int = 5_000
    n_items_start: int = 500
    new_items_per_hour: float = 100.0
    duration_s: float = 24 * _HOUR
    start_ts: float = 1_700_000_000.0
    dim: int = 8
    taste_scale: float = 0.6
    drift_per_hour: float = 0.08
    freshness_half_life_s: float = 6 * _HOUR
    base_logit: float = -2.5
    quality_std: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items_start", "dim", "duration_s"):
            value = getattr(self, name)
            if not value > 0:
                msg = f"SyntheticConfig.{name} = {value!r}: must be > 0"
                raise ConfigError(msg)


def _sparse_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct random non-negative int64 ids."""
    ids = np.unique(rng.integers(1, 2**63 - 1, size=n + n // 10 + 8, dtype=np.int64))
    rng.shuffle(ids)
    return ids[:n]


class SyntheticPlatform:
    """The world of a `SyntheticConfig` (deterministic in its seed)."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        c = config or SyntheticConfig()
        self.config = c
        rng = np.random.default_rng(c.seed)
        hours = int(np.ceil(c.duration_s / _HOUR)) + 1
        n_new = int(round(c.new_items_per_hour * c.duration_s / _HOUR))
        n_items = c.n_items_start + n_new
        self.user_ids = _sparse_ids(rng, c.n_users)
        self.item_ids = _sparse_ids(rng, n_items)
        scale = c.taste_scale / np.sqrt(c.dim)
        self._base = rng.normal(0, scale, (c.n_users, c.dim)).astype(np.float32)
        steps = rng.normal(0, c.drift_per_hour, (hours, _WALKS))
        steps[0] = 0.0
        self._walk = np.cumsum(steps, axis=0).astype(np.float32)  # (hours, walks)
        self._load = rng.normal(0, 1 / np.sqrt(_WALKS), (c.n_users, c.dim, _WALKS)).astype(np.float32)
        self._vec = rng.normal(0, 1.0, (n_items, c.dim)).astype(np.float32)
        self._quality = rng.normal(0, c.quality_std, n_items).astype(np.float32)
        born = np.sort(rng.uniform(c.start_ts, c.start_ts + c.duration_s, n_new))
        # the starting catalogue was born over the day before the start
        self.item_born = np.concatenate(
            [rng.uniform(c.start_ts - 24 * _HOUR, c.start_ts, c.n_items_start), born]
        )
        self._user_row = {int(u): i for i, u in enumerate(self.user_ids)}
        self._item_order = np.argsort(self.item_ids)

    @property
    def end_ts(self) -> float:
        return self.config.start_ts + self.config.duration_s

    def _item_rows(self, items: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.item_ids[self._item_order], items)
        pos = np.clip(pos, 0, len(self.item_ids) - 1)
        rows = self._item_order[pos]
        if not np.array_equal(self.item_ids[rows], items):
            msg = "click_prob: unknown item id"
            raise NotFoundError(msg)
        return rows

    def _user_rows(self, users: np.ndarray) -> np.ndarray:
        try:
            return np.array([self._user_row[int(u)] for u in users], dtype=np.int64)
        except KeyError as e:
            msg = f"click_prob: unknown user id {e.args[0]}"
            raise NotFoundError(msg) from None

    def live_items(self, ts: float) -> np.ndarray:
        """Ids of the items born at or before `ts`."""
        return self.item_ids[self.item_born <= ts]

    def _logit_rows(self, urow: np.ndarray, irow: np.ndarray, ts: np.ndarray) -> np.ndarray:
        c = self.config
        hour = np.clip(((ts - c.start_ts) // _HOUR).astype(np.int64), 0, len(self._walk) - 1)
        # (n, dim) = (n, dim) + (n, dim, walks) @ (n, walks)
        taste = self._base[urow] + np.einsum("ndk,nk->nd", self._load[urow], self._walk[hour])
        age = np.maximum(ts - self.item_born[irow], 0.0)
        fresh = -np.log(2.0) * age / c.freshness_half_life_s  # log of 2^(-age / half-life)
        return c.base_logit + np.einsum("nd,nd->n", taste, self._vec[irow]) + self._quality[irow] + fresh

    def click_prob(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray | float) -> np.ndarray:
        """The true P(click) for each (user, item) shown at time ts (arrays broadcast to (n,)); float64.

        Raises:
            KeyError: an id the platform does not know.
        """
        users, items = np.atleast_1d(users).astype(np.int64), np.atleast_1d(items).astype(np.int64)
        ts_arr = np.broadcast_to(np.asarray(ts, dtype=np.float64), users.shape)
        logit = self._logit_rows(self._user_rows(users), self._item_rows(items), ts_arr)
        return 1.0 / (1.0 + np.exp(-logit))

    def log(
        self, n: int, *, start_ts: float | None = None, end_ts: float | None = None, seed: int = 0
    ) -> Dataset:
        """n impressions at uniform random times in [start_ts, end_ts) with sampled click labels.

        Each impression is a uniform random user shown an item drawn among the live ones in
        proportion to its freshness (what a recency-biased feed shows). Slots: `user_id`,
        `item_id`; ts seconds; sample_rate 1.0. Deterministic in (config.seed, seed).
        """
        c = self.config
        t0 = c.start_ts if start_ts is None else start_ts
        t1 = self.end_ts if end_ts is None else end_ts
        rng = np.random.default_rng([c.seed, seed])
        ts = np.sort(rng.uniform(t0, t1, n))
        urow = rng.integers(0, c.n_users, n)
        irow = np.empty(n, np.int64)
        # items by the hour: draw among the items live at the hour's start, weighted by freshness
        hour_of = ((ts - t0) // _HOUR).astype(np.int64)
        for h in np.unique(hour_of):
            sel = np.flatnonzero(hour_of == h)
            t_h = ts[sel[0]]
            live = np.flatnonzero(self.item_born <= t_h)
            w = np.exp2(-(t_h - self.item_born[live]) / c.freshness_half_life_s)
            irow[sel] = live[rng.choice(len(live), size=len(sel), p=w / w.sum())]
        p = 1.0 / (1.0 + np.exp(-self._logit_rows(urow, irow, ts)))
        label = (rng.random(n) < p).astype(np.float32)
        return Dataset.build(
            f"synthetic-{c.seed}",
            sparse={"user_id": self.user_ids[urow], "item_id": self.item_ids[irow]},
            label=label,
            ts=ts,
        )
