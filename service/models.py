"""Typed request and response models of the HTTP API (pydantic 2).

Tensors and graph documents are validated by graphspec (located issues, size limits,
raw-bytes tensors from msgpack), so here they are typed as plain maps whose OpenAPI
schema points at the ``Tensor`` and ``GraphDocument`` components. The training settings'
fields are not written here: ``JobRequest`` and ``JobSettings`` are made from
``runtime.TrainingSpec``. Every model of the API is in this one file (so a little past 300
lines): the OpenAPI components are read in one place.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from graphspec import DTYPES
from runtime import OPTIMIZERS
from runtime.optim import learning_rate_defaults
from runtime.spec import default_of, settings as training_settings
from worker.store import STATES

JobState = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]
assert set(JobState.__args__) == set(STATES)  # type: ignore[attr-defined]

TensorMap = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object",
    "description": "name -> tensor in the graphspec tensor encoding (JSON: nested lists or base64; "
                   "msgpack: raw little-endian bytes as extension type 1)",
    "additionalProperties": {"$ref": "#/components/schemas/Tensor"},
})]
GraphDocumentJson = Annotated[dict[str, Any], WithJsonSchema({"$ref": "#/components/schemas/GraphDocument"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- problems -----------------------------------------------------------------------------

class ErrorItem(BaseModel):
    code: str = Field(description="stable machine-readable kind, e.g. unknown_op, shape_mismatch")
    location: str = Field(description="JSON pointer (RFC 6901) into the request body")
    message: str
    hint: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[ErrorItem] | None = None


# -- tensors and graphs -------------------------------------------------------------------

def _is_none(value: Any) -> bool:
    return value is None


class Tensor(BaseModel):
    """A tensor: dtype, shape and exactly one of ``data`` (nested lists, or raw bytes in msgpack) or ``base64``."""

    dtype: Literal[DTYPES]  # type: ignore[valid-type]
    shape: list[int]
    data: Any = Field(None, exclude_if=_is_none,
                      description="nested lists matching shape (JSON), or raw little-endian bytes (msgpack)")
    base64: str | None = Field(None, exclude_if=_is_none, description="raw little-endian bytes, base64 (JSON)")


class GraphCreated(BaseModel):
    id: str = Field(description="content hash of the canonical document, 'sha256:...'")
    summary: dict[str, Any] = Field(description="inputs, parameters with element counts, nodes by op, loss")


# -- jobs ---------------------------------------------------------------------------------

class OptimizerSpec(BaseModel):
    """An optimizer by name with its hyperparameters (checked by runtime.make_optimizer): ``lr``
    and e.g. ``momentum``, ``nesterov``, ``weight_decay`` (SGD) or ``betas``, ``eps``, ``weight_decay`` (Adam).
    Hyperparameters left out take the optimizer's defaults; the job stores them all."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    name: Annotated[str, WithJsonSchema({"type": "string", "enum": list(OPTIMIZERS)})]
    lr: Annotated[Any, WithJsonSchema({
        "anyOf": [{"type": "number", "minimum": 0}, {"type": "null"}],
        "description": f"learning rate (default: the optimizer's own: {learning_rate_defaults()})"})] = None


def _training_fields(*, as_stored: bool) -> dict[str, Any]:
    """The pydantic fields of every training setting, from runtime.TrainingSpec (the one place they
    are defined): as a request takes them (defaults, bounds), or ``as_stored`` (each nullable)."""
    fields: dict[str, Any] = {}
    for f, s in training_settings():
        if f.name == "optimizer":
            continue
        default = default_of(f)
        kind: Any = (Literal[s.choices] if s.choices else bool if isinstance(default, bool)  # type: ignore[valid-type]
                     else s.kind if default is None else type(default))
        if as_stored:
            fields[f.name] = (kind | None, Field(description=s.doc))
        else:
            fields[f.name] = (kind | None if default is None else kind,
                              Field(default, ge=s.minimum, le=s.maximum, gt=s.exclusive_minimum, description=s.doc,
                                    pattern=f"^{s.pattern}$" if s.pattern else None))
    return fields


class _JobBody(_Strict):
    """A training job. Give ``graph`` (an inline document) or ``graph_id`` (one stored with POST /v1/graphs),
    and ``steps``, ``epochs`` or both (training stops at whichever comes first)."""

    graph: GraphDocumentJson | None = None
    graph_id: str | None = None
    data: TensorMap
    eval_data: TensorMap | None = None
    optimizer: OptimizerSpec

    def training(self) -> dict[str, Any]:
        """The request's training settings as runtime.TrainingSpec.from_dict takes them."""
        out = {name: getattr(self, name) for name in TRAINING_FIELDS if name in self.model_fields_set}
        out["optimizer"] = {"name": self.optimizer.name, **({"lr": self.optimizer.lr} if self.optimizer.lr is not None
                                                           else {}), **(self.optimizer.model_extra or {})}
        return out


