"""The `freshrec` command line: the one place that reads argv and the environment.

Each command lives in a module that exposes::

    HELP: str                                   # one line, shown by `freshrec --help`
    EXAMPLE: str                                # one example command line
    def configure(parser: argparse.ArgumentParser) -> None
    def main(args: argparse.Namespace) -> int   # exit code

and may declare the process-wide settings it wants, which this module makes (library code never
changes them)::

    TORCH_THREADS: int           # torch's intra-op threads (the command's `--threads` wins, if any)
    TORCH_DETERMINISTIC: bool    # one thread and deterministic algorithms (also `--deterministic`)
    ENVIRONMENT: dict[str, str]  # environment variables, set unless already set (Ray's, say)

Modules are imported only when their command runs, so `freshrec --help` is fast.

Exit codes, for every command:

    0    done
    1    the command ran and found a problem it reports (`log check` found corruption,
         `bench serve` saw failed requests, `train online` stopped on a bad record)
    2    bad usage or bad input: an unknown option or value (argparse), a config file that does
         not fit, or any `freshrec.errors.FreshrecError` (a bad config value, a missing dataset, a
         corrupt snapshot, ...) or OSError: printed as one line `freshrec COMMAND: message` on
         stderr, no traceback
    130  interrupted (Ctrl-C)

Every command also takes `--config FILE.toml`: top-level keys apply to every command that has
an option of that name, and a section named after the command (`[join]`, `[serve]`,
`[train.online]`, ...) to that command only; flags on the command line win. Keys are option
names with `_` or `-` (`sync_interval = 1.0` sets `--sync-interval`). A top-level `[model]` table
(`path = "mypkg.towers:MyModel"` and a `[model.kwargs]` table) sets `--model` / `--model-kwargs` of
every command that has them. See `freshrec.example.toml`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tomllib
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from freshrec.errors import FreshrecError

__all__ = ["COMMANDS", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PROBLEM", "main"]

EXIT_OK, EXIT_PROBLEM, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

# command words -> module implementing it
COMMANDS: dict[tuple[str, ...], str] = {
    ("demo",): "freshrec.commands.demo",
    ("train",): "freshrec.commands.train",
    ("train", "online"): "freshrec.commands.train_online",
    ("join",): "freshrec.commands.join",
    ("log",): "freshrec.commands.log",
    ("serve",): "freshrec.commands.serve",
    ("replay", "globo"): "freshrec.commands.replay_globo",
    ("import",): "freshrec.commands.import_events",
    ("snapshot",): "freshrec.commands.snapshot",
    ("bench", "table"): "freshrec.bench.table",
    ("bench", "filter"): "freshrec.bench.filter",
    ("bench", "train"): "freshrec.bench.train",
    ("bench", "loop"): "freshrec.bench.loop",
    ("bench", "joiner"): "freshrec.bench.joiner",
    ("bench", "freshness"): "freshrec.bench.freshness",
    ("bench", "serve"): "freshrec.bench.serve",
    ("bench", "workers"): "freshrec.bench.workers",
    ("bench", "snapshot"): "freshrec.bench.snapshot",
    ("bench", "scale"): "freshrec.bench.scale",
    ("bench", "import"): "freshrec.bench.import_rate",
    ("bench", "soak"): "freshrec.bench.soak",
    ("bench", "wakes"): "freshrec.bench.wakes",
    ("experiment", "collision"): "freshrec.experiments.collision",
    ("experiment", "online"): "freshrec.experiments.online",
    ("experiment", "reliability"): "freshrec.experiments.reliability",
    ("experiment", "models"): "freshrec.experiments.models",
    ("experiment", "shapes"): "freshrec.experiments.shapes",
}


def _available() -> dict[tuple[str, ...], str]:
    found = {}
    for words, mod in COMMANDS.items():
        try:
            spec = importlib.util.find_spec(mod)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found[words] = mod
    return found


def _usage(cmds: dict[tuple[str, ...], str]) -> str:
    lines = [
        "usage: freshrec COMMAND [options]",
        "",
        "freshrec: a real-time recommender (collisionless embeddings, online joiner, online training,",
        "touched-key sync, serving). Commands (`freshrec COMMAND --help` for each):",
        "",
    ]
    for words, mod in sorted(cmds.items()):
        m = importlib.import_module(mod)
        lines.append(f"  {' '.join(words):<24} {getattr(m, 'HELP', '')}")
    lines += ["", "example: freshrec demo --minutes 2"]
    return "\n".join(lines)


def _apply_config(parser: argparse.ArgumentParser, path: Path, words: tuple[str, ...]) -> str | None:
    """Set `parser`'s defaults from a TOML file; returns an error message, or None."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        return f"cannot read config {path}: {e}"
    dests = {a.dest for a in parser._actions}
    section: object = doc
    for w in words:
        section = section.get(w, {}) if isinstance(section, dict) else {}
    if not isinstance(section, dict):
        return f"config {path}: [{'.'.join(words)}] must be a table"
    values = {k.replace("-", "_"): v for k, v in doc.items() if not isinstance(v, dict)}
    values = {k: v for k, v in values.items() if k in dests}  # top level: only what this command has
    model = doc.get("model")
    if isinstance(model, dict) and "model" in dests:  # [model] path = "...", [model.kwargs]
        if "path" in model:
            values["model"] = model["path"]
        if "kwargs" in model and "model_kwargs" in dests:
            values["model_kwargs"] = json.dumps(model["kwargs"])
    for k, v in section.items():
        if isinstance(v, dict):
            if k.replace("-", "_") == "model_kwargs" and "model_kwargs" in dests:
                values["model_kwargs"] = json.dumps(v)
            continue
        key = k.replace("-", "_")
        if key not in dests:
            return f"config {path}: [{'.'.join(words)}] has no option {k!r}"
        values[key] = v
    for a in parser._actions:
        if a.dest in values and isinstance(values[a.dest], list) and a.type is None:
            values[a.dest] = ",".join(str(x) for x in values[a.dest])  # tasks = ["click", "rating:value"]
        if a.dest in values and callable(a.type) and isinstance(values[a.dest], str):
            values[a.dest] = a.type(values[a.dest])
    parser.set_defaults(**values)
    for a in parser._actions:
        if a.dest in values:
            a.required = False  # the file provides it
    return None


