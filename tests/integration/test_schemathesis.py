"""Schemathesis against the service's own OpenAPI document, with a real Redis and Celery worker behind it.

Every operation gets generated requests (the documented examples, schemathesis's edge cases and
random data, bodies in JSON and in msgpack, other HTTP methods, missing and wrong credentials),
and every answer must be: no 5xx, a documented status code, content type and headers, a body that
matches the documented schema, and every error an ``application/problem+json`` problem.

Runs derandomized with a fixed seed: the same requests on every CI run, in well under a minute.
"""

from __future__ import annotations

import json

import msgpack
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from helpers import msgpack_safe_ints

from .conftest import API_KEYS, EXAMPLES, wait_for

pytestmark = pytest.mark.integration

TENANT = "tenant-a"
# Jobs that schemathesis manages to submit must stay tiny: the worker is shared with the rest of
# the suite. 200 steps keep the documented example (200 steps over 4 rows) acceptable; more is a
# 422. Accepted jobs are also cancelled right after the call.
MAX_STEPS = 200
SEED = 20261127
EXAMPLES_PER_OPERATION = 40  # random cases per operation, besides the examples and edge cases
# Each event stream of a finished job takes a second or more (its XREAD blocks for a second
# before it looks at the job's state again), so only the first few go to the real job.
REAL_EVENT_STREAMS = 4
TERMINAL = {"succeeded", "failed", "cancelled"}


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx, value):
    # Bodies may be msgpack too; without a serializer schemathesis skips that media type (and warns).
    return msgpack.packb(msgpack_safe_ints(value))




def problem_details(ctx, response, case):
    """Every error is an RFC 9457 problem: application/problem+json with type/title/status/detail."""
    if response.status_code < 400:
        return None
    media = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
    assert media == "application/problem+json", f"a {response.status_code} answered as {media!r}, not a problem"
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"a {response.status_code} problem that is not JSON: {response.content[:200]!r}") from None
    assert all(field in body for field in ("type", "title", "status", "detail")), f"incomplete problem: {body}"
    assert body["status"] == response.status_code, body
    for error in body.get("errors") or []:
        assert error["location"] == "" or error["location"].startswith("/"), f"not a JSON pointer: {error}"
    return None


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_app(settings, celery_worker):
    """The real app with the session's Redis, namespace and worker; only the step budget is smaller."""
    from service.app import create_app

    return create_app(settings.model_copy(update={"max_steps": MAX_STEPS}))


@pytest.fixture(scope="module")
def real_ids(api) -> dict[str, str]:
    """A stored graph and a finished job of the tenant, so that requests reach past the 404s."""
    graph = json.loads((EXAMPLES / "logistic_regression.json").read_text())
    data = json.loads((EXAMPLES / "data" / "seed_data.json").read_text())
    resp = api.post("/v1/graphs", json=graph, tenant=TENANT)
    assert resp.status_code == 201, resp.text
    graph_id = resp.json()["id"]
    resp = api.post("/v1/jobs", tenant=TENANT, json={"graph_id": graph_id, "data": data, "steps": 10,
                                                     "report_every": 5, "gradients": "full",
                                                     "optimizer": {"name": "sgd", "lr": 0.5}})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    # Finished, so that its event stream ends (whether it succeeded is not what this module tests).
    wait_for(lambda: api.get(f"/v1/jobs/{job_id}", tenant=TENANT).json()["state"] in TERMINAL, timeout=30,
             message=f"job {job_id} to finish")
    return {"graph_id": graph_id, "job_id": job_id}


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"deterministic": True},
        "auth": {"openapi": {"HTTPBearer": {"bearer": API_KEYS[TENANT]}}},
        # A request that hangs (an event stream that never ends) is cut instead of stalling the suite.
        "request-timeout": 10,
        # A schema-violating body that also declares too many elements is refused by the size check
        # first: 413 is a rejection too (schemathesis's default list lacks it).
        "checks": {"negative_data_rejection": {"expected-statuses": [
            "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]}},
    })
    schema = schemathesis.openapi.from_dict(fuzz_app.openapi(), config=config)
    schema.app = fuzz_app  # requests go to the app in-process (ASGI), not over the network
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


# -- the run ---------------------------------------------------------------------------------
def call_and_check(case, api) -> None:
    response = case.call()
    try:
        # Not checked: that schema-valid bodies are accepted. The schema cannot say that a graph
        # document must validate or that data must fit the graph, so most generated ones are 422s.
        case.validate_response(response, excluded_checks=[positive_data_acceptance],
                               additional_checks=[problem_details])
    finally:
        if case.method.upper() == "POST" and case.path == "/v1/jobs" and response.status_code in (200, 202) \
                and "id" in response.json():  # a dry run (200) has no job
            # Free the shared worker at once; a job that already finished answers 409, fine too.
            api.post(f"/v1/jobs/{response.json()['id']}/cancel", tenant=TENANT)


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_openapi_conformance(case, api, real_ids):
    call_and_check(case, api)
    # Generated ids are unknown (404): send the same request again for the tenant's real graph or job.
    known = {name: real_ids[name] for name in ("graph_id", "job_id") if name in (case.path_parameters or {})}
    if known and _take_real_stream(case):
        case.path_parameters = {**case.path_parameters, **known}
        call_and_check(case, api)


_real_streams_left = [REAL_EVENT_STREAMS]


def _take_real_stream(case) -> bool:
    if not case.path.endswith("/events"):
        return True
    _real_streams_left[0] -= 1
    return _real_streams_left[0] >= 0


# -- what the run found ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["OPTIONS", "DELETE", "PUT"])
def test_405_allow_lists_every_method_of_the_path(api, method):
    """Regression: Starlette's Allow named only the first route matching the path (Allow: POST on
    /v1/jobs, where GET is served too); RFC 9110 wants every method the resource supports."""
    resp = api.request(method, "/v1/jobs")
    assert resp.status_code == 405, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert {m.strip() for m in resp.headers["allow"].split(",")} == {"GET", "POST"}
    resp = api.request(method, "/v1/jobs/job_x/cancel")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
