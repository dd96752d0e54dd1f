"""Shared pytest fixtures and hooks.

- `kafka_bootstrap` (session): "127.0.0.1:PORT" of a real Kafka broker for the test run, or the
  one named by FRESHREC_KAFKA_BOOTSTRAP. When any selected test is marked `kafka`, the broker is
  started in the background at collection time and those tests run last, so the start overlaps
  with the other tests. Without Java 17+ and the broker jars, the Kafka tests skip, except under
  CI=true, where they fail: CI must run them.
- Ray's environment (`freshrec.ps.ray_ps.RAY_ENVIRONMENT`) is set for the whole run.
- `deterministic_torch`: one torch thread and deterministic algorithms for the test, so that
  runs compared number for number (recovery, chaos) compute the same floats.
- `@pytest.mark.shared_data("globo/clicks.csv.gz", ...)`: the test reads these files of the shared
  data (`freshrec.data.paths.shared_data_dir()`); without them it skips, except under CI=true, where
  it fails: `../shared/data` is always there in CI, so the README's figures are checked there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import kafka_broker
from freshrec.ps.ray_ps import RAY_ENVIRONMENT

# the test run is the process here: Ray's loopback-only single-host mode must be in the environment
# before anything imports ray (freshrec.ps.ray_ps.start_local_cluster checks; the CLI sets it too)
os.environ.update(RAY_ENVIRONMENT)

_BROKER = pytest.StashKey[kafka_broker.BackgroundBroker]()


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_runtest_setup(item: pytest.Item) -> None:
    from freshrec.data.paths import shared_data_dir

    for mark in item.iter_markers("shared_data"):
        missing = [shared_data_dir() / name for name in mark.args if not (shared_data_dir() / name).exists()]
        if not missing:
            continue
        what = ", ".join(str(p) for p in missing)
        if _under_ci():
            pytest.fail(f"shared data not found: {what} (CI=true: ../shared/data must be there)",
                        pytrace=False)
        pytest.skip(f"shared data not found: {what} (see ../shared/data/README.md, or set FRESHREC_DATA)")


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
        if _under_ci():
            pytest.fail(f"{broker.skip_reason} (CI=true: the Kafka tests must run in CI)", pytrace=False)
        pytest.skip(broker.skip_reason)
    if broker.error is not None or broker.bootstrap is None:
        pytest.fail(f"could not start the Kafka broker: {broker.error}", pytrace=False)
    yield broker.bootstrap


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small models train fastest on one thread (and CI has two cores shared by everything); a
    module uses it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def deterministic_torch() -> Iterator[None]:
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(n)
