"""The local log's on-disk record format and the numba kernels that walk, check and write it.

A segment file is a run of records, each framed as (little-endian)

    [u32 length][u32 crc32][u16 keylen][key][value]

where length = 2 + len(key) + len(value) and the crc32 (zlib) covers those `length` bytes;
keylen 0xFFFF stands for "no key" (so a key holds at most 65534 bytes). Worked example:
key b"u1", value b"hi" -> 06000000 | crc32(b"\\x02\\x00u1hi") | 0200 | 7531 | 6869 (14 bytes).

A walk stops at the first byte that does not start a complete, valid record: the end of the
valid records, which `SegmentIndex` remembers with a sparse offset -> byte position index.

What may follow the valid records, and what the log does about it, is `freshrec.stream.local_segments`.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

from freshrec.errors import LogError

__all__ = [
    "HEADER_BYTES",
    "INDEX_STRIDE",
    "MAX_KEY_BYTES",
    "MAX_RECORD_BYTES",
    "NO_KEY",
    "STATUS_BAD",
    "STATUS_END",
    "STATUS_LIMIT",
    "SegmentIndex",
    "encode",
    "encode_many",
    "frame_ends",
    "frames_chain",
    "fsync_dir",
    "fsync_or_error",
    "scan",
    "seal_frame",
    "seal_frames",
    "segment_bases",
    "segment_path",
    "walk",
    "write_json_atomic",
]

HEADER_BYTES = 10  # u32 length + u32 crc + u16 keylen
NO_KEY = 0xFFFF
MAX_KEY_BYTES = NO_KEY - 1
MAX_RECORD_BYTES = 1 << 30
STATUS_END, STATUS_LIMIT, STATUS_BAD = 0, 1, 2
_SCAN_CHUNK = 8 << 20
INDEX_STRIDE = 1024  # a sparse index notes every 1024th record's position
_LEN_CRC = struct.Struct("<II")
_U16 = struct.Struct("<H")
_NO_KEY_BYTES = _U16.pack(NO_KEY)
_NO_KEY_CRC = zlib.crc32(_NO_KEY_BYTES)
_EMPTY_OUT = np.empty((0, 3), dtype=np.int64)


def _crc_tables() -> np.ndarray:
    """The slicing-by-8 tables of the CRC-32 zlib uses (reflected polynomial 0xEDB88320), flat
    uint32 (8 * 256,): entries 0..255 are the classic byte table; block k (256k..256k+255)
    advances a byte's contribution past k more bytes."""
    table = np.zeros((8, 256), dtype=np.int64)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else (c >> 1)
        table[0, n] = c
    for k in range(1, 8):
        for n in range(256):
            table[k, n] = (table[k - 1, n] >> 8) ^ table[0, table[k - 1, n] & 0xFF]
    return table.astype(np.uint32).ravel()


_CRC_TABLES = _crc_tables()
_U32_FF, _U32_ALL = np.uint32(0xFF), np.uint32(0xFFFFFFFF)
_S8, _S16, _S24 = np.uint32(8), np.uint32(16), np.uint32(24)


@njit(nogil=True, cache=True)
def _crc32(buf: np.ndarray, start: int, end: int) -> int:
    """zlib.crc32 of buf[start:end] (uint8 array), 8 bytes a step (slicing-by-8)."""
    t = _CRC_TABLES
    c = _U32_ALL
    i = start
    while i + 8 <= end:
        a = c ^ (np.uint32(buf[i]) | (np.uint32(buf[i + 1]) << _S8) | (np.uint32(buf[i + 2]) << _S16)
                 | (np.uint32(buf[i + 3]) << _S24))
        c = (t[1792 + (a & _U32_FF)] ^ t[1536 + ((a >> _S8) & _U32_FF)]
             ^ t[1280 + ((a >> _S16) & _U32_FF)] ^ t[1024 + (a >> _S24)]
             ^ t[768 + buf[i + 4]] ^ t[512 + buf[i + 5]] ^ t[256 + buf[i + 6]] ^ t[buf[i + 7]])
        i += 8
    while i < end:
        c = t[(c ^ buf[i]) & _U32_FF] ^ (c >> _S8)
        i += 1
    return int(c ^ _U32_ALL)


@njit(nogil=True, cache=True)
def _u32(buf: np.ndarray, pos: int) -> int:
    return int(
        np.int64(buf[pos])
        | (np.int64(buf[pos + 1]) << 8)
        | (np.int64(buf[pos + 2]) << 16)
        | (np.int64(buf[pos + 3]) << 24)
    )