JobRequest = create_model("JobRequest", __base__=_JobBody, __doc__=_JobBody.__doc__,
                          **_training_fields(as_stored=False))
TRAINING_FIELDS = tuple(f.name for f, _ in training_settings() if f.name != "optimizer")


class JobSettings(BaseModel):
    """The training settings a job was stored with: the request's fields, the optimizer with every
    hyperparameter filled in and ``time_limit_s`` as capped by the server. Fields a job stored before
    they existed are null."""

    optimizer: OptimizerSpec | None = Field(description="name and every hyperparameter, defaults filled in")


JobSettings = create_model("JobSettings", __base__=JobSettings, __doc__=JobSettings.__doc__,  # type: ignore[misc]
                           **_training_fields(as_stored=True))


class JobError(BaseModel):
    type: str
    message: str
    node: str | None = None


class JobLinks(BaseModel):
    self: str
    steps: str
    events: str
    result: str
    cancel: str
    data: str = Field(description="rows of the job's training data")


class InputSummary(BaseModel):
    dtype: str
    shape: list[int]
    per_example: bool = Field(description="sliced into batches along axis 0 (its first declared dimension is "
                                          "symbolic); other inputs are seen whole by every step")


class DataSummary(BaseModel):
    """What a job's data holds, computed when it was submitted."""

    examples: int | None = Field(description="rows of the per-example inputs (null: no input is per-example)")
    bytes: int = Field(description="decoded size of every tensor, in bytes")
    inputs: dict[str, InputSummary]


class JobResource(BaseModel):
    id: str
    state: JobState
    step: int
    total_steps: int | None = Field(description="steps the job will run (null when unknown)")
    epoch: int | None = Field(description="complete passes over the training data so far (the result's `epochs` "
                                          "counts the same way)")
    loss: float | None = Field(description="latest training loss")
    best_loss: float | None = Field(None, description="lowest finite training loss among the job's step entries so "
                                                      "far (null before the first, and for jobs stored before it "
                                                      "was kept)")
    best_loss_step: int | None = Field(None, description="the step of best_loss (its entry is in the step history)")
    settings: JobSettings | None = Field(None, description="the training settings as stored")
    data: DataSummary | None = Field(None, description="summary of the training data (null for jobs stored before "
                                                       "it was kept)")
    eval_data: DataSummary | None = Field(None, description="summary of the held-out data, if any")
    created: datetime | None
    started: datetime | None
    finished: datetime | None
    error: JobError | None
    worker: str | None
    attempts: int
    stop_reason: str | None = Field(None, description="why a succeeded job stopped: steps, epochs (it ran what was "
                                                      "asked), patience (the eval loss stopped improving) or "
                                                      "target_loss; null until it has")
    graph_id: str
    links: JobLinks


class JobList(BaseModel):
    jobs: list[JobResource]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null on the last page")


class StepEntry(BaseModel):
    step: int
    loss: float | None
    grad_norms: dict[str, float | None]
    eval_loss: float | None
    metrics: dict[str, float | None] = Field(default_factory=dict, description=(
        "lr (the update's learning rate), grad_norm (the global gradient L2 norm before clipping), the graph's "
        "metrics on the batch (accuracy for a classification loss) and on the held-out data (eval_accuracy: null "
        "on entries without an evaluation); empty for jobs stored before metrics"))
    time: float = Field(description="when the step was reported, Unix seconds")
    grads: dict[str, Tensor] | None = Field(None, description="only for jobs submitted with gradients: 'full'")


class StepsPage(BaseModel):
    steps: list[StepEntry]
    next_after: int | None = Field(description="pass as ?after= for the next page; null when the job is finished "
                                               "and every step has been returned, and on a downsampled page")
    downsampled: bool = Field(False, description="true when max_points was given and the history had more "
                                                 "entries: `steps` is then a subset of real entries that keeps "
                                                 "every bucket's extremes")


class DataRows(BaseModel):
    """Rows of a job's training data: per-example inputs sliced along axis 0, other inputs whole."""

    examples: int | None = Field(description="rows in all (null: no input is per-example)")
    offset: int = Field(description="the first row returned")
    count: int = Field(description="rows returned (0 when no input is per-example)")
    data: dict[str, Tensor]


class DryRun(BaseModel):
    """What ``POST /v1/jobs?dry_run=true`` found: the job that would be stored. Nothing was."""

    dry_run: Literal[True] = True
    graph_id: str = Field(description="content hash of the job's graph (an inline graph is not stored)")
    total_steps: int | None = Field(description="updates the job would run: min(steps, epochs x batches)")
    settings: JobSettings
    data: DataSummary
    eval_data: DataSummary | None


