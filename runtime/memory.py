"""A training job's peak memory, estimated from static shapes before anything runs.

    estimate = runtime.memory.estimate_training(trainer, data, eval_data=None)
    estimate.total              # bytes: the job's arrays at their peak, on trainer's engine
    estimate.largest(5)         # [Part(name, what, bytes), ...] the biggest contributors

Everything comes from dtypes and shapes: the data's (arrays, or ``(dtype, shape)`` pairs),
the parameters' declared ones, and every node's for one batch by the op contracts' shape
inference (``graphspec.OPS[op].infer``, what validation, the compiled engine's lowering and
``service/explaining.py`` use). Nothing is allocated, so a job that would need a terabyte is
estimated in microseconds.

What is counted (docs/runtime.md, "Memory"):

* the training and evaluation data, held for the whole run;
* the parameters several times over: the caller's starting copy, the engine's arena, the
  gradients, the copy of the gradients each step reports, the optimizer's state (SGD: none,
  momentum: one buffer, Adam/AdamW: two) and a checkpoint (copies plus their msgpack form);
* per node, for one batch: its value, its gradient (nodes on a parameter-to-loss path),
  what its VJP keeps from the forward pass (conv2d's im2col matrix, max-pooling's window
  blocks, a loss's residuals) and the temporaries its kernel's numpy expressions make;
* the compiled engine: a tape's buffers for the batch size (and another for a shorter last
  batch), and while it lowers, the zero-filled stand-ins it traces a kernel with (one kernel's
  at a time: they go with the trace); the interpreter: the values and gradients alive at once,
  and the batch's gathered inputs;
* the evaluation pass: one forward pass over the whole ``eval_data`` (values freed after
  their last use, as the interpreter does);
* the engine's Python bookkeeping per node (plans, tapes, traces).

It is an estimate, meant as an upper bound of what tracemalloc sees (numpy's allocations and
Python's objects) for the job; tests/test_memory_estimate.py measures it against real runs
on both engines. Not counted: the process itself (the interpreter, numpy, OpenBLAS, Celery
and Redis clients: :data:`PROCESS_OVERHEAD_BYTES` measured for a worker's pool child), and
what a worker's reporting buffers for full gradients between two flushes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from graphspec import OPS
from graphspec.types import ContractViolation, TensorType

# A worker pool child's own address space before any job (interpreter, numpy and OpenBLAS,
# Celery, redis-py), measured on a 2-core machine (~190-200 MiB VmSize); it grows with the
# cores OpenBLAS uses. Not part of an estimate: worker/memory.py measures it in each child.
PROCESS_OVERHEAD_BYTES = 200 * 2**20

# Python objects per node (plan steps, tape entries, traces) and per run (the trainer, reports).
BOOKKEEPING_PER_NODE = 16 * 1024
BOOKKEEPING_FIXED = 128 * 1024

# Optimizer buffers, in parameter-sized arrays, and the update's temporaries (largest parameter).
_STATE = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}
_UPDATE_TEMPORARIES = {"sgd": 1, "momentum": 2, "adam": 4, "adamw": 4}


@dataclass(frozen=True)
class Part:
    """One contributor: ``name`` (a node, an input, "parameters"...), ``what`` it is, ``bytes``."""

    name: str
    what: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "what": self.what, "bytes": self.bytes}


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's estimated peak (``total`` bytes) and its parts, largest first."""

    total: int
    parts: tuple[Part, ...]
    engine: str
    batch_size: int | None  # examples per step (None: no per-example input)
    examples: int | None

    def largest(self, n: int = 5) -> list[Part]:
        return list(self.parts[:n])

    def to_text(self, n: int = 10) -> str:
        lines = [f"estimated peak {_mib(self.total)} ({self.engine} engine, batch {self.batch_size}); largest:"]
        lines += [f"  {_mib(p.bytes):>12}  {p.name}: {p.what}" for p in self.largest(n)]
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def _nbytes(t: TensorType) -> int:
    return math.prod(int(d) for d in t.shape) * np.dtype(t.dtype).itemsize


def _type_of(value: Any) -> TensorType:
    if isinstance(value, TensorType):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        dtype, shape = value
        return TensorType(np.dtype(dtype).name, tuple(int(d) for d in shape))
    array = np.asarray(value) if not hasattr(value, "shape") else value
    return TensorType(np.dtype(array.dtype).name, tuple(int(d) for d in array.shape))


