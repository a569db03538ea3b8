"""service/history.py, service/datarows.py and the job resource's settings, without Redis or HTTP:
which entries a downsampled page keeps, the CSV cells and Accept rules, rows of stored data."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphspec
import runtime
from service.datarows import data_rows
from service.examples import SEED_GRAPH
from service.history import MAX_POINTS, MIN_POINTS, _cell, _Columns, downsample, wants_csv
from service.problems import ProblemError
from service.views import job_settings
from worker.store import encode_tensors


def brute_extremes(values: np.ndarray, buckets: int) -> set[tuple[int, int, str]]:
    """(bucket start, column, 'min'/'max') -> what each bucket's extremes are, by value."""
    n = len(values)
    size = -(-n // buckets)
    out = set()
    for start in range(0, n, size):
        for j in range(values.shape[1]):
            column = values[start:start + size, j]
            if not np.isnan(column).all():
                out.add((start, j, float(np.nanmin(column)), float(np.nanmax(column))))
    return out


def random_values(rng: np.random.Generator, n: int, columns: int, nan_share: float = 0.2) -> np.ndarray:
    values = np.cumsum(rng.normal(size=(n, columns)), axis=0)
    values[rng.random((n, columns)) < nan_share] = np.nan
    if columns > 1:
        values[:, 1] = np.nan  # a column with no number at all (no entry was evaluated)
    return values


@pytest.mark.parametrize("buckets", [1, 2, 3, 7, 50, 333, 1000])
def test_each_bucket_keeps_its_minimum_and_maximum_of_every_column(buckets):
    values = random_values(np.random.default_rng(buckets), 1000, 4)
    picked = _Columns(values).extremes(buckets)
    assert picked.tolist() == sorted(set(picked.tolist())) and picked[0] == 0 and picked[-1] == 999
    size = -(-1000 // buckets)
    for start, j, low, high in brute_extremes(values, buckets):
        chosen = values[[i for i in picked if start <= i < start + size], j]
        assert np.nanmin(chosen) == low and np.nanmax(chosen) == high, (start, j)
    # at most two rows per column and bucket, plus the first and the last
    assert len(picked) <= 2 * 4 * -(-1000 // size) + 2


def test_a_column_without_numbers_adds_no_rows():
    """An eval_loss never evaluated (all NaN) must not spend the budget on rows of its own."""
    rng = np.random.default_rng(3)
    values = np.column_stack([rng.normal(size=1000), np.full(1000, np.nan)])
    picked = set(_Columns(values).extremes(10).tolist())
    expected = {0, 999}
    for start in range(0, 1000, 100):
        expected |= {start + int(values[start:start + 100, 0].argmin()), start + int(values[start:start + 100, 0].argmax())}
    assert picked == expected


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(n=st.integers(1, 4000), columns=st.integers(1, 6), max_points=st.integers(MIN_POINTS, 400),
       seed=st.integers(0, 2**32 - 1), nan_share=st.sampled_from([0.0, 0.3, 0.95]))
def test_downsample_fits_the_budget_and_keeps_every_columns_extremes(n, columns, max_points, seed, nan_share):
    rng = np.random.default_rng(seed)
    values = random_values(rng, n, columns, nan_share)
    spike = int(rng.integers(n))
    values[spike, 0] = 1e12  # a planted spike in the loss
    picked = downsample(values, max_points)
    if n <= max_points:
        assert picked.tolist() == list(range(n))
        return
    assert len(picked) <= max_points
    assert picked.tolist() == sorted(set(picked.tolist())) and picked[0] == 0 and picked[-1] == n - 1
    assert spike in picked
    if 2 * columns + 2 <= max_points:  # at least one bucket fits: every column's extremes are kept
        for j in range(columns):
            if not np.isnan(values[:, j]).all():
                assert np.nanmin(values[picked, j]) == np.nanmin(values[:, j])
                assert np.nanmax(values[picked, j]) == np.nanmax(values[:, j])


def test_downsample_uses_most_of_the_budget():
    values = random_values(np.random.default_rng(5), 100_000, 5)
    for max_points in (500, 2000, MAX_POINTS):  # (16 points are one or two buckets: whatever they hold)
        picked = downsample(values, max_points)
        assert 0.85 * max_points <= len(picked) <= max_points, (max_points, len(picked))


def test_when_no_bucket_fits_the_loss_comes_first():
    """More columns than a 16-point budget can show in one bucket: first and last, then the
    extremes column by column (loss, eval_loss, then the norms)."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(1000, 12))
    picked = downsample(values, 16)
    assert len(picked) == 16 and picked[0] == 0 and picked[-1] == 999
    for j in range(3):  # 2 + 2 x 3 = 8 rows at most for the first three columns: all kept
        assert values[picked, j].min() == values[:, j].min() and values[picked, j].max() == values[:, j].max()


def test_a_constant_history_still_fills_the_budget_with_real_rows():
    values = np.ones((10_000, 3))
    picked = downsample(values, 100)
    assert 0 < len(picked) <= 100 and picked[-1] == 9999


@pytest.mark.parametrize("value, text", [(None, ""), (0.1, "0.1"), (1e-300, "1e-300"), (float("nan"), "nan"),
                                         (float("inf"), "inf"), (float("-inf"), "-inf"), (3.0, "3.0")])
def test_csv_cells(value, text):
    assert _cell(value) == text
    if value is not None:
        assert np.isnan(float(text)) if value != value else float(text) == value  # reads back exactly


@pytest.mark.parametrize("accept, expected", [
    (None, False), ("", False), ("text/csv", True), ("TEXT/CSV; charset=utf-8", True), ("text/*", True),
    ("*/*", False), ("application/json", False), ("text/csv, application/json", True),
    ("application/json, text/csv;q=0.9", False), ("text/csv;q=0.5, */*;q=0.1", True), ("text/csv;q=0", False),
    ("application/msgpack, text/csv", True), ("application/msgpack;q=1, text/csv;q=0.5", False),
    ("text/csv;q=oops", False)])
def test_csv_is_chosen_by_accept(accept, expected):
    assert wants_csv(accept) is expected


# -- data rows ------------------------------------------------------------------------------------
def graph_with_a_whole_input() -> graphspec.Graph:
    doc = copy.deepcopy(SEED_GRAPH)
    doc["inputs"]["scale"] = {"dtype": "float64", "shape": [2]}
    doc["nodes"].insert(0, {"id": "scale1", "op": "sum", "inputs": ["scale"], "attrs": {}})
    doc["nodes"][1]["inputs"] = ["x1", "scale1"]
    return graphspec.from_data(doc)


def stored(n: int) -> bytes:
    return encode_tensors({"x1": np.arange(n, dtype=np.float64), "x2": np.arange(n, dtype=np.float64) * 2,
                           "y": np.ones(n), "scale": np.array([0.5, 0.25])})


def test_data_rows_slice_per_example_inputs_only():
    rows = data_rows(graph_with_a_whole_input(), stored(30), 25, 10)
    assert (rows.examples, rows.offset, rows.count) == (30, 25, 5)
    assert rows.arrays["x1"].tolist() == [25.0, 26.0, 27.0, 28.0, 29.0]
    assert rows.arrays["x2"].tolist() == [50.0, 52.0, 54.0, 56.0, 58.0]
    assert rows.arrays["scale"].tolist() == [0.5, 0.25]


@pytest.mark.parametrize("offset", [30, 31, 10**9])
def test_data_rows_past_the_end_are_a_located_422(offset):
    with pytest.raises(ProblemError) as info:
        data_rows(graph_with_a_whole_input(), stored(30), offset, 10)
    assert info.value.status == 422 and [e["location"] for e in info.value.errors] == ["/query/offset"]


def test_data_rows_without_a_per_example_input():
    doc = copy.deepcopy(SEED_GRAPH)
    for spec in doc["inputs"].values():
        spec["shape"] = [4]
    graph = graphspec.from_data(doc)
    blob = encode_tensors({name: np.zeros(4) for name in doc["inputs"]})
    rows = data_rows(graph, blob, 0, 2)
    assert rows.examples is None and rows.count == 0 and rows.arrays["x1"].shape == (4,)
    with pytest.raises(ProblemError):
        data_rows(graph, blob, 1, 2)


# -- the job resource's settings --------------------------------------------------------------------
# a spec as the service stores it: the spec's own stored form (every setting) and the service's keys
FULL_SPEC = {**{k: v for k, v in runtime.TrainingSpec.from_dict({
    "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 60, "batch_size": 16, "report_every": 5,
    "time_limit_s": 3600, "schedule": "cosine", "clip_norm": 1.0}).to_dict().items() if k != "version"},
             "total_steps": 60, "examples": 60, "data_summary": {}, "eval_data_summary": None}


def test_job_settings_are_the_request_fields_of_the_spec():
    settings_ = job_settings(FULL_SPEC)
    assert settings_ is not None
    dumped = settings_.model_dump(mode="json")
    assert dumped == {k: v for k, v in FULL_SPEC.items()
                      if k not in ("total_steps", "examples", "data_summary", "eval_data_summary")}
    assert json.loads(settings_.model_dump_json())["optimizer"]["momentum"] == 0.0


@pytest.mark.parametrize("spec, expected_steps", [({}, None), ({"steps": 5}, 5), ({"optimizer": None}, None)])
def test_job_settings_of_older_specs(spec, expected_steps):
    settings_ = job_settings(spec)
    assert (settings_ is None) if not spec else settings_.steps == expected_steps


@pytest.mark.parametrize("spec", [{"optimizer": "sgd"}, {"steps": "many"}, {"gradients": "some"},
                                  {"optimizer": {"lr": 0.1}}])
def test_job_settings_that_do_not_read_are_null(spec):
    assert job_settings(spec) is None
