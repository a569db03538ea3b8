"""Reporting overhead: a worker's step with per-step Redis reporting, as a ratio to the bare trainer.

    python bench/reporting_overhead.py [--redis-url redis://127.0.0.1:6379/0] [--steps 2000]

Runs the seed logistic regression (batch 16) and the small MLP (batch 32) with
runtime.Trainer alone, then through worker.jobs' reporter writing to a real Redis
(report_every 1 and 10, gradient norms; and gradients "full"), interleaved over
rounds; prints median microseconds per step and the ratio to the bare trainer.
Keys go to a fresh namespace that is deleted afterwards. Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import graphspec  # noqa: E402
import runtime  # noqa: E402
from worker.jobs import _Reporter  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.store import JobStore  # noqa: E402


def workloads():
    seed = graphspec.load(ROOT / "examples" / "logistic_regression.json")
    yield "seed logreg B=16", seed, runtime.load_tensors(ROOT / "examples" / "data" / "seed_data.json"), 16
    mlp = graphspec.load(ROOT / "examples" / "small_mlp.json")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 4)).astype(np.float32)
    yield "small MLP B=32", mlp, {"x": x, "labels": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)}, 32


def time_run(graph, data, batch, steps, callback) -> float:
    trainer = runtime.Trainer(graph, runtime.SGD(lr=0.1), batch_size=batch, seed=0)
    start = time.perf_counter()
    trainer.fit(data, runtime.init_params(graph), steps=steps, callback=callback)
    return (time.perf_counter() - start) / steps * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    settings = Settings(redis_url=args.redis_url, namespace="crbench-" + uuid.uuid4().hex[:8])
    store = JobStore.connect(settings)
    variants = {"bare trainer": None, "report every 10": {"report_every": 10}, "report every 1": {"report_every": 1},
                "every 1, full grads": {"report_every": 1, "gradients": "full"}}
    try:
        for name, graph, data, batch in workloads():
            times: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(args.rounds):
                for variant, spec in variants.items():
                    callback = None
                    if spec is not None:
                        job_id, _ = store.create_job("bench", "g", {"steps": args.steps}, b"")
                        callback = _Reporter(store, job_id, spec)
                    times[variant].append(time_run(graph, data, batch, args.steps, callback))
                    if callback is not None:
                        callback.flush()
            base = statistics.median(times["bare trainer"])
            print(f"\n{name}: {args.steps} steps x {args.rounds} rounds")
            for variant, values in times.items():
                med = statistics.median(values)
                print(f"  {variant:<22} {med:9.1f} us/step   ratio {med / base:5.2f}")
    finally:
        for key in store.r.scan_iter(f"{settings.namespace}:*", count=1000):
            store.r.delete(key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
