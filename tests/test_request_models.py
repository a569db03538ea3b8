"""Hostile job and explain requests at the unit level: no Redis, no worker, no HTTP.

The service's promise for a request body (service/bodies.py, service/models.py, and the checks
of service/submit.py and service/explaining.py behind them): whatever arrives is either the
typed request (and, for a job, a job ready to store) or a :class:`ProblemError` with a 4xx
status whose ``errors`` each name a JSON-pointer ``location`` in the body. Any other exception
would reach the API's last-resort handler as a 500.

The property tests feed arbitrary JSON-like trees, trees shaped like the request models and
mutations of valid requests; the pinned tests feed decompression-bomb-like bodies (deep
nesting, huge declared msgpack lengths) to the body reader and check they are refused quickly
and without much memory. Hypothesis runs derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import copy
import json
import re
import time
import tracemalloc
from typing import Any, Callable

import anyio
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

import graphspec
from runtime import OPTIMIZERS
from service.bodies import read_tree, validate_model, wants_msgpack
from service.examples import EXPLAIN_EXAMPLE, JOB_EXAMPLE, SEED_GRAPH
from service.explaining import explain_graph
from service.limits import body_limits
from service.models import ExplainRequest, JobRequest, OptimizerSpec
from service.problems import ProblemError, problem_body
from service.submit import PreparedJob, prepare_job
from service.settings import ApiSettings
from worker.store import decode_tensors
from helpers import msgpack_safe_ints

# When a @given test fails, hypothesis imports libcst to explain the failure, and that import
# warns about mypy_extensions.TypedDict. The warning is attributed to libcst, so pyproject's
# module filter for mypy_extensions misses it, and under filterwarnings=error it replaces the
# failure report with an INTERNALERROR. Only that message is ignored, only here.
pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

# The integration suite's limits (tests/integration/conftest.py): small, so that limits are reachable.
SETTINGS = ApiSettings(api_keys="key-a:tenant-a", max_body_bytes=256 * 1024, max_nodes=64,
                       max_tensor_elements=20_000, max_job_data_bytes=64 * 1024, max_steps=500_000,
                       max_explain_elements=1_000)
# The production defaults, for the bombs: the larger the limits, the more a declared length may ask for.
DEFAULT_SETTINGS = ApiSettings(api_keys="key-a:tenant-a")

JSON_POINTER = re.compile(r"(/([^~/]|~[01])*)*")
SEED = graphspec.from_data(copy.deepcopy(SEED_GRAPH))
SEED_ID = graphspec.content_hash(SEED)


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


class StoredGraphs:
    """The one thing prepare_job reads from the job store: the tenant's stored graphs (here, the seed)."""

    def get_graph(self, tenant: str, graph_id: str) -> graphspec.Graph | None:
        return SEED if graph_id == SEED_ID else None


# -- the invariant -----------------------------------------------------------------------------
def check_problem(exc: ProblemError) -> None:
    """A refusal the API can send: a 4xx problem whose every error is located by a JSON pointer."""
    assert 400 <= exc.status < 500, (exc.status, exc.detail)
    assert isinstance(exc.detail, str) and exc.detail
    for error in exc.errors or []:
        assert isinstance(error.get("code"), str) and error["code"], error
        assert isinstance(error.get("message"), str) and error["message"], error
        assert isinstance(error.get("location"), str) and JSON_POINTER.fullmatch(error["location"]), error
    # The handler renders it as JSON without NaN; a value it cannot encode would be a 500 after all.
    json.dumps(problem_body("/v1/jobs", exc), allow_nan=False)


def outcome(fn: Callable[[], Any]) -> Any:
    """``fn()``'s result, or None when it refused with a well-formed problem; any other exception fails."""
    try:
        return fn()
    except ProblemError as exc:
        check_problem(exc)
        return None


