"""examples/digits_cnn.py end to end: a small CNN on scikit-learn's digits trained through the
service (a real API server, Celery worker and Redis) to >= 95 % test accuracy, downloaded as ONNX
and served by onnxruntime with the same predictions."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from service.client import Client

from .conftest import API_KEYS, EXAMPLES
from browser import live_server

pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")


def load_example():
    spec = importlib.util.spec_from_file_location("digits_cnn", EXAMPLES / "digits_cnn.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["digits_cnn"] = module
    spec.loader.exec_module(module)
    return module


def test_the_digits_cnn_trains_through_the_service_and_serves_from_onnx(env, celery_worker, tmp_path):
    """The data is ~0.5 MB: this API gets real limits (the shared test settings keep them tiny)."""
    example = load_example()
    roomy = {**env, "CHAINRULE_MAX_BODY_BYTES": str(8 * 2**20), "CHAINRULE_MAX_JOB_DATA_BYTES": str(8 * 2**20),
             "CHAINRULE_MAX_TENSOR_ELEMENTS": str(2**20)}
    with live_server(roomy) as url, Client(url, api_key=API_KEYS["tenant-a"], timeout=60) as client:
        report = example.run(client, out=str(tmp_path / "digits.onnx"))
    assert report["test_accuracy"] >= 0.95, report
    assert report["same_predictions"] and report["onnx_accuracy"] == report["test_accuracy"], report
    assert report["max_logit_difference"] < 1e-4, report
    assert (tmp_path / "digits.onnx").stat().st_size > 10_000
