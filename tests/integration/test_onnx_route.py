"""GET /v1/jobs/{id}/model.onnx: a succeeded job's trained model as ONNX, which onnxruntime runs
to the same predictions as chainrule with the job's trained parameters; with ?keep_loss=true
(Client.model_onnx(job_id, keep_loss=True)) the loss too, against the targets as inputs."""

from __future__ import annotations

import numpy as np
import pytest

import graphspec
import runtime
from runtime.data import tensors_from_tree
from service.client import Client

from .conftest import API_KEYS, EXAMPLES
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


def test_keep_loss_exports_the_loss_against_the_targets_through_the_route_and_the_client(api):
    job = submit(api, steps=30)
    assert wait_job(api, job["id"])["state"] == "succeeded"
    trained = tensors_from_tree(api.get(f"/v1/jobs/{job['id']}/result").json()["params"], "result")
    graph = graphspec.load(EXAMPLES / "logistic_regression.json")
    inputs = {"x1": np.array([0.3, -1.2, 2.0]), "x2": np.array([1.0, 0.5, -0.7]), "y": np.array([1.0, 0.0, 1.0])}
    expected = runtime.compile(graph).forward(inputs, trained).outputs
    resp = api.get(f"/v1/jobs/{job['id']}/model.onnx", params={"keep_loss": "true"})
    assert resp.status_code == 200, resp.text
    client = Client(api_key=API_KEYS["tenant-a"], http=api.client)
    assert client.model_onnx(job["id"], keep_loss=True) == resp.content
    assert client.model_onnx(job["id"]) == api.get(f"/v1/jobs/{job['id']}/model.onnx").content != resp.content
    model = onnx.load_from_string(resp.content)
    assert [i.name for i in model.graph.input] == ["x1", "x2", "y"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a, loss = session.run(["a", "loss"], inputs)
    np.testing.assert_allclose(a, expected["a"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loss, expected["loss"], rtol=1e-6, atol=1e-6)
    assert_problem(api.get(f"/v1/jobs/{job['id']}/model.onnx", params={"keep_loss": "maybe"}), 422)


def test_the_keep_loss_parameter_is_typed_and_described_in_the_openapi(api):
    operation = api.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/model.onnx"]["get"]
    (keep_loss,) = [p for p in operation["parameters"] if p["name"] == "keep_loss"]
    assert keep_loss["in"] == "query" and not keep_loss["required"]
    assert keep_loss["schema"]["type"] == "boolean" and keep_loss["schema"]["default"] is False
    assert "loss" in keep_loss["description"] and "keep_loss=true" in operation["description"]
