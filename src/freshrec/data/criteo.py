"""Criteo display-advertising rows (the Kaggle challenge / 1TB-log format) as a `Dataset`.

A row is `label, I1..I13, C1..C26`: 13 integer counts (possibly empty, possibly negative) and 26
categorical features as hex strings (possibly empty). Two layouts are read:

- the official one: tab separated, no header (`train.txt`, `day_0.gz`, the shared `train.csv`);
- CSV with a header row starting `label,` (the shared `criteo_sample.txt`).

Gzip files are read transparently. Categorical slots `"C1".."C26"` hold the hex value parsed as
a 64-bit integer (longer strings keep their low 64 bits); an empty value is `MISSING_ID` (0),
which a literal `00000000` also maps to. Dense columns `I1..I13` are `sign(x) * log(1 + |x|)`
(= log(1 + x) for the usual x >= 0), missing -> 0. The data has no time column: rows are in
time order, `ts` is the row number and `has_time` is False.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from numba import njit

from freshrec.data.dataset import Dataset
from freshrec.errors import DataError

__all__ = ["CATEGORICAL", "INTEGER", "MISSING_ID", "load_criteo", "parse_hex"]

INTEGER = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
MISSING_ID = 0
_COLUMNS = ("label", *INTEGER, *CATEGORICAL)


@njit(nogil=True, cache=True)
def _parse_hex_kernel(offsets: np.ndarray, data: np.ndarray, missing: int, out: np.ndarray) -> int:
    """Parse strings data[offsets[i]:offsets[i+1]] as hex into out[i]; return the first bad row or -1."""
    for i in range(len(out)):
        lo, hi = offsets[i], offsets[i + 1]
        if lo == hi:
            out[i] = missing
            continue
        v = np.uint64(0)
        for p in range(lo, hi):
            c = data[p]
            if 48 <= c <= 57:
                d = c - 48
            elif 97 <= c <= 102:
                d = c - 87
            elif 65 <= c <= 70:
                d = c - 55
            else:
                return i
            v = (v << np.uint64(4)) | np.uint64(d)
        out[i] = np.int64(v)
    return -1


def parse_hex(
    column: pa.Array | pa.ChunkedArray, *, missing: int = MISSING_ID, what: str = "column"
) -> np.ndarray:
    """Hex strings (an arrow string column; null or empty = missing) -> int64, bit pattern kept."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        chunk = chunk.cast(pa.string()) if chunk.type != pa.string() else chunk
        if chunk.null_count:
            chunk = chunk.fill_null("")
        _, obuf, dbuf = chunk.buffers()
        offsets = np.frombuffer(obuf, dtype=np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
        data = np.frombuffer(dbuf, dtype=np.uint8) if dbuf is not None else np.zeros(0, np.uint8)
        out = np.empty(len(chunk), dtype=np.int64)
        bad = _parse_hex_kernel(offsets.astype(np.int64), data, missing, out)
        if bad >= 0:
            msg = f"{what}: value {chunk[bad].as_py()!r} is not hexadecimal"
            raise DataError(msg)
        parts.append(out)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _sniff(path: Path) -> tuple[bool, str]:
    """(has a header row, delimiter) from the first line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        first = f.readline()
    header = first.lower().startswith("label")
    delimiter = "\t" if "\t" in first else ","
    return header, delimiter


def load_criteo(path: str | Path, *, limit: int | None = None, name: str | None = None) -> Dataset:
    """Load Criteo rows from one file (tab separated without header, or CSV with a `label,...` header).

    Args:
        limit: keep only the first `limit` rows.
        name: the dataset name (default: `criteo-<file stem>`).

    Returns:
        A `Dataset` with slots C1..C26 (int64), dense (n, 13) float32 named I1..I13, label float32,
        ts = row number (has_time False), sample_rate 1.0.

    Raises:
        ValueError: a row has the wrong number of fields or a categorical value is not hex.
    """
    path = Path(path)
    header, delimiter = _sniff(path)
    types = {c: pa.float64() for c in INTEGER} | {c: pa.string() for c in CATEGORICAL}
    types["label"] = pa.float32()
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=None if header else list(_COLUMNS), block_size=1 << 23),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter == "," else False),
        convert_options=pacsv.ConvertOptions(
            column_types=types, include_columns=list(_COLUMNS), strings_can_be_null=False
        ),
    )
    # convert batch by batch: the hex strings never all sit in memory at once
    labels, denses, sparses = [], [], []
    rows = 0
    with reader:
        for batch in reader:
            if limit is not None and rows + batch.num_rows > limit:
                batch = batch.slice(0, max(limit - rows, 0))
            rows += batch.num_rows
            label, dense, sparse = _convert(batch, what=str(path))
            labels.append(label)
            denses.append(dense)
            sparses.append(sparse)
            if limit is not None and rows >= limit:
                break
    return Dataset.build(
        name or f"criteo-{path.name.split('.')[0]}",
        sparse={c: _cat([s[c] for s in sparses], np.int64) for c in CATEGORICAL},
        label=_cat(labels, np.float32),
        dense=np.concatenate(denses) if denses else np.zeros((0, len(INTEGER)), np.float32),
        dense_names=INTEGER,
    )


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _convert(batch: pa.RecordBatch, *, what: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(label float32 (b,), dense float32 (b, 13), {C1..C26: int64 (b,)}) of one record batch."""
    n = batch.num_rows
    dense = np.zeros((n, len(INTEGER)), dtype=np.float32)
    for j, c in enumerate(INTEGER):
        x = batch.column(c).to_numpy(zero_copy_only=False)  # float64, NaN where missing
        dense[:, j] = np.nan_to_num(np.sign(x) * np.log1p(np.abs(x)), nan=0.0)
    sparse = {c: parse_hex(batch.column(c), what=f"{what} column {c}") for c in CATEGORICAL}
    label = np.nan_to_num(batch.column("label").to_numpy(zero_copy_only=False), nan=0.0).astype(np.float32)
    return label, dense, sparse