def check_stored(request: JobRequest, prepared: PreparedJob, limits: ApiSettings = SETTINGS) -> None:
    """An accepted body is stored as the limits require, not only accepted: its data and eval
    data together within max_job_data_bytes, its time limit (the request's, else the default)
    capped at max_time_limit_s, and the same time limit in the spec as the one it is sent with."""
    stored = list(decode_tensors(prepared.data).values())
    if prepared.eval_data is not None:
        stored += list(decode_tensors(prepared.eval_data).values())
    total = sum(array.nbytes for array in stored)
    assert total <= limits.max_job_data_bytes, f"{total} bytes of data stored; the limit is {limits.max_job_data_bytes}"
    assert (request.eval_data is None) == (prepared.eval_data is None)
    wanted = request.time_limit_s or limits.default_time_limit_s
    assert prepared.time_limit_s == prepared.spec["time_limit_s"] == min(wanted, limits.max_time_limit_s), (
        request.time_limit_s, prepared.time_limit_s, prepared.spec["time_limit_s"])


def submit(tree: Any) -> PreparedJob | None:
    """A body through everything POST /v1/jobs does before it stores anything (and, when it is
    accepted, what would be stored checked against the limits)."""
    def prepare() -> PreparedJob:
        request = validate_model(JobRequest, tree)
        prepared = prepare_job(request, "tenant-a", StoredGraphs(), SETTINGS)
        check_stored(request, prepared)
        return prepared

    return outcome(prepare)


def explain(tree: Any) -> Any:
    """A body through POST /v1/graphs/{id}/explain, on the seed graph."""
    return outcome(lambda: explain_graph(SEED, validate_model(ExplainRequest, tree), SETTINGS))


def read_body(body: bytes, content_type: str | None, limits: graphspec.Limits | None = None) -> Any:
    """service.bodies.read_tree on a request that carries ``body`` (read whole, as after the size middleware)."""
    headers = [] if content_type is None else [(b"content-type", content_type.encode("latin-1"))]
    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers, "query_string": b""}

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    return anyio.run(read_tree, Request(scope, receive), limits or body_limits(SETTINGS))




# -- strategies --------------------------------------------------------------------------------
EDGE_VALUES = [0, -1, 1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**400, 1e308, -1e308, 5e-324, -0.0, 0.5,
               "", "0", "NaN", "sgd", "float64", "N", True, False, None, [], {}, [[]], {"": None}]
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(max_size=12) | st.sampled_from(EDGE_VALUES).map(copy.deepcopy))  # mutations edit in place
json_trees = st.recursive(
    json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=16)


def model_shaped(model) -> st.SearchStrategy[dict]:
    """Objects with (some of) the model's own field names, so validation looks past unknown keys."""
    return st.fixed_dictionaries({}, optional={name: json_trees for name in model.model_fields})


def _paths(tree: Any, path: tuple = ()):
    yield path
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, path + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _paths(value, path + (index,))


@st.composite
def mutations(draw, base: dict) -> Any:
    """``base`` with one to three edits anywhere in it: a value replaced, removed or added."""
    tree: Any = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(tree))))
        value = draw(json_trees)
        if not path:
            tree = value
            continue
        parent = tree
        for step in path[:-1]:
            parent = parent[step]
        key, how = path[-1], draw(st.sampled_from(["replace", "remove", "add"]))
        if how == "replace":
            parent[key] = value
        elif how == "remove":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8) | st.sampled_from(list(JobRequest.model_fields)))] = value
        else:
            parent.insert(key, value)
    return tree


# Each optimizer's hyperparameters (runtime/optim.py): values for these reach its constructor.
HYPERPARAMETERS = {"sgd": ("lr", "momentum", "nesterov", "weight_decay"),
                   "momentum": ("lr", "momentum", "nesterov", "weight_decay"),
                   "adam": ("lr", "betas", "eps", "weight_decay"), "adamw": ("lr", "betas", "eps", "weight_decay")}
