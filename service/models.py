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
from runtime import OPTIMIZERS, optimizer_defaults
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


_LR_DEFAULTS = ", ".join(f"{name} {optimizer_defaults(name)['lr']:g}" for name in OPTIMIZERS)


class OptimizerSpec(BaseModel):
    """An optimizer by name with its hyperparameters (checked by runtime.make_optimizer): ``lr``
    and e.g. ``momentum``, ``nesterov``, ``weight_decay`` (SGD) or ``betas``, ``eps``, ``weight_decay`` (Adam).
    Hyperparameters left out take the optimizer's defaults; the job stores them all."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    __pydantic_extra__: dict[str, Hyperparameter] = Field(init=False)  # validates the other hyperparameters
    name: Annotated[str, WithJsonSchema({"type": "string", "enum": list(OPTIMIZERS)})]
    lr: Annotated[Hyperparameter, WithJsonSchema({
        "anyOf": [{"type": "number", "minimum": 0}, {"type": "null"}],
        "description": f"learning rate (default: the optimizer's own: {_LR_DEFAULTS})"})] = None

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


class JobResource(BaseModel):
    id: str
    state: JobState
    step: int
    total_steps: int | None = Field(description="steps the job will run (null when unknown)")
    epoch: int | None = Field(description="complete passes over the training data so far (the result's `epochs` "
                                          "counts the same way)")
    loss: float | None = Field(description="latest training loss")
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
                                               "and every step has been returned")


class JobResult(BaseModel):
    loss: float | None
    steps: int
    epochs: int
    eval_loss: float | None
    params: dict[str, Tensor]


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
