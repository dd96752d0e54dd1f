"""The command line: every command documents itself, and one TOML file configures every role."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from freshrec import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_has_help_and_an_example():
    for words, mod_name in cli.COMMANDS.items():
        mod = importlib.import_module(mod_name)
        assert mod.HELP and mod.EXAMPLE.startswith("freshrec " + " ".join(words)), words
        parser = argparse.ArgumentParser()
        mod.configure(parser)  # must not raise


def test_top_level_help_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for words in cli.COMMANDS:
        assert " ".join(words) in out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--sync-interval", type=float, default=10.0)
    p.add_argument("--port", type=int, default=8080)
    return p


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    cfg = tmp_path / "f.toml"
    cfg.write_text('log = "./logs"\nunrelated = 3\n[serve]\nsync-interval = 1.0\nport = 9000\n')
    p = _parser()
    assert cli._apply_config(p, cfg, ("serve",)) is None
    args = p.parse_args([])  # --log no longer required: the file gives it
    assert (args.log, args.sync_interval, args.port) == ("./logs", 1.0, 9000)
    assert p.parse_args(["--port", "1"]).port == 1


def test_config_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[serve]\nnope = 1\n")
    assert "has no option 'nope'" in cli._apply_config(_parser(), bad, ("serve",))
    broken = tmp_path / "broken.toml"
    broken.write_text("= =")
    assert "cannot read config" in cli._apply_config(_parser(), broken, ("serve",))


@pytest.mark.parametrize("words", [("join",), ("train", "online"), ("serve",)])
def test_example_config_is_valid_for_each_role(words):
    mod = importlib.import_module(cli.COMMANDS[words])
    parser = argparse.ArgumentParser()
    mod.configure(parser)
    assert cli._apply_config(parser, ROOT / "freshrec.example.toml", words) is None