@njit(nogil=True, cache=True)
def scan(buf: np.ndarray, start: int, max_records: int, verify: bool, out: np.ndarray,
          first: int, stride: int) -> tuple:
    """Walk records in `buf` (uint8) from byte `start`; returns (n, end, status, m).

    n valid records were found; `end` is the byte after the last of them; status says why the
    walk stopped: 0 out of bytes (what is left, if anything, is an incomplete record), 1 reached
    `max_records`, 2 the bytes at `end` are no valid record (length, keylen or CRC). Records
    are numbered from `first`; each one whose number is a multiple of `stride` is noted in
    out[m] = (start byte, keylen or -1 for no key, end byte) while rows last; m rows were filled.
    Example: stride 1 notes every record (reading); stride 1024 builds a sparse index.
    """
    size = buf.shape[0]
    cap = out.shape[0]
    pos = start
    n = 0
    m = 0
    while n < max_records:
        if pos + 10 > size:
            return n, pos, 0, m
        length = _u32(buf, pos)
        if length < 2 or length > 1 << 30:
            return n, pos, 2, m
        end = pos + 8 + length
        if end > size:
            return n, pos, 0, m
        keylen = np.int64(buf[pos + 8]) | (np.int64(buf[pos + 9]) << 8)
        if keylen != 0xFFFF and keylen + 2 > length:
            return n, pos, 2, m
        if verify and _crc32(buf, pos + 8, end) != _u32(buf, pos + 4):
            return n, pos, 2, m
        if (first + n) % stride == 0 and m < cap:
            out[m, 0] = pos
            out[m, 1] = -1 if keylen == 0xFFFF else keylen
            out[m, 2] = end
            m += 1
        n += 1
        pos = end
    return n, pos, 1, m


