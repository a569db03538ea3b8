"""The chainrule command line, run as a user runs it: the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

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


def test_demo_shows_the_seed_graphs():
    result = run("demo", check=True)
    assert "logistic_regression" in result.stdout and "sigmoid_primitives" in result.stdout
    assert "div(one, one_plus_exp)" in result.stdout
    assert "-> float64[]" in result.stdout  # the loss, inferred scalar


@pytest.mark.parametrize("args", [[], ["validate"], ["frobnicate"]])
def test_usage_errors_exit_two(args):
    assert run(*args).returncode == 2
