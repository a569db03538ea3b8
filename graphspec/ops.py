"""The op catalogue: the format's truth about every op (like ONNX op schemas).

One :class:`OpContract` per op: its inputs (arity, and which ones carry gradients),
attributes with types and defaults, the type rule (dtype + shape inference), the
format version that introduced it, and a one-line doc. Validation, the JSON Schema,
the docs tables and the runtime's kernel registry all read this table. Adding an op is
the list in docs/runtime.md ("Adding an op"): an entry here with a format version bump
(and the JSON Schema regenerated), one kernel in ``runtime/kernels/``, one gradient-check
sample in ``tests/op_samples.py``, and the generated docs; the suite fails until all are done.
One module, past 300 lines, because the catalogue is one table: each op's type rule sits next
to its entry's neighbours, and format 1.1's additions come last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .tensors import TENSOR
from .structure import Bool, Enum, Int, List, Null, Num, OneOf, Spec
from .types import (
    FLOAT_DTYPES,
    ContractViolation,
    TensorType,
    broadcast_shapes,
    element_count,
    format_shape,
    normalize_axis,
    unify_shapes,
)


@dataclass(frozen=True)
class Attr:
    name: str
    spec: Spec
    default: Any = None
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class OpContract:
    name: str
    inputs: tuple[str, ...]
    infer: Callable[[list[TensorType], dict], TensorType]
    doc: str
    since: str = "1.0"
    attrs: tuple[Attr, ...] = ()
    # Inputs that receive gradients; the rest (labels, targets) are data.
    differentiable: tuple[int, ...] | None = None
    category: str = "math"
    # The last input may repeat (concat's "x, x, ..."): a node gives at least ``arity`` inputs.
    variadic: bool = False

    @property
    def arity(self) -> int:
        """The number of inputs (the least number, for a variadic op)."""
        return len(self.inputs)

    def accepts(self, count: int) -> bool:
        return count == self.arity or (self.variadic and count > self.arity)

    @property
    def grad_inputs(self) -> tuple[int, ...]:
        return tuple(range(self.arity)) if self.differentiable is None else self.differentiable

    def gradient_inputs(self, count: int) -> tuple[int, ...]:
        """The inputs of a node with ``count`` inputs that receive gradients."""
        if self.variadic and self.differentiable is None:
            return tuple(range(count))
        return self.grad_inputs

    def input_name(self, index: int) -> str:
        return self.inputs[min(index, self.arity - 1)]

    def attr(self, name: str) -> Attr | None:
        return next((a for a in self.attrs if a.name == name), None)


# -- attribute value kinds -------------------------------------------------------------

AXES = OneOf((Null(), Int(), List(Int(), unique=True, max_items=8)),
             description="null (all axes), one axis, or a list of axes")
AXIS = Int(description="an axis; negative counts from the end")
KEEPDIMS = Bool()
REDUCTION = Enum(("mean", "sum", "none"))


def reduction_attr() -> Attr:
    return Attr("reduction", REDUCTION, "mean", doc="mean or sum over all elements (a scalar), or none")


# -- shared type rules -------------------------------------------------------------------

def _require_float(types: list[TensorType], op: str, indices=None) -> str:
    indices = range(len(types)) if indices is None else indices
    dtype = None
    for i in indices:
        t = types[i]
        if t.dtype not in FLOAT_DTYPES:
            raise ContractViolation(f"{op} needs a float32 or float64 input, got {t.dtype}",
                                    ("inputs", i), code="dtype_mismatch")
        if dtype is None:
            dtype = t.dtype
        elif t.dtype != dtype:
            raise ContractViolation(
                f"{op} inputs must share one dtype: {dtype} vs {t.dtype}", ("inputs", i),
                hint="no implicit casting: make both float32 or both float64", code="dtype_mismatch")
    return dtype  # type: ignore[return-value]


def _unary(types, attrs, op="op"):
    return TensorType(_require_float(types, op), types[0].shape)


def _elementwise(types, attrs, op="op"):
    dtype = _require_float(types, op)
    shape = broadcast_shapes(*(t.shape for t in types))
    if shape is None:
        raise ContractViolation(
            f"{op}: shapes {' and '.join(format_shape(t.shape) for t in types)} do not broadcast",
            ("inputs", len(types) - 1), hint="numpy broadcasting: trailing dims must match or be 1")
    return TensorType(dtype, shape)


def _where(types, attrs):
    condition = types[0]
    if condition.dtype != "bool":
        raise ContractViolation(f"where needs a bool condition, got {condition.dtype}", ("inputs", 0),
                                hint="compare values to get a bool tensor, or declare the input as bool",
                                code="dtype_mismatch")
    dtype = _require_float(types, "where", indices=(1, 2))
    shape = broadcast_shapes(*(t.shape for t in types))
    if shape is None:
        raise ContractViolation(f"where: shapes {' and '.join(format_shape(t.shape) for t in types)} do not broadcast",
                                ("inputs", 2), hint="numpy broadcasting: trailing dims must match or be 1")
    return TensorType(dtype, shape)


def _clip(types, attrs):
    low, high = attrs.get("min"), attrs.get("max")
    if low is None and high is None:
        raise ContractViolation("clip needs min, max or both", ("attrs", "min"), code="invalid_attribute",
                                hint="give the bounds the values are clipped to")
    if low is not None and high is not None and low > high:
        raise ContractViolation(f"clip: min {low} is above max {high}", ("attrs", "max"), code="invalid_attribute")
    return _unary(types, attrs, "clip")


def _argmax(types, attrs):
    src = types[0]
    _require_float(types, "argmax")
    if src.rank == 0:
        raise ContractViolation("argmax needs an input of rank >= 1", ("inputs", 0))
    (axis,) = _axes_of(attrs, src.rank)
    keep = attrs.get("keepdims")
    return TensorType("int64", tuple((1 if keep else d) for i, d in enumerate(src.shape) if keep or i != axis))


def _one_hot(types, attrs):
    indices = types[0]
    if indices.dtype != "int64":
        raise ContractViolation(f"one_hot needs int64 class indices, got {indices.dtype}", ("inputs", 0),
                                hint="declare the indices as int64", code="dtype_mismatch")
    return TensorType(attrs.get("dtype", "float32"), indices.shape + (attrs["depth"],))


def _product(dims) -> Any:
    """The size of a flattened run of dims: a number, the one symbol among 1s, or None."""
    dims = list(dims)
    if all(isinstance(d, int) for d in dims):
        return math.prod(dims)
    symbolic = [d for d in dims if not isinstance(d, int)]
    return symbolic[0] if len(symbolic) == 1 and math.prod(d for d in dims if isinstance(d, int)) == 1 else None


def _flatten(types, attrs):
    src = types[0]
    axis = attrs.get("axis", 1)
    if not 0 <= axis <= src.rank:
        raise ContractViolation(f"flatten axis {axis} is out of range for a rank-{src.rank} input (0..{src.rank})",
                                ("attrs", "axis"), code="invalid_attribute")
    return TensorType(src.dtype, (_product(src.shape[:axis]), _product(src.shape[axis:])))


def _squeeze(types, attrs):
    src = types[0]
    axes = _axes_of(attrs, src.rank, "axes")
    for a in axes:
        if src.shape[a] != 1:
            raise ContractViolation(f"squeeze: axis {a} has size {src.shape[a]}, not 1", ("attrs", "axes"),
                                    code="invalid_attribute")
    return TensorType(src.dtype, tuple(d for i, d in enumerate(src.shape) if i not in axes))


def _unsqueeze(types, attrs):
    src = types[0]
    axes = _axes_of(attrs, src.rank + len(attrs["axes"]), "axes")
    dims = iter(src.shape)
    return TensorType(src.dtype, tuple(1 if i in axes else next(dims) for i in range(src.rank + len(axes))))


def _broadcast_to(types, attrs):
    src, target = types[0], tuple(attrs["shape"])
    if broadcast_shapes(src.shape, target) != target:
        raise ContractViolation(f"broadcast_to: {format_shape(src.shape)} does not broadcast to {list(target)}",
                                ("attrs", "shape"), hint="numpy broadcasting: trailing dims must match or be 1")
    return TensorType(src.dtype, target)


def _gather(types, attrs):
    params, indices = types
    dtype = _require_float(types, "gather", indices=(0,))
    if indices.dtype != "int64":
        raise ContractViolation(f"gather needs int64 indices, got {indices.dtype}", ("inputs", 1),
                                hint="declare the indices as int64", code="dtype_mismatch")
    if params.rank == 0:
        raise ContractViolation("gather needs a table of rank >= 1", ("inputs", 0))
    (axis,) = _axes_of(attrs, params.rank)
    return TensorType(dtype, params.shape[:axis] + indices.shape + params.shape[axis + 1:])


def _slice(types, attrs):
    src = types[0]
    starts, ends = list(attrs["starts"]), list(attrs["ends"])
    axes = list(attrs["axes"]) if attrs.get("axes") is not None else list(range(len(starts)))
    if not len(starts) == len(ends) == len(axes):
        raise ContractViolation(f"slice: starts, ends and axes differ in length ({len(starts)}, {len(ends)}, "
                                f"{len(axes)})", ("attrs", "ends"), code="invalid_attribute")
    shape = list(src.shape)
    seen = set()
    for k, (start, end, axis) in enumerate(zip(starts, ends, axes)):
        a = normalize_axis(axis, src.rank)
        if a is None or a in seen:
            raise ContractViolation(f"slice: axis {axis} is out of range or repeated for a rank-{src.rank} input",
                                    ("attrs", "axes", k), code="invalid_attribute")
        seen.add(a)
        if isinstance(shape[a], int):
            size = len(range(*slice(start, end).indices(shape[a])))
            if size == 0:
                raise ContractViolation(f"slice [{start}:{end}] of axis {a} (size {shape[a]}) is empty",
                                        ("attrs", "starts", k), code="invalid_attribute")
            shape[a] = size
        else:
            shape[a] = None  # a slice of a symbolic size: unknown until the data is seen
    return TensorType(src.dtype, tuple(shape))


def _layer_norm(types, attrs):
    dtype = _require_float(types, "layer_norm")
    x, scale, bias = types
    if x.rank == 0:
        raise ContractViolation("layer_norm needs an input of rank >= 1", ("inputs", 0))
    for i, t in ((1, scale), (2, bias)):
        if t.rank != 1 or unify_shapes(t.shape, x.shape[-1:]) is None:
            raise ContractViolation(f"layer_norm's {('scale', 'bias')[i - 1]} must have the shape of x's last axis "
                                    f"({format_shape(x.shape[-1:])}), got {format_shape(t.shape)}", ("inputs", i))
    return TensorType(dtype, x.shape)


def _pair(attrs: dict, key: str) -> tuple[int, int]:
    value = attrs.get(key)
    if value is None:
        return (1, 1)  # a dilation pooling ops do not have
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def _window_output(size, kernel: int, stride: int, pad: int, dilation: int, axis: int, op: str):
    if not isinstance(size, int):
        return None  # a symbolic height or width: known when the data is seen
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ContractViolation(f"{op}: a window of {kernel} (dilation {dilation}) does not fit axis {axis} of size "
                                f"{size} with padding {pad}", ("attrs", "kernel_size"), code="invalid_attribute")
    return out


def _spatial(op: str, x: TensorType, kernel: tuple[int, int], attrs: dict) -> tuple:
    if x.rank != 4:
        raise ContractViolation(f"{op} needs an NCHW input of rank 4, got rank {x.rank}", ("inputs", 0))
    stride, pad, dilation = _pair(attrs, "stride"), _pair(attrs, "padding"), _pair(attrs, "dilation")
    return tuple(_window_output(x.shape[2 + k], kernel[k], stride[k], pad[k], dilation[k], 2 + k, op) for k in (0, 1))


def _conv2d(types, attrs):
    dtype = _require_float(types, "conv2d")
    x, w = types
    if w.rank != 4:
        raise ContractViolation(f"conv2d weights are (out, in / groups, kh, kw): rank 4, got rank {w.rank}",
                                ("inputs", 1))
    groups = attrs.get("groups", 1)
    channels, out_channels = x.shape[1] if x.rank == 4 else None, w.shape[0]
    if isinstance(out_channels, int) and out_channels % groups:
        raise ContractViolation(f"conv2d: {out_channels} output channels do not split into {groups} groups",
                                ("attrs", "groups"), code="invalid_attribute")
    if isinstance(channels, int) and isinstance(w.shape[1], int) and channels != w.shape[1] * groups:
        raise ContractViolation(f"conv2d: the input has {channels} channels, the weights expect "
                                f"{w.shape[1]} x {groups} groups = {w.shape[1] * groups}", ("inputs", 1),
                                hint="weights are (out_channels, in_channels / groups, kh, kw)")
    if not all(isinstance(d, int) for d in w.shape):
        raise ContractViolation("conv2d weights need a known shape", ("inputs", 1))
    height, width = _spatial("conv2d", x, (w.shape[2], w.shape[3]), attrs)
    return TensorType(dtype, (x.shape[0], out_channels, height, width))


def _pool(types, attrs, op="op"):
    dtype = _require_float(types, op)
    x = types[0]
    kernel = _pair(attrs, "kernel_size")
    height, width = _spatial(op, x, kernel, {**attrs, "stride": attrs.get("stride") or attrs["kernel_size"]})
    return TensorType(dtype, (x.shape[0], x.shape[1], height, width))


def _named(rule, op):
    return lambda types, attrs: rule(types, attrs, op)


def _axes_of(attrs: dict, rank: int, key: str = "axis") -> tuple[int, ...]:
    axis = attrs.get(key)
    if axis is None:
        return tuple(range(rank))
    axes = [axis] if isinstance(axis, int) else list(axis)
    out = []
    for a in axes:
        n = normalize_axis(a, rank)
        if n is None:
            raise ContractViolation(f"axis {a} is out of range for a rank-{rank} input", ("attrs", key),
                                    code="invalid_attribute")
        if n in out:
            raise ContractViolation(f"axis {a} is repeated", ("attrs", key), code="invalid_attribute")
        out.append(n)
    return tuple(sorted(out))


def _reduce(types, attrs, op="op"):
    dtype = _require_float(types, op)
    shape = types[0].shape
    axes = _axes_of(attrs, len(shape))
    if attrs.get("keepdims"):
        out = tuple(1 if i in axes else d for i, d in enumerate(shape))
    else:
        out = tuple(d for i, d in enumerate(shape) if i not in axes)
    return TensorType(dtype, out)


def _matmul(types, attrs):
    dtype = _require_float(types, "matmul")
    a, b = types[0].shape, types[1].shape
    for i, s in enumerate((a, b)):
        if len(s) == 0:
            raise ContractViolation("matmul needs inputs of rank >= 1, got a scalar", ("inputs", i),
                                    hint="use mul for scaling")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    inner = unify_shapes(a2[-1:], b2[-2:-1])
    if inner is None:
        raise ContractViolation(
            f"matmul inner dimensions differ: {format_shape(a)} @ {format_shape(b)} "
            f"({a2[-1]} vs {b2[-2]})", ("inputs", 1),
            hint="the last dim of the left input must equal the second-to-last dim of the right")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    if batch is None:
        raise ContractViolation(f"matmul batch dims {format_shape(a2[:-2])} and {format_shape(b2[:-2])} "
                                "do not broadcast", ("inputs", 1))
    out = batch + a2[-2:-1] + b2[-1:]
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return TensorType(dtype, out)


def _reshape(types, attrs):
    src = types[0]
    target = list(attrs["shape"])
    if sum(1 for d in target if d == -1) > 1:
        raise ContractViolation("reshape allows at most one -1", ("attrs", "shape"), code="invalid_attribute")
    for i, d in enumerate(target):
        if d == 0 or d < -1:
            raise ContractViolation(f"reshape dim {d} is invalid (use positive sizes or one -1)",
                                    ("attrs", "shape", i), code="invalid_attribute")
    known_target = math.prod(d for d in target if d != -1)
    total = element_count(src.shape)
    out: list = list(target)
    if total is not None:
        if -1 in target and total % known_target == 0:
            out[target.index(-1)] = total // known_target
        elif -1 in target or total != known_target:
            raise ContractViolation(f"cannot reshape {format_shape(src.shape)} ({total} elements) to {target}",
                                    ("attrs", "shape"))
        return TensorType(src.dtype, tuple(out))
    if -1 not in target:
        raise ContractViolation(f"reshape of {format_shape(src.shape)} (symbolic size) needs a -1 in the target",
                                ("attrs", "shape"), hint="write the batch dimension as -1")
    # Symbolic source: the -1 is the symbolic dims times whatever known factor is left over.
    symbolic = [d for d in src.shape if not isinstance(d, int)]
    known_src = math.prod(d for d in src.shape if isinstance(d, int))
    if known_src == known_target and len(symbolic) == 1:
        out[target.index(-1)] = symbolic[0]  # e.g. [N, 3, 4] -> [-1, 12] keeps N
    else:
        out[target.index(-1)] = None  # [N, 4] -> [-1, 2] is 2N: a size we cannot name
    return TensorType(src.dtype, tuple(out))


def _transpose(types, attrs):
    src = types[0]
    perm = attrs.get("perm")
    if perm is None:
        return TensorType(src.dtype, tuple(reversed(src.shape)))
    if sorted(perm) != list(range(src.rank)):
        raise ContractViolation(f"perm {perm} is not a permutation of the {src.rank} axes",
                                ("attrs", "perm"), code="invalid_attribute")
    return TensorType(src.dtype, tuple(src.shape[p] for p in perm))


def _softmax(types, attrs, op="op"):
    dtype = _require_float(types, op)
    if types[0].rank == 0:
        raise ContractViolation(f"{op} needs an input of rank >= 1", ("inputs", 0))
    _axes_of(attrs, types[0].rank)
    return TensorType(dtype, types[0].shape)


def _constant(types, attrs):
    value = np.asarray(attrs["value"])
    return TensorType(value.dtype.name, tuple(value.shape))


def _reduced(attrs, dtype, shape) -> TensorType:
    return TensorType(dtype, () if attrs.get("reduction", "mean") != "none" else shape)


def _pairwise_loss(types, attrs, op="op"):
    dtype = _require_float(types, op)
    shape = unify_shapes(types[0].shape, types[1].shape)
    if shape is None:
        raise ContractViolation(
            f"{op}: target shape {format_shape(types[1].shape)} differs from prediction shape "
            f"{format_shape(types[0].shape)}", ("inputs", 1),
            hint="losses do not broadcast; reshape the target to the prediction's shape")
    return _reduced(attrs, dtype, shape)


def _softmax_cross_entropy(types, attrs):
    logits, labels = types
    dtype = _require_float(types, "softmax_cross_entropy", [0])
    if logits.rank == 0:
        raise ContractViolation("softmax_cross_entropy needs logits of rank >= 1 (classes last)", ("inputs", 0))
    if labels.dtype == "int64":
        if unify_shapes(labels.shape, logits.shape[:-1]) is None:
            raise ContractViolation(
                f"integer labels must have the logits' shape without the class axis: "
                f"{format_shape(logits.shape[:-1])}, got {format_shape(labels.shape)}", ("inputs", 1))
        return _reduced(attrs, dtype, logits.shape[:-1])
    if labels.dtype == dtype and unify_shapes(labels.shape, logits.shape) is not None:
        return _reduced(attrs, dtype, logits.shape[:-1])
    # neither form: say both, and which one float labels of the class-index shape were meant to be
    index_shaped = unify_shapes(labels.shape, logits.shape[:-1]) is not None
    raise ContractViolation(
        f"labels must be int64 class indices of shape {format_shape(logits.shape[:-1])} or probabilities of "
        f"the logits' shape and dtype ({TensorType(dtype, logits.shape)}), got {labels}", ("inputs", 1),
        hint="class-index labels must be int64: declare the labels as int64" if index_shaped else None,
        code="dtype_mismatch" if index_shaped or labels.dtype != dtype else "shape_mismatch")


# -- the catalogue -----------------------------------------------------------------------

def _op(name, inputs, infer, doc, **kw) -> OpContract:
    return OpContract(name=name, inputs=tuple(inputs), infer=infer, doc=doc, **kw)


_UNARY_DOCS = {
    "neg": "-x",
    "exp": "e^x",
    "log": "natural logarithm ln(x)",
    "sqrt": "square root",
    "abs": "absolute value (gradient sign(x), 0 at 0)",
    "sigmoid": "1 / (1 + e^-x), computed without overflow",
    "tanh": "hyperbolic tangent",
    "relu": "max(x, 0) (gradient 0 at 0)",
}
_BINARY_DOCS = {
    "add": "a + b with numpy broadcasting",
    "sub": "a - b with numpy broadcasting",
    "mul": "a * b with numpy broadcasting",
    "div": "a / b with numpy broadcasting",
}

OPS: dict[str, OpContract] = {}


def register(contract: OpContract) -> OpContract:
    if contract.name in OPS:
        raise ValueError(f"op {contract.name!r} is already registered")
    OPS[contract.name] = contract
    return contract


for _name, _doc in _BINARY_DOCS.items():
    register(_op(_name, ("a", "b"), _named(_elementwise, _name), _doc, category="elementwise"))
for _name, _doc in _UNARY_DOCS.items():
    register(_op(_name, ("x",), _named(_unary, _name), _doc,
                 category="activation" if _name in ("sigmoid", "tanh", "relu") else "elementwise"))
register(_op("pow", ("x",), _named(_unary, "pow"), "x ** exponent for a constant exponent", category="elementwise",
             attrs=(Attr("exponent", Num(), required=True, doc="the constant exponent"),)))
register(_op("matmul", ("a", "b"), _matmul, "matrix product with numpy matmul semantics (batched, 1-D promoted)",
             category="linear algebra"))
for _name, _doc in (("sum", "sum over axes"), ("mean", "mean over axes")):
    register(_op(_name, ("x",), _named(_reduce, _name), _doc, category="reduction", attrs=(
        Attr("axis", AXES, None, doc="axes to reduce; null reduces all"),
        Attr("keepdims", KEEPDIMS, False, doc="keep reduced axes as size 1"),
    )))
register(_op("reshape", ("x",), _reshape, "same values, new shape (one -1 is inferred)", category="shape",
             attrs=(Attr("shape", List(Int(minimum=-1), max_items=8), required=True, doc="target shape"),)))
register(_op("transpose", ("x",), _transpose, "permute axes (reverse them when perm is null)", category="shape",
             attrs=(Attr("perm", OneOf((Null(), List(Int(minimum=0), max_items=8))), None,
                         doc="axis permutation"),)))
for _name, _doc in (("softmax", "exp(x) / sum(exp(x)) along axis, max-shifted"),
                    ("log_softmax", "x - logsumexp(x) along axis, max-shifted")):
    register(_op(_name, ("x",), _named(_softmax, _name), _doc, category="activation",
                 attrs=(Attr("axis", AXIS, -1, doc="the class axis"),)))
register(_op("constant", (), _constant, "a fixed tensor stored in the graph", category="source",
             attrs=(Attr("value", TENSOR, required=True, doc="the tensor"),)))
register(_op("mse", ("prediction", "target"), _named(_pairwise_loss, "mse"), "mean squared error",
             category="loss", differentiable=(0,), attrs=(reduction_attr(),)))
register(_op("bce", ("probability", "target"), _named(_pairwise_loss, "bce"),
             "binary cross-entropy on probabilities, clipped to [eps, 1-eps]",
             category="loss", differentiable=(0,), attrs=(
                 Attr("eps", Num(exclusive_minimum=0.0), 1e-7, doc="clip probabilities to [eps, 1-eps]"),
                 reduction_attr())))
register(_op("bce_with_logits", ("logit", "target"), _named(_pairwise_loss, "bce_with_logits"),
             "binary cross-entropy on logits, fused and stable", category="loss", differentiable=(0,),
             attrs=(reduction_attr(),)))
register(_op("softmax_cross_entropy", ("logits", "labels"), _softmax_cross_entropy,
             "cross-entropy of softmax(logits) over the last axis; int64 class labels or one-hot/probabilities",
             category="loss", differentiable=(0,), attrs=(reduction_attr(),)))

# -- format 1.1 ---------------------------------------------------------------------------
for _name, _doc, _category in (
        ("log1p", "ln(1 + x), accurate for small x", "elementwise"),
        ("softplus", "ln(1 + e^x), computed without overflow (gradient sigmoid(x))", "activation")):
    register(_op(_name, ("x",), _named(_unary, _name), _doc, category=_category, since="1.1"))
register(_op("gelu", ("x",), _named(_unary, "gelu"), "x * sigmoid-shaped gate, the tanh form: "
             "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (PyTorch's approximate='tanh')",
             category="activation", since="1.1"))
register(_op("leaky_relu", ("x",), _named(_unary, "leaky_relu"), "x for x > 0, alpha * x otherwise (gradient alpha at 0)",
             category="activation", since="1.1",
             attrs=(Attr("alpha", Num(), 0.01, doc="the slope below 0"),)))
for _name, _doc in (("maximum", "the larger of a and b, with numpy broadcasting (gradient to a where they tie)"),
                    ("minimum", "the smaller of a and b, with numpy broadcasting (gradient to a where they tie)")):
    register(_op(_name, ("a", "b"), _named(_elementwise, _name), _doc, category="elementwise", since="1.1"))
register(_op("where", ("condition", "a", "b"), _where,
             "a where condition is true, else b, with numpy broadcasting", category="elementwise", since="1.1",
             differentiable=(1, 2)))
register(_op("clip", ("x",), _clip, "x limited to [min, max] (gradient 0 outside, 1 on the bounds)",
             category="elementwise", since="1.1",
             attrs=(Attr("min", OneOf((Null(), Num())), None, doc="lower bound (null: none)"),
                    Attr("max", OneOf((Null(), Num())), None, doc="upper bound (null: none)"))))
for _name, _doc in (("max", "maximum over axes (gradient shared equally by the elements that attain it)"),
                    ("min", "minimum over axes (gradient shared equally by the elements that attain it)")):
    register(_op(_name, ("x",), _named(_reduce, _name), _doc, category="reduction", since="1.1", attrs=(
        Attr("axis", AXES, None, doc="axes to reduce; null reduces all"),
        Attr("keepdims", KEEPDIMS, False, doc="keep reduced axes as size 1"),
    )))
register(_op("argmax", ("x",), _argmax, "the index of the largest value along axis (int64, the first on ties; "
             "no gradient)", category="reduction", since="1.1", differentiable=(), attrs=(
                 Attr("axis", AXIS, -1, doc="the axis searched"),
                 Attr("keepdims", KEEPDIMS, False, doc="keep the axis as size 1"))))
register(_op("one_hot", ("indices",), _one_hot, "a float vector per int64 index: 1 at the index, 0 elsewhere "
             "(an index outside 0..depth-1 is an error)", category="shape", since="1.1", differentiable=(), attrs=(
                 Attr("depth", Int(minimum=1), required=True, doc="the number of classes"),
                 Attr("dtype", Enum(tuple(sorted(FLOAT_DTYPES))), "float32", doc="the output's float dtype"))))
register(_op("flatten", ("x",), _flatten, "to 2-D: the axes before axis, then the rest (as ONNX Flatten)",
             category="shape", since="1.1", attrs=(Attr("axis", Int(minimum=0), 1, doc="the first axis of the "
                                                                                    "second dimension"),)))
register(_op("squeeze", ("x",), _squeeze, "drop size-1 axes", category="shape", since="1.1",
             attrs=(Attr("axes", List(Int(), min_items=1, max_items=8, unique=True), required=True,
                         doc="the axes to drop (each of size 1)"),)))
register(_op("unsqueeze", ("x",), _unsqueeze, "insert size-1 axes", category="shape", since="1.1",
             attrs=(Attr("axes", List(Int(), min_items=1, max_items=8, unique=True), required=True,
                         doc="where the new axes are, in the output"),)))
register(_op("broadcast_to", ("x",), _broadcast_to, "repeat x along axes to a shape, with numpy broadcasting "
             "(gradient summed back)", category="shape", since="1.1",
             attrs=(Attr("shape", List(Int(minimum=1), max_items=8), required=True, doc="the target shape"),)))
register(_op("gather", ("params", "indices"), _gather, "the entries of params at int64 indices along axis (an "
             "embedding lookup with axis 0); the gradient adds up over repeated indices", category="shape",
             since="1.1", differentiable=(0,),
             attrs=(Attr("axis", AXIS, 0, doc="the axis indexed (indices must be in 0..size-1)"),)))
register(_op("slice", ("x",), _slice, "x[start:end] along the given axes (step 1; Python's negative indices "
             "and clamping)", category="shape", since="1.1", attrs=(
                 Attr("starts", List(Int(), min_items=1, max_items=8), required=True, doc="first index per axis"),
                 Attr("ends", List(Int(), min_items=1, max_items=8), required=True, doc="end (exclusive) per axis"),
                 Attr("axes", OneOf((Null(), List(Int(), min_items=1, max_items=8))), None,
                      doc="the axes sliced (null: the first len(starts))"))))
register(_op("layer_norm", ("x", "scale", "bias"), _layer_norm, "(x - mean) / sqrt(var + eps) * scale + bias over "
             "the last axis", category="activation", since="1.1",
             attrs=(Attr("eps", Num(exclusive_minimum=0.0), 1e-5, doc="added to the variance"),)))
PAIR = OneOf((Int(minimum=1), List(Int(minimum=1), min_items=2, max_items=2)),
             description="one size for both axes, or [height, width]")
PADDING = OneOf((Int(minimum=0), List(Int(minimum=0), min_items=2, max_items=2)),
                description="zeros added on each side: one size, or [height, width]")
register(_op("conv2d", ("x", "weight"), _conv2d, "2-D convolution of NCHW x with (out, in / groups, kh, kw) "
             "weights (cross-correlation, as in PyTorch and ONNX; add a bias with add)", category="linear algebra",
             since="1.1", attrs=(Attr("stride", PAIR, 1, doc="step between windows"),
                                 Attr("padding", PADDING, 0, doc="zeros around the input"),
                                 Attr("dilation", PAIR, 1, doc="spacing inside a window"),
                                 Attr("groups", Int(minimum=1), 1, doc="channel groups convolved apart"))))
for _name, _doc in (("max_pool2d", "the largest value of each window of NCHW x (gradient shared by ties; padding "
                                   "never wins)"),
                    ("avg_pool2d", "the mean of each window of NCHW x (padding counts as zeros)")):
    register(_op(_name, ("x",), _named(_pool, _name), _doc, category="linear algebra", since="1.1", attrs=(
        Attr("kernel_size", PAIR, required=True, doc="the window"),
        Attr("stride", OneOf((Null(), Int(minimum=1), List(Int(minimum=1), min_items=2, max_items=2))), None,
             doc="step between windows (null: the window size)"),
        Attr("padding", PADDING, 0, doc="added on each side"))))


# -- format 1.2 ---------------------------------------------------------------------------
def _concat(types, attrs):
    dtype = _require_float(types, "concat")
    first = types[0]
    if first.rank == 0:
        raise ContractViolation("concat needs inputs of rank >= 1, got a scalar", ("inputs", 0),
                                hint="unsqueeze scalars to shape [1] first")
    (axis,) = _axes_of(attrs, first.rank)
    along, rest = first.shape[axis], first.shape[:axis] + first.shape[axis + 1:]
    for i, t in enumerate(types[1:], start=1):
        if t.rank != first.rank:
            raise ContractViolation(f"concat: input {i} has rank {t.rank}, input 0 has rank {first.rank}",
                                    ("inputs", i), hint="every input needs the same rank")
        unified = unify_shapes(rest, t.shape[:axis] + t.shape[axis + 1:])
        if unified is None:
            raise ContractViolation(f"concat: {format_shape(t.shape)} and {format_shape(first.shape)} differ on an "
                                    f"axis other than {axis}", ("inputs", i),
                                    hint="inputs may differ only along the concatenation axis")
        rest = unified
        along = along + t.shape[axis] if isinstance(along, int) and isinstance(t.shape[axis], int) else None
    return TensorType(dtype, rest[:axis] + (along,) + rest[axis:])


def _accuracy(types, attrs):
    logits, labels = types
    dtype = _require_float(types, "accuracy", [0])
    if attrs.get("threshold") is not None:  # binary: one score per label
        numeric = labels.dtype in FLOAT_DTYPES or labels.dtype == "int64"
        if numeric and unify_shapes(labels.shape, logits.shape) is not None:
            return TensorType(dtype, ())
        raise ContractViolation(f"binary accuracy (a threshold) needs 0/1 labels of the scores' shape "
                                f"{format_shape(logits.shape)}, got {labels}", ("inputs", 1),
                                hint="the targets of the bce loss fit", code="shape_mismatch")
    if logits.rank == 0:
        raise ContractViolation("accuracy needs scores of rank >= 1 (classes last)", ("inputs", 0))
    if labels.dtype == "int64" and unify_shapes(labels.shape, logits.shape[:-1]) is not None:
        return TensorType(dtype, ())
    if labels.dtype in FLOAT_DTYPES and unify_shapes(labels.shape, logits.shape) is not None:
        return TensorType(dtype, ())
    raise ContractViolation(
        f"accuracy's labels must be int64 class indices of shape {format_shape(logits.shape[:-1])} or one-hot/"
        f"probabilities of the scores' shape {format_shape(logits.shape)}, got {labels}", ("inputs", 1),
        hint="the labels of the softmax_cross_entropy loss fit", code="dtype_mismatch")


register(_op("concat", ("x",), _concat, "the inputs joined along axis (they differ only there; gradient split back)",
             category="shape", since="1.2", variadic=True,
             attrs=(Attr("axis", AXIS, required=True, doc="the axis joined along"),)))
register(_op("dropout", ("x",), _named(_unary, "dropout"),
             "while training: each element zeroed with probability rate, the rest scaled by 1 / (1 - rate), a "
             "mask drawn per step from the run's seed (reproducible); elsewhere (evaluation, explain, export) x "
             "itself", category="activation", since="1.2",
             attrs=(Attr("rate", Num(minimum=0.0, exclusive_maximum=1.0), 0.5, doc="the probability of zeroing"),)))
register(_op("accuracy", ("scores", "labels"), _accuracy, "the fraction of rows whose largest score (the first "
             "on ties) is at the label's class (int64 labels, or one-hot/probabilities: their argmax); with a "
             "threshold, binary: the fraction of scores on the label's side of it (labels 0/1); no gradient",
             category="metric", since="1.2", differentiable=(),
             attrs=(Attr("threshold", OneOf((Null(), Num())), None,
                         doc="null: classes on the last axis; a number: binary (0.5 for probabilities, 0 for "
                             "logits)"),)))
