"""A declarative schema of a user's own event files: which columns become which slots, and how
impressions and labels arise. One schema serves import, batch training, online training and
serving, so the same raw value always becomes the same id.

In the one config file (TOML), under `[schema]` (a Python user builds the same dataclasses, or
`Schema.from_dict` of the same nested dict)::

    [schema]
    name = "shop"                          # request ids are "<name>-<n>:<position>"
    files = ["events/*.csv.gz"]            # paths or globs, relative to the config file
    format = "csv"                         # csv | tsv | parquet | jsonl (default: from the suffix)
    # header = false; columns = ["user", "item", ...]   for delimited files without a header row
    timestamp = "ts"                       # the time column
    time_unit = "s"                        # s | ms | us | ns | iso (ISO-8601 text)
    user = "user_id"                       # the slot whose id is the event's user_id
    item = "item_id"                       # the slot whose id is the event's item_id

    [schema.slots.user_id]                 # one table per slot, in model order
    column = "user"                        # default: the slot's name
    [schema.slots.category]
    type = "string"                        # int | string | hex | auto (int columns as they are,
                                           #  anything else hashed with `stable_hash`)
    side = "item"                          # item-side: negatives carry their own value (shape c)
    [schema.slots.tags]
    kind = "multi"                         # categorical (default) | multi | dense
    separator = "|"                        # split a text column (list columns need none)
    [schema.slots.price]
    kind = "dense"
    log1p = true                           # sign(x) * log(1 + |x|), then
    clip = [0.0, 10.0]                     # clipped, then
    standardize = true                     # (x - mean) / std with the training rows' statistics

    [schema.labels.buy]                    # one label (= task / action type) per table
    behaviour = "buy"                      # shape (b): a behaviour value
    # column = "clicked"; threshold = 0.5   shape (a): a column (binary when threshold is set)

    [schema.impressions]
    shape = "behaviour"                    # rows (a) | behaviour (b) | positives (c)
    column = "behavior"                    # (b) the behaviour column ...
    impression = "pv"                      # ... and the value that is an impression
    window_s = 86400                       # (b) actions attach to the same user's last impression
                                           #     of the item this long before; (c) the trailing window
    # negatives = 4; seed = 0               (c) negatives per positive, drawn from the trailing window
    # delay_s = 1.0                         (a), (c) the action's time after its impression

The three shapes:

- (a) `rows`: each row is an impression; each label is a column (a CTR table, a rating with a
  threshold). Import writes one feature event per row and one action per label that is > 0.
- (b) `behaviour`: each row is a behaviour event; rows whose behaviour is `impression` are the
  impressions; a row whose behaviour names a label is an action on the latest impression of the
  same user and item at most `window_s` before it (none: counted as unattached, not written).
- (c) `positives`: each row is a positive (a click on label `labels[0]`); every click also serves
  `negatives` items drawn from the items clicked in the trailing `window_s` before it
  (`freshrec.data.globo.sample_trailing_negatives`: in proportion to recent popularity, never the
  future, never the clicked item); the share of candidates kept is the sample rate, recorded.

THE hash (`stable_hash`): a string becomes the first 8 bytes of blake2b (digest_size=8, no key)
of its UTF-8 bytes, read little-endian, shifted right by one bit: a non-negative int64, the same
on every machine, process and Python version. A value of any other type is hashed as its text
(an int 12 as "12", a float as pyarrow writes it). Integer columns of `type = "int"` (or "auto")
are ids as they are, so raw integer ids never change. It is `freshrec.data.dataset.stable_ids`,
pinned by a test vector. Missing categorical values are id 0.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from freshrec.data.dataset import RESERVED_KEYS, stable_ids
from freshrec.errors import SchemaError

__all__ = [
    "Impressions",
    "Label",
    "Schema",
    "Slot",
    "Source",
    "load_schema",
    "shipped_schema",
    "stable_hash",
]

SlotKind = Literal["categorical", "multi", "dense"]
IdType = Literal["auto", "int", "string", "hex"]
Shape = Literal["rows", "behaviour", "positives"]
TimeUnit = Literal["s", "ms", "us", "ns", "iso"]
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNIT_S = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}  # units per second
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"


def stable_hash(values: Iterable[Any]) -> np.ndarray:
    """THE hash of freshrec (see the module docstring): each value's text -> a non-negative int64.

    `stable_hash(["a"])[0] == 5468936487432627000 >> 0` style vectors are pinned in the tests."""
    return stable_ids(v if isinstance(v, str) else str(v) for v in values)


@dataclass(frozen=True, kw_only=True)
class Source:
    """The files a schema reads. `paths` are files or globs (sorted, relative to `base`); the format
    is csv, tsv, parquet or jsonl (`auto`: from the suffix, gzip allowed: `.csv.gz`)."""

    paths: tuple[str, ...]
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"
    header: bool = True
    columns: tuple[str, ...] = ()
    delimiter: str | None = None
    base: str = "."

    def files(self) -> list[Path]:
        """The matching files, each glob sorted, in the order given; SchemaError when one matches none."""
        out: list[Path] = []
        for p in self.paths:
            full = p if os.path.isabs(p) else os.path.join(self.base, p)
            found = (
                sorted(glob.glob(full)) if glob.has_magic(full) else ([full] if os.path.isfile(full) else [])
            )
            if not found:
                msg = f"schema source: no file matches {full!r}"
                raise SchemaError(msg, field="files", file=full)
            out.extend(Path(f) for f in found)
        return out

    def format_of(self, path: Path) -> str:
        if self.format != "auto":
            return self.format
        name = path.name.lower().removesuffix(".gz")
        for suffix, fmt in (
            (".parquet", "parquet"),
            (".pq", "parquet"),
            (".jsonl", "jsonl"),
            (".json", "jsonl"),
            (".ndjson", "jsonl"),
            (".tsv", "tsv"),
            (".txt", "tsv"),
        ):
            if name.endswith(suffix):
                return fmt
        return "csv"


@dataclass(frozen=True, kw_only=True)
class Slot:
    """One column -> one slot (see the module docstring for the fields)."""

    name: str
    column: str = ""
    kind: SlotKind = "categorical"
    type: IdType = "auto"
    separator: str | None = None
    side: Literal["context", "item"] = "context"
    log1p: bool = False
    clip: tuple[float, float] | None = None
    standardize: bool = False
    fill: float = 0.0

    def __post_init__(self) -> None:
        if not self.column:
            object.__setattr__(self, "column", self.name)
        if not _NAME_RE.fullmatch(self.name) or self.name in RESERVED_KEYS:
            msg = (
                f"schema slot {self.name!r}: a slot name is an identifier, not one of {sorted(RESERVED_KEYS)}"
            )
            raise SchemaError(msg, field=self.name)
        if self.kind not in ("categorical", "multi", "dense"):
            msg = f"schema slot {self.name!r}: kind must be categorical, multi or dense, got {self.kind!r}"
            raise SchemaError(msg, field=self.name)
        if self.type not in ("auto", "int", "string", "hex"):
            msg = f"schema slot {self.name!r}: type must be auto, int, string or hex, got {self.type!r}"
            raise SchemaError(msg, field=self.name)
        if self.clip is not None:
            lo, hi = (float(x) for x in self.clip)
            if not lo <= hi:
                msg = f"schema slot {self.name!r}: clip {self.clip} needs low <= high"
                raise SchemaError(msg, field=self.name)
            object.__setattr__(self, "clip", (lo, hi))
        if self.kind != "dense" and (self.log1p or self.clip or self.standardize):
            msg = f"schema slot {self.name!r}: log1p / clip / standardize apply to dense slots only"
            raise SchemaError(msg, field=self.name)


@dataclass(frozen=True, kw_only=True)
class Label:
    """One label (a task, an action type): from a `column` (shape a; binary `value >= threshold`
    when `threshold` is set) or a `behaviour` value (shape b); shape (c) labels its positives 1."""

    name: str
    column: str | None = None
    threshold: float | None = None
    behaviour: str | None = None

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            msg = f"schema label {self.name!r}: a label name is an identifier"
            raise SchemaError(msg, field=self.name)


@dataclass(frozen=True, kw_only=True)
class Impressions:
    """How impressions arise: `rows` (a), `behaviour` (b) or `positives` (c); see the module docstring."""

    shape: Shape = "rows"
    column: str | None = None
    impression: str | None = None
    window_s: float = 3600.0
    negatives: int = 4
    seed: int = 0
    delay_s: float = 1.0

    def __post_init__(self) -> None:
        if self.shape not in ("rows", "behaviour", "positives"):
            msg = f"schema impressions: shape must be rows, behaviour or positives, got {self.shape!r}"
            raise SchemaError(msg, field="impressions.shape")
        if self.shape == "behaviour" and (not self.column or self.impression is None):
            msg = "schema impressions: shape 'behaviour' needs `column` and `impression`"
            raise SchemaError(msg, field="impressions.column")
        if self.window_s <= 0 or self.negatives < 0 or self.delay_s < 0:
            msg = f"schema impressions: need window_s > 0, negatives >= 0, delay_s >= 0 ({self})"
            raise SchemaError(msg, field="impressions")


@dataclass(frozen=True, kw_only=True)
class Schema:
    """A user's columns as slots, their timestamps, users, items, labels and impressions.

    `stats` holds the dense slots' training statistics (name -> [mean, std]) once a batch training
    has computed them (`with_stats`); a snapshot stores the whole schema (`to_dict`)."""

    name: str
    source: Source
    slots: tuple[Slot, ...]
    labels: tuple[Label, ...]
    user: str
    item: str
    timestamp: str | None = None
    time_unit: TimeUnit = "s"
    impressions: Impressions = field(default_factory=Impressions)
    stats: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    origin: str = ""

    def __post_init__(self) -> None:
        where = self.origin
        if not _NAME_RE.fullmatch(self.name):
            msg = f"schema name {self.name!r} must be an identifier"
            raise SchemaError(msg, field="name", file=where)
        names = [s.name for s in self.slots]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup or not self.slots:
            msg = f"schema {self.name!r}: slots must be present and unique (repeated: {dup})"
            raise SchemaError(msg, field="slots", file=where)
        for role in ("user", "item"):
            sname = getattr(self, role)
            s = self.slot(sname) if sname in names else None
            if s is None or s.kind != "categorical":
                msg = (
                    f"schema {self.name!r}: {role} = {sname!r} must name a categorical slot (slots: {names})"
                )
                raise SchemaError(msg, field=role, file=where)
        if self.time_unit not in (*_UNIT_S, "iso"):
            msg = f"schema {self.name!r}: time_unit must be one of s, ms, us, ns, iso, got {self.time_unit!r}"
            raise SchemaError(msg, field="time_unit", file=where)
        if not self.labels:
            msg = f"schema {self.name!r}: at least one label is needed ([schema.labels.NAME])"
            raise SchemaError(msg, field="labels", file=where)
        shape = self.impressions.shape
        for lab in self.labels:
            if shape == "rows" and not lab.column:
                msg = f"schema {self.name!r}: label {lab.name!r} needs a `column` (shape rows)"
                raise SchemaError(msg, field=lab.name, file=where)
            if shape == "behaviour" and lab.behaviour is None:
                msg = f"schema {self.name!r}: label {lab.name!r} needs a `behaviour` value (shape behaviour)"
                raise SchemaError(msg, field=lab.name, file=where)
        if shape != "rows" and self.timestamp is None:
            msg = f"schema {self.name!r}: shape {shape!r} needs a `timestamp` column"
            raise SchemaError(msg, field="timestamp", file=where)
        object.__setattr__(
            self, "stats", {k: (float(v[0]), float(v[1])) for k, v in dict(self.stats).items()}
        )

    # ------------------------------------------------------------------ views

    def slot(self, name: str) -> Slot:
        for s in self.slots:
            if s.name == name:
                return s
        msg = f"schema {self.name!r} has no slot {name!r}"
        raise SchemaError(msg, field=name, file=self.origin)

    @property
    def sparse_slots(self) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.kind == "categorical")

    @property
    def multi_slots(self) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.kind == "multi")

    @property
    def dense_slots(self) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.kind == "dense")

    @property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.dense_slots)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(lab.name for lab in self.labels)

    def columns(self) -> list[str]:
        """The source columns this schema reads (each once, in first-use order)."""
        cols = [s.column for s in self.slots]
        cols += [lab.column for lab in self.labels if lab.column]
        if self.timestamp:
            cols.append(self.timestamp)
        if self.impressions.column:
            cols.append(self.impressions.column)
        return list(dict.fromkeys(cols))

    # ------------------------------------------------------------------ (de)serialization

    def to_dict(self) -> dict[str, Any]:
        """JSON data that `from_dict` reads back (what a snapshot stores under meta["schema"])."""
        d = asdict(self)
        d.pop("origin")
        d["source"]["paths"] = list(self.source.paths)
        d["source"]["columns"] = list(self.source.columns)
        d["slots"] = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()} for s in self.slots
        ]
        d["stats"] = {k: list(v) for k, v in self.stats.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base: str | os.PathLike = ".", origin: str = "") -> Schema:
        """A schema from `to_dict` output or from the `[schema]` table of a config file (slots and
        labels as tables keyed by name, `files` for the source's paths). SchemaError naming the
        field and `origin` (the file it came from) on anything malformed."""
        d = dict(d)
        try:
            src = d.pop("source", None)
            if src is None:
                files = d.pop("files", None)
                if files is None:
                    msg = "schema: `files` (a path or a list of paths/globs) is missing"
                    raise SchemaError(msg, field="files", file=origin)
                src = {"paths": [files] if isinstance(files, str) else list(files)}
                for k in ("format", "header", "columns", "delimiter"):
                    if k in d:
                        src[k] = d.pop(k)
            src = dict(src)
            src.setdefault("base", str(base))
            src["paths"] = tuple(src.get("paths", ()))
            src["columns"] = tuple(src.get("columns", ()))
            source = Source(**src)
            slots = _named(d.pop("slots", {}), "slots", origin)
            labels = _named(d.pop("labels", {}), "labels", origin)
            imp = Impressions(**dict(d.pop("impressions", {})))
            for s in slots:
                if isinstance(s.get("clip"), list):
                    s["clip"] = tuple(s["clip"])
            return cls(
                source=source,
                slots=tuple(Slot(**s) for s in slots),
                labels=tuple(Label(**lab) for lab in labels),
                impressions=imp,
                origin=origin,
                **d,
            )
        except TypeError as e:
            msg = f"schema{' in ' + origin if origin else ''}: {e}"
            raise SchemaError(msg, file=origin) from None

    def with_stats(self, stats: Mapping[str, tuple[float, float]]) -> Schema:
        return replace(self, stats=dict(stats))

    def with_types(self, types: Mapping[str, IdType]) -> Schema:
        """The schema with `auto` slot types resolved (what the data showed), so serving hashes alike."""
        return replace(self, slots=tuple(replace(s, type=types.get(s.name, s.type)) for s in self.slots))

    def features_dict(self) -> dict[str, Any]:
        """What must match between a schema and a snapshot: slots, labels, user/item, stats."""
        d = self.to_dict()
        return {k: d[k] for k in ("slots", "labels", "user", "item", "stats")}

    def check_matches(self, stored: Mapping[str, Any] | Schema | None, *, where: str) -> None:
        """SchemaError naming what differs when `stored` (a snapshot's schema) is not this schema's
        features (slots, types, transforms, labels, user, item); `auto` types match any; stats of
        the snapshot win and are not compared."""
        if stored is None:
            msg = f"snapshot {where} was written without a schema; schema {self.name!r} cannot be checked"
            raise SchemaError(msg, file=where)
        other = stored if isinstance(stored, Schema) else Schema.from_dict(stored, origin=where)
        diffs = []
        mine = {s.name: s for s in self.slots}
        theirs = {s.name: s for s in other.slots}
        if list(mine) != list(theirs):
            diffs.append(f"slots {list(mine)} vs the snapshot's {list(theirs)}")
        for n in mine.keys() & theirs.keys():
            a, b = asdict(mine[n]), asdict(theirs[n])
            for k in a:
                if k in ("column",) or (k == "type" and "auto" in (a[k], b[k])):
                    continue
                if a[k] != b[k]:
                    diffs.append(f"slot {n!r} {k}: {a[k]!r} vs the snapshot's {b[k]!r}")
        if self.label_names != other.label_names:
            diffs.append(f"labels {list(self.label_names)} vs the snapshot's {list(other.label_names)}")
        if (self.user, self.item) != (other.user, other.item):
            diffs.append(f"user/item {self.user}/{self.item} vs the snapshot's {other.user}/{other.item}")
        if diffs:
            msg = f"schema {self.name!r} does not match the snapshot {where}: " + "; ".join(diffs)
            raise SchemaError(msg, field=diffs[0].split()[1].strip("'") if diffs else "", file=where)

    def fingerprint(self) -> str:
        """sha256 of the schema's JSON (sources included): the identity of an import."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _named(table: Any, what: str, origin: str) -> list[dict[str, Any]]:
    """`[schema.slots.NAME]` tables (or a list of tables with `name`) -> dicts with `name`, in order."""
    if isinstance(table, Mapping):
        out = []
        for k, v in table.items():
            if not isinstance(v, Mapping):
                msg = f"schema {what}.{k} must be a table, got {v!r}"
                raise SchemaError(msg, field=k, file=origin)
            out.append({"name": k, **v})
        return out
    if isinstance(table, Sequence) and not isinstance(table, str):
        return [dict(v) for v in table]
    msg = f"schema {what} must be tables ([schema.{what}.NAME])"
    raise SchemaError(msg, field=what, file=origin)


def load_schema(path: str | os.PathLike, *, overrides: Mapping[str, Any] | None = None) -> Schema:
    """The `[schema]` table of a TOML config file; relative file paths are relative to the file.

    `overrides` replace top-level keys of the table (e.g. {"files": [...]} from a command line)."""
    import tomllib

    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        msg = f"cannot read schema config {p}: {e}"
        raise SchemaError(msg, file=str(p)) from None
    table = doc.get("schema")
    if not isinstance(table, dict):
        msg = f"config {p} has no [schema] table"
        raise SchemaError(msg, field="schema", file=str(p))
    table = {**table, **dict(overrides or {})}
    return Schema.from_dict(table, base=p.parent, origin=str(p))


def shipped_schema(name: str, files: str | os.PathLike | None = None) -> Schema:
    """A schema shipped in `examples/` (`movielens`, `globo`, `criteo`, ...), its files pointed at
    `files` (default: the shared data folder's copy)."""
    path = EXAMPLES_DIR / f"{name}.toml"
    if not path.is_file():
        have = sorted(p.stem for p in EXAMPLES_DIR.glob("*.toml"))
        msg = f"no shipped schema {name!r} (shipped: {have})"
        raise SchemaError(msg, field=name, file=str(path))
    overrides: dict[str, Any] = {}
    if files is not None:
        overrides["files"] = [str(files)]
    else:
        from freshrec.data.paths import shared_data_dir

        sch = load_schema(path)
        overrides["files"] = [str(shared_data_dir() / f) for f in sch.source.paths]
    return load_schema(path, overrides=overrides)
