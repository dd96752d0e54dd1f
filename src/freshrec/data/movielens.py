"""MovieLens ratings (GroupLens), in their official formats, as a time-ordered `Dataset`.

Formats read (a folder holding one of them, or the file itself):

- `u.data` (100K): tab separated `user item rating unix_ts`, no header; side files `u.user`
  (`user|age|gender|occupation|zip`), `u.item` (`item|title|date|video date|url|19 genre flags`)
  and `u.genre` (`name|index`).
- `ratings.csv` (20M, 25M, latest): header `userId,movieId,rating,timestamp`; side file
  `movies.csv` (`movieId,title,genres` with genres joined by `|`).
- `ratings.dat` (1M, 10M): `user::item::rating::ts`; side files `users.dat`, `movies.dat`.

Label: rating >= 3.5 is a positive "click" (the Monolith paper's choice); the rating itself is the
value label "rating" (for a second, value task). Slots: `user_id`, `item_id`
(the raw MovieLens ids). With `side_info=True`, whatever side files are present add `age`
(years, raw), `gender` (1 = M, 2 = F), `occupation` (`stable_ids` of the name, or the 1M code) and
the multi-valued `genre` (`stable_ids` of genre names); ids missing from a side file get 0.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from freshrec.data.dataset import Dataset, Ragged, stable_ids
from freshrec.errors import DataError, MissingDataError

__all__ = ["POSITIVE_RATING", "load_movielens", "user_history"]

POSITIVE_RATING = 3.5
_RATING_FILES = ("u.data", "ratings.csv", "ratings.dat")


def _find_ratings(path: Path) -> Path:
    if path.is_file():
        return path
    for name in _RATING_FILES:
        if (path / name).is_file():
            return path / name
    msg = f"no MovieLens ratings file ({', '.join(_RATING_FILES)}) in {path}"
    raise MissingDataError(msg)


def _read_table(
    path: Path, *, delimiter: str, names: list[str] | None, types: dict | None = None
) -> pa.Table:
    """Read a delimited file with pyarrow; `::` files are rewritten to tabs first (pyarrow wants 1 char)."""
    source: str | io.BytesIO = str(path)
    if delimiter == "::":
        source = io.BytesIO(path.read_bytes().replace(b"::", b"\t"))
        delimiter = "\t"
    read = pacsv.ReadOptions(column_names=names, encoding="latin-1" if names else "utf8")
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter == "," else False)
    convert = pacsv.ConvertOptions(column_types=types or {})
    return pacsv.read_csv(source, read_options=read, parse_options=parse, convert_options=convert)


def _read_ratings(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user int64, item int64, rating float32, ts float64 seconds), file order."""
    if path.name.endswith((".csv", ".csv.gz")):
        t = _read_table(path, delimiter=",", names=None)
        cols = ["userId", "movieId", "rating", "timestamp"]
        missing = [c for c in cols if c not in t.column_names]
        if missing:
            msg = f"{path}: not a MovieLens ratings.csv (no column {missing[0]!r}; has {t.column_names})"
            raise DataError(msg)
    else:
        delimiter = "::" if path.name.endswith(".dat") else "\t"
        cols = ["user", "item", "rating", "ts"]
        t = _read_table(path, delimiter=delimiter, names=cols)
    user, item, rating, ts = (t[c].to_numpy() for c in cols)
    return (
        user.astype(np.int64),
        item.astype(np.int64),
        rating.astype(np.float32),
        ts.astype(np.float64),
    )


def _lookup(keys: np.ndarray, table_keys: np.ndarray, table_values: np.ndarray) -> np.ndarray:
    """table_values[j] where table_keys[j] == keys[i], else 0 (int64)."""
    order = np.argsort(table_keys)
    sk = table_keys[order]
    pos = np.clip(np.searchsorted(sk, keys), 0, max(len(sk) - 1, 0))
    out = np.zeros(len(keys), dtype=np.int64)
    if len(sk):
        hit = sk[pos] == keys
        out[hit] = table_values[order[pos[hit]]]
    return out


def _user_side(folder: Path, user: np.ndarray) -> dict[str, np.ndarray]:
    if (folder / "u.user").is_file():
        t = _read_table(
            folder / "u.user",
            delimiter="|",
            names=["u", "age", "gender", "occ", "zip"],
            types={"zip": pa.string()},
        )
        occ = stable_ids(t["occ"].to_pylist())
    elif (folder / "users.dat").is_file():
        t = _read_table(
            folder / "users.dat",
            delimiter="::",
            names=["u", "gender", "age", "occ", "zip"],
            types={"zip": pa.string()},
        )
        occ = t["occ"].to_numpy().astype(np.int64)
    else:
        return {}
    ids = t["u"].to_numpy().astype(np.int64)
    gender = np.where(np.array(t["gender"].to_pylist()) == "M", 1, 2).astype(np.int64)
    return {
        "age": _lookup(user, ids, t["age"].to_numpy().astype(np.int64)),
        "gender": _lookup(user, ids, gender),
        "occupation": _lookup(user, ids, occ),
    }


