"""The model contract: what a model must be for freshrec to train it (batch, online), sync it, serve it.

A model is an `nn.Module` class that freshrec names by an import path plus JSON keyword arguments,
`ModelSpec("freshrec.model:DeepFM", {"hidden": [64, 32]})` or `ModelSpec("mypkg.towers:MyModel")`,
recorded in every snapshot and rebuilt from it by `build_model` wherever it runs (training PS,
online trainer, serving replica). Nothing else in freshrec constructs a specific model class.

    from freshrec.model import SlotModel, Task, FeatureSpec

    class MyModel(SlotModel):
        embedding_extra_columns = 0     # each slot's layer is spec.slot_dim(slot) + this wide

        def __init__(self, spec, embeddings, *, tasks=(Task(name="click"),), hidden=(64,), seed=0):
            super().__init__()
            k = self._set_embeddings(spec, embeddings, tasks)     # keeps spec, embeddings, tasks
            with torch.random.fork_rng(devices=[]):              # seeded, caller's RNG untouched
                torch.manual_seed(seed)
                self.mlp = nn.Sequential(nn.Linear(len(spec.slots) * k + spec.dense_dim, hidden[0]),
                                         nn.ReLU(), nn.Linear(hidden[0], len(self.tasks)))

        def forward(self, sparse, dense=None):
            E = self.embed(sparse)                                 # (B, F, k), pooled bags
            x = E.reshape(E.shape[0], -1)                          # (B, F * k)
            if dense is not None:
                x = torch.cat([x, dense], dim=1)                   # (B, F * k + D)
            return self.mlp(x)                                     # (B, T)

The rules (`check_model` tests a model against them):

1. **Embedding layers.** `__init__(spec, embeddings, *, tasks, **kwargs)`: `embeddings` is an
   `nn.ModuleDict` holding one layer per slot of `spec`, built by freshrec: a `CollisionlessEmbedding`
   (training: a table with its optimizer; serving: a serving table) or a `HashedEmbedding`, each
   `spec.slot_dim(slot) + embedding_extra_columns` wide. The model reads ids only through these
   layers (`self.embed(sparse)` for every slot at once, or calling a layer itself, e.g. for an
   unpooled bag); it keeps no other per-id state.
2. **Inputs.** `forward(sparse, dense)`: `sparse[slot]` is int64 ids (B,) for a single-valued slot
   and `(flat ids (N,), offsets (B,))` for a multi-valued one (bag b = flat[offsets[b]:offsets[b+1]]);
   `dense` is float32 (B, spec.dense_dim), or None when the spec has no dense features.
3. **Outputs.** (B, T), column t for task t of `tasks` (a (B,) tensor is accepted when T == 1): the
   logit of a binary task (trained with BCE plus the sampling correction, served as a probability)
   or the value of a value task (trained with MSE / L1 / Huber, served as it is).
4. **Dense state.** Every torch parameter and buffer is in `state_dict()`: it is what syncs to
   serving as dense weights and what snapshots hold. Hashed embedding rows are parameters too.
5. **Deterministic construction.** Given the same kwargs (a `seed` among them) the model starts
   from the same weights, so a trainer and a replica built apart agree before any sync.
6. **Plain-data kwargs.** JSON values only (numbers, strings, lists, dicts): they go in manifests.
7. **Rows are independent.** In eval mode, row b's outputs depend on row b's inputs alone (no
   softmax or normalization across the batch): a trained batch mixes examples of many requests,
   and the model server scores the candidates of concurrent requests in one call
   (`freshrec.model.rows`).

Short names: "deepfm", "dcn" and "din" stand for the models shipped in `freshrec.model`.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from freshrec.errors import ConfigError
from freshrec.model.rows import head_rows

if TYPE_CHECKING:
    from freshrec.model.features import FeatureSpec

__all__ = [
    "MODEL_ALIASES",
    "Batch",
    "ModelSpec",
    "Task",
    "build_model",
    "check_model",
    "outputs_2d",
    "parse_tasks",
    "task_losses",
]

MODEL_ALIASES = {
    "deepfm": "freshrec.model:DeepFM",
    "dcn": "freshrec.model:DCN",
    "din": "freshrec.model:DIN",
}

TaskKind = Literal["binary", "value"]
_LOSSES = {"binary": ("bce",), "value": ("mse", "l1", "huber")}


@dataclass(frozen=True, kw_only=True)
class Task:
    """One output of a model and how it trains.

    name: the task's name (a key of `/v1/rank`'s per-task scores). label: the example label it
    reads, i.e. the joiner's action type (default: `name`). kind "binary": target = label > 0,
    loss "bce" with the log-odds correction of sampled negatives, served as a probability; kind
    "value": target = the label's value (e.g. watch seconds, a rating), loss "mse" (or "l1",
    "huber"), weighted by 1 / sample_rate where negatives were sampled, served as it is.
    weight: the task's weight in the training loss.
    """

    name: str
    label: str | None = None
    kind: TaskKind = "binary"
    loss: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "a").replace("-", "a").isalnum():
            msg = f"task name {self.name!r} must be a non-empty word ([A-Za-z0-9_-])"
            raise ConfigError(msg)
        if self.kind not in _LOSSES:
            msg = f"task {self.name!r}: kind must be 'binary' or 'value', got {self.kind!r}"
            raise ConfigError(msg)
        if self.loss is not None and self.loss not in _LOSSES[self.kind]:
            fits = _LOSSES[self.kind]
            msg = f"task {self.name!r}: loss {self.loss!r} does not fit kind {self.kind!r} ({fits})"
            raise ConfigError(msg)
        if not (math.isfinite(self.weight) and self.weight >= 0):
            msg = f"task {self.name!r}: weight must be finite and >= 0, got {self.weight}"
            raise ConfigError(msg)

    @property
    def target(self) -> str:
        """The label this task reads."""
        return self.label or self.name

    @property
    def loss_name(self) -> str:
        return self.loss or _LOSSES[self.kind][0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "kind": self.kind,
            "loss": self.loss,
            "weight": self.weight,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        try:
            return cls(
                name=str(d["name"]),
                label=d.get("label"),
                kind=d.get("kind", "binary"),
                loss=d.get("loss"),
                weight=float(d.get("weight", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            msg = f"not a task description: {d!r} ({e})"
            raise ConfigError(msg) from e


DEFAULT_TASKS = (Task(name="click"),)


def parse_tasks(text: str | Sequence[Any] | None) -> tuple[Task, ...]:
    """Tasks from the CLI / config form: "click,rating:value,watch:value:0.5" (name[:kind[:weight]],
    where name may be "name=label" to read another label), a list of such strings, or a list of
    task tables. None or empty: one binary task "click"."""
    if text is None:
        return DEFAULT_TASKS
    items: list[Any] = [t for t in text.split(",")] if isinstance(text, str) else list(text)
    out = []
    for item in items:
        if isinstance(item, Mapping):
            out.append(Task.from_dict(item))
            continue
        s = str(item).strip()
        if not s:
            continue
        parts = s.split(":")
        name, _, label = parts[0].partition("=")
        kind = parts[1] if len(parts) > 1 and parts[1] else "binary"
        try:
            weight = float(parts[2]) if len(parts) > 2 else 1.0
        except ValueError:
            msg = f"task {s!r}: weight {parts[2]!r} is not a number"
            raise ConfigError(msg) from None
        out.append(Task(name=name, label=label or None, kind=kind, weight=weight))  # type: ignore[arg-type]
    if not out:
        return DEFAULT_TASKS
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        msg = f"duplicate task names in {names}"
        raise ConfigError(msg)
    return tuple(out)


@dataclass(frozen=True)
class ModelSpec:
    """A model class by import path ("package.module:Class", or a short name of `MODEL_ALIASES`)
    plus its keyword arguments (JSON data)."""

    path: str = "freshrec.model:DeepFM"
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", MODEL_ALIASES.get(self.path, self.path))
        try:
            kwargs = json.loads(json.dumps(dict(self.kwargs)))
        except (TypeError, ValueError) as e:
            msg = f"model {self.path}: kwargs must be JSON data, got {self.kwargs!r} ({e})"
            raise ConfigError(msg) from e
        object.__setattr__(self, "kwargs", kwargs)
        if ":" not in self.path:
            msg = f"model {self.path!r}: expected 'package.module:Class' or one of {sorted(MODEL_ALIASES)}"
            raise ConfigError(msg)

    def resolve(self) -> type[nn.Module]:
        """The model class; ConfigError naming the path when it cannot be imported."""
        module, _, name = self.path.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            msg = f"model {self.path!r} cannot be imported: {e}"
            raise ConfigError(msg) from e
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
            msg = f"model {self.path!r} is not an nn.Module class"
            raise ConfigError(msg)
        return obj

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        try:
            return cls(str(d["path"]), dict(d.get("kwargs") or {}))
        except (KeyError, TypeError) as e:
            msg = f"not a model description: {d!r} ({e})"
            raise ConfigError(msg) from e

    @classmethod
    def parse(cls, path: str | None, kwargs: str | Mapping[str, Any] | None = None) -> ModelSpec:
        """From the CLI: a path (or short name) and kwargs as a JSON object string or a mapping."""
        if isinstance(kwargs, str):
            try:
                kwargs = json.loads(kwargs) if kwargs.strip() else {}
            except json.JSONDecodeError as e:
                msg = f"--model-kwargs is not a JSON object: {e}"
                raise ConfigError(msg) from None
            if not isinstance(kwargs, dict):
                msg = f"--model-kwargs must be a JSON object, got {kwargs!r}"
                raise ConfigError(msg)
        return cls(path or "freshrec.model:DeepFM", dict(kwargs or {}))


def extra_columns_of(model_class: type) -> int:
    """How much wider than its slot dim each embedding layer of `model_class` is."""
    return int(getattr(model_class, "embedding_extra_columns", 0))


def build_model(
    model: ModelSpec,
    spec: FeatureSpec,
    *,
    tasks: Sequence[Task] = DEFAULT_TASKS,
    embedding: Literal["collisionless", "hashed"] = "collisionless",
    buckets: Mapping[str, int] | None = None,
    hash: str = "mix",
    layers: Mapping[str, nn.Module] | None = None,
) -> nn.Module:
    """The model `model` names over `spec`, with embedding layers built from the spec (`embedding`,
    `buckets`, `hash`, see `FeatureSpec.build`) or given as `layers` (slot -> layer, e.g. layers over
    restored or serving tables). The result remembers its `model_spec`.

    Raises ConfigError naming the model when the class refuses the kwargs or the layers."""
    cls = model.resolve()
    extra = extra_columns_of(cls)
    if layers is None:
        built = spec.build(embedding, buckets=buckets, hash=hash, extra_columns=extra)  # type: ignore[arg-type]
    else:
        missing = set(spec.names) - set(layers)
        if missing:
            msg = f"model {model.path}: no embedding layer for slots {sorted(missing)}"
            raise ConfigError(msg)
        built = nn.ModuleDict({n: layers[n] for n in spec.names})
    try:
        m = cls(spec, built, tasks=tuple(tasks), **dict(model.kwargs))
    except TypeError as e:
        msg = f"model {model.path} cannot be built with kwargs {dict(model.kwargs)}: {e}"
        raise ConfigError(msg) from e
    for attr in ("spec", "embeddings", "tasks"):
        if not hasattr(m, attr):
            msg = f"model {model.path} has no `{attr}`: see the contract in freshrec.model.contract"
            raise ConfigError(msg)
    object.__setattr__(m, "model_spec", model)  # plain attribute (nn.Module's __setattr__ types it)
    return m


def outputs_2d(out: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """A model's output as (B, T): (B,) is accepted for one task."""
    if out.dim() == 1 and n_tasks == 1:
        return out.unsqueeze(1)
    if out.dim() != 2 or out.shape[1] != n_tasks:
        msg = f"the model returned shape {tuple(out.shape)}; expected (B, {n_tasks}) for {n_tasks} task(s)"
        raise ConfigError(msg)
    return out