# -- per-op rules: (residual, temporaries) in bytes, from the node's input and output types ----------
# residual: what the VJP keeps from the forward pass (only on a gradient path); temporaries:
# what the forward and VJP's numpy expressions allocate and drop within the node.
Rule = Callable[[list[TensorType], TensorType, dict], tuple[int, int]]


def _conv2d(ins: list[TensorType], out: TensorType, attrs: dict) -> tuple[int, int]:
    x, w = ins[0], ins[1]
    n, c = x.shape[0], x.shape[1]
    kh, kw = w.shape[2], w.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    item = np.dtype(out.dtype).itemsize
    cols = c * kh * kw * ho * wo * n * item  # the im2col matrix, kept for the VJP
    padded = (x.shape[2] + 2 * ho) * (x.shape[3] + 2 * wo) * c * n * item  # the padded copy (generous)
    # forward: padded input, output before its transpose; VJP: g's copy, d_columns, the folded d_x
    return cols, padded + 2 * _nbytes(out) + cols + _nbytes(x)


def _pool(ins: list[TensorType], out: TensorType, attrs: dict) -> tuple[int, int]:
    x = _nbytes(ins[0])
    return x, 3 * x  # max: the window blocks kept; VJP: hit masks, shares, the interleaved d_x


def _per_input(factor_kept: float, factor_temp: float) -> Rule:
    def rule(ins: list[TensorType], out: TensorType, attrs: dict) -> tuple[int, int]:
        biggest = max([_nbytes(t) for t in ins] + [_nbytes(out)])
        return int(factor_kept * biggest), int(factor_temp * biggest)
    return rule


def _matmul(ins: list[TensorType], out: TensorType, attrs: dict) -> tuple[int, int]:
    # VJP: g @ b.T and a.T @ g (each an input's size), transposed copies
    return 0, 2 * _nbytes(out) + sum(_nbytes(t) for t in ins)


_RULES: dict[str, Rule] = {
    "conv2d": _conv2d,
    "max_pool2d": _pool,
    "avg_pool2d": lambda ins, out, attrs: (0, 3 * _nbytes(ins[0])),
    "matmul": _matmul,
    "softmax_cross_entropy": _per_input(1, 4),
    "softmax": _per_input(0, 3),
    "log_softmax": _per_input(0, 3),
    "mse": _per_input(1, 3),
    "bce": _per_input(0, 4),
    "bce_with_logits": _per_input(0, 4),
    "layer_norm": _per_input(2, 5),
    "gelu": _per_input(1, 5),
    "sigmoid": _per_input(0, 4),
    "softplus": _per_input(0, 4),
    "concat": _per_input(0, 2),
    "gather": _per_input(0, 2),
}
_DEFAULT_RULE = _per_input(0, 3)  # an elementwise expression: a few temporaries of its largest operand


# -- the estimate --------------------------------------------------------------------------
@dataclass
class _Pass:
    """Per node, for one set of input shapes: (value, gradient, residual, temporaries) bytes."""

    nodes: dict[str, tuple[int, int, int, int]]
    ops: dict[str, str]

    def kept(self) -> int:
        return sum(v + g + r for v, g, r, _ in self.nodes.values())

    def temporaries(self) -> int:
        return max((t for *_, t in self.nodes.values()), default=0)


def _node_pass(plan, leaves: dict[str, TensorType], path: frozenset[str]) -> _Pass:
    types = dict(leaves)
    nodes: dict[str, tuple[int, int, int, int]] = {}
    ops: dict[str, str] = {}
    for step in plan.steps:
        ins = [types[name] for name in step.inputs]
        try:
            out = types[step.id] = OPS[step.op].infer(ins, step.attrs)
        except ContractViolation as exc:  # the data's shapes were checked first: a caller's bug
            raise ValueError(f"node {step.id!r} ({step.op}): {exc}") from None
        value = _nbytes(out)
        kept, temporaries = _RULES.get(step.op, _DEFAULT_RULE)(ins, out, step.attrs)
        on_path = step.id in path
        nodes[step.id] = (value, value if on_path else 0, kept if on_path else 0, temporaries)
        ops[step.id] = step.op
    return _Pass(nodes, ops)