assert set(HYPERPARAMETERS) == set(OPTIMIZERS)
# Numbers as JSON and msgpack carry them: integers of any size (JSON), NaN and infinities (msgpack).
numbers = st.one_of(st.integers(), st.floats(), st.sampled_from([2**1024, -(2**1024), 10**400]))
optimizer_specs = st.sampled_from(list(OPTIMIZERS)).flatmap(lambda name: st.fixed_dictionaries(
    {"name": st.just(name)},
    optional={key: st.one_of(numbers, st.lists(numbers, max_size=3), json_trees) for key in HYPERPARAMETERS[name]}))


def _b64(tensor: dict) -> dict:
    encoded = graphspec.encode_tensor_json(np.asarray(tensor["data"], dtype=tensor["dtype"]), inline_limit=-1)
    assert "base64" in encoded
    return encoded


# Valid starting points, between them using every field: inline graph or graph_id, JSON lists
# or base64 tensors, both optimizer families, eval data, epochs.
VALID_JOBS = {
    "example": JOB_EXAMPLE,
    "stored graph": {
        "graph_id": SEED_ID, "data": {k: _b64(v) for k, v in JOB_EXAMPLE["data"].items()},
        "eval_data": JOB_EXAMPLE["data"], "eval_every": 2, "optimizer": {"name": "adam", "lr": 0.01,
                                                                         "betas": [0.9, 0.99]},
        "epochs": 3, "steps": 10, "batch_size": 3, "seed": 7, "shuffle": False, "report_every": 2,
        "gradients": "full", "checkpoint_every": 5, "time_limit_s": 60,
    },
}
for _name, _body in VALID_JOBS.items():
    assert submit(copy.deepcopy(_body)) is not None, f"the {_name!r} job is not valid to begin with"
assert explain(copy.deepcopy(EXPLAIN_EXAMPLE)) is not None


# -- properties: requests ----------------------------------------------------------------------
@fuzz_settings(300)
@given(json_trees)
def test_arbitrary_trees_as_job_or_explain_request(tree):
    submit(copy.deepcopy(tree))
    explain(tree)


@fuzz_settings(300)
@given(model_shaped(JobRequest))
def test_job_shaped_trees(tree):
    submit(tree)


@fuzz_settings(200)
@given(model_shaped(ExplainRequest))
def test_explain_shaped_trees(tree):
    explain(tree)


@fuzz_settings(300)
@given(st.sampled_from(list(VALID_JOBS)).flatmap(lambda name: mutations(VALID_JOBS[name])))
def test_mutated_job_bodies(tree):
    submit(tree)


@fuzz_settings(300)
@given(optimizer_specs | json_trees)
def test_arbitrary_optimizers(optimizer):
    """The optimizer is checked by the runtime's own constructors: their refusals must come back as problems."""
    submit({**JOB_EXAMPLE, "optimizer": optimizer})


@fuzz_settings(200)
@given(mutations(EXPLAIN_EXAMPLE))
def test_mutated_explain_bodies(tree):
    explain(tree)


@fuzz_settings(150)
@given(st.sampled_from(list(VALID_JOBS)).flatmap(lambda name: mutations(VALID_JOBS[name])),
       st.sampled_from(["json", "msgpack"]))
def test_mutated_job_bodies_through_the_body_reader(tree, encoding):
    """Encoded and read back as the route reads it: the reader's own refusals are problems too."""
    if encoding == "json":
        body, content_type = json.dumps(tree).encode(), "application/json"
    else:
        body, content_type = msgpack.packb(msgpack_safe_ints(tree)), "application/msgpack"
    parsed = outcome(lambda: read_body(body, content_type))
    if parsed is not None:
        submit(parsed)


# -- properties: valid bodies round-trip ---------------------------------------------------------
positive = st.integers(1, 2**40)
# Values both encodings carry unchanged (msgpack has no integers beyond 64 bits).
plain_trees = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=8)
tensors = st.fixed_dictionaries({"dtype": st.sampled_from(list(graphspec.DTYPES)),
                                 "shape": st.lists(st.integers(0, 5), max_size=3), "data": plain_trees})
