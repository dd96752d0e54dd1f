"""API fuzzing against the REAL server: a `freshrec serve` process on 127.0.0.1 (a snapshot, a
parameter log, features and actions logs), driven by schemathesis from the server's own OpenAPI
schema, every operation, valid and invalid bodies. Each reply must be no 5xx and conform to the
schema (status documented, content type, body shape, headers). A short bounded pass: a few
hundred requests, deterministic, under a minute; it runs in CI like any other test.
"""

from __future__ import annotations

import collections

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from freshrec.ps import ServingReplica
from freshrec.serve import AppConfig, create_app
from serve_process import HIDDEN, SPEC, make_snapshot, serve_process

TOKEN = "fuzz-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 40  # per operation and generation mode
COUNTS: collections.Counter[str] = collections.Counter()
APP = {"max_candidates": 50, "max_body_bytes": 200_000, "api_token": TOKEN}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    make_snapshot(root)
    flags = ("--max-candidates", str(APP["max_candidates"]), "--max-body-bytes", str(APP["max_body_bytes"]))
    with serve_process(root, *flags, env={"FRESHREC_TOKEN": TOKEN}) as url:
        yield url
        with httpx.Client(base_url=url, timeout=10) as c:  # still up and answering after the pass
            assert c.get("/healthz").status_code == 200
        print(f"\nfuzz: {sum(COUNTS.values())} requests: {dict(sorted(COUNTS.items()))}")


def _schema_of_the_served_app() -> dict:
    """The OpenAPI schema the server process below serves (same options; checked against the
    process's /openapi.json): loaded at collection time, so pytest gets one test per operation."""
    app = create_app(ServingReplica(SPEC, hidden=HIDDEN), config=AppConfig(**APP))
    return app.openapi()


schema = schemathesis.openapi.from_dict(_schema_of_the_served_app())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES, deterministic=True
)


def _plain_integers(value: object) -> object:
    """`value` with every whole float written as an integer (2.0 -> 2)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain_integers(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_integers(v) for k, v in value.items()}
    return value


@schema.hook
def map_body(context, body):
    """Ids must be JSON integer literals: the server refuses `7.0` for an id (a float cannot carry
    every int64; tests/test_http_hardening.py checks the refusal), while JSON Schema counts 7.0 as
    an integer and schemathesis spells some integers so. Writing whole floats as integers changes
    no value in JSON Schema's eyes (numbers accept integers too), so positive cases stay positive
    and negative ones negative."""
    return _plain_integers(body)


def test_the_process_serves_this_schema(server):
    with httpx.Client(base_url=server, timeout=10) as c:
        assert c.get("/openapi.json").json() == _schema_of_the_served_app()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_fuzz_the_real_server(case, server):
    response = case.call_and_validate(base_url=server, headers=AUTH, timeout=10)
    COUNTS[f"{case.method} {case.path} {response.status_code}"] += 1
