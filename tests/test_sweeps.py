"""runtime.sweeps: search spaces, the trials they expand to, and the early-termination rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime import SpecError
from runtime.sweeps import SearchSpace, apply, asha, median_stopping, rungs


@pytest.mark.parametrize("space, location, words", [
    ({}, "/space", "maps settings"),
    ({"learning_rate": {"values": [0.1]}}, "/space/learning_rate", "not a training setting"),
    ({"optimizer.lr": {"gaussian": [0, 1]}}, "/space/optimizer.lr", "one of values, uniform, log_uniform"),
    ({"optimizer.lr": {"uniform": [1, 0.1]}}, "/space/optimizer.lr/uniform", "low < high"),
    ({"optimizer.lr": {"log_uniform": [0, 1]}}, "/space/optimizer.lr/log_uniform", "low > 0"),
    ({"batch_size": {"values": []}}, "/space/batch_size/values", "non-empty"),
])
def test_a_space_that_is_not_one_is_refused_where_it_is(space, location, words):
    with pytest.raises(SpecError) as info:
        SearchSpace.from_dict(space)
    (issue,) = info.value.issues
    assert issue["location"] == location and words in issue["message"], issue


def test_a_grid_is_every_combination_in_order_up_to_max_trials():
    space = SearchSpace.from_dict({"optimizer.lr": {"values": [0.1, 0.5]}, "batch_size": {"values": [16, 32, 64]}})
    trials = space.trials("grid", max_trials=100)
    assert trials == [{"optimizer.lr": lr, "batch_size": b} for lr in (0.1, 0.5) for b in (16, 32, 64)]
    assert space.trials("grid", max_trials=4) == trials[:4]
    with pytest.raises(SpecError, match="a grid takes values only"):
        SearchSpace.from_dict({"optimizer.lr": {"uniform": [0.1, 1]}}).trials("grid", max_trials=3)


def test_random_trials_are_reproducible_and_follow_their_distributions():
    space = SearchSpace.from_dict({"optimizer.lr": {"log_uniform": [1e-4, 1]},
                                   "optimizer.momentum": {"uniform": [0.5, 0.9]},
                                   "schedule": {"values": ["constant", "cosine"]}})
    trials = space.trials("random", max_trials=2000, seed=7)
    assert trials == space.trials("random", max_trials=2000, seed=7)
    assert trials != space.trials("random", max_trials=2000, seed=8)
    rates = np.array([t["optimizer.lr"] for t in trials])
    assert rates.min() >= 1e-4 and rates.max() <= 1
    # log-uniform: each decade about as likely (uniform would put ~90 % in the last one)
    decades = np.histogram(np.log10(rates), bins=4, range=(-4, 0))[0] / len(rates)
    assert np.all(np.abs(decades - 0.25) < 0.05), decades
    momenta = np.array([t["optimizer.momentum"] for t in trials])
    assert 0.5 <= momenta.min() and momenta.max() <= 0.9 and abs(momenta.mean() - 0.7) < 0.02
    assert {t["schedule"] for t in trials} == {"constant", "cosine"}


def test_a_trial_is_the_base_spec_with_its_values():
    base = {"optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9}, "steps": 100, "batch_size": 16}
    spec = apply(base, {"optimizer.lr": 0.01, "batch_size": 64, "schedule": "cosine"})
    assert spec.optimizer == {"name": "sgd", "lr": 0.01, "momentum": 0.9}
    assert (spec.batch_size, spec.schedule, spec.steps) == (64, "cosine", 100)
    assert base["optimizer"]["lr"] == 0.5  # the base is not changed
    with pytest.raises(SpecError) as info:
        apply(base, {"optimizer.lr": -1.0})
    assert info.value.issues[0]["location"] == "/space/optimizer.lr"
    with pytest.raises(SpecError) as info:
        apply(base, {"schedule": "step"})  # step needs decay_steps, which the base lacks
    assert info.value.issues[0]["location"] == "/decay_steps"


def curve(start: float, rate: float, steps: range) -> list[tuple[int, float]]:
    return [(s, start * math.exp(-rate * s)) for s in steps]


def test_median_stopping_stops_a_trial_worse_than_the_others_median():
    histories = {"fast": curve(1.0, 0.05, range(10, 101, 10)), "mid": curve(1.0, 0.03, range(10, 101, 10)),
                 "slow": curve(1.0, 0.01, range(10, 101, 10)), "fresh": curve(1.0, 0.04, range(10, 31, 10))}
    assert median_stopping(histories, "slow", grace_steps=20, min_trials=2)
    assert not median_stopping(histories, "fast", grace_steps=20, min_trials=2)
    assert not median_stopping(histories, "slow", grace_steps=100, min_trials=2)  # still in its grace period
    # only two others reached step 100 ("fresh" stopped at 30): too few for the default three
    assert not median_stopping(histories, "slow", grace_steps=20)
    assert median_stopping({**histories, "mid2": curve(1.0, 0.02, range(10, 101, 10))}, "slow", grace_steps=20)
    # "fresh" is at step 30: compared with the others' best up to step 30, it is better than the median
    assert not median_stopping(histories, "fresh", grace_steps=20, min_trials=2)


def test_asha_keeps_the_best_third_at_each_rung():
    assert rungs(10, 3, 200) == [10, 30, 90]
    histories = {f"t{k}": curve(1.0, 0.01 * (k + 1), range(10, 31, 10)) for k in range(6)}
    # at rung 10 six trials reached it: the best two (highest rates: t5, t4) continue
    assert [name for name in histories if asha(histories, name, min_steps=10, eta=3, max_steps=200)] == [
        "t0", "t1", "t2", "t3"]
    few = {name: histories[name] for name in ("t0", "t1")}
    assert not asha(few, "t0", min_steps=10, eta=3, max_steps=200)  # fewer than eta at the rung: no cut yet
