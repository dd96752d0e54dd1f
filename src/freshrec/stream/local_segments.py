"""The local log's on-disk record format and the numba kernels that walk it.

A segment file is a run of records, each framed as (little-endian)

    [u32 length][u32 crc32][u16 keylen][key][value]

where length = 2 + len(key) + len(value) and the crc32 (zlib) covers those `length` bytes;
keylen 0xFFFF stands for "no key" (so a key holds at most 65534 bytes). Worked example:
key b"u1", value b"hi" -> 06000000 | crc32(b"\\x02\\x00u1hi") | 0200 | 7531 | 6869 (14 bytes).

A walk stops at the first byte that does not start a complete, valid record: the end of the
valid records, which `SegmentIndex` remembers with a sparse offset -> byte position index.
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
    "fsync_dir",
    "fsync_or_error",
    "scan",
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


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.int64)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else (c >> 1)
        table[n] = c
    return table


_CRC_TABLE = _crc_table()


@njit(nogil=True, cache=True)
def _crc32(buf: np.ndarray, start: int, end: int) -> int:
    """zlib.crc32 of buf[start:end] (uint8 array)."""
    c = 0xFFFFFFFF
    for i in range(start, end):
        c = _CRC_TABLE[(c ^ buf[i]) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


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
