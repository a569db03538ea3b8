"""Which metrics a job's step entries carry: one key set per job, so its series has one layout.

Every entry has ``lr`` (the update's learning rate, after the schedule) and, unless the job
asked for no gradient reports and does not clip, ``grad_norm`` (the global L2 norm before
clipping); then the graph's metric outputs (:mod:`runtime.metrics`: ``accuracy`` for a
classification loss) on the training batch, and with eval data ``eval_<metric>`` (null on
entries without an evaluation). The service bounds a job's history with the same names.
"""

from __future__ import annotations

from typing import Any

import graphspec
import runtime
from runtime.metrics import with_metrics


def step_metric_names(graph: graphspec.Graph, spec: runtime.TrainingSpec, has_eval_data: bool) -> list[str]:
    metrics = with_metrics(graph)[1]
    names = ["lr"]
    if spec.gradients != "none" or spec.clip_norm is not None or spec.clip_value is not None:
        names.append("grad_norm")
    names += metrics
    if has_eval_data:
        names += [f"eval_{name}" for name in metrics]
    return names


def step_metrics(names: list[str], report: runtime.StepReport) -> dict[str, Any]:
    """The entry's metrics for ``report``, every name present (None where this step has no value)."""
    values: dict[str, Any] = {"lr": report.lr, **report.metrics}
    if "grad_norm" in names:
        values["grad_norm"] = report.grad_norm
    for name, value in (report.eval_metrics or {}).items():
        values[f"eval_{name}"] = value
    return {name: values.get(name) for name in names}