def walk(fd: int, start: int, limit: int, first: int = 0) -> tuple[int, int, int, list[int]]:
    """Walk up to `limit` valid records of an open segment from byte `start` (record number
    `first`): (n, end, status, marks), marks = start bytes of the records numbered k * INDEX_STRIDE."""
    total, pos, size = 0, start, _SCAN_CHUNK
    marks: list[int] = []
    while True:
        data = os.pread(fd, size, pos)
        if not data:
            return total, pos, STATUS_END, marks
        out = np.empty((len(data) // (10 * INDEX_STRIDE) + 2, 3), dtype=np.int64)
        n, end, status, m = scan(np.frombuffer(data, dtype=np.uint8), 0, limit - total, True, out,
                                  first + total, INDEX_STRIDE)
        marks.extend((out[:m, 0] + pos).tolist())
        total += n
        pos += end
        if status != STATUS_END or len(data) < size:
            return total, pos, status, marks
        size = _SCAN_CHUNK
        if n == 0:  # one record larger than the chunk: read it whole, if it is all there
            need = 8 + struct.unpack_from("<I", data, end)[0]
            if pos + need > os.fstat(fd).st_size:
                return total, pos, STATUS_END, marks
            size = max(size, need)


@dataclass(slots=True)
class SegmentIndex:
    """What is known of one segment: its first `n` records are valid and end at byte `end`;
    marks[i] is the start byte of record i * INDEX_STRIDE. Only grows (a torn tail is never in it)."""

    n: int = 0
    end: int = 0
    marks: list[int] = field(default_factory=list)

    def extend(self, fd: int, upto: int | None = None) -> None:
        """Scan on until `upto` records are known (default: to the end of the valid records)."""
        if upto is not None and self.n >= upto:
            return
        limit = (1 << 62) if upto is None else upto - self.n
        n, end, _, marks = walk(fd, self.end, limit, self.n)
        self.marks.extend(marks)
        self.n += n
        self.end = end

    def position(self, fd: int, k: int) -> int:
        """Start byte of record k (< n, or == n for the end)."""
        if k == self.n:
            return self.end
        i = k // INDEX_STRIDE
        n, end, _, _ = walk(fd, self.marks[i], k - i * INDEX_STRIDE, i * INDEX_STRIDE)
        assert n == k - i * INDEX_STRIDE, "indexed records must still be valid"
        return end


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: object) -> None:
    """Write `obj` as JSON to `path` via temp file + fsync + rename + fsync of the folder."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_or_error(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as e:
        return e
    return None


def segment_bases(pdir: Path) -> list[int]:
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return []
    return sorted(int(n[:-4]) for n in names if n.endswith(".seg") and n[:-4].isdigit())


def segment_path(pdir: Path, base: int) -> Path:
    return pdir / f"{base:020d}.seg"


def encode(value: bytes, key: bytes | None = None) -> bytes:
    """One framed record; raises LogError when the key or the record is too long."""
    if type(value) is not bytes:
        value = bytes(value)
    if key is None:
        return b"".join((_LEN_CRC.pack(2 + len(value), zlib.crc32(value, _NO_KEY_CRC)), _NO_KEY_BYTES, value))
    if type(key) is not bytes:
        key = bytes(key)
    if len(key) > MAX_KEY_BYTES:
        msg = f"key of {len(key)} bytes; at most {MAX_KEY_BYTES}"
        raise LogError(msg)
    length = 2 + len(key) + len(value)
    if length > MAX_RECORD_BYTES:
        msg = f"record of {length} bytes; at most {MAX_RECORD_BYTES}"
        raise LogError(msg)
    kb = _U16.pack(len(key))
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(kb)))
    return b"".join((_LEN_CRC.pack(length, crc), kb, key, value))


def encode_many(records: list[tuple[bytes | None, bytes]]) -> list[bytes]:
    """`encode(value, key)` of each (key, value), in order; raises LogError (and frames none)
    when a key or a record is too long."""
    out: list[bytes] = []
    add = out.append
    crc32, pack, u16 = zlib.crc32, _LEN_CRC.pack, _U16.pack
    for key, value in records:
        if type(key) is bytes and type(value) is bytes and len(key) <= MAX_KEY_BYTES \
                and len(value) <= MAX_RECORD_BYTES - 2 - MAX_KEY_BYTES:
            kb = u16(len(key)) + key
            add(b"".join((pack(len(kb) + len(value), crc32(value, crc32(kb))), kb, value)))
        else:
            add(encode(value, key))
    return out


def frame_ends(key_lens: np.ndarray, value_lens: np.ndarray) -> np.ndarray:
    """Where each frame of a block ends (int64 (n,)) when records with these key and value lengths
    (key length -1: no key) are framed one after the other from byte 0: record i's key starts at
    `ends[i - 1] + HEADER_BYTES` (0 for i = 0) and its value right after the key. Raises LogError
    when a key or a record is too long. Example: keys [2, -1], values [2, 3] -> [14, 27]."""
    klen = np.asarray(key_lens, dtype=np.int64)
    vlen = np.asarray(value_lens, dtype=np.int64)
    if len(klen) and int(klen.max()) > MAX_KEY_BYTES:
        msg = f"key of {int(klen.max())} bytes; at most {MAX_KEY_BYTES}"
        raise LogError(msg)
    length = 2 + np.maximum(klen, 0) + vlen
    if len(length) and int(length.max()) > MAX_RECORD_BYTES:
        msg = f"record of {int(length.max())} bytes; at most {MAX_RECORD_BYTES}"
        raise LogError(msg)
    return np.cumsum(length + 8)


@njit(nogil=True, cache=True, inline="always")
def seal_frame(buf: np.ndarray, start: int, end: int, key_len: int) -> None:
    """Fill in the header of the frame buf[start:end] (key and value in place after it): length,
    key length (-1: NO_KEY) and the crc32 of the record."""
    length = end - start - 8
    kl = NO_KEY if key_len < 0 else key_len
    buf[start + 8] = kl & 0xFF
    buf[start + 9] = kl >> 8
    crc = _crc32(buf, start + 8, end)
    for j in range(4):
        buf[start + j] = (length >> (8 * j)) & 0xFF
        buf[start + 4 + j] = (crc >> (8 * j)) & 0xFF


@njit(nogil=True, cache=True)
def seal_frames(buf: np.ndarray, ends: np.ndarray, key_lens: np.ndarray) -> None:
    """Fill in each frame's header in `buf` (uint8, keys and values already in place where
    `frame_ends` put them): length, key length (-1: NO_KEY) and the crc32 of the record, so that
    buf[:ends[-1]] is the bytes `encode` gives for each record, one after the other."""
    start = 0
    for i in range(ends.shape[0]):
        seal_frame(buf, start, ends[i], key_lens[i])
        start = ends[i]


@njit(nogil=True, cache=True)
def frames_chain(buf: np.ndarray, ends: np.ndarray) -> int:
    """How many of the frames buf[ends[i - 1]:ends[i]] (from 0) are walkable records in a row: a
    possible length that ends exactly at ends[i] and a key length within it (checksums are not
    verified); == len(ends) when all are."""
    start = 0
    for i in range(ends.shape[0]):
        end = ends[i]
        if end - start < HEADER_BYTES or end > buf.shape[0]:
            return i
        length = _u32(buf, start)
        keylen = np.int64(buf[start + 8]) | (np.int64(buf[start + 9]) << 8)
        if length > MAX_RECORD_BYTES or start + 8 + length != end:
            return i
        if keylen != NO_KEY and keylen + 2 > length:
            return i
        start = end
    return ends.shape[0]
