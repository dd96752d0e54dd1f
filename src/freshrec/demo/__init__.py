"""`freshrec demo`: the whole loop in one process (see `freshrec.demo.loop`)."""

from __future__ import annotations

from freshrec.demo.loop import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