def _process_settings(mod: ModuleType, args: argparse.Namespace) -> None:
    """The process-wide settings the command declares (see the module docstring)."""
    # torch's sparse Adagrad (hashed rows) warns on every step that it skips invariant checks
    warnings.filterwarnings("ignore", message="Sparse invariant checks")
    for key, value in getattr(mod, "ENVIRONMENT", {}).items():
        os.environ.setdefault(key, value)
    deterministic = bool(getattr(args, "deterministic", False) or getattr(mod, "TORCH_DETERMINISTIC", False))
    threads = getattr(mod, "TORCH_THREADS", None)
    if threads is not None and getattr(args, "threads", None) is not None:
        threads = args.threads
    if threads is None and not deterministic:
        return
    import torch

    torch.set_num_threads(1 if deterministic else max(1, int(threads or 1)))
    if deterministic:
        torch.use_deterministic_algorithms(True)


def _run(mod: ModuleType, args: argparse.Namespace, words: tuple[str, ...]) -> int:
    """`mod.main(args)`, with a FreshrecError or OSError as one line on stderr (exit code 2)."""
    try:
        _process_settings(mod, args)
        return int(mod.main(args) or 0)
    except (FreshrecError, OSError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"freshrec {' '.join(words)}: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"freshrec {' '.join(words)}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = _available()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(cmds))
        return 0
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in cmds:
            mod = importlib.import_module(cmds[words])
            parser = argparse.ArgumentParser(
                prog="freshrec " + " ".join(words),
                description=getattr(mod, "HELP", ""),
                epilog="example: " + getattr(mod, "EXAMPLE", ""),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            mod.configure(parser)
            rest = argv[n:]
            parser.add_argument(
                "--config",
                type=Path,
                default=None,
                help="TOML file with defaults for these options (see freshrec.example.toml)",
            )
            pre_parser = argparse.ArgumentParser(add_help=False)
            pre_parser.add_argument("--config", type=Path, default=None)
            pre, _ = pre_parser.parse_known_args(rest)
            if pre.config is not None:
                err = _apply_config(parser, pre.config, words)
                if err:
                    print(f"freshrec: {err}", file=sys.stderr)
                    return EXIT_ERROR
            args = parser.parse_args(rest)
            return _run(mod, args, words)
    print(f"freshrec: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
    print(_usage(cmds), file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
