"""PyTorch embedding layers: a collisionless one backed by an `EmbeddingTable`, and a hashed baseline.

`CollisionlessEmbedding` gives every id its own row in a `freshrec.table.EmbeddingTable`; the rows live
outside torch (numpy, numba kernels) and train with the table's own per-row sparse optimizer.
`HashedEmbedding` is the classical fixed-size table that ids are hashed into (distinct ids may share a
row); it has the same forward API and trains with a torch optimizer.

Forward API (both layers), like `nn.EmbeddingBag`:

    single-valued: ids (B,)                      -> (B, dim)
    multi-valued:  ids (N,) flat, offsets (B,)   -> (B, dim), bag b = ids[offsets[b]:offsets[b+1]],
                   pooled by mode "sum" or "mean"; an empty bag reads as zeros.

    ids = [7, 3, 7, 9], offsets = [0, 1, 3]  ->  bags [7], [3, 7], [9]

How the collisionless layer trains. The forward pass deduplicates the batch's ids,

    uniq, inv, counts = unique_inverse(ids)              # uniq (U,), inv (N,): uniq[inv] == ids
    w = torch.from_numpy(table.lookup(uniq))             # (U, dim) leaf tensor, requires_grad
    out = w[inv]   or   F.embedding_bag(inv, w, offsets, mode)

so after `loss.backward()`, `w.grad` (U, dim) already holds each unique id's gradient summed over the
batch. `SparseOptimizer.step(now)` pushes every pending (uniq, w.grad) into
`table.apply_gradients(uniq, grad, now=now, counts=counts)` (counts: occurrences in the batch), which
admits new ids (frequency filter), creates their rows, applies the table's optimizer and stamps
last-seen time `now` (data time, seconds). Unknown ids read as zeros and a forward pass never
inserts, so evaluation leaves the tables unchanged; a new id's first gradient is therefore taken with
its row read as zeros, then applied on top of its freshly initialized row. A training step:

    dense_opt = torch.optim.Adam(model.dense_parameters(), lr=1e-3)  # everything but the tables
    sparse_opt = SparseOptimizer(model)                              # every CollisionlessEmbedding in it
    logit = model(batch_sparse, batch_dense)
    loss = F.binary_cross_entropy_with_logits(logit, label)
    loss.backward()
    dense_opt.step(); sparse_opt.step(now=batch_ts); dense_opt.zero_grad()

The hashed layer keeps its rows in an `nn.Parameter` (num_buckets, dim) with sparse gradients
(`sparse=True` by default), so `torch.optim.Adagrad` / `SparseAdam` update only the rows a batch touched,
exactly as the table's per-row optimizer does; with Adagrad at the same learning rate and the same
initializer scale on both sides, the two layers differ only in collisions, in what an id never seen in
training reads (zeros in the table; its bucket's row, random or trained by another id, when hashed), and
in the first-gradient detail above. With an all-zero initializer and no collisions they train to the
same numbers (tests/test_embedding_layer.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from torch import nn

from freshrec.errors import ConfigError
from freshrec.table import EmbeddingTable, TableConfig

__all__ = [
    "CollisionlessEmbedding",
    "HashedEmbedding",
    "SparseOptimizer",
    "apply_gradients_grouped",
    "collision_rate",
    "embed_slots",
    "hash_ids",
    "ids_numpy",
    "lookup_grouped",
    "unique_inverse",
]

Mode = Literal["sum", "mean"]
HashKind = Literal["mix", "modulo", "md5"]


def ids_numpy(ids: torch.Tensor | np.ndarray) -> np.ndarray:
    """ids as a C-contiguous int64 numpy array (a view when already int64 on CPU)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach()
        if ids.device.type != "cpu":
            ids = ids.cpu()
        a = ids.numpy()
    else:
        a = np.asarray(ids)
    if a.dtype != np.int64:
        a = a.astype(np.int64)
    return np.ascontiguousarray(a.reshape(-1))