def _genres(folder: Path) -> tuple[np.ndarray, list[list[str]]] | None:
    """(item ids, genre names per item) from u.item + u.genre, movies.csv or movies.dat."""
    if (folder / "u.item").is_file() and (folder / "u.genre").is_file():
        g = [ln.split("|")[0] for ln in (folder / "u.genre").read_text("latin-1").splitlines() if "|" in ln]
        names = ["item", "title", "date", "video", "url"] + [f"g{i}" for i in range(len(g))]
        t = _read_table(
            folder / "u.item",
            delimiter="|",
            names=names,
            types={"title": pa.string(), "date": pa.string(), "video": pa.string(), "url": pa.string()},
        )
        flags = np.stack([t[f"g{i}"].to_numpy() for i in range(len(g))], axis=1).astype(bool)
        return t["item"].to_numpy().astype(np.int64), [[g[j] for j in np.flatnonzero(row)] for row in flags]
    if (folder / "movies.csv").is_file():
        t = _read_table(folder / "movies.csv", delimiter=",", names=None)
        items, genres = t["movieId"].to_numpy(), t["genres"].to_pylist()
    elif (folder / "movies.dat").is_file():
        t = _read_table(folder / "movies.dat", delimiter="::", names=["movieId", "title", "genres"])
        items, genres = t["movieId"].to_numpy(), t["genres"].to_pylist()
    else:
        return None
    return items.astype(np.int64), [
        [x for x in s.split("|") if x and x != "(no genres listed)"] for s in genres
    ]


def _genre_slot(folder: Path, item: np.ndarray) -> Ragged | None:
    found = _genres(folder)
    if found is None:
        return None
    items, names = found
    vocab = sorted({x for row in names for x in row})
    code = dict(zip(vocab, stable_ids(vocab).tolist(), strict=True))
    # genres of every known item as one ragged column, then gathered per rating
    lens = np.array([len(row) for row in names], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    table = Ragged(np.array([code[x] for row in names for x in row], dtype=np.int64), offsets)
    order = np.argsort(items)
    pos = np.clip(np.searchsorted(items[order], item), 0, len(items) - 1)
    hit = items[order][pos] == item
    rows = np.where(hit, order[pos], len(items))  # len(items) = an extra empty row for unknown items
    padded = Ragged(table.values, np.concatenate([table.offsets, table.offsets[-1:]]))
    return padded.take(rows)


def user_history(user: np.ndarray, item: np.ndarray, positive: np.ndarray, k: int) -> Ragged:
    """For rows in time order: the last `k` items each row's user rated positively BEFORE that row
    (most recent last), as a multi-valued column; never a row's own or a later rating."""
    recent: dict[int, list[int]] = {}
    values: list[int] = []
    offsets = np.zeros(len(user) + 1, np.int64)
    for i, (u, it, pos) in enumerate(zip(user.tolist(), item.tolist(), positive.tolist(), strict=True)):
        h = recent.setdefault(u, [])
        values.extend(h)
        offsets[i + 1] = len(values)
        if pos:
            h.append(it)
            if len(h) > k:
                del h[0]
    return Ragged(np.asarray(values, np.int64), offsets)


def load_movielens(
    path: str | Path,
    *,
    side_info: bool = False,
    limit: int | None = None,
    name: str | None = None,
    history: int = 0,
) -> Dataset:
    """Load MovieLens ratings from a folder or a ratings file; rows sorted by time (stable).

    Args:
        path: a folder holding `u.data`, `ratings.csv` or `ratings.dat`, or one of those files.
        side_info: add the demographic slots and the multi-valued `genre` slot from side files
            present in the ratings file's folder (see the module docstring).
        limit: keep only the first `limit` ratings in time order.
        name: the dataset name (default: the folder's name, prefixed `movielens-` unless it is).
        history: with k > 0, the multi-valued slot `history`: the user's last k positively rated
            items before each rating (`user_history`), for sequence models such as DIN.

    Returns:
        A `Dataset` with slots `user_id`, `item_id` (+ side slots), label = rating >= 3.5,
        ts = the rating's unix time in seconds, sample_rate 1.0, no dense columns.
    """
    ratings = _find_ratings(Path(path))
    user, item, rating, ts = _read_ratings(ratings)
    order = np.argsort(ts, kind="stable")
    if limit is not None:
        order = order[:limit]
    user, item, rating, ts = user[order], item[order], rating[order], ts[order]
    sparse = {"user_id": user, "item_id": item}
    multi = {}
    if side_info:
        sparse.update(_user_side(ratings.parent, user))
        genre = _genre_slot(ratings.parent, item)
        if genre is not None:
            multi["genre"] = genre
    if history > 0:
        multi["history"] = user_history(user, item, rating >= POSITIVE_RATING, history)
    folder = ratings.parent.name
    return Dataset.build(
        name or (folder if folder.startswith("movielens") else f"movielens-{folder}"),
        sparse=sparse,
        label=(rating >= POSITIVE_RATING).astype(np.float32),
        ts=ts,
        multi=multi,
        labels={"rating": rating.astype(np.float32)},
    )