valid_job_requests = st.fixed_dictionaries(
    {"data": st.dictionaries(st.text(max_size=6), tensors, max_size=3),
     "optimizer": st.fixed_dictionaries({"name": st.sampled_from(list(OPTIMIZERS))},
                                        optional={"lr": st.floats(0, 10), "momentum": st.floats(0, 1),
                                                  "betas": st.lists(st.floats(0, 0.999), min_size=2, max_size=2)})},
    optional={"graph": st.just(SEED_GRAPH), "graph_id": st.text(max_size=20), "steps": positive, "epochs": positive,
              "batch_size": positive, "seed": st.integers(0, 2**63 - 1), "shuffle": st.booleans(),
              "report_every": positive, "gradients": st.sampled_from(["norms", "full", "none"]),
              "checkpoint_every": positive, "eval_every": positive, "time_limit_s": positive,
              "eval_data": st.dictionaries(st.text(max_size=6), tensors, max_size=2)})


@fuzz_settings(200)
@given(valid_job_requests, st.sampled_from(["json", "msgpack"]))
def test_valid_job_requests_round_trip(body, encoding):
    encoded = json.dumps(body).encode() if encoding == "json" else msgpack.packb(body)
    request = validate_model(JobRequest, read_body(encoded, f"application/{encoding}"))
    assert request.model_dump(mode="json", exclude_unset=True) == body
    assert validate_model(JobRequest, request.model_dump(mode="json", exclude_unset=True)) == request


@fuzz_settings(100)
@given(st.fixed_dictionaries({"inputs": st.dictionaries(st.text(max_size=6), tensors, max_size=3)},
                             optional={"params": st.dictionaries(st.text(max_size=6), tensors, max_size=3),
                                       "seed": st.integers(0, 2**63 - 1)}))
def test_valid_explain_requests_round_trip(body):
    request = validate_model(ExplainRequest, read_body(json.dumps(body).encode(), "application/json"))
    assert request.model_dump(mode="json", exclude_unset=True) == body


# -- properties: the body reader -----------------------------------------------------------------
@fuzz_settings(300)
@given(st.binary(max_size=300), st.sampled_from(["application/json", "application/msgpack", None]))
def test_arbitrary_bytes(body, content_type):
    outcome(lambda: read_body(body, content_type))


@fuzz_settings(200)
@given(st.text(st.characters(codec="latin-1"), max_size=40))
def test_arbitrary_content_types(content_type):
    outcome(lambda: read_body(b"{}", content_type))


@fuzz_settings(200)
@given(st.text(st.characters(codec="latin-1"), max_size=60))
def test_arbitrary_accept_headers(accept):
    """Content negotiation reads q-values with float(): whatever a client sends, it decides, never raises."""
    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"",
             "headers": [(b"accept", accept.encode("latin-1"))]}
    assert wants_msgpack(Request(scope)) in (True, False)


# -- properties: what an accepted job is stored with ----------------------------------------------
ROW_BYTES = 3 * 8  # a row of the seed graph's data: x1, x2, y, float64
LIMIT_ROWS = SETTINGS.max_job_data_bytes // ROW_BYTES


def seed_rows(rows: int, offset: float = 0.0) -> dict[str, Any]:
    """``rows`` examples for the seed graph, base64 tensors (declared size: rows x 24 bytes)."""
    column = np.linspace(-1.0, 1.0, rows) + offset
    return {"x1": _b64({"dtype": "float64", "data": column}), "x2": _b64({"dtype": "float64", "data": -column}),
            "y": _b64({"dtype": "float64", "data": (column > 0).astype(np.float64)})}


def job_with_rows(rows: int, eval_rows: int | None) -> dict[str, Any]:
    body = {**JOB_EXAMPLE, "data": seed_rows(rows)}
    if eval_rows is not None:
        body.update(eval_data=seed_rows(eval_rows, 0.5), eval_every=10)
    return body


