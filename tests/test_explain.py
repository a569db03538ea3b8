"""Explanations (per-node values and gradients, text and DOT) and named-tensor files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import EXAMPLES

import graphspec
import runtime
from runtime.data import DataFileError, load_tensors, save_tensors
from runtime.explain import explain

DATA = EXAMPLES / "data"


def seed_explanation(name="sigmoid_primitives"):
    return explain(graphspec.load(EXAMPLES / f"{name}.json"), load_tensors(DATA / "seed_one_example.json"),
                   load_tensors(DATA / "seed_params.json"))


def test_every_value_has_its_forward_value_and_gradient():
    ex = seed_explanation()
    names = [r.name for r in ex.rows]
    assert names[:6] == ["x1", "x2", "y", "w1", "w2", "b"]
    z = 1.0 * 0.5 + 2.0 * -0.3 + 0.1
    a = 1 / (1 + np.exp(-z))
    assert ex.row("a").value == pytest.approx([a])
    assert ex.row("exp_neg_z").value == pytest.approx([np.exp(-z)])
    # dL/da for BCE with y=1 is -1/a; the chain reaches z as (a - y)
    assert ex.row("a").grad == pytest.approx([-1 / a])
    assert ex.row("z").grad == pytest.approx([a - 1.0])
    assert ex.row("one").grad is None and ex.row("y").grad is None   # constants and labels take no gradient
    assert ex.loss == pytest.approx(-np.log(a))


def test_text_table_lists_nodes_in_execution_order():
    text = seed_explanation().to_text()
    lines = text.splitlines()
    assert lines[0].startswith("sigmoid_primitives: loss = ")
    assert any(re.match(r"^a\s+div\(one, one_plus_exp\)\s+\[0\.5\]\s+\[-2\.\]", line) for line in lines)
    order = [line.split()[0] for line in lines[4:]]
    assert order.index("neg_z") < order.index("exp_neg_z") < order.index("one_plus_exp") < order.index("a")


def test_dot_has_a_node_per_value_and_an_edge_per_input():
    dot = seed_explanation().to_dot()
    assert dot.startswith('digraph "sigmoid_primitives" {') and dot.rstrip().endswith("}")
    graph = graphspec.load(EXAMPLES / "sigmoid_primitives.json")
    for node in graph.nodes:
        for source in set(node.inputs):
            assert f'"{source}" -> "{node.id}";' in dot
    assert '"a" [shape=ellipse, label="a = div\\nvalue [0.5]\\ngrad [-2.]"];' in dot
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg"], input=dot, text=True, check=True, capture_output=True)


def test_large_tensors_are_summarised():
    graph = graphspec.load(EXAMPLES / "small_mlp.json")
    rng = np.random.default_rng(0)
    ex = explain(graph, {"x": rng.standard_normal((8, 4)).astype(np.float32), "labels": np.arange(8) % 3},
                 runtime.init_params(graph))
    assert "float32[8, 16] mean" in ex.to_text()
    as_json = json.loads(json.dumps(ex.to_dict()))
    assert {n["name"] for n in as_json["nodes"]} >= {"x", "w1", "h", "L"}


@pytest.mark.parametrize("suffix", [".json", ".msgpack", ".npz"])
def test_tensor_files_round_trip(tmp_path, suffix):
    tensors = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "labels": np.array([1, 0], dtype=np.int64),
               "flag": np.array(True), "big": np.linspace(0, 1, 1000)}
    save_tensors(tmp_path / f"t{suffix}", tensors)
    back = load_tensors(tmp_path / f"t{suffix}")
    assert set(back) == set(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value)


def test_bad_tensor_files_are_clear_errors(tmp_path):
    (tmp_path / "bad.json").write_text('{"x": {"dtype": "float32", "shape": [2], "data": [1]}}')
    with pytest.raises(DataFileError, match="/x/data"):
        load_tensors(tmp_path / "bad.json")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFileError, match="npz"):
        load_tensors(tmp_path / "bad.npz")
    with pytest.raises(DataFileError, match="cannot read"):
        load_tensors(tmp_path / "missing.msgpack")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataFileError):   # object arrays would need unpickling: refused
        load_tensors(pickled)


def test_cli_explain(tmp_path):
    command = [shutil.which("chainrule"), "explain", str(EXAMPLES / "sigmoid_primitives.json"),
               "--inputs", str(DATA / "seed_one_example.json"), "--params", str(DATA / "seed_params.json"),
               "--dot", str(tmp_path / "g.dot")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "one_plus_exp" in result.stdout and (tmp_path / "g.dot").read_text().startswith("digraph")
    wrong = subprocess.run(command[:2] + [str(EXAMPLES / "small_mlp.json")] + command[3:7], capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode == 1 and "unexpected input 'x1'" in wrong.stderr and "Traceback" not in wrong.stderr