@dataclass(frozen=True)
class Batch:
    """One mini-batch of model inputs and per-task targets.

    sparse: slot -> ids (B,) or (flat ids (N,), offsets (B,)); dense: (B, D) float32 or None;
    targets: (B, T) float32, column t = task t's target (0/1 for binary tasks, the value else);
    offset: -log(sample_rate) (B,) or None, added to binary logits in the loss; weight: 1 /
    sample_rate (B,) or None, weighting value losses; now: the batch's data time (its max ts).
    """

    sparse: dict[str, Any]
    dense: torch.Tensor | None
    targets: torch.Tensor
    offset: torch.Tensor | None
    now: float
    weight: torch.Tensor | None = None

    @property
    def label(self) -> torch.Tensor:
        """The first task's target (B,)."""
        return self.targets[:, 0]

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def task_losses(
    outputs: torch.Tensor, batch: Batch, tasks: Sequence[Task]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(weighted total loss, per-task mean losses) of model outputs (B, T) on a batch.

    Binary tasks: BCE with logits of `output + offset` (the log-odds correction, see
    `freshrec.stream.sampling`). Value tasks: MSE / L1 / Huber, example-weighted by 1 / sample rate.
    """
    parts: list[torch.Tensor] = []
    total: torch.Tensor | None = None
    for t, task in enumerate(tasks):
        z = outputs[:, t]
        y = batch.targets[:, t].to(z.dtype)
        if task.kind == "binary":
            zz = z if batch.offset is None else z + batch.offset.to(z.dtype)
            loss = F.binary_cross_entropy_with_logits(zz, y)
        else:
            fn: Any = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}[task.loss_name]
            if batch.weight is None:
                loss = fn(z, y)
            else:
                w = batch.weight.to(z.dtype)
                loss = (fn(z, y, reduction="none") * w).sum() / w.sum()
        parts.append(loss)
        term = loss * task.weight
        total = term if total is None else total + term
    assert total is not None
    return total, parts


def check_model(model: nn.Module, batch: Batch) -> None:
    """Check a built model against the contract on one batch: its attributes, the output shape,
    that the dense state is in `state_dict()`, that it is deterministic in eval mode and that
    its rows are independent (the first half of the batch scores alike alone).

    Raises ConfigError naming the rule that failed."""
    for attr in ("spec", "embeddings", "tasks"):
        if not hasattr(model, attr):
            msg = f"{type(model).__name__}: no `{attr}` attribute (rule 1 of freshrec.model.contract)"
            raise ConfigError(msg)
    m: Any = model
    spec = m.spec
    if set(m.embeddings.keys()) != set(spec.names):
        names = sorted(m.embeddings.keys())
        msg = f"{type(model).__name__}: embeddings {names} are not the slots {spec.names}"
        raise ConfigError(msg)
    was = model.training
    model.eval()
    with torch.no_grad():
        a = outputs_2d(model(batch.sparse, batch.dense), len(model.tasks))  # type: ignore[arg-type]
        b = outputs_2d(model(batch.sparse, batch.dense), len(model.tasks))  # type: ignore[arg-type]
        k = max(1, len(batch) // 2)
        head = outputs_2d(model(*head_rows(batch.sparse, batch.dense, k)), len(m.tasks))
    model.train(was)
    if a.shape[0] != len(batch):
        msg = f"{type(model).__name__}: {a.shape[0]} outputs for a batch of {len(batch)} (rule 3)"
        raise ConfigError(msg)
    if not torch.equal(a, b):
        msg = f"{type(model).__name__}: two eval-mode forwards differ (rule 5: deterministic)"
        raise ConfigError(msg)
    if not torch.allclose(head, a[:k], rtol=1e-4, atol=1e-5):
        worst = float((head - a[:k]).abs().max())
        msg = (
            f"{type(model).__name__}: the first {k} rows score differently alone than in a batch of "
            f"{len(batch)} (max difference {worst:.3g}; rule 7: rows are independent)"
        )
        raise ConfigError(msg)