def _eval_peak(plan, leaves: dict[str, TensorType]) -> tuple[int, str | None]:
    """The interpreter's forward pass without gradients: the largest bytes alive at once
    (values are freed after their last consumer; outputs are kept), plus the temporaries of
    the node at that point; and the node where it peaks."""
    p = _node_pass(plan, leaves, frozenset())
    outputs = set(plan.graph.outputs.values())
    remaining: dict[str, int] = {}
    for step in plan.steps:
        for name in set(step.inputs):
            remaining[name] = remaining.get(name, 0) + 1
    live = 0
    peak, where = 0, None
    for step in plan.steps:
        value, _, _, temporaries = p.nodes[step.id]
        live += value
        if live + temporaries > peak:
            peak, where = live + temporaries, step.id
        for name in set(step.inputs):
            remaining[name] -= 1
            if remaining[name] == 0 and name in p.nodes and name not in outputs:
                live -= p.nodes[name][0]
    return peak, where


def _optimizer_name(optimizer: Any) -> str:
    name = getattr(optimizer, "name", None) or (optimizer.get("name") if isinstance(optimizer, Mapping) else optimizer)
    momentum = getattr(optimizer, "momentum", None)
    if momentum is None and isinstance(optimizer, Mapping):
        momentum = optimizer.get("momentum")
    if name == "sgd" and momentum:
        return "momentum"
    return str(name)


