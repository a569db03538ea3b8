"""GET /v1/jobs/{id}/model.onnx: a succeeded job's trained model as ONNX, which onnxruntime runs
to the same predictions as chainrule with the job's trained parameters."""

from __future__ import annotations

import numpy as np
import pytest

import graphspec
import runtime
from runtime.data import tensors_from_tree

from .conftest import EXAMPLES
from .test_api import assert_problem, submit, wait_job

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_a_succeeded_job_downloads_as_an_onnx_model_that_predicts_the_same(api):
    job = submit(api, steps=30)
    assert wait_job(api, job["id"])["state"] == "succeeded"
    resp = api.get(f"/v1/jobs/{job['id']}/model.onnx")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/onnx"
    assert f'{job["id"]}.onnx' in resp.headers["content-disposition"]
    model = onnx.load_from_string(resp.content)
    trained = tensors_from_tree(api.get(f"/v1/jobs/{job['id']}/result").json()["params"], "result")
    graph = graphspec.load(EXAMPLES / "logistic_regression.json")
    inputs = {"x1": np.array([0.3, -1.2, 2.0]), "x2": np.array([1.0, 0.5, -0.7])}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (a,) = session.run(["a"], inputs)
    expected = runtime.compile(graph).forward({**inputs, "y": np.zeros(3)}, trained).outputs["a"]
    np.testing.assert_allclose(a, expected, rtol=1e-6, atol=1e-6)


def test_a_job_without_a_result_has_no_model(api):
    job = submit(api, steps=400_000, report_every=1000)
    problem = assert_problem(api.get(f"/v1/jobs/{job['id']}/model.onnx"), 409)
    assert "no trained model" in problem["detail"]
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    assert_problem(api.get("/v1/jobs/job_" + "0" * 32 + "/model.onnx"), 404)
