"""The chainrule command line, run as a user runs it: the installed console script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES

import graphspec

CHAINRULE = shutil.which("chainrule")


def run(*args, check=False):
    command = [CHAINRULE] if CHAINRULE else [sys.executable, "-m", "service.cli"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, check=check, timeout=60)


def test_console_script_is_installed():
    assert CHAINRULE is not None, "pip install -e . should install the 'chainrule' command"


def test_validate_valid_examples_exit_zero():
    result = run("validate", *sorted(EXAMPLES.glob("*.json")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": valid") == 3


def test_validate_prints_every_error_with_location_and_exits_one(tmp_path, example_tree):
    tree = example_tree("small_mlp")
    tree["nodes"][0]["op"] = "matmull"
    tree["nodes"][1]["inputs"][1] = "bb1"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tree))
    result = run("validate", bad)
    assert result.returncode == 1
    assert "/nodes/0/op: unknown op 'matmull'" in result.stdout
    assert "/nodes/1/inputs/1:" in result.stdout
    assert "did you mean 'b1'?" in result.stdout
    as_json = json.loads(run("validate", "--json", bad).stdout)
    assert as_json["valid"] is False and {i["location"] for i in as_json["issues"]} == {
        "/nodes/0/op", "/nodes/1/inputs/1"}


def test_validate_reports_unreadable_input(tmp_path):
    garbage = tmp_path / "garbage.msgpack"
    garbage.write_bytes(b"\x85\x01")
    result = run("validate", garbage, tmp_path / "missing.json")
    assert result.returncode == 1
    assert "parse_error" in result.stdout and "io_error" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_convert_json_to_msgpack_and_back(tmp_path):
    src = EXAMPLES / "small_mlp.json"
    packed, back = tmp_path / "g.msgpack", tmp_path / "g.json"
    assert run("convert", src, packed).returncode == 0
    assert packed.read_bytes()[:1] != b"{"
    assert run("convert", packed, back).returncode == 0
    assert back.read_bytes() == src.read_bytes()
    assert graphspec.content_hash(graphspec.load(packed)) == graphspec.content_hash(graphspec.load(src))


def test_convert_refuses_invalid_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "chainrule.graph", "version": "9.0"}')
    result = run("convert", bad, tmp_path / "out.msgpack")
    assert result.returncode == 1 and "9.0" in result.stderr
    assert not (tmp_path / "out.msgpack").exists()


def test_schema_prints_the_committed_schema():
    from graphspec.jsonschema import schema_path

    result = run("schema", check=True)
    assert json.loads(result.stdout) == json.loads(schema_path().read_text())


def test_demo_trains_and_explains_the_seed():
    result = run("demo", check=True)
    assert "div(one, one_plus_exp)" in result.stdout
    assert "-> float64[]" in result.stdout  # the loss, inferred scalar
    losses = [float(m) for m in re.findall(r"step \d+/200  loss ([0-9.e-]+)", result.stdout)]
    assert len(losses) >= 10 and losses[-1] < 0.1 < losses[0]
    ratio, closed = re.search(r"grad\(a\) = ([0-9.]+) = sigma\(z\)\(1 - sigma\(z\)\) = ([0-9.]+)", result.stdout).groups()
    assert ratio == closed


def test_train_drives_the_seed_loss_down_and_writes_params(tmp_path):
    out = tmp_path / "params.msgpack"
    result = run("train", EXAMPLES / "logistic_regression.json", "--data", EXAMPLES / "data" / "seed_data.json",
                 "--steps", 300, "--lr", 0.5, "--batch-size", 16, "--out", out,
                 "--checkpoint", tmp_path / "ckpt.msgpack", "--checkpoint-every", 100)
    assert result.returncode == 0, result.stderr
    first, last = map(float, re.search(r"loss ([0-9.e-]+) -> ([0-9.e-]+)", result.stdout).groups())
    assert first == pytest.approx(np.log(2)) and last < 0.1
    assert "step 300/300" in result.stderr
    from runtime import Checkpoint
    from runtime.data import load_tensors

    params = load_tensors(out)
    assert params["w1"] > 0 > params["w2"]  # the data's true boundary is 2*x1 - x2 + 0.5 = 0
    assert Checkpoint.load(tmp_path / "ckpt.msgpack").step == 300
    resumed = run("train", EXAMPLES / "logistic_regression.json", "--data", EXAMPLES / "data" / "seed_data.json",
                  "--steps", 350, "--lr", 0.5, "--batch-size", 16, "--resume", tmp_path / "ckpt.msgpack")
    assert resumed.returncode == 0, resumed.stderr
    assert "trained 350 steps" in resumed.stdout


def test_train_reports_bad_data_clearly(tmp_path):
    result = run("train", EXAMPLES / "small_mlp.json", "--data", EXAMPLES / "data" / "seed_data.json", "--steps", 5)
    assert result.returncode == 1 and "error:" in result.stderr and "Traceback" not in result.stderr
    result = run("train", EXAMPLES / "logistic_regression.json", "--data", EXAMPLES / "data" / "seed_data.json",
                 "--steps", 5, "--optimizer", "adagrad")
    assert result.returncode == 1 and "adagrad" in result.stderr


@pytest.mark.parametrize("args", [[], ["validate"], ["frobnicate"]])
def test_usage_errors_exit_two(args):
    assert run(*args).returncode == 2