def estimate_training(trainer, data: Mapping[str, Any], eval_data: Mapping[str, Any] | None = None, *,
                      batch_size: int | None | str = "trainer", engine: str | None = None,
                      gradients: str = "norms") -> MemoryEstimate:
    """The peak memory of ``trainer.fit(data, ...)`` (with ``eval_data``), estimated from shapes.

    ``data``/``eval_data``: ``{input: array | (dtype, shape) | TensorType}`` (only shapes are
    read). ``batch_size``: the trainer's unless given (None: the whole data set). ``engine``:
    ``"compiled"`` or ``"interpreter"``, the trainer's unless given. ``gradients``: what a
    worker reports per step (``"full"`` copies every gradient into its report too)."""
    plan = trainer.plan
    engine = engine or ("compiled" if trainer.compiled else "interpreter")
    if engine not in ("compiled", "interpreter"):
        raise ValueError(f"engine must be 'compiled' or 'interpreter', got {engine!r}")
    size = trainer.batch_size if batch_size == "trainer" else batch_size
    types = {name: _type_of(value) for name, value in data.items()}
    batched = [name for name in trainer.batched if name in types]
    examples = types[batched[0]].shape[0] if batched else None
    batch = None if examples is None else (examples if size is None else min(int(size), examples))
    parts: list[Part] = []

    for name, t in types.items():
        parts.append(Part(name, f"training data ({t.dtype}{list(t.shape)})", _nbytes(t)))
    eval_types = {name: _type_of(value) for name, value in (eval_data or {}).items()}
    for name, t in eval_types.items():
        parts.append(Part(f"eval_data/{name}", f"evaluation data ({t.dtype}{list(t.shape)})", _nbytes(t)))

    params = {name: TensorType(spec.dtype, tuple(spec.shape)) for name, spec in plan.graph.parameters.items()}
    p_bytes = sum(_nbytes(t) for t in params.values())
    largest_param = max((_nbytes(t) for t in params.values()), default=0)
    opt = _optimizer_name(trainer.optimizer)
    state = _STATE.get(opt, 2) * p_bytes
    parts.append(Part("parameters", "the starting parameters and the engine's copy", 2 * p_bytes))
    parts.append(Part("gradients", "the parameters' gradients and the copy each step reports"
                      + (" (and its encoded form: gradients \"full\")" if gradients == "full" else ""),
                      (3 if gradients == "full" else 2) * p_bytes))
    if state:
        parts.append(Part("optimizer state", f"{opt}: {_STATE.get(opt, 2)} buffer(s) the size of the parameters",
                          state))
    parts.append(Part("checkpoint", "a checkpoint's copies of the parameters and optimizer state, and its msgpack form",
                      2 * (p_bytes + state)))

    def leaves_for(shapes: dict[str, TensorType], n: int | None) -> dict[str, TensorType]:
        out = dict(params)
        for name, t in shapes.items():
            out[name] = TensorType(t.dtype, (n, *t.shape[1:])) if name in trainer.batched and n is not None else t
        return out

    transient: list[Part] = [Part("optimizer update", f"{opt}'s temporaries (largest parameter)",
                                  _UPDATE_TEMPORARIES.get(opt, 4) * largest_param)]
    path = plan.grad_path()
    step_pass = _node_pass(plan, leaves_for(types, batch), path)
    tapes = [(batch, step_pass)]
    remainder = 0 if not batch else examples % batch
    if remainder and engine == "compiled":  # a shorter last batch: the compiled engine lowers a second tape
        tapes.append((remainder, _node_pass(plan, leaves_for(types, remainder), path)))
    per_node: dict[str, int] = {}
    for _, p in tapes:
        for node, (v, g, r, t) in p.nodes.items():
            # compiled: the tape's buffers (value, gradient, residual, the kernel's scratch);
            # interpreter: what is alive at once (temporaries: below)
            own = v + g + r + t if engine == "compiled" else v + g + r
            per_node[node] = per_node.get(node, 0) + own
    inputs_bytes = sum(_nbytes(t) for name, t in leaves_for(types, batch).items() if name in types)
    if engine == "interpreter":
        transient.append(Part("step temporaries", "the largest node's kernel temporaries", step_pass.temporaries()))
        what = "the batch gathered from the data"
    else:
        # the lowering traces one kernel at a time on zero-filled stand-ins, freed with its trace
        traced = max((v + g + r for p in (pass_ for _, pass_ in tapes) for v, g, r, _ in p.nodes.values()), default=0)
        transient.append(Part("lowering", "the stand-ins the lowering traces the largest kernel with", traced))
        what = "the tape's input buffers"
    parts.append(Part("batch", f"{what} ({batch} examples)", inputs_bytes * len(tapes)))
    for node, nbytes in per_node.items():
        v, g, r, _ = step_pass.nodes[node]
        pieces = ["value"] + (["gradient"] if g else []) + ([_RESIDUAL.get(step_pass.ops[node], "saved values")]
                                                            if r else [])
        where = "compiled tape buffers" if engine == "compiled" else "interpreter"
        parts.append(Part(node, f"{step_pass.ops[node]}: {' + '.join(pieces)} for a batch of {batch} ({where}"
                          + (f"; with the last batch's tape of {remainder}" if len(tapes) > 1 else "") + ")", nbytes))
    if eval_types:
        eval_n = None
        for name in trainer.batched:
            if name in eval_types:
                eval_n = eval_types[name].shape[0]
                break
        peak, where = _eval_peak(plan, leaves_for(eval_types, eval_n))
        transient.append(Part("evaluation", f"one forward pass over the whole eval_data ({eval_n} examples; "
                                            f"peaks at node {where!r})", peak))
    parts.append(max(transient, key=lambda p: p.bytes))  # they happen one after another
    bookkeeping = BOOKKEEPING_FIXED + BOOKKEEPING_PER_NODE * len(plan.steps) * len(tapes)
    parts.append(Part("bookkeeping", "the engine's Python objects (plan, tapes, traces, reports)", bookkeeping))
    parts = sorted((p for p in parts if p.bytes > 0), key=lambda p: -p.bytes)
    return MemoryEstimate(sum(p.bytes for p in parts), tuple(parts), engine, batch, examples)


_RESIDUAL = {"conv2d": "im2col matrix", "max_pool2d": "window blocks", "softmax_cross_entropy": "softmax residuals",
             "mse": "residuals", "layer_norm": "normalised values", "gelu": "residuals"}


def largest_fitting_batch(trainer, data: Mapping[str, Any], eval_data: Mapping[str, Any] | None, cap: int, *,
                          gradients: str = "norms", engine: str | None = None) -> int | None:
    """The largest batch size whose estimate is at most ``cap`` bytes (None: not even 1).
    The estimate grows with the batch size, so this is a bisection."""
    def fits(b: int) -> bool:
        return estimate_training(trainer, data, eval_data, batch_size=b, gradients=gradients,
                                 engine=engine).total <= cap

    current = estimate_training(trainer, data, eval_data, gradients=gradients, engine=engine).batch_size
    if current is None or not fits(1):
        return None
    lo, hi = 1, current  # fits(lo); the caller knows current does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return hi if fits(hi) else lo
