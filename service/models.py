"""Typed request and response models of the HTTP API (pydantic 2).

Tensors and graph documents are validated by graphspec (located issues, size limits,
raw-bytes tensors from msgpack), so here they are typed as plain maps whose OpenAPI
schema points at the ``Tensor`` and ``GraphDocument`` components.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from graphspec import DTYPES
from runtime import OPTIMIZERS
from runtime.optim import learning_rate_defaults
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

def _float_sized(value: Any) -> Any:
    """Hyperparameters become floats: a JSON integer beyond the float range (``1`` and 400 zeros)
    is refused here, with its location, rather than overflowing in the optimizer's ``float()``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            try:
                float(item)
            except OverflowError:
                raise ValueError("the number is too large to be a hyperparameter") from None
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return value


Hyperparameter = Annotated[Any, AfterValidator(_float_sized)]


class OptimizerSpec(BaseModel):
    """An optimizer by name with its hyperparameters (checked by runtime.make_optimizer): ``lr``
    and e.g. ``momentum``, ``nesterov``, ``weight_decay`` (SGD) or ``betas``, ``eps``, ``weight_decay`` (Adam).
    Hyperparameters left out take the optimizer's defaults; the job stores them all."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    __pydantic_extra__: dict[str, Hyperparameter] = Field(init=False)  # validates the other hyperparameters
    name: Annotated[str, WithJsonSchema({"type": "string", "enum": list(OPTIMIZERS)})]
    lr: Annotated[Hyperparameter, WithJsonSchema({
        "anyOf": [{"type": "number", "minimum": 0}, {"type": "null"}],
        "description": f"learning rate (default: the optimizer's own: {learning_rate_defaults()})"})] = None

    def as_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.lr is not None:
            out["lr"] = self.lr
        out.update(self.model_extra or {})
        return out


class JobRequest(_Strict):
    """A training job. Give ``graph`` (an inline document) or ``graph_id`` (one stored with POST /v1/graphs),
    and ``steps``, ``epochs`` or both (training stops at whichever comes first)."""

    graph: GraphDocumentJson | None = None
    graph_id: str | None = None
    data: TensorMap
    eval_data: TensorMap | None = None
    optimizer: OptimizerSpec
    steps: int | None = Field(None, ge=1, description="number of updates (at most the server's max_steps)")
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1, description="examples per step; omitted = full batch")
    seed: int = Field(0, ge=0, le=2**63 - 1)
    shuffle: bool = True
    report_every: int = Field(1, ge=1, description="write a step entry every this many steps")
    gradients: Literal["norms", "full", "none"] = Field(
        "norms", description="per step: gradient L2 norms, full gradient tensors as well, or nothing")
    checkpoint_every: int | None = Field(None, ge=1)
    eval_every: int | None = Field(None, ge=1, description="evaluate on eval_data every this many steps")
    time_limit_s: int | None = Field(None, ge=1, description="capped by the server's max_time_limit_s")


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


class JobSettings(BaseModel):
    """The training settings a job was stored with: the request's fields, the optimizer with every
    hyperparameter filled in and ``time_limit_s`` as capped by the server. Fields a job stored before
    they existed are null."""

    optimizer: OptimizerSpec | None = Field(description="name and every hyperparameter, defaults filled in")
    steps: int | None
    epochs: int | None
    batch_size: int | None = Field(description="null: full batch")
    seed: int | None
    shuffle: bool | None
    report_every: int | None
    gradients: Literal["norms", "full", "none"] | None
    checkpoint_every: int | None
    eval_every: int | None
    time_limit_s: int | None = Field(description="the job's time limit in seconds, after the server's cap")


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
