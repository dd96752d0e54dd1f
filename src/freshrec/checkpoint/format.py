"""The snapshot format: a directory holding a checksummed JSON manifest and one raw file per array.

Every part of freshrec that persists state (embedding tables, dense weights, the training PS,
the joiner) writes its snapshots with this module, so it imports nothing from freshrec but the
error tree. Nothing is ever pickled: arrays are raw C-order bytes and everything else is JSON.

Layout of a snapshot at `path` (a directory)::

    path/
      manifest.json        {"format": "freshrec-snapshot", "format_version": 1, "kind": "table",
                            "meta": {...caller's JSON...},
                            "arrays": {"ids": {"file": "ids.bin", "dtype": "<i8", "shape": [3],
                                               "nbytes": 24, "sha256": "9f86..."}, ...},
                            "manifest_sha256": "<sha256 of the canonical JSON of all other fields>"}
      ids.bin              24 bytes: the array's C-order bytes, nothing else
      ...

The canonical JSON is `json.dumps(obj, sort_keys=True, separators=(",", ":"))` of the manifest
without its `manifest_sha256` field, so any edit to the manifest (a changed shape, an extra key)
fails the check, while the file itself stays pretty-printed for people to read.

Array names match `[A-Za-z0-9_.-]+` and must not start with a dot. There is one flat namespace
per snapshot; a caller that writes several logical sub-snapshots as one (a training PS with one
table per slot and the dense weights) prefixes names, e.g. `"table.user.rows"`, `"dense.fc1.weight"`
(see `with_prefix` / `strip_prefix`), and nests its meta as ordinary JSON.

Writes are atomic: everything is written into a temporary directory beside `path` (same parent,
so the rename stays on one file system), every file and the directory are fsynced, then the
directory is renamed into place. An existing snapshot at `path` is swapped out atomically with
`renameat2(RENAME_EXCHANGE)` where the OS offers it, else renamed aside, replaced and deleted
(a crash between those two renames leaves no snapshot at `path`; the old one survives under a
hidden `.<name>.old-*` name). Readers never see a half-written snapshot.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.errors import CorruptSnapshotError, SnapshotError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "read_manifest",
    "read_snapshot",
    "snapshot_nbytes",
    "strip_prefix",
    "with_prefix",
    "write_snapshot",
]

FORMAT_NAME = "freshrec-snapshot"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
# numpy kinds we store: bool, signed/unsigned int, float, complex, bytes, str, datetime, timedelta.
# Never "O" (object: would need pickle) nor "V" (structured/void: the dtype string loses its fields).
_ALLOWED_KINDS = frozenset("biufcSUMm")
_DTYPE_RE = re.compile(r"[<>|=][biufcSUMm]\d+(\[[A-Za-z0-9]+\])?")
_CHUNK = 1 << 22  # 4 MiB per read / write / hash step (stays in cache)


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        msg = f"{what} {name!r} is not a valid name: use [A-Za-z0-9_.-]+, not starting with a dot"
        raise SnapshotError(msg)
    return name


def _json_default(obj: Any) -> Any:
    """Let numpy scalars through as their Python values; refuse everything else."""
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    msg = f"snapshot meta value of type {type(obj).__name__} is not JSON data (put arrays in `arrays`)"
    raise SnapshotError(msg)  # json.dumps lets what `default` raises through


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def _bytes_view(arr: np.ndarray) -> memoryview:
    """The raw bytes of a C-contiguous array, flat (works for 0-d and 0-length arrays)."""
    return memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_array(path: Path, arr: np.ndarray) -> str:
    """Write `arr`'s bytes to `path`, fsync, return the hex sha256."""
    h = hashlib.sha256()
    view = _bytes_view(arr)
    with open(path, "wb") as f:
        for start in range(0, len(view), _CHUNK):
            chunk = view[start : start + _CHUNK]
            h.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False when the OS cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # libc's symbols, on Linux with glibc >= 2.28
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _install(tmp: Path, path: Path) -> None:
    """Move the finished directory `tmp` to `path`, replacing whatever snapshot is there."""
    if not path.exists():
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        return
    if not path.is_dir():
        msg = f"cannot write snapshot at {path}: a file that is not a snapshot directory is in the way"
        raise SnapshotError(msg)
    if _exchange(tmp, path):
        _fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old snapshot
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(path, old)
    os.rename(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_snapshot(
    path: str | Path, *, kind: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> Path:
    """Write a snapshot directory at `path` atomically and return `path` as a Path.

    Args:
        path: the snapshot directory to create (or replace); its parent is created if needed.
        kind: what the snapshot holds (e.g. "table", "training-ps"); a name, checked on read.
        meta: JSON data (dicts, lists, str, int, float, bool, None; numpy scalars are converted).
            Read back as plain JSON types: tuples come back as lists.
        arrays: name -> array. Any shape (0-d and 0-length included), any layout (non-contiguous
            inputs are copied to C order), dtypes of kind bool/int/uint/float/complex/bytes/str/
            datetime/timedelta. Read back with the exact dtype (byte order included) and shape.

    Raises:
        SnapshotError: a bad name or kind, an object or structured dtype, meta that is not JSON data,
            or an I/O failure. On any failure nothing is left at `path` but what was there before.
    """
    path = Path(path)
    _check_name(kind, "kind")
    if not isinstance(meta, Mapping):
        msg = f"meta must be a mapping, got {type(meta).__name__}"
        raise SnapshotError(msg)
    prepared: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        _check_name(name, "array name")
        a = np.asarray(arr)
        if a.dtype.hasobject or a.dtype.kind not in _ALLOWED_KINDS:
            msg = f"array {name!r} has dtype {a.dtype!s}: only plain numeric/bool/str dtypes are stored"
            raise SnapshotError(msg)
        prepared[name] = a if a.flags.c_contiguous else a.copy(order="C")  # keeps 0-d arrays 0-d
    try:
        meta_json = json.loads(_canonical({"meta": dict(meta)}))["meta"]
    except (TypeError, ValueError) as e:
        msg = f"meta is not JSON data: {e}"
        raise SnapshotError(msg) from e

    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    try:
        entries: dict[str, dict[str, Any]] = {}
        for name, a in prepared.items():
            fname = f"{name}.bin"
            digest = _write_array(tmp / fname, a)
            entries[name] = {
                "file": fname,
                "dtype": a.dtype.str,
                "shape": [int(s) for s in a.shape],
                "nbytes": int(a.nbytes),
                "sha256": digest,
            }
        manifest: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "meta": meta_json,
            "arrays": entries,
        }
        manifest["manifest_sha256"] = hashlib.sha256(_canonical(manifest)).hexdigest()
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        _install(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        msg = f"cannot write snapshot at {path}: {e}"
        raise SnapshotError(msg) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_manifest(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """Read and validate the manifest of the snapshot at `path` (array files are not opened).

    Returns the manifest dict (see the module docstring). Checks, in order: the manifest file
    exists and is JSON, `format` is ours, `format_version` is known, the manifest checksum
    matches, `kind` matches when given, and every array entry is well formed.

    Raises:
        CorruptSnapshotError: with the manifest's path and the reason.
    """
    mpath = Path(path) / MANIFEST_NAME
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        raise CorruptSnapshotError(str(mpath), "missing") from None
    except OSError as e:
        raise CorruptSnapshotError(str(mpath), f"unreadable: {e}") from e
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptSnapshotError(str(mpath), f"not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise CorruptSnapshotError(str(mpath), "not a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise CorruptSnapshotError(str(mpath), f"unknown format {manifest.get('format')!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CorruptSnapshotError(str(mpath), f"unknown format_version {version!r}")
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    expected = manifest.get("manifest_sha256")
    if not isinstance(expected, str) or hashlib.sha256(_canonical(body)).hexdigest() != expected:
        raise CorruptSnapshotError(str(mpath), "manifest checksum mismatch")
    if kind is not None and manifest.get("kind") != kind:
        raise CorruptSnapshotError(str(mpath), f"kind {manifest.get('kind')!r} where {kind!r} was expected")
    if not isinstance(manifest.get("meta"), dict) or not isinstance(manifest.get("arrays"), dict):
        raise CorruptSnapshotError(str(mpath), "meta or arrays is not a JSON object")
    for name, entry in manifest["arrays"].items():
        _check_entry(mpath, name, entry)
    return manifest


def _check_entry(mpath: Path, name: str, entry: Any) -> None:
    bad = f"array {name!r}:"
    if not _NAME_RE.fullmatch(name) or not isinstance(entry, dict):
        raise CorruptSnapshotError(str(mpath), f"{bad} malformed entry")
    if entry.get("file") != f"{name}.bin":
        raise CorruptSnapshotError(str(mpath), f"{bad} file {entry.get('file')!r} is not {name}.bin")
    dtype_s = entry.get("dtype")
    if not isinstance(dtype_s, str) or not _DTYPE_RE.fullmatch(dtype_s):
        raise CorruptSnapshotError(str(mpath), f"{bad} unsupported dtype {dtype_s!r}")
    try:
        dtype = np.dtype(dtype_s)
    except TypeError as e:
        raise CorruptSnapshotError(str(mpath), f"{bad} unsupported dtype {dtype_s!r}") from e
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise CorruptSnapshotError(str(mpath), f"{bad} bad shape {shape!r}")
    nbytes = entry.get("nbytes")
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
    if nbytes != want:
        raise CorruptSnapshotError(str(mpath), f"{bad} nbytes {nbytes!r} != shape {shape} x {dtype_s}")
    if not isinstance(entry.get("sha256"), str):
        raise CorruptSnapshotError(str(mpath), f"{bad} missing sha256")


def _hash_view(view: memoryview) -> str:
    h = hashlib.sha256()
    for start in range(0, len(view), _CHUNK):
        h.update(view[start : start + _CHUNK])
    return h.hexdigest()


def _read_array(fpath: Path, entry: dict[str, Any], *, mmap: bool, verify: bool) -> np.ndarray:
    dtype = np.dtype(entry["dtype"])
    shape = tuple(entry["shape"])
    nbytes = int(entry["nbytes"])
    try:
        size = fpath.stat().st_size
    except FileNotFoundError:
        raise CorruptSnapshotError(str(fpath), "missing") from None
    if size < nbytes:
        raise CorruptSnapshotError(str(fpath), f"truncated: {size} of {nbytes} bytes")
    if size > nbytes:
        raise CorruptSnapshotError(str(fpath), f"oversized: {size} bytes where {nbytes} were written")
    if nbytes == 0:
        arr = np.empty(shape, dtype=dtype)
        if mmap:
            arr.flags.writeable = False
    elif mmap:
        arr = np.memmap(fpath, dtype=dtype, mode="r", shape=shape)
        if not shape:
            arr = arr.reshape(())  # np.memmap turns shape () into (1,)
    else:
        # read and hash chunk by chunk, while each chunk is still in the CPU cache
        arr = np.empty(shape, dtype=dtype)
        view = _bytes_view(arr)
        h = hashlib.sha256()
        with open(fpath, "rb", buffering=0) as f:
            got = 0
            while got < nbytes:
                n = f.readinto(view[got : min(got + _CHUNK, nbytes)])
                if not n:
                    raise CorruptSnapshotError(str(fpath), f"truncated: {got} of {nbytes} bytes")
                if verify:
                    h.update(view[got : got + n])
                got += n
        if verify and h.hexdigest() != entry["sha256"]:
            raise CorruptSnapshotError(str(fpath), "checksum mismatch")
        return arr
    if verify and _hash_view(_bytes_view(arr)) != entry["sha256"]:
        raise CorruptSnapshotError(str(fpath), "checksum mismatch")
    return arr


def read_snapshot(
    path: str | Path, *, kind: str | None = None, mmap: bool = False, verify: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read the snapshot at `path`; return `(meta, arrays)` with arrays in the order written.

    Args:
        kind: when given, the snapshot's kind must equal it.
        mmap: return read-only `np.memmap` views instead of arrays in memory (0-length arrays are
            plain read-only empties). The files must then stay in place while the views are used.
        verify: check every array's sha256 (reads every byte once; with mmap this faults the
            pages in). The manifest checksum and the file sizes are always checked.

    Raises:
        CorruptSnapshotError: `.path` is the offending file (the manifest or an array file) and
            `.reason` says why: "missing", "not valid JSON: ...", "unknown format_version 7",
            "manifest checksum mismatch", "truncated: 120 of 4096 bytes", "checksum mismatch", ...
    """
    root = Path(path)
    manifest = read_manifest(root, kind=kind)
    arrays = {
        name: _read_array(root / entry["file"], entry, mmap=mmap, verify=verify)
        for name, entry in manifest["arrays"].items()
    }
    return manifest["meta"], arrays


def snapshot_nbytes(path: str | Path) -> int:
    """Bytes the snapshot at `path` takes on disk: its manifest plus its array files (sizes as found)."""
    root = Path(path)
    manifest = read_manifest(root)
    total = (root / MANIFEST_NAME).stat().st_size
    for entry in manifest["arrays"].values():
        fpath = root / entry["file"]
        try:
            total += fpath.stat().st_size
        except FileNotFoundError:
            raise CorruptSnapshotError(str(fpath), "missing") from None
    return total


def with_prefix(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`{"rows": a}` with prefix `"table.user"` -> `{"table.user.rows": a}` (for composite snapshots)."""
    return {f"{prefix}.{name}": arr for name, arr in arrays.items()}


def strip_prefix(prefix: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of `with_prefix`: the arrays under `prefix.`, with the prefix removed."""
    head = f"{prefix}."
    return {name[len(head) :]: arr for name, arr in arrays.items() if name.startswith(head)}
