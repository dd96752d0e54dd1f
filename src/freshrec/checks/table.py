"""The table contract as checks a user runs on their own table implementation, in one line:

    from freshrec.checks import check_table
    check_table(lambda config: MyTable(config))           # every check; AssertionError names the failing one

A table implementation is anything with `EmbeddingTable`'s interface (`lookup`, `apply_gradients`,
`assign`, `remove`, `contains`, `evict_expired`, `take_touched`, `state` / `from_state`, `export`,
`nbytes`, `check_invariants`, `len`, `evictions`). Each check compares it with one `EmbeddingTable` fed
the same calls wherever the result is determined: lookups must be bit-for-bit equal. `load(meta,
arrays)` rebuilds a table from `state()` output (default: `type(table).from_state`).

The checks use `assert`: run them without `python -O`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from freshrec.errors import ConfigError
from freshrec.table import SGD, Adagrad, EmbeddingTable, OptimizerConfig, TableConfig

__all__ = ["TABLE_CHECKS", "check_table"]

MakeTable = Callable[[TableConfig], Any]
LoadTable = Callable[[dict, dict], Any]

I64 = np.iinfo(np.int64)
EXTREME = np.array([0, -1, I64.min, I64.max, 1, I64.min + 1, I64.max - 1], np.int64)


def cfg(name: str = "t", **kw: Any) -> TableConfig:
    base: dict[str, Any] = {"dim": 4, "optimizer": Adagrad(lr=0.1), "initial_capacity": 64}
    base.update(kw)
    return TableConfig(name=name, **base)


def batches(seed: int, n: int = 6, size: int = 300, lo: int = -200, hi: int = 200) -> list:
    """(ids with duplicates, float32 grads, now) triples."""
    rng = np.random.default_rng(seed)
    out = []
    for step in range(n):
        ids = rng.integers(lo, hi, size)
        out.append((ids, rng.normal(size=(size, 4)).astype(np.float32), float(step)))
    return out


def same_rows(a: Any, b: Any, ids: np.ndarray) -> None:
    np.testing.assert_array_equal(a.lookup(ids), b.lookup(ids))


@contextmanager
def _raises(kind: type[BaseException], match: str | None = None) -> Iterator[None]:
    try:
        yield
    except kind as e:
        if match is not None and not re.search(match, str(e)):
            raise AssertionError(f"{type(e).__name__} {str(e)!r} does not match {match!r}") from e
    else:
        raise AssertionError(f"did not raise {kind.__name__}")


# ---- the checks: each `check(make, load)` -------------------------------------------------------------


def check_unknown_ids_read_zeros_and_are_not_inserted(make: MakeTable, load: LoadTable) -> None:
    t = make(cfg())
    q = np.array([5, -7, 123456789, 0], np.int64)
    np.testing.assert_array_equal(t.lookup(q), np.zeros((4, 4), np.float32))
    assert len(t) == 0 and not t.contains(q).any()
    t.apply_gradients(np.array([1, 2, 3]), np.ones((3, 4), np.float32), now=0.0)
    np.testing.assert_array_equal(t.lookup(q), np.zeros((4, 4), np.float32))
    assert len(t) == 3
    assert t.contains(np.array([1, 5, 2, 3])).tolist() == [True, False, True, True]
    assert t.lookup(np.empty(0, np.int64)).shape == (0, 4)


def check_apply_gradients_dedups_and_sums_like_one_table(make: MakeTable, load: LoadTable) -> None:
    for opt in (SGD(lr=0.05), Adagrad(lr=0.1)):
        _dedups_and_sums(make, opt)


def _dedups_and_sums(make: MakeTable, opt: OptimizerConfig) -> None:
    c = cfg(optimizer=opt)
    t, oracle = make(c), EmbeddingTable(c)
    for ids, g, now in batches(1):
        t.apply_gradients(ids, g, now=now)
        oracle.apply_gradients(ids, g, now=now)
    # pre-summed gradients of distinct ids with their counts (what SparseOptimizer sends)
    uniq, inv, counts = np.unique(np.array([9, 4, 9, 9, -3]), return_inverse=True, return_counts=True)
    g = np.zeros((uniq.shape[0], 4), np.float32)
    np.add.at(g, inv, np.arange(20, dtype=np.float32).reshape(5, 4))
    t.apply_gradients(uniq, g, now=7.0, counts=counts)
    oracle.apply_gradients(uniq, g, now=7.0, counts=counts)
    q = np.arange(-210, 210)
    same_rows(t, oracle, q)
    assert len(t) == len(oracle) == int(oracle.contains(q).sum())
    # one batch with a duplicated id equals one step with the summed gradient
    d1, d2 = make(cfg("d", optimizer=opt)), EmbeddingTable(cfg("d", optimizer=opt))
    d1.apply_gradients(np.array([8, 8, 8]), np.ones((3, 4), np.float32), now=0.0)
    d2.apply_gradients(np.array([8]), np.full((1, 4), 3.0, np.float32), now=0.0)
    same_rows(d1, d2, np.array([8]))


def check_wrong_gradient_shape_is_refused(make: MakeTable, load: LoadTable) -> None:
    t = make(cfg())
    with _raises(ConfigError, match="grads must have shape"):
        t.apply_gradients(np.array([1, 2]), np.zeros((2, 5), np.float32), now=0.0)
    assert len(t) == 0


def check_frequency_filter_admits_at_min_count(make: MakeTable, load: LoadTable) -> None:
    c = cfg(min_count=2)
    t, oracle = make(c), EmbeddingTable(c)
    once = np.arange(100, 110)
    for table in (t, oracle):
        table.apply_gradients(once, np.ones((10, 4), np.float32), now=0.0)
    assert len(t) == 0 and not t.lookup(once).any()
    for table in (t, oracle):
        table.apply_gradients(once, np.ones((10, 4), np.float32), now=1.0)
        # twice in one batch is enough too
        table.apply_gradients(np.array([7, 7, 50]), np.ones((3, 4), np.float32), now=1.0)
    assert len(t) == 11
    assert t.contains(np.array([7, 50])).tolist() == [True, False]
    same_rows(t, oracle, np.concatenate([once, [7, 50]]))


def check_ttl_expiry_counts_and_forgets(make: MakeTable, load: LoadTable) -> None:
    c = cfg(ttl_s=10.0)
    t = make(c)
    old, new = np.arange(0, 40), np.arange(1000, 1030)
    t.apply_gradients(old, np.ones((40, 4), np.float32), now=100.0)
    t.apply_gradients(new, np.ones((30, 4), np.float32), now=108.0)
    assert t.evict_expired(110.0) == 0
    assert t.evict_expired(115.0) == 40  # 115 - 100 > 10, 115 - 108 <= 10
    assert t.evictions == 40 and len(t) == 30
    assert not t.contains(old).any() and t.contains(new).all()
    assert not t.lookup(old).any()
    assert t.evict_expired(115.0) == 0
    assert t.evict_expired(119.0) == 30 and len(t) == 0


def check_take_touched_reports_updates_and_evictions(make: MakeTable, load: LoadTable) -> None:
    t = make(cfg(ttl_s=5.0))
    a, b = np.array([1, 2, 3, -4]), np.array([10, 11])
    t.apply_gradients(a, np.ones((4, 4), np.float32), now=0.0)
    first = t.take_touched()
    assert sorted(first.ids.tolist()) == sorted(a.tolist()) and first.evicted.shape == (0,)
    order = np.argsort(first.ids)
    np.testing.assert_array_equal(first.embeddings[order], t.lookup(np.sort(first.ids)))
    empty = t.take_touched()
    assert empty.ids.shape == (0,) and empty.embeddings.shape == (0, 4) and empty.evicted.shape == (0,)
    t.apply_gradients(b, np.ones((2, 4), np.float32), now=4.0)
    assert t.remove(np.array([2])) == 1
    assert t.evict_expired(6.0) == 3  # 1, 3, -4 (last seen 0)
    got = t.take_touched()
    assert sorted(got.ids.tolist()) == [10, 11]
    assert sorted(got.evicted.tolist()) == [-4, 1, 2, 3]


def check_assign_sets_rows_and_remove_deletes(make: MakeTable, load: LoadTable) -> None:
    t = make(cfg())
    ids = np.array([5, 6, 5, -9])
    emb = np.arange(16, dtype=np.float32).reshape(4, 4)
    t.assign(ids, emb, now=3.0)
    assert len(t) == 3
    np.testing.assert_array_equal(t.lookup(np.array([5, 6, -9])), emb[[2, 1, 3]])  # last 5 wins
    assert sorted(t.take_touched().ids.tolist()) == [-9, 5, 6]
    assert t.remove(np.array([6, 6, 77])) == 1
    assert len(t) == 2 and not t.contains(np.array([6])).any()
    np.testing.assert_array_equal(t.lookup(np.array([6])), np.zeros((1, 4), np.float32))
    with _raises(ConfigError):
        t.assign(np.array([1]), np.zeros((1, 3), np.float32))


def check_state_round_trip_is_exact(make: MakeTable, load: LoadTable) -> None:
    c = cfg(min_count=2, ttl_s=100.0)
    t = make(c)
    for ids, g, now in batches(2):
        t.apply_gradients(ids, g, now=now)
    t.remove(np.array([0, 1, 2]))
    meta, arrays = t.state()
    back = load(meta, arrays)
    q = np.arange(-210, 210)
    same_rows(back, t, q)
    assert len(back) == len(t) and back.evictions == t.evictions
    back.check_invariants()
    # the pending touched/evicted ids and the filter's counts travel with the state
    x, y = t.take_touched(), back.take_touched()
    assert sorted(x.ids.tolist()) == sorted(y.ids.tolist())
    assert sorted(x.evicted.tolist()) == sorted(y.evicted.tolist())
    for table in (t, back):
        table.apply_gradients(np.array([500, 501, 501]), np.ones((3, 4), np.float32), now=9.0)
        table.apply_gradients(np.array([500]), np.ones((1, 4), np.float32), now=9.0)
    same_rows(back, t, np.array([500, 501]))
    assert back.contains(np.array([500, 501])).tolist() == [True, True]


def check_len_and_nbytes_are_positive(make: MakeTable, load: LoadTable) -> None:
    t = make(cfg())
    assert len(t) == 0 and t.nbytes() > 0
    t.apply_gradients(np.arange(500), np.ones((500, 4), np.float32), now=0.0)
    assert len(t) == 500 and t.nbytes() >= 500 * 8 * 4
    ids, emb = t.export()
    assert sorted(ids.tolist()) == list(range(500)) and emb.shape == (500, 4)
    np.testing.assert_array_equal(emb[np.argsort(ids)], t.lookup(np.arange(500)))
    t.check_invariants()


def check_extreme_ids_are_ordinary_ids(make: MakeTable, load: LoadTable) -> None:
    c = cfg(optimizer=Adagrad(lr=0.5))
    t, oracle = make(c), EmbeddingTable(c)
    g = np.random.default_rng(3).normal(size=(EXTREME.shape[0], 4)).astype(np.float32)
    for table in (t, oracle):
        table.apply_gradients(EXTREME, g, now=0.0)
        table.apply_gradients(EXTREME[::-1].copy(), g, now=1.0)
    same_rows(t, oracle, EXTREME)
    assert t.contains(EXTREME).all() and len(t) == EXTREME.shape[0]
    assert (np.abs(t.lookup(EXTREME)).sum(axis=1) > 0).all()
    t.check_invariants()
    back = load(*t.state())
    same_rows(back, t, EXTREME)
    assert t.remove(np.array([I64.min, I64.max])) == 2
    assert t.contains(EXTREME).tolist() == [True, True, False, False, True, True, True]


TABLE_CHECKS: tuple[Callable[[MakeTable, LoadTable], None], ...] = (
    check_unknown_ids_read_zeros_and_are_not_inserted,
    check_apply_gradients_dedups_and_sums_like_one_table,
    check_wrong_gradient_shape_is_refused,
    check_frequency_filter_admits_at_min_count,
    check_ttl_expiry_counts_and_forgets,
    check_take_touched_reports_updates_and_evictions,
    check_assign_sets_rows_and_remove_deletes,
    check_state_round_trip_is_exact,
    check_len_and_nbytes_are_positive,
    check_extreme_ids_are_ordinary_ids,
)


def check_table(
    make: MakeTable, *, load: LoadTable | None = None, oracle: bool = True, seed: int = 0
) -> list[str]:
    """Run every check of `TABLE_CHECKS` (and, with `oracle`, `check_table_oracle`) on tables
    made by `make(config)`; returns the names of the checks run. Raises AssertionError prefixed
    with the name of the first check that failed."""
    if not __debug__:
        msg = "freshrec.checks uses assert: run it without python -O"
        raise ConfigError(msg)
    made: list[Any] = []

    def keep(config: TableConfig) -> Any:
        made.append(make(config))
        return made[-1]

    def rebuild(meta: dict, arrays: dict) -> Any:
        t = (load or type(made[-1]).from_state)(meta, arrays)
        made.append(t)
        return t

    ran = []
    try:
        for check in TABLE_CHECKS:
            try:
                check(keep, rebuild)
            except AssertionError as e:
                raise AssertionError(f"{check.__name__}: {e}") from e
            ran.append(check.__name__)
        if oracle:
            from freshrec.checks.oracle import check_table_oracle

            check_table_oracle(keep, load=lambda t: rebuild(*t.state()), seed=seed)
            ran.append("check_table_oracle")
    finally:
        for t in made:
            close = getattr(t, "close", None)  # remote tables hold servers' memory
            if close is not None:
                close()
    return ran
