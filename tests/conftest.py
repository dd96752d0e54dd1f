"""Shared pytest fixtures and hooks.

- `kafka_bootstrap` (session): "127.0.0.1:PORT" of a real Kafka broker for the test run, or the
  one named by FRESHREC_KAFKA_BOOTSTRAP. When any selected test is marked `kafka`, the broker is
  started in the background at collection time and those tests run last, so the start overlaps
  with the other tests. Without Java 17+ and the broker jars, the Kafka tests skip, except under
  CI=true, where they fail: CI must run them.
- `deterministic_torch`: one torch thread and deterministic algorithms for the test, so that
  runs compared number for number (recovery, chaos) compute the same floats.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import kafka_broker

_BROKER = pytest.StashKey[kafka_broker.BackgroundBroker]()


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kafka = [item for item in items if item.get_closest_marker("kafka") is not None]
    if not kafka:
        return
    items[:] = [item for item in items if item.get_closest_marker("kafka") is None] + kafka
    if config.option.collectonly or os.environ.get("FRESHREC_KAFKA_BOOTSTRAP"):
        return
    if _BROKER not in config.stash:
        config.stash[_BROKER] = kafka_broker.BackgroundBroker()


def pytest_unconfigure(config: pytest.Config) -> None:
    broker = config.stash.get(_BROKER, None)
    if broker is not None:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    external = os.environ.get("FRESHREC_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    config = request.config
    if _BROKER not in config.stash:  # asked for by a test without the kafka mark
        config.stash[_BROKER] = kafka_broker.BackgroundBroker()
    broker = config.stash[_BROKER]
    broker.wait()
    if broker.skip_reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{broker.skip_reason} (CI=true: the Kafka tests must run in CI)", pytrace=False)
        pytest.skip(broker.skip_reason)
    if broker.error is not None or broker.bootstrap is None:
        pytest.fail(f"could not start the Kafka broker: {broker.error}", pytrace=False)
    yield broker.bootstrap


@pytest.fixture
def deterministic_torch() -> Iterator[None]:
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(n)
