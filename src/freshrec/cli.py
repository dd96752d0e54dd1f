"""The `freshrec` command line: the one place that reads argv and the environment.

Each command lives in a module that exposes::

    HELP: str                                   # one line, shown by `freshrec --help`
    EXAMPLE: str                                # one example command line
    def configure(parser: argparse.ArgumentParser) -> None
    def main(args: argparse.Namespace) -> int   # exit code

Modules are imported only when their command runs, so `freshrec --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

# command words -> module implementing it
COMMANDS: dict[tuple[str, ...], str] = {
    ("demo",): "freshrec.commands.demo",
    ("train",): "freshrec.commands.train",
    ("train", "online"): "freshrec.commands.train_online",
    ("join",): "freshrec.commands.join",
    ("serve",): "freshrec.commands.serve",
    ("replay", "globo"): "freshrec.commands.replay_globo",
    ("bench", "table"): "freshrec.bench.table",
    ("bench", "filter"): "freshrec.bench.filter",
    ("bench", "train"): "freshrec.bench.train",
    ("bench", "joiner"): "freshrec.bench.joiner",
    ("bench", "freshness"): "freshrec.bench.freshness",
    ("bench", "serve"): "freshrec.bench.serve",
    ("bench", "snapshot"): "freshrec.bench.snapshot",
    ("bench", "scale"): "freshrec.bench.scale",
    ("experiment", "collision"): "freshrec.experiments.collision",
    ("experiment", "online"): "freshrec.experiments.online",
    ("experiment", "reliability"): "freshrec.experiments.reliability",
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
            args = parser.parse_args(argv[n:])
            return int(mod.main(args) or 0)
    print(f"freshrec: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
    print(_usage(cmds), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
