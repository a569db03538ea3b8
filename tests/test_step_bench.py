"""Smoke test of bench/step_bench.py: it runs, checks gradients and writes its JSON (no timing assertions)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("W1_b1", "W5_cnn")  # the smallest MLP and the digits CNN (convolution, pooling)


@pytest.fixture(scope="module")
def bench():
    """bench/step_bench.py as a module."""
    spec = importlib.util.spec_from_file_location("step_bench", ROOT / "bench" / "step_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_bench_quick_smoke(tmp_path):
    out = tmp_path / "step_bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "step_bench.py"), "--quick", "--workloads", ",".join(WORKLOADS),
         "--impls", "chainrule,controls,interp,hand", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for wl in WORKLOADS:
        cells = report["results"][wl]
        assert set(cells) == {"chainrule", "controls", "interp", "hand"}, wl
        for cell in cells.values():
            assert cell["median_us"] > 0 and cell["ratio_vs_hand"] > 0
            assert "ratio_vs_torch" not in cell  # torch did not run
        for impl in ("chainrule", "controls", "interp"):  # gradients checked against hand numpy
            assert report["grad_check"][wl][impl]["ok"] is True, (wl, impl)
        assert report["setup"][wl]["chainrule"]["compile_ms"] > 0
        assert report["setup"][wl]["chainrule"]["load_params_ms"] > 0
        assert report["memory"][wl]["chainrule"]["peak_bytes"] > 0
    # W5's target is a ratio to torch, which this run did not measure: said, not guessed
    assert report["verdicts"]["W5_cnn"] == {"target": 1.3, "vs": "torch", "ratio": None, "met": None}
    assert report["verdicts"]["W1_b1"]["vs"] == "hand" and report["verdicts"]["W1_b1"]["met"] in (True, False)


def test_the_cnn_workload_is_the_examples_network(bench):
    """W5's chainrule graph is examples/digits_cnn.py's own, with make_data's parameters in order."""
    spec = bench.WORKLOADS["W5_cnn"]
    graph = bench.build_graph(spec)
    params, x, y = bench.make_data(spec)
    assert list(graph.parameters) == bench.param_names(spec)
    assert [tuple(p.shape) for p in graph.parameters.values()] == [p.shape for p in params]
    assert x.shape == (64, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert set(graph.inputs) == set(bench.input_names(spec))


def test_gradient_cross_check_catches_a_wrong_cnn_gradient(bench, tmp_path):
    """The check before timing compares every parameter's gradient with hand numpy's: one wrong
    entry in one convolution's weight gradient fails it (so a broken kernel cannot be timed)."""
    spec = bench.WORKLOADS["W5_cnn"]
    params, x, y = bench.make_data(spec)
    losses = {}
    for impl in ("hand", "chainrule"):
        _, grads, _ = bench.BUILDERS[impl](spec, params, x, y)
        losses[impl], g = grads()
        np.savez(tmp_path / f"{impl}__W5_cnn.npz", *g)
    assert bench.check_grads(tmp_path, "chainrule", "W5_cnn", losses)["ok"] is True
    g[2] = g[2].copy()
    g[2][0, 0, 1, 1] += 0.01 * float(np.abs(g[2]).max())  # conv2d_2.weight
    np.savez(tmp_path / "chainrule__W5_cnn.npz", *g)
    assert bench.check_grads(tmp_path, "chainrule", "W5_cnn", losses)["ok"] is False
    np.savez(tmp_path / "chainrule__W5_cnn.npz", *g[:-1])  # a gradient missing
    assert bench.check_grads(tmp_path, "chainrule", "W5_cnn", losses)["ok"] is False