@njit(nogil=True, cache=True)
def _unique_kernel(ids, uniq, inv, counts):  # pragma: no cover - compiled
    n = ids.shape[0]
    bits = 1
    while (1 << bits) < 2 * n:
        bits += 1
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    slot_of = np.full(1 << bits, -1, dtype=np.int64)  # open addressing: slot -> index into uniq
    m = 0
    for i in range(n):
        x = ids[i]
        h = np.int64((np.uint64(x) * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while True:
            j = slot_of[h]
            if j < 0:
                slot_of[h] = m
                uniq[m] = x
                counts[m] = 1
                inv[i] = m
                m += 1
                break
            if uniq[j] == x:
                counts[j] += 1
                inv[i] = j
                break
            h = (h + 1) & mask
    return m


def unique_inverse(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uniq, inv, counts) of int64 `ids` (N,): distinct ids in order of first occurrence (U,),
    `uniq[inv] == ids` (N,), and occurrences of each distinct id (U,). Like `np.unique(...,
    return_inverse=True, return_counts=True)` but unsorted, by hashing: O(N), ~10x faster."""
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    n = ids.shape[0]
    uniq = np.empty(n, dtype=np.int64)
    inv = np.empty(n, dtype=np.int64)
    counts = np.empty(n, dtype=np.int64)
    m = _unique_kernel(ids, uniq, inv, counts) if n else 0
    return uniq[:m], inv, counts[:m]


def _check_mode(mode: str) -> None:
    if mode not in ("sum", "mean"):
        msg = f"pooling mode must be 'sum' or 'mean', got {mode!r}"
        raise ConfigError(msg)


def _group_call(tables: Sequence[Any], name: str) -> Any:
    """The class-level grouped call `name` of the tables, when there are several and they share
    a class that offers one; else None."""
    if len(tables) < 2 or any(type(t) is not type(tables[0]) for t in tables):
        return None
    return getattr(type(tables[0]), name, None)


def lookup_grouped(tables: Sequence[Any], ids: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`[t.lookup(x) for t, x in zip(tables, ids)]`, in one grouped call when the tables' class
    offers one (`lookup_group`: remote shard servers answer all tables of a batch in one round
    trip per server, see `freshrec.ps.ray_ps.lookup_many`)."""
    group = _group_call(tables, "lookup_group")
    if group is not None:
        return group(tables, ids)
    return [t.lookup(x) for t, x in zip(tables, ids, strict=True)]


def apply_gradients_grouped(
    tables: Sequence[Any],
    ids: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    *,
    now: float,
    counts: Sequence[np.ndarray],
) -> None:
    """`t.apply_gradients(x, g, now=now, counts=c)` per table, grouped as in `lookup_grouped`."""
    group = _group_call(tables, "apply_gradients_group")
    if group is not None:
        group(tables, ids, grads, now=now, counts=counts)
        return
    for t, x, g, c in zip(tables, ids, grads, counts, strict=True):
        t.apply_gradients(x, g, now=now, counts=c)


class PendingRows(NamedTuple):
    """The rows one training forward read from a table: `leaf[start:stop]` (U, dim) are the rows of
    the distinct ids `uniq` (U,), which occurred `counts` (U,) times in the batch. `leaf` is the
    leaf tensor whose gradient the sparse step reads: the layer's own, or one shared by several
    layers (`embed_slots`), each owning a range of its rows."""

    uniq: np.ndarray
    counts: np.ndarray
    leaf: torch.Tensor
    start: int
    stop: int


class CollisionlessEmbedding(nn.Module):
    """One feature slot's embeddings, one row per id, in a collisionless `EmbeddingTable`.

    The table (exposed as `.table`) holds the rows and their optimizer state; the module has no
    torch parameters. Rows train only through a `SparseOptimizer` holding this module.
    Pass `table=` to wrap an existing table (e.g. one loaded from a snapshot) instead of a new one.
    """

    def __init__(self, config: TableConfig, *, table: EmbeddingTable | None = None) -> None:
        super().__init__()
        self.config = config
        self.table = EmbeddingTable(config) if table is None else table
        self.dim = config.dim
        # the rows each training forward since the last sparse step read
        self._pending: list[PendingRows] = []

    def forward(
        self,
        ids: torch.Tensor,
        offsets: torch.Tensor | None = None,
        mode: Mode = "sum",
        *,
        looked_up: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> torch.Tensor:
        """Rows of `ids` (B,) -> (B, dim), or pooled bags of flat `ids` split at `offsets` (B,).

        `looked_up`: (`unique_inverse(ids)`, the table's rows of its unique ids), when the caller
        has read them already (`SlotModel.embed` reads all slots' tables in one grouped call)."""
        if looked_up is None:
            uniq, inv, counts = unique_inverse(ids_numpy(ids))  # (U,), (N,), (U,)
            rows = self.table.lookup(uniq)
        else:
            (uniq, inv, counts), rows = looked_up
        w = torch.from_numpy(rows)  # (U, dim) float32
        if self.training and torch.is_grad_enabled():
            w.requires_grad_(True)
            self._pending.append(PendingRows(uniq, counts, w, 0, int(rows.shape[0])))
        device = ids.device if isinstance(ids, torch.Tensor) else torch.device("cpu")
        if device.type != "cpu":
            w = w.to(device)
        inv_t = torch.from_numpy(inv.reshape(-1)).to(device)
        if offsets is None:
            return F.embedding(inv_t, w)  # (B, dim)
        _check_mode(mode)
        return F.embedding_bag(inv_t, w, offsets.to(device=device, dtype=torch.int64), mode=mode)

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, dim={self.dim}, rows={len(self.table)}"


SlotInput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _fusable(layer: nn.Module, x: Any) -> bool:
    """A single-valued slot on CPU read through a collisionless layer: its rows can share one leaf."""
    if not isinstance(layer, CollisionlessEmbedding) or isinstance(x, tuple):
        return False
    return not isinstance(x, torch.Tensor) or (x.device.type == "cpu" and x.dim() == 1)


def embed_slots(
    layers: Sequence[nn.Module],
    inputs: Sequence[SlotInput],
    modes: Sequence[Mode],
    *,
    fused: bool = True,
) -> torch.Tensor:
    """Every slot's (pooled) embedding, stacked: (B, F, width), slot f read by `layers[f]` from
    `inputs[f]` (ids (B,), or (flat ids (N,), offsets (B,)) pooled by `modes[f]`).

    Equal to `torch.stack([layer(x) or layer(ids, offsets, mode=m) ...], dim=1)`, in outputs and in
    what the sparse step applies, bit for bit. The collisionless tables of all slots are read in
    one grouped call (`lookup_grouped`: remote shards answer in one round trip per server). With
    `fused`, the single-valued collisionless slots of the layers' common width (S of them) are
    read by one embedding op over one leaf tensor holding all their unique rows:

        rows  = concat(rows of slot 0 (U0, W), rows of slot 1 (U1, W), ...)   # (U, W) leaf
        index = inv_s + start_s per slot, as columns                          # (B, S)
        X     = F.embedding(index, rows)                                      # (B, S, W)

    (slot s's rows are rows[start_s : start_s + U_s]); its backward sums each row's gradient
    over the batch in the order the per-slot ops do, and each layer's sparse step reads its own
    row range of the one gradient (a view). Multi-valued slots are embedded one by one.
    """
    names = range(len(layers))
    coll = [f for f in names if isinstance(layers[f], CollisionlessEmbedding)]
    flat = [x[0] if isinstance(x, tuple) else x for x in inputs]
    uniq = [unique_inverse(ids_numpy(flat[f])) for f in coll]
    rows = lookup_grouped([layers[f].table for f in coll], [u[0] for u in uniq])  # type: ignore[union-attr]
    looked_up = dict(zip(coll, zip(uniq, rows, strict=True), strict=True))
    group: list[int] = []
    if fused:
        cand = [f for f in coll if _fusable(layers[f], inputs[f])]
        if cand:
            first = layers[cand[0]]
            b = looked_up[cand[0]][0][1].shape[0]
            group = [
                f
                for f in cand
                if layers[f].dim == first.dim
                and layers[f].training == first.training
                and looked_up[f][0][1].shape[0] == b
            ]
    cols: dict[int, torch.Tensor] = {}
    for f in names:
        if f in group:
            continue
        x, layer = inputs[f], layers[f]
        kw = {"looked_up": looked_up[f]} if f in looked_up else {}
        if isinstance(x, tuple):
            cols[f] = layer(x[0], x[1], mode=modes[f], **kw)
        else:
            cols[f] = layer(x, **kw)
    if not group:
        return torch.stack([cols[f] for f in names], dim=1)  # (B, F, width)
    X = _embed_fused([layers[f] for f in group], [looked_up[f] for f in group])  # (B, S, W)
    if len(group) == len(layers):
        return X
    rest = [f for f in names if f not in group]
    X = torch.cat([X, torch.stack([cols[f] for f in rest], dim=1)], dim=1)  # (B, F, W): group, rest
    where = np.argsort(np.array(group + rest))  # column of each slot f in X
    return X.index_select(1, torch.from_numpy(where))  # (B, F, W) in slot order


def _embed_fused(
    layers: Sequence[Any], looked_up: Sequence[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]
) -> torch.Tensor:
    """(B, S, W): the S single-valued collisionless slots read from one leaf (`embed_slots`)."""
    sizes = [int(r.shape[0]) for _, r in looked_up]
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    B, S = looked_up[0][0][1].shape[0], len(layers)
    index = np.empty((B, S), dtype=np.int64)
    for s, ((_, inv, _), _) in enumerate(looked_up):
        np.add(inv, starts[s], out=index[:, s])
    w = torch.from_numpy(np.concatenate([r for _, r in looked_up]))  # (U, W) float32
    if layers[0].training and torch.is_grad_enabled():
        w.requires_grad_(True)
        for s, (layer, ((uq, _, counts), _)) in enumerate(zip(layers, looked_up, strict=True)):
            layer._pending.append(PendingRows(uq, counts, w, starts[s], starts[s + 1]))
    return _GatherRows.apply(w, torch.from_numpy(index))  # (B, S, W)


@njit(nogil=True, cache=True)
def _scatter_add_rows(index, grad, out):  # pragma: no cover - compiled
    """out[index[i]] += grad[i] for i in order: index (N,), grad (N, W), out (U, W)."""
    width = grad.shape[1]
    for i in range(index.shape[0]):
        r = index[i]
        for d in range(width):
            out[r, d] += grad[i, d]


class _GatherRows(torch.autograd.Function):
    """`F.embedding(index, w)` on CPU whose backward sums the rows' gradients in one compiled pass
    (the same additions in the same order as torch's embedding backward, without its per-row
    dispatch): w (U, W) float32, index int64 (...) -> (..., W)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = w.shape[0]
        return F.embedding(index, w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        g = grad.detach().contiguous().to(torch.float32)
        width = g.shape[-1]
        out = np.zeros((ctx.rows, width), dtype=np.float32)
        _scatter_add_rows(index.numpy().reshape(-1), g.numpy().reshape(-1, width), out)
        return torch.from_numpy(out).to(grad.dtype), None


class SparseOptimizer:
    """Steps the tables of every `CollisionlessEmbedding` in one or more module trees.

    `step(now)` applies the gradients of all training forwards since the last step or `zero_grad()`
    through each table's own optimizer, with data time `now` (seconds) as the rows' last-seen time:
    one update per table and step (a layer called several times has its gradients summed per id
    first, as torch sums a shared parameter's gradients); a forward whose output got no gradient is
    skipped. `zero_grad()` drops pending gradients.
    """

    def __init__(self, modules: nn.Module | Iterable[nn.Module]) -> None:
        roots = [modules] if isinstance(modules, nn.Module) else list(modules)
        found: dict[int, CollisionlessEmbedding] = {}
        for root in roots:
            for m in root.modules():
                if isinstance(m, CollisionlessEmbedding):
                    found[id(m)] = m
        self.embeddings: list[CollisionlessEmbedding] = list(found.values())

    def step(self, now: float) -> None:
        tables, ids, grads, counts = [], [], [], []
        for emb in self.embeddings:
            pending, emb._pending = emb._pending, []
            parts = [
                (p.uniq, p.counts, p.leaf.grad[p.start : p.stop].numpy())  # a view, no copy
                for p in pending
                if p.leaf.grad is not None
            ]
            if not parts:
                continue
            if len(parts) == 1:
                uniq, counts_, grad = parts[0]
            else:  # the layer ran more than once: one optimizer step with the summed gradients
                cat_ids = np.concatenate([p[0] for p in parts])
                uniq, inv, _ = unique_inverse(cat_ids)
                counts_ = np.bincount(inv, weights=np.concatenate([p[1] for p in parts]), minlength=len(uniq))
                counts_ = counts_.astype(np.int64)
                grad = np.zeros((len(uniq), emb.table.dim), dtype=np.float32)
                np.add.at(grad, inv, np.concatenate([p[2] for p in parts]))
            # ids are distinct and their gradients summed: pass the occurrence counts (filter, LFU)
            tables.append(emb.table)
            ids.append(uniq)
            grads.append(np.ascontiguousarray(grad, dtype=np.float32))
            counts.append(counts_)
        if tables:
            apply_gradients_grouped(tables, ids, grads, now=float(now), counts=counts)

    def zero_grad(self) -> None:
        for emb in self.embeddings:
            emb._pending = []

    @property
    def tables(self) -> dict[str, EmbeddingTable]:
        """The tables stepped, by table name."""
        return {emb.config.name: emb.table for emb in self.embeddings}


# ---------------------------------------------------------------------------------------------------
# hashing baseline

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray, seed: int) -> np.ndarray:
    """The splitmix64 finalizer of (x + seed * golden), uint64 -> uint64, vectorised."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _md5_u64(ids: np.ndarray, seed: int) -> np.ndarray:
    """First 8 bytes (little endian) of md5(seed bytes + id as 8 little-endian bytes), per id."""
    uniq, inv = np.unique(ids, return_inverse=True)
    prefix = int(seed).to_bytes(8, "little", signed=True)
    raw = uniq.astype("<i8").tobytes()
    out = np.empty(uniq.shape[0], dtype=np.uint64)
    for i in range(uniq.shape[0]):
        d = hashlib.md5(prefix + raw[8 * i : 8 * i + 8], usedforsecurity=False).digest()
        out[i] = int.from_bytes(d[:8], "little")
    return out[inv.reshape(-1)]


def hash_ids(ids: np.ndarray, num_buckets: int, kind: HashKind = "mix", seed: int = 0) -> np.ndarray:
    """Bucket (int64 in [0, num_buckets)) of each id.

    kind: "mix" splitmix64 (fast, well spread), "modulo" id mod num_buckets (what many systems do; on
    small consecutive ids it spreads perfectly, on structured ids it can collide badly), "md5" the first
    8 bytes of md5 (slow, per distinct id; for comparison with systems that hash strings).
    """
    ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    if num_buckets < 1:
        msg = f"num_buckets must be >= 1, got {num_buckets}"
        raise ConfigError(msg)
    if kind == "modulo":
        return np.mod(ids, num_buckets)
    if kind == "mix":
        h = _splitmix64(ids.view(np.uint64), seed)
    elif kind == "md5":
        h = _md5_u64(ids, seed)
    else:
        msg = f"unknown hash {kind!r}; expected 'mix', 'modulo' or 'md5'"
        raise ConfigError(msg)
    return (h % np.uint64(num_buckets)).astype(np.int64)


def collision_rate(ids: np.ndarray, num_buckets: int, kind: HashKind = "mix", seed: int = 0) -> float:
    """Fraction of the DISTINCT ids in `ids` that share their bucket with at least one other id."""
    uniq = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
    if uniq.shape[0] == 0:
        return 0.0
    b = hash_ids(uniq, num_buckets, kind, seed)
    _, inv, counts = np.unique(b, return_inverse=True, return_counts=True)
    return float((counts[inv.reshape(-1)] > 1).mean())


class HashedEmbedding(nn.Module):
    """A fixed-size table of `num_buckets` rows that ids are hashed into; the collision baseline.

    Same forward API as `CollisionlessEmbedding`. Rows are an `nn.Parameter` `weight` (num_buckets, dim)
    drawn from N(0, init_scale) (or U(-s, s) / zeros, as the table `Initializer` kinds), seeded by
    `seed`. With `sparse=True` its gradient is a sparse tensor holding only the touched rows: train it
    with `torch.optim.Adagrad` or `torch.optim.SparseAdam`, not with dense-only optimizers.
    """

    def __init__(
        self,
        num_buckets: int,
        dim: int,
        *,
        hash: HashKind = "mix",
        hash_seed: int = 0,
        init: Literal["normal", "uniform", "zeros"] = "normal",
        init_scale: float = 0.01,
        seed: int = 0,
        sparse: bool = True,
        name: str = "",
    ) -> None:
        super().__init__()
        if num_buckets < 1 or dim < 1:
            msg = f"num_buckets and dim must be >= 1, got {num_buckets}, {dim}"
            raise ConfigError(msg)
        self.num_buckets = int(num_buckets)
        self.dim = int(dim)
        self.hash = hash
        self.hash_seed = int(hash_seed)
        self.sparse = bool(sparse)
        self.name = name
        g = torch.Generator().manual_seed(int(seed))
        w = torch.empty(self.num_buckets, self.dim)
        if init == "normal":
            w.normal_(0.0, init_scale, generator=g)
        elif init == "uniform":
            w.uniform_(-init_scale, init_scale, generator=g)
        else:
            w.zero_()
        self.weight = nn.Parameter(w)

    def describe(self) -> dict[str, Any]:
        """Plain data that rebuilds this layer's shape and hashing (`from_description`): what
        snapshots record for a hashed slot (the rows themselves are dense weights)."""
        return {
            "kind": "hashed",
            "num_buckets": self.num_buckets,
            "dim": self.dim,
            "hash": self.hash,
            "hash_seed": self.hash_seed,
        }

    @classmethod
    def from_description(cls, d: Mapping[str, Any], *, name: str = "") -> HashedEmbedding:
        """A layer of `describe()`'s shape and hashing, rows at zeros (load the weights after)."""
        return cls(
            int(d["num_buckets"]),
            int(d["dim"]),
            hash=d["hash"],
            hash_seed=int(d["hash_seed"]),
            init="zeros",
            name=name,
        )

    def buckets(self, ids: torch.Tensor | np.ndarray) -> np.ndarray:
        """Bucket of each id, int64 (N,)."""
        return hash_ids(ids_numpy(ids), self.num_buckets, self.hash, self.hash_seed)

    def collision_rate(self, ids: torch.Tensor | np.ndarray) -> float:
        """Fraction of the distinct `ids` that share a bucket with another id in `ids`."""
        return collision_rate(ids_numpy(ids), self.num_buckets, self.hash, self.hash_seed)

    def forward(
        self, ids: torch.Tensor, offsets: torch.Tensor | None = None, mode: Mode = "sum"
    ) -> torch.Tensor:
        """Rows of the buckets of `ids` (B,) -> (B, dim), or pooled bags split at `offsets` (B,)."""
        b = torch.from_numpy(self.buckets(ids)).to(self.weight.device)
        if offsets is None:
            return F.embedding(b, self.weight, sparse=self.sparse)  # (B, dim)
        _check_mode(mode)
        off = offsets.to(device=self.weight.device, dtype=torch.int64)
        return F.embedding_bag(b, self.weight, off, mode=mode, sparse=self.sparse)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, buckets={self.num_buckets}, dim={self.dim}, hash={self.hash!r}"
