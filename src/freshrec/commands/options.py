"""Argument types for the commands' parsers: a value out of range is an argparse error (one
line, exit code 2) before the command starts, naming the option.

    parser.add_argument("--batch-size", type=at_least(1), default=4096)
    parser.add_argument("--seconds", type=positive, default=60.0)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["at_least", "positive"]


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            msg = f"{text!r} is not an integer"
            raise argparse.ArgumentTypeError(msg) from None
        if value < low:
            msg = f"{value} must be >= {low}"
            raise argparse.ArgumentTypeError(msg)
        return value

    parse.__name__ = "int"
    return parse


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        msg = f"{text!r} is not a number"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0.0 < value < float("inf"):
        msg = f"{text} must be a finite number > 0"
        raise argparse.ArgumentTypeError(msg)
    return value
