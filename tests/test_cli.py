"""The chainrule command line, run as a user runs it: the installed console script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES

import graphspec

CHAINRULE = shutil.which("chainrule")
ROOT = EXAMPLES.parent


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
    assert result.returncode == 2 and "--optimizer: invalid choice: 'adagrad'" in result.stderr


SEED = (EXAMPLES / "logistic_regression.json", "--data", EXAMPLES / "data" / "seed_data.json")


def example_commands() -> list[list[str]]:
    text = (EXAMPLES / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split()[1:] for line in block.splitlines() if line.startswith("chainrule train ")]


def test_every_example_graph_has_training_data_and_a_command_that_works():
    """examples/README.md lists one `chainrule train` per graph; each runs as written."""
    from test_builder import load_example_builders

    data_files = load_example_builders().TRAINING_DATA
    graphs = {p.name for p in EXAMPLES.glob("*.json")}
    assert set(data_files) == graphs
    commands = example_commands()
    assert sorted(Path(c[1]).name for c in commands) == sorted(graphs)
    for command in commands:
        assert f"examples/data/{data_files[Path(command[1]).name]}" in command
        result = subprocess.run([CHAINRULE, *command], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, (command, result.stderr)
        first, last = map(float, re.search(r"loss ([0-9.e-]+) -> ([0-9.e-]+)", result.stdout).groups())
        assert last < first / 3, (command, result.stdout)


def test_train_without_a_budget_names_the_flags():
    result = run("train", *SEED)
    assert result.returncode == 2
    assert "chainrule train: error: give --steps N, --epochs N or both" in result.stderr
    assert "fit needs" not in result.stderr


@pytest.mark.parametrize("flag,value,message", [
    ("--batch-size", "0", "argument --batch-size: must be 1 or more, got 0"),
    ("--steps", "ten", "argument --steps: expected a whole number, got 'ten'"),
    ("--lr", "-1", "argument --lr: must be a finite number >= 0, got -1"),
    ("--seed", "-3", "argument --seed: must be 0 or more, got -3"),
])
def test_bad_numbers_are_named_by_their_flag(flag, value, message):
    args = ["--steps", "5", flag, value] if flag != "--steps" else [flag, value]
    result = run("train", *SEED, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("optimizer,lr", [("adam", "0.001"), ("adamw", "0.001"), ("sgd", "0.01")])
def test_optimizer_without_lr_trains_at_its_own_default(optimizer, lr):
    result = run("train", *SEED, "--steps", 2, "--optimizer", optimizer)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"optimizer {optimizer}: lr {lr},")


@pytest.mark.parametrize("name,content", [("x.npy", None), ("data.csv", "x1,x2,y\n1,2,1\n"),
                                          ("data.txt", "1 2 1\n")])
def test_unsupported_data_files_say_which_formats_work_and_how_to_make_one(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros(3))
    else:
        path.write_text(content)
    result = run("train", EXAMPLES / "logistic_regression.json", "--data", path, "--steps", 2)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"unsupported tensor file type '{path.suffix}'" in result.stderr
    assert "np.savez(path, x=..., y=...)" in result.stderr and ".json or .msgpack" in result.stderr
    assert "not valid json" not in result.stderr


def test_wrong_data_key_is_named_with_the_graphs_inputs(tmp_path):
    from runtime.data import load_tensors

    data = load_tensors(EXAMPLES / "data" / "seed_data.json")
    np.savez(tmp_path / "d.npz", x1=data["x1"], x_2=data["x2"], y=data["y"])
    result = run("train", EXAMPLES / "logistic_regression.json", "--data", tmp_path / "d.npz", "--steps", 2)
    assert result.returncode == 1
    assert "error: data: unexpected input 'x_2' (did you mean 'x2'?); the graph's inputs are: x1, x2, y" \
        in result.stderr


def test_an_unwritable_output_type_is_refused_before_training(tmp_path):
    result = run("train", *SEED, "--steps", 2, "--out", tmp_path / "params.txt")
    assert result.returncode == 2 and "--out: " in result.stderr and "unsupported tensor file type '.txt'" \
        in result.stderr
    assert result.stdout == ""  # nothing trained


@pytest.mark.parametrize("args", [[], ["validate"], ["frobnicate"]])
def test_usage_errors_exit_two(args):
    assert run(*args).returncode == 2
