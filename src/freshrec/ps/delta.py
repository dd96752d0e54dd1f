"""Sync payloads: what travels from the training PS to serving replicas, as plain data.

A `Delta` carries the rows of one table touched since the previous sync (ids + embeddings,
no optimizer state) and the ids evicted since (serving deletes them). A `DenseUpdate`
carries the dense weights. Both encode to self-describing bytes (no pickle):

    frame = b"FRD1" | u32 header_len | header (JSON) | payload (raw little-endian arrays)

    Delta header:  {"type": "delta", "table": "user_id", "version": 12, "ts": 1507..., "n": 3,
                    "dim": 16, "dtype": "<f4", "n_deleted": 1}
    payload:       ids int64 (n) | embeddings dtype (n, dim) | deleted int64 (n_deleted)

So a delta of n rows of dim d in float32 is n * (8 + 4 d) bytes plus the deleted ids and a
header of about 100 bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from freshrec.errors import DataError, EventError

__all__ = ["Delta", "DenseUpdate", "compact", "decode", "encode"]

_MAGIC = b"FRD1"
_MAX_HEADER = 1 << 20
_DTYPES = {"<f4": np.float32, "<f2": np.float16}


@dataclass(frozen=True)
class Delta:
    """Rows of one table changed since the previous sync, and ids deleted since.

    ids: int64 (n,); embeddings: float32 or float16 (n, dim); deleted: int64 (m,), none of which
    is in ids; version: the publisher's sync counter; ts: data time the rows reflect.
    """

    table: str
    version: int
    ids: np.ndarray
    embeddings: np.ndarray
    deleted: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    ts: float = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.embeddings.nbytes + self.deleted.nbytes)


@dataclass(frozen=True)
class DenseUpdate:
    """The dense weights of the model (name -> array), published on a slower cadence."""

    version: int
    tensors: Mapping[str, np.ndarray]
    ts: float = 0.0


def _frame(header: dict, parts: Iterable[np.ndarray]) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    return b"".join(
        [_MAGIC, struct.pack("<I", len(h)), h, *(np.ascontiguousarray(p).tobytes() for p in parts)]
    )


def encode(msg: Delta | DenseUpdate) -> bytes:
    """Bytes for the parameter log."""
    if isinstance(msg, Delta):
        emb = msg.embeddings
        dtype = "<f2" if emb.dtype == np.float16 else "<f4"
        emb = emb.astype(_DTYPES[dtype], copy=False)
        n = int(msg.ids.shape[0])
        dim = int(emb.shape[1]) if emb.ndim == 2 else 0
        header = {
            "type": "delta",
            "table": msg.table,
            "version": int(msg.version),
            "ts": float(msg.ts),
            "n": n,
            "dim": dim,
            "dtype": dtype,
            "n_deleted": int(msg.deleted.shape[0]),
        }
        return _frame(header, [msg.ids.astype("<i8", copy=False), emb, msg.deleted.astype("<i8", copy=False)])
    names = sorted(msg.tensors)
    arrays = [np.ascontiguousarray(msg.tensors[k]) for k in names]
    for k, a in zip(names, arrays, strict=True):
        if a.dtype.kind not in "fiub":
            msg_ = f"dense tensor {k!r} has unsupported dtype {a.dtype}"
            raise EventError(msg_)
    header = {
        "type": "dense",
        "version": int(msg.version),
        "ts": float(msg.ts),
        "tensors": [[k, a.dtype.str, list(a.shape)] for k, a in zip(names, arrays, strict=True)],
    }
    return _frame(header, arrays)


def decode(buf: bytes) -> Delta | DenseUpdate:
    """Inverse of `encode`; raises EventError with the reason on malformed bytes."""
    mv = memoryview(buf)
    if len(mv) < 8 or bytes(mv[:4]) != _MAGIC:
        msg = "not a freshrec parameter frame (bad magic)"
        raise EventError(msg)
    (hlen,) = struct.unpack("<I", mv[4:8])
    if hlen > _MAX_HEADER or 8 + hlen > len(mv):
        msg = f"parameter frame header length {hlen} exceeds the frame ({len(mv)} bytes)"
        raise EventError(msg)
    try:
        header = json.loads(bytes(mv[8 : 8 + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = f"parameter frame header is not JSON: {e}"
        raise EventError(msg) from e
    body = mv[8 + hlen :]
    try:
        if header["type"] == "delta":
            n, dim, nd = int(header["n"]), int(header["dim"]), int(header["n_deleted"])
            dt = np.dtype(_DTYPES[header["dtype"]])
            sizes = [n * 8, n * dim * dt.itemsize, nd * 8]
            if sum(sizes) != len(body) or min(n, dim, nd) < 0:
                msg = f"delta frame body is {len(body)} bytes, header says {sum(sizes)}"
                raise EventError(msg)
            ids = np.frombuffer(body, "<i8", n, 0).astype(np.int64)
            emb = np.frombuffer(body, dt, n * dim, sizes[0]).reshape(n, dim).copy()
            deleted = np.frombuffer(body, "<i8", nd, sizes[0] + sizes[1]).astype(np.int64)
            return Delta(
                table=str(header["table"]),
                version=int(header["version"]),
                ids=ids,
                embeddings=emb,
                deleted=deleted,
                ts=float(header["ts"]),
            )
        if header["type"] == "dense":
            tensors = {}
            off = 0
            for name, dts, shape in header["tensors"]:
                dt = np.dtype(dts)
                if dt.kind not in "fiub":
                    msg = f"dense tensor {name!r} has unsupported dtype {dt}"
                    raise EventError(msg)
                count = int(np.prod(shape)) if shape else 1
                size = count * dt.itemsize
                if off + size > len(body):
                    msg = f"dense frame truncated at tensor {name!r}"
                    raise EventError(msg)
                tensors[str(name)] = np.frombuffer(body, dt, count, off).reshape(shape).copy()
                off += size
            if off != len(body):
                msg = f"dense frame has {len(body) - off} trailing bytes"
                raise EventError(msg)
            return DenseUpdate(version=int(header["version"]), tensors=tensors, ts=float(header["ts"]))
    except (KeyError, TypeError, ValueError) as e:
        msg = f"malformed parameter frame header: {e!r}"
        raise EventError(msg) from e
    msg = f"unknown parameter frame type {header.get('type')!r}"
    raise EventError(msg)


def compact(deltas: Iterable[Delta]) -> Delta:
    """Fold deltas of one table, oldest first, into one with the same effect. Pure.

    A later upsert wins over an earlier one; a delete after an upsert removes it, an upsert
    after a delete revives the id.
    """
    deltas = list(deltas)
    if not deltas:
        msg = "compact() needs at least one delta"
        raise DataError(msg)
    table = deltas[0].table
    if any(d.table != table for d in deltas):
        msg = "compact() takes deltas of one table"
        raise DataError(msg)
    # Walk newest first: the first time an id is seen decides it.
    decided: set[int] = set()
    up_ids: list[np.ndarray] = []
    up_emb: list[np.ndarray] = []
    dels: list[np.ndarray] = []
    for d in reversed(deltas):
        dd = d.deleted[~np.isin(d.deleted, np.fromiter(decided, np.int64, len(decided)))]
        keep = ~np.isin(d.ids, np.fromiter(decided, np.int64, len(decided)))
        up_ids.append(d.ids[keep])
        up_emb.append(d.embeddings[keep])
        dels.append(dd)
        decided.update(d.ids.tolist())
        decided.update(d.deleted.tolist())
    ids = np.concatenate(up_ids[::-1])
    emb = np.concatenate(up_emb[::-1]) if ids.shape[0] else deltas[-1].embeddings[:0]
    deleted = np.unique(np.concatenate(dels))
    deleted = deleted[~np.isin(deleted, ids)]
    return Delta(
        table=table, version=deltas[-1].version, ids=ids, embeddings=emb, deleted=deleted, ts=deltas[-1].ts
    )
