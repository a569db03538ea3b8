"""runtime.memory's estimate against reality: the peak tracemalloc sees (numpy registers its
allocations with it, Python objects are traced too) over real training runs, on both engines.

The estimate must be an upper bound of the measured peak, and not a loose one: within
``FACTOR`` for every run whose arrays are more than a few MiB (for the tiny examples the
estimate is dominated by its fixed bookkeeping allowance, and is checked to stay under 1 MiB)."""

from __future__ import annotations

import gc
import importlib.util
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import graphspec
import runtime
from graphspec import GraphBuilder
from runtime.memory import Part, estimate_training, largest_fitting_batch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FACTOR = 5.0  # measured: 2.1x to 4.4x (docs/runtime.md, "Memory")


def digits_cnn() -> graphspec.Graph:
    spec = importlib.util.spec_from_file_location("digits_cnn_for_memory", EXAMPLES / "digits_cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cnn()


def digits_like(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The digits data set's shapes and dtypes (scikit-learn is not needed: memory depends on shapes)."""
    rng = np.random.default_rng(seed)
    return {"x": rng.random((n, 1, 8, 8), dtype=np.float32), "label": rng.integers(0, 10, n)}


def wide_mlp() -> tuple[graphspec.Graph, dict[str, np.ndarray]]:
    g = GraphBuilder("wide_mlp", dtype="float64")
    x = g.input("x", ["N", 64])
    logits = g.mlp(x, [256, 256, 10], activation="tanh")
    g.output("logits", logits)
    g.loss(g.softmax_cross_entropy(logits, g.input("label", ["N"], dtype="int64")))
    rng = np.random.default_rng(1)
    return g.build(), {"x": rng.standard_normal((3000, 64)), "label": rng.integers(0, 10, 3000)}


def measured_peak(trainer: runtime.Trainer, graph, data, eval_data=None, steps: int = 3) -> int:
    """tracemalloc's peak over ``fit`` (the worker's way: a callback, so the gradients are copied)."""
    params = runtime.init_params(graph)
    gc.collect()
    tracemalloc.start()
    try:
        trainer.fit(data, params, steps=steps, callback=lambda report: None, eval_data=eval_data,
                    eval_every=2 if eval_data is not None else None)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _cases():
    seed = graphspec.load(EXAMPLES / "logistic_regression.json")
    mlp = graphspec.load(EXAMPLES / "small_mlp.json")
    cnn = digits_cnn()
    wide, wide_data = wide_mlp()
    return [
        ("seed", seed, runtime.load_tensors(EXAMPLES / "data" / "seed_data.json"), None, 16, "sgd"),
        ("small_mlp", mlp, runtime.load_tensors(EXAMPLES / "data" / "small_mlp_data.json"), None, 16, "adam"),
        ("digits_cnn-64", cnn, digits_like(1437), digits_like(360, 1), 64, "adam"),
        ("digits_cnn-1000", cnn, digits_like(1437), None, 1000, "momentum"),
        ("digits_cnn-full", cnn, digits_like(1437), digits_like(360, 1), None, "sgd"),
        ("wide_mlp-1024", wide, wide_data, None, 1024, "adamw"),
    ]


CASES = _cases()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "interpreter"])
@pytest.mark.parametrize("name, graph, data, eval_data, batch_size, optimizer", CASES, ids=[c[0] for c in CASES])
def test_the_estimate_bounds_the_measured_peak(name, graph, data, eval_data, batch_size, optimizer, compiled):
    spec = runtime.TrainingSpec.from_dict({"optimizer": {"name": optimizer}, "steps": 3, "batch_size": batch_size})
    trainer = runtime.Trainer.from_spec(graph, spec, compiled=compiled)
    estimate = estimate_training(trainer, data, eval_data)
    peak = measured_peak(trainer, graph, data, eval_data)
    ratio = estimate.total / peak
    print(f"{name} ({estimate.engine}): measured {peak / 2**20:.2f} MiB, estimated {estimate.total / 2**20:.2f} MiB, "
          f"x{ratio:.2f}")
    assert estimate.total >= peak, f"{name}: the estimate is not an upper bound\n{estimate.to_text()}"
    if peak > 4 * 2**20:
        assert ratio <= FACTOR, f"{name}: the estimate is {ratio:.2f}x the measured peak\n{estimate.to_text()}"
    else:
        assert estimate.total < 2**20


def test_the_parts_name_the_largest_values():
    cnn = digits_cnn()
    trainer = runtime.Trainer.from_spec(cnn, runtime.TrainingSpec.from_dict({"steps": 1}))  # full batch
    estimate = estimate_training(trainer, {"x": ("float32", (1437, 1, 8, 8)), "label": ("int64", (1437,))})
    top = estimate.largest(3)
    assert all(isinstance(p, Part) for p in top) and top[0].bytes >= top[1].bytes >= top[2].bytes
    assert top[0].name == "conv2d_2.conv" and "im2col" in top[0].what
    assert sum(p.bytes for p in estimate.parts) == estimate.total
    assert estimate.batch_size == 1437 and estimate.examples == 1437 and estimate.engine == "compiled"


def test_nothing_is_allocated_for_a_huge_job():
    """Shapes only: a job that would need terabytes is estimated, not attempted."""
    cnn = digits_cnn()
    trainer = runtime.Trainer.from_spec(cnn, runtime.TrainingSpec.from_dict({"steps": 1}))
    tracemalloc.start()
    try:
        estimate = estimate_training(trainer, {"x": ("float32", (10**9, 1, 8, 8)), "label": ("int64", (10**9,))})
        assert tracemalloc.get_traced_memory()[1] < 8 * 2**20
    finally:
        tracemalloc.stop()
    assert estimate.total > 2**40


def test_optimizer_state_and_batch_size():
    wide, data = wide_mlp()
    shapes = {name: (a.dtype, a.shape) for name, a in data.items()}
    params = sum(int(np.prod(s.shape)) * 8 for s in wide.parameters.values())

    def state(name: str) -> int:
        trainer = runtime.Trainer.from_spec(wide, runtime.TrainingSpec.from_dict(
            {"optimizer": {"name": name}, "steps": 1, "batch_size": 32}))
        parts = {p.name: p.bytes for p in estimate_training(trainer, shapes).parts}
        return parts.get("optimizer state", 0)

    assert (state("sgd"), state("momentum"), state("adam"), state("adamw")) == (0, params, 2 * params, 2 * params)
    trainer = runtime.Trainer.from_spec(wide, runtime.TrainingSpec.from_dict({"steps": 1, "batch_size": 2048}))
    totals = [estimate_training(trainer, shapes, batch_size=b).total for b in (16, 256, 2048)]
    assert totals == sorted(totals) and totals[0] < totals[-1]
    cap = estimate_training(trainer, shapes, batch_size=300).total
    fits = largest_fitting_batch(trainer, shapes, None, cap)
    assert estimate_training(trainer, shapes, batch_size=fits).total <= cap
    assert estimate_training(trainer, shapes, batch_size=fits + 1).total > cap
    assert largest_fitting_batch(trainer, shapes, None, 1000) is None  # not even one example