def refused_for_job_data_size(tree: dict[str, Any]) -> bool:
    """True when ``tree`` is refused with the 413 that names max_job_data_bytes; False when accepted."""
    try:
        request = validate_model(JobRequest, tree)
        prepared = prepare_job(request, "tenant-a", StoredGraphs(), SETTINGS)
    except ProblemError as exc:
        check_problem(exc)
        assert exc.status == 413, (exc.status, exc.detail)
        assert exc.extra.get("limit") == SETTINGS.max_job_data_bytes and str(SETTINGS.max_job_data_bytes) in exc.detail
        return True
    check_stored(request, prepared)
    return False


@example(rows=LIMIT_ROWS // 2, eval_rows=LIMIT_ROWS - LIMIT_ROWS // 2)  # together exactly at the limit's last row
@example(rows=LIMIT_ROWS // 2, eval_rows=LIMIT_ROWS - LIMIT_ROWS // 2 + 1)  # one row over, each alone far under
@example(rows=LIMIT_ROWS, eval_rows=1)
@example(rows=LIMIT_ROWS, eval_rows=None)
@fuzz_settings(40)
@given(rows=st.integers(1, LIMIT_ROWS + 20), eval_rows=st.none() | st.integers(1, LIMIT_ROWS + 20))
def test_data_and_eval_data_together_are_held_to_max_job_data_bytes(rows, eval_rows):
    """Eval data is job data too: a body is accepted exactly when its data and eval data
    together fit max_job_data_bytes, and refused with a 413 naming the limit otherwise."""
    total = ROW_BYTES * (rows + (eval_rows or 0))
    assert refused_for_job_data_size(job_with_rows(rows, eval_rows)) == (total > SETTINGS.max_job_data_bytes)


@pytest.mark.parametrize("time_limit_s", [None, 1, 60, SETTINGS.default_time_limit_s, SETTINGS.max_time_limit_s - 1,
                                          SETTINGS.max_time_limit_s, SETTINGS.max_time_limit_s + 1, 10**6, 2**63 - 1])
def test_the_stored_time_limit_is_capped_at_max_time_limit_s(time_limit_s):
    prepared = submit({**JOB_EXAMPLE, "time_limit_s": time_limit_s} if time_limit_s else dict(JOB_EXAMPLE))
    assert prepared is not None  # a long time limit is capped, not refused
    expected = min(time_limit_s or SETTINGS.default_time_limit_s, SETTINGS.max_time_limit_s)
    assert prepared.time_limit_s == prepared.spec["time_limit_s"] == expected
    assert 1 <= prepared.time_limit_s <= SETTINGS.max_time_limit_s


@fuzz_settings(100)
@given(st.integers(1, 2**64) | st.none(), st.integers(1, 10**5), st.integers(1, 10**5))
def test_any_accepted_time_limit_is_stored_capped(time_limit_s, default, maximum):
    """With any deployment's default and maximum, not only the test settings'."""
    limits = SETTINGS.model_copy(update={"default_time_limit_s": default, "max_time_limit_s": maximum})
    body = {**JOB_EXAMPLE, "time_limit_s": time_limit_s} if time_limit_s is not None else dict(JOB_EXAMPLE)
    request = validate_model(JobRequest, body)
    prepared = prepare_job(request, "tenant-a", StoredGraphs(), limits)
    check_stored(request, prepared, limits)
    assert prepared.time_limit_s <= limits.max_time_limit_s


# -- pinned: what the properties found -----------------------------------------------------------
@pytest.mark.parametrize("optimizer,location", [
    ({"name": "sgd", "lr": 10**400}, "/optimizer/lr"),
    ({"name": "sgd", "lr": 0.1, "momentum": -(10**400)}, "/optimizer/momentum"),
    ({"name": "adam", "betas": [10**400, 0.9]}, "/optimizer/betas"),
])
def test_hyperparameters_beyond_the_float_range_are_located_422s(optimizer, location):
    """Regression: JSON integers too large for a float overflowed in the optimizer's float() (a 500)."""
    body = {**JOB_EXAMPLE, "optimizer": optimizer}
    with pytest.raises(ProblemError) as info:
        prepare_job(validate_model(JobRequest, body), "tenant-a", StoredGraphs(), SETTINGS)
    check_problem(info.value)
    assert info.value.status == 422 and [e["location"] for e in info.value.errors] == [location]
    # Large but float-sized hyperparameters still reach the optimizer's own checks.
    assert OptimizerSpec.model_validate({"name": "sgd", "lr": 10**300}).lr == 10**300


# -- pinned: bombs -------------------------------------------------------------------------------
def _nested_json(depth: int) -> bytes:
    return b'{"data":' * depth + b"1" + b"}" * depth


BOMBS = {
    # JSON: deeper than the recursion limit, deeper than the document limit, and a deep tensor.
    "json [ x 200k": (b"[" * 200_000, "application/json"),
    "json objects x 50k": (_nested_json(50_000), "application/json"),
    "json 600 levels": (b"[" * 600 + b"]" * 600, "application/json"),
    "json deep tensor": (b'{"optimizer": {"name": "sgd", "lr": 1}, "data": {"x": {"dtype": "float64", "shape": [1], '
                         b'"data": ' + b"[" * 60 + b"1" + b"]" * 60 + b"}}}", "application/json"),
    # msgpack: 4 GiB declared in five bytes, for every container and string kind.
    "msgpack array32 4G": (b"\xdd\xff\xff\xff\xff", "application/msgpack"),
    "msgpack map32 4G": (b"\xdf\xff\xff\xff\xff", "application/msgpack"),
    "msgpack str32 4G": (b"\xdb\xff\xff\xff\xff", "application/msgpack"),
    "msgpack bin32 4G": (b"\xc6\xff\xff\xff\xff", "application/msgpack"),
    "msgpack ext32 4G": (b"\xc9\xff\xff\xff\xff\x01", "application/msgpack"),
    # msgpack: lengths just under the default body limit (32 MiB), a thousand levels deep: the
    # parser preallocated up to 80 KB per level before seeing an element (76 MiB from 5 KB).
    "msgpack arrays 32M x 1000": (b"\xdd\x01\xff\xff\xff" * 1000, "application/msgpack"),
    "msgpack maps 32M x 1000": ((b"\xdf\x01\xff\xff\xff\xa1k") * 1000, "application/msgpack"),
    "msgpack map 32M of arrays": (b"\xdf\x01\xff\xff\xff" + b"\xa1k\xdd\x01\xff\xff\xff" * 1000, "application/msgpack"),
    # msgpack: deeper than msgpack's own stack, and deeper than the document limit.
    "msgpack [ x 100k": (b"\x91" * 100_000 + b"\x01", "application/msgpack"),
    "msgpack 600 levels": (b"\x91" * 600 + b"\x01", "application/msgpack"),
    "msgpack maps 600 levels": (b"\x81\xa1k" * 600 + b"\x01", "application/msgpack"),
}


@pytest.mark.parametrize("limits", [SETTINGS, DEFAULT_SETTINGS], ids=["test-limits", "default-limits"])
@pytest.mark.parametrize("name", list(BOMBS))
def test_bombs_are_refused_quickly_in_little_memory(name, limits):
    """Regression for the nested msgpack declarations, which took 76 MiB before the body reader
    walked msgpack bodies without building them (service/bodies.py)."""
    body, content_type = BOMBS[name]
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ProblemError) as info:
            tree = read_body(body, content_type, body_limits(limits))
            validate_model(JobRequest, tree)  # a tree that parsed must still not become a request
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    check_problem(info.value)
    assert elapsed < 2.0, f"{name}: {elapsed:.2f} s"
    assert peak < 16 * 2**20 + 8 * len(body), f"{name}: peak {peak / 2**20:.1f} MiB for {len(body)} bytes"
