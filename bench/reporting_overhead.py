"""Reporting overhead: a worker's step with per-step Redis reporting, as a ratio to the bare trainer.

    python bench/reporting_overhead.py [--redis-url redis://127.0.0.1:6379/0] [--steps 2000] [--rounds 5]
    python bench/reporting_overhead.py --quick          # a few-second smoke run (100 steps x 2 rounds)
    python bench/reporting_overhead.py --workloads W2   # issue #19's W2-sized job (784-256-256-10, B=128)
    python bench/reporting_overhead.py --workloads W2 --variants "report every 1" --steps 200 --rounds 20

Runs the seed logistic regression (batch 16) and the small MLP (batch 32) (``--workloads``:
``seed``, ``mlp``, ``W2``; W2 is ../shared/workloads.md's W2_mlp, float32, batch 128, over
1,024 examples) with
runtime.Trainer alone (the compiled engine, as the worker runs it), then through
worker.jobs' reporter writing to a real Redis (report_every 1 and 10, gradient norms;
and gradients "full"), interleaved over rounds; prints median microseconds per step and
the ratio to the bare trainer.

The reporter's writes are fenced by a lease token (worker/store.py): for every reporting
run the script stores a job, takes its lease and moves it to ``running`` as
worker.jobs.run_job does, so each write goes through the same fenced Lua script as in a
worker; the timed part is ``fit`` plus the reporter's final flush. After each run it checks
that every sampled step reached the job's stream (a refused write would make the figures
meaningless) and finishes the job as the worker does. Keys go to a fresh namespace that is
deleted afterwards (only that namespace's keys). ``--json PATH`` also writes the figures.
Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))  # step_bench's workload definitions (W2)

import graphspec  # noqa: E402
import runtime  # noqa: E402
from worker import metrics  # noqa: E402
from worker.jobs import _Reporter  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.store import JobStore, now  # noqa: E402

VARIANTS = {"bare trainer": None, "report every 10": {"report_every": 10}, "report every 1": {"report_every": 1},
            "every 1, full grads": {"report_every": 1, "gradients": "full"},
            "every 1, worker metrics": {"report_every": 1}}  # the node's Prometheus counters on (worker/metrics.py)


def seed_workload():
    seed = graphspec.load(ROOT / "examples" / "logistic_regression.json")
    return "seed logreg B=16", seed, runtime.load_tensors(ROOT / "examples" / "data" / "seed_data.json"), 16


def mlp_workload():
    mlp = graphspec.load(ROOT / "examples" / "small_mlp.json")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 4)).astype(np.float32)
    return "small MLP B=32", mlp, {"x": x, "labels": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)}, 32


def w2_workload(examples: int = 1024):
    """../shared/workloads.md's W2_mlp (784-256-256-10, ReLU, softmax cross-entropy, float32) as
    step_bench.py builds it, trained in batches of 128 over ``examples`` random rows."""
    from step_bench import WORKLOADS, build_graph

    spec = WORKLOADS["W2_mlp"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((examples, spec["sizes"][0])).astype(np.float32)
    y = rng.integers(0, spec["sizes"][-1], size=examples).astype(np.int64)
    return "W2 MLP B=128", build_graph(spec), {"x": x, "y": y}, spec["batch"]


WORKLOADS = {"seed": seed_workload, "mlp": mlp_workload, "W2": w2_workload}
DEFAULT_WORKLOADS = ("seed", "mlp")


def workloads(names=DEFAULT_WORKLOADS):
    for name in names:
        yield WORKLOADS[name]()


def leased_job(store: JobStore, spec: dict) -> tuple[str, str]:
    """A stored job, leased and running under a fresh token: what run_job holds when it trains."""
    job_id, _ = store.create_job("bench", "g", spec, b"")
    token = f"bench:{uuid.uuid4().hex}"
    if not store.acquire_lease(job_id, token):
        raise SystemExit(f"could not take the lease of the fresh job {job_id}")
    moved, previous = store.transition(job_id, ["queued", "running"], "running", token=token, started=repr(now()),
                                       worker="bench", lease=token)
    if not moved:
        raise SystemExit(f"job {job_id} did not move to running (it was {previous})")
    return job_id, token


def time_run(graph, data, batch, steps, reporter: _Reporter | None) -> tuple[float, float]:
    """µs per step of one run: wall time, and this process's CPU time (Redis's is not in it)."""
    trainer = runtime.Trainer(graph, runtime.SGD(lr=0.1), batch_size=batch, seed=0, compiled=True)
    params = runtime.init_params(graph)
    # as worker.jobs.run_job calls it: the reporter says whether it keeps the gradients (a tree
    # from before fit's copy_grads has no such reporter: this script also runs there, for before/after)
    options = {} if not hasattr(reporter, "keeps_gradients") else {"copy_grads": reporter.keeps_gradients}
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(data, params, steps=steps, callback=reporter, **options)
    if reporter is not None:
        reporter.finish()  # the last buffered steps: part of the job's reporting
    return (time.perf_counter() - start) / steps * 1e6, (time.process_time() - cpu) / steps * 1e6


def expected_rows(steps: int, every: int) -> int:
    """Steps the reporter writes: every ``every``-th one, and always the last."""
    return steps // every + (steps % every != 0)


def measure(store: JobStore, graph, data, batch: int, steps: int, rounds: int,
            variants: dict[str, dict | None] = VARIANTS) -> dict[str, dict]:
    """Each variant's µs per step over ``rounds`` interleaved rounds (``variants`` must hold
    ``"bare trainer"``; every other round runs them in reverse order, so neither side always
    runs first): per variant the median, its ratio to the bare trainer's median, the rounds'
    times, the median and range of the ratios paired within each round, and the median of the
    paired ratios of the process's CPU time."""
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for round_number in range(rounds):
        order = list(variants.items())
        for variant, spec in (order if round_number % 2 == 0 else order[::-1]):
            reporter = job_id = token = None
            if spec is not None:
                job_id, token = leased_job(store, {"steps": steps, **spec})
                reporter = _Reporter(store, job_id, runtime.TrainingSpec.from_dict({"steps": steps, **spec}), token)
            metrics.use(metrics.WorkerMetrics(store, "bench") if "worker metrics" in variant else None)
            wall, cpu_us = time_run(graph, data, batch, steps, reporter)
            times[variant].append(wall)
            cpu[variant].append(cpu_us)
            metrics.use(None)
            if reporter is not None:
                written = store.step_count(job_id)
                want = expected_rows(steps, reporter.every)
                if written != want:
                    raise SystemExit(f"{variant}: {written} steps reached Redis, expected {want}")
                store.transition(job_id, ["running"], "succeeded", token=token, finished=repr(now()), step=steps)
                store.release_lease(job_id, token)
    base = statistics.median(times["bare trainer"])
    rows = {}
    for variant, values in times.items():
        paired = [v / b for v, b in zip(values, times["bare trainer"])]
        paired_cpu = [v / b for v, b in zip(cpu[variant], cpu["bare trainer"])]
        rows[variant] = {"median_us": statistics.median(values), "ratio": statistics.median(values) / base,
                         "runs_us": values, "paired_ratio_median": statistics.median(paired),
                         "paired_ratio_range": [min(paired), max(paired)],
                         "paired_cpu_ratio_median": statistics.median(paired_cpu)}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 2000; --quick 100)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 2)")
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                        help=f"comma-separated, of {', '.join(WORKLOADS)} (default {','.join(DEFAULT_WORKLOADS)})")
    parser.add_argument("--variants", default=";".join(v for v in VARIANTS if v != "bare trainer"),
                        help="semicolon-separated (names hold commas), besides the bare trainer (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 steps x 2 rounds")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    steps = args.steps or (100 if args.quick else 2000)
    rounds = args.rounds or (2 if args.quick else 5)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below when terminated
    settings = Settings(redis_url=args.redis_url, namespace="crbench-" + uuid.uuid4().hex[:8])
    store = JobStore.connect(settings)
    report: dict = {"script": "reporting_overhead.py", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "machine": {"python": platform.python_version(), "numpy": np.__version__,
                                "cpus": os.cpu_count(), "platform": platform.platform(),
                                "redis": store.redis_version()},
                    "steps": steps, "rounds": rounds, "workloads": {}}
    try:
        for name, graph, data, batch in workloads(args.workloads.split(",")):
            chosen = {"bare trainer": None, **{v: VARIANTS[v] for v in args.variants.split(";")}}
            rows = report["workloads"][name] = measure(store, graph, data, batch, steps, rounds, chosen)
            print(f"\n{name}: {steps} steps x {rounds} rounds")
            for variant, row in rows.items():
                print(f"  {variant:<22} {row['median_us']:9.1f} us/step   ratio {row['ratio']:5.2f}   "
                      f"paired: wall {row['paired_ratio_median']:5.3f}, CPU {row['paired_cpu_ratio_median']:5.3f}")
    finally:
        store.delete_namespace()
        store.close()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