class JobResult(BaseModel):
    loss: float | None
    steps: int
    epochs: int
    eval_loss: float | None
    params: dict[str, Tensor]
    stop_reason: str | None = Field(None, description="why training stopped: steps, epochs, patience or target_loss")
    best_step: int | None = Field(None, description="with restore_best: the step whose parameters these are")
    metrics: dict[str, float | None] = Field(default_factory=dict, description="the last step's metrics")
    eval_metrics: dict[str, float | None] | None = Field(None, description="the last evaluation's metrics")


# -- graph analysis -----------------------------------------------------------------------

Dim = Annotated[int | str | None, WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}, {"type": "null"}],
    "description": "a size, a symbol such as 'N' (the same symbol is the same size), or null (unknown)"})]


class ValueType(BaseModel):
    kind: Literal["input", "parameter", "node"]
    dtype: str
    shape: list[Dim]


class GraphAnalysis(BaseModel):
    """What validation inferred about a stored graph, before anything runs."""

    graph_id: str
    order: list[str] = Field(description="node ids in execution order (a topological order)")
    types: dict[str, ValueType] = Field(description="every input, parameter and node by name")
    outputs: dict[str, str] = Field(description="output name -> the value it names")
    loss: str = Field(description="the output that is the training loss")


# -- explain ------------------------------------------------------------------------------

class ExplainRequest(_Strict):
    inputs: TensorMap
    params: TensorMap | None = Field(None, description="omitted: the graph's initial parameters drawn with seed")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


class ExplainNode(BaseModel):
    name: str
    kind: Literal["input", "parameter", "node"]
    op: str | None
    inputs: list[str]
    dtype: str
    shape: list[int]
    value: Any = Field(description="nested lists; non-finite numbers as the strings 'NaN', 'Infinity', '-Infinity'")
    grad: Any = Field(description="d(loss)/d(value), same layout, null where no gradient flows")


class ExplainResponse(BaseModel):
    graph: str
    loss_name: str
    loss: float | str
    nodes: list[ExplainNode]


# -- health -------------------------------------------------------------------------------

class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, str]


# -- hyperparameter sweeps ------------------------------------------------------------------

class EarlyTermination(_Strict):
    """When a sweep gives up on a trial (runtime/sweeps.py): ``median`` stops a trial whose best
    objective so far is worse than the median of the others' at the same step (after
    ``grace_steps``, with at least ``min_trials`` to compare); ``asha`` keeps, at rungs of
    ``min_steps * eta**k`` steps, only the best ``1/eta`` of the trials that reached each."""

    rule: Literal["median", "asha"]
    grace_steps: int = Field(0, ge=0, description="median: steps before the rule applies")
    min_trials: int = Field(3, ge=1, description="median: other trials needed at a step to compare")
    min_steps: int | None = Field(None, ge=1, description="asha: the first rung (required for asha)")
    eta: int = Field(3, ge=2, description="asha: the reduction factor between rungs")


class SweepRequest(_Strict):
    """A hyperparameter sweep: ``base`` is a job as POST /v1/jobs takes it; every trial is that job
    with ``space``'s values (settings such as ``batch_size``, or ``optimizer.lr``-style hyperparameters)."""

    base: JobRequest  # type: ignore[valid-type]
    space: dict[str, dict[str, Any]] = Field(description='setting -> distribution: {"values": [...]}, '
                                                         '{"uniform": [low, high]} or {"log_uniform": [low, high]}')
    method: Literal["grid", "random"] = Field("random", description="every combination of values, or random draws")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="the random draws' seed (a sweep is reproducible)")
    max_trials: int = Field(ge=1, description="trials in all (a grid: its first max_trials combinations)")
    max_concurrent: int = Field(2, ge=1, description="trials queued or running at once")
    early_termination: EarlyTermination | None = None


class SweepTrial(BaseModel):
    index: int
    job_id: str
    assignment: dict[str, Any] = Field(description="the values this trial trains with")
    state: str = Field(description="its job's state (expired once the job is past retention)")
    step: int | None
    objective: float | None = Field(description="its lowest objective so far (eval loss, else training loss)")
    stop_reason: str | None


class SweepResource(BaseModel):
    id: str
    state: Literal["running", "cancelling", "cancelled", "succeeded"]
    method: str
    objective: Literal["eval_loss", "loss"] = Field(description="what the trials are compared by (lower is better)")
    max_trials: int
    max_concurrent: int
    early_termination: EarlyTermination | None
    space: dict[str, Any]
    trials: list[SweepTrial] = Field(description="the trials launched so far, by index")
    best: SweepTrial | None = Field(description="the trial with the lowest objective (finished ones first)")
    created: datetime | None
    finished: datetime | None


class SweepList(BaseModel):
    sweeps: list[SweepResource]
