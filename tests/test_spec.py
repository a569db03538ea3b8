"""runtime.TrainingSpec: validation with located issues, the stored (versioned) form, and the
Trainer it configures. End to end through every surface: tests/integration/test_training_spec.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphspec
import runtime
from conftest import EXAMPLES
from runtime.spec import SPEC_VERSION, SpecError, TrainingSpec


def issues(body) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        TrainingSpec.from_dict(body)
    return [(i["location"], i["code"]) for i in info.value.issues]


def test_defaults_and_the_stored_form():
    spec = TrainingSpec.from_dict({"steps": 5})
    assert spec.optimizer == {"name": "sgd"} and spec.seed == 0 and spec.shuffle and spec.gradients == "norms"
    stored = spec.to_dict()
    assert stored["version"] == SPEC_VERSION
    assert stored["optimizer"] == {"name": "sgd", "lr": 0.01, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    again = TrainingSpec.from_stored(json.loads(json.dumps(stored)))
    assert again.to_dict() == stored and again.steps == 5


def test_every_problem_is_reported_at_its_location_at_once():
    assert issues({"steps": 0, "seed": -1, "batch_size": 2.5, "gradients": "all", "shuffle": "yes",
                   "optimizer": {"name": "adam", "betas": [1.5, 0.9]}}) == [
        ("/optimizer/betas", "invalid_optimizer"), ("/steps", "too_small"), ("/batch_size", "invalid_type"),
        ("/seed", "too_small"), ("/shuffle", "invalid_type"), ("/gradients", "invalid_value")]
    assert issues({}) == [("/steps", "missing_field")]
    assert issues({"steps": 1, "seed": 2**63}) == [("/seed", "too_large")]


@pytest.mark.parametrize("optimizer, location, text", [
    ({"name": "sgdd"}, "/optimizer/name", "did you mean 'sgd'"),
    ({"name": "sgd", "lrr": 0.1}, "/optimizer/lrr", "did you mean 'lr'"),
    ({"name": "sgd", "lr": -1}, "/optimizer/lr", "lr must be a finite number"),
    ({"name": "sgd", "lr": 10**400}, "/optimizer/lr", "too large"),
    ({"name": "momentum", "momentum": 0}, "/optimizer/momentum", "momentum must be > 0"),
    ("sgd", "/optimizer", "an object with a name"),
])
def test_optimizer_problems_are_located_at_the_hyperparameter(optimizer, location, text):
    with pytest.raises(SpecError) as info:
        TrainingSpec.from_dict({"steps": 1, "optimizer": optimizer})
    (issue,) = info.value.issues
    assert issue["location"] == location and text in issue["message"]


def test_an_unknown_setting_gets_a_did_you_mean():
    with pytest.raises(SpecError) as info:
        TrainingSpec.from_dict({"stepz": 3})
    assert info.value.issues[0]["location"] == "/stepz" and "did you mean 'steps'" in str(info.value)
    assert TrainingSpec.from_dict({"steps": 3, "graph": {}}, ignore=("graph",)).steps == 3


def test_the_keyword_form_puts_hyperparameters_with_the_optimizer():
    spec = TrainingSpec.from_options("sgd", lr=0.5, momentum=0.9, steps=10, batch_size=None)
    assert spec.optimizer == {"name": "sgd", "lr": 0.5, "momentum": 0.9} and spec.batch_size is None
    assert spec.to_body() == {"optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9}, "steps": 10}


def test_a_spec_stored_before_versions_reads_and_a_newer_one_is_refused():
    legacy = {"optimizer": {"name": "adam", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
              "steps": 20, "epochs": None, "batch_size": 16, "seed": 4, "shuffle": False, "report_every": 5,
              "gradients": "none", "checkpoint_every": None, "eval_every": None, "time_limit_s": 3600,
              "total_steps": 20, "examples": 100, "data_summary": {}, "eval_data_summary": None}
    spec = TrainingSpec.from_stored(legacy)
    assert (spec.batch_size, spec.seed, spec.shuffle, spec.report_every, spec.gradients) == (16, 4, False, 5, "none")
    assert isinstance(spec.make_optimizer(), runtime.Adam)
    with pytest.raises(SpecError, match="newer than this chainrule reads"):
        TrainingSpec.from_stored({**legacy, "version": SPEC_VERSION + 1})


def test_the_trainer_it_configures_checks_data_and_counts_steps():
    graph = graphspec.load(EXAMPLES / "logistic_regression.json")
    spec = TrainingSpec.from_dict({"optimizer": {"name": "adam"}, "epochs": 3, "batch_size": 32, "seed": 7,
                                   "shuffle": False})
    trainer = runtime.Trainer.from_spec(graph, spec)
    assert isinstance(trainer.optimizer, runtime.Adam)
    assert (trainer.batch_size, trainer.seed, trainer.shuffle) == (32, 7, False)
    data = runtime.load_tensors(EXAMPLES / "data" / "seed_data.json")
    examples = trainer.check_data(data)
    assert examples == len(data["y"])
    assert trainer.total_steps(examples, spec.steps, spec.epochs) == 3 * -(-examples // 32)
    assert trainer.total_steps(examples, 2, spec.epochs) == 2
    result = trainer.fit(data, runtime.init_params(graph, seed=spec.seed), **spec.fit_options())
    assert result.steps == 3 * -(-examples // 32) and result.epochs == 3
    with pytest.raises(runtime.InputError, match="x2") as info:
        trainer.check_data({k: v for k, v in data.items() if k != "x2"})
    assert info.value.name == "x2"
    with pytest.raises(runtime.InputError, match="N=3 on axis 0"):
        trainer.check_data({**data, "x2": np.ones(3)})
    # two batch symbols the graph cannot tie together: the trainer's own check, coded for the API
    g = graphspec.GraphBuilder("two_batches", dtype="float64")
    g.loss(g.add(g.sum(g.mul(g.input("a", ["N"]), g.param("w", []))), g.sum(g.input("b", ["M"]))))
    two = runtime.Trainer.from_spec(g.build(), spec)
    with pytest.raises(runtime.InputError, match="same batch dimension") as info:
        two.check_data({"a": np.ones(3), "b": np.ones(4)})
    assert info.value.code == "batch_mismatch"
