"""A trained chainrule graph as an ONNX model: ``runtime.to_onnx(graph, params)``.

The ONNX model is the graph's *inference* part: every output except the loss, the nodes they
need, the inputs those read (targets and labels drop out with the loss), and the parameters as
initializers holding the trained values. Symbolic dimensions (``"N"``) stay symbolic. The
opset is :data:`OPSET` (18); each chainrule op maps to the ONNX operators of :data:`EXPORT`,
checked by ``onnx.checker`` and, in the tests, against onnxruntime's outputs (1e-6 in
float64, 1e-5 in float32). The losses have no inference meaning and are left out unless
``keep_loss=True``: then the loss output is exported too, with the targets or labels it reads as
graph inputs, each loss op written as ONNX operators (:data:`LOSSES`) with chainrule's exact
semantics (bce's clip, bce_with_logits' stable form, both label forms of softmax_cross_entropy,
every reduction). Without it, a graph whose only output is its loss has nothing to export and
says so.

Needs the ``onnx`` extra (``pip install "chainrule[onnx]"``); the rest of the runtime does not.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from graphspec import Graph

from .errors import ChainruleRuntimeError

OPSET = 18
_DTYPES = {"float32": 1, "float64": 11, "int64": 7, "int32": 6, "bool": 9, "uint8": 2, "int8": 3, "int16": 5,
           "float16": 10}


class ExportError(ChainruleRuntimeError, ValueError):
    """The graph cannot be written as ONNX; the message says which node and why."""


class _Emitter:
    """Collects ONNX nodes and initializers for one export."""

    def __init__(self, onnx_module):
        self.onnx, self.helper = onnx_module, onnx_module.helper
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def node(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        self.nodes.append(self.helper.make_node(op_type, inputs, outputs, **attrs))

    def const(self, value, dtype=np.int64) -> str:
        """An initializer holding ``value``; returns its name."""
        self._count += 1
        name = f"_const_{self._count}"
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def temp(self, stem: str) -> str:
        self._count += 1
        return f"{stem}:_{self._count}"


def _axes_input(e: _Emitter, axis, rank: int) -> list[str]:
    if axis is None:
        return []
    axes = [axis] if isinstance(axis, int) else list(axis)
    return [e.const([a % rank if rank else a for a in axes])]


def _reduce(op_type: str) -> Callable:
    def emit(e, node, ins, out, attrs, types):
        axis = attrs.get("axis")
        if axis == []:  # reduce nothing: the value itself
            e.node("Identity", ins, [out])
            return
        e.node(op_type, ins + _axes_input(e, axis, len(types[node.inputs[0]].shape)), [out],
               keepdims=int(bool(attrs.get("keepdims"))))
    return emit


def _pairs(value) -> list[int]:
    return [value, value] if isinstance(value, int) else [int(v) for v in value]


def _same(op_type: str, **fixed) -> Callable:
    return lambda e, node, ins, out, attrs, types: e.node(op_type, ins, [out], **fixed)


def _log1p(e, node, ins, out, attrs, types):
    shifted = e.temp(out)
    e.node("Add", [ins[0], e.const(1.0, types[node.inputs[0]].dtype)], [shifted])
    e.node("Log", [shifted], [out])


def _gelu(e, node, ins, out, attrs, types):
    """0.5 x (1 + tanh(c (x + 0.044715 x^3))) from elementary nodes (opset 18 has no Gelu)."""
    dtype, x = types[node.inputs[0]].dtype, ins[0]
    names = [e.temp(out) for _ in range(7)]
    e.node("Pow", [x, e.const(3.0, dtype)], [names[0]])
    e.node("Mul", [names[0], e.const(0.044715, dtype)], [names[1]])
    e.node("Add", [x, names[1]], [names[2]])
    e.node("Mul", [names[2], e.const(math.sqrt(2 / math.pi), dtype)], [names[3]])
    e.node("Tanh", [names[3]], [names[4]])
    e.node("Add", [names[4], e.const(1.0, dtype)], [names[5]])
    e.node("Mul", [x, names[5]], [names[6]])
    e.node("Mul", [names[6], e.const(0.5, dtype)], [out])


def _pow(e, node, ins, out, attrs, types):
    e.node("Pow", [ins[0], e.const(attrs["exponent"], types[node.inputs[0]].dtype)], [out])


def _clip(e, node, ins, out, attrs, types):
    dtype = types[node.inputs[0]].dtype
    bounds = [e.const(attrs[k], dtype) if attrs.get(k) is not None else "" for k in ("min", "max")]
    e.node("Clip", ins + bounds, [out])


def _one_hot(e, node, ins, out, attrs, types):
    values = [e.const(attrs["depth"]), e.const([0, 1], attrs.get("dtype", "float32"))]
    if types[node.inputs[0]].shape:
        e.node("OneHot", [ins[0], *values], [out], axis=-1)
        return
    lifted, hot = e.temp(out), e.temp(out)  # ONNX's OneHot wants indices of rank >= 1
    e.node("Unsqueeze", [ins[0], e.const([0])], [lifted])
    e.node("OneHot", [lifted, *values], [hot], axis=-1)
    e.node("Squeeze", [hot, e.const([0])], [out])


def _conv(e, node, ins, out, attrs, types):
    weight = types[node.inputs[1]].shape
    pads = _pairs(attrs.get("padding", 0))
    e.node("Conv", ins, [out], kernel_shape=list(weight[2:]), strides=_pairs(attrs.get("stride", 1)),
           dilations=_pairs(attrs.get("dilation", 1)), pads=pads + pads, group=int(attrs.get("groups", 1)))


def _pool(op_type: str, **fixed) -> Callable:
    def emit(e, node, ins, out, attrs, types):
        pads = _pairs(attrs.get("padding", 0))
        stride = attrs.get("stride") if attrs.get("stride") is not None else attrs["kernel_size"]
        e.node(op_type, ins, [out], kernel_shape=_pairs(attrs["kernel_size"]), strides=_pairs(stride),
               pads=pads + pads, **fixed)
    return emit


def _slice(e, node, ins, out, attrs, types):
    rank = len(types[node.inputs[0]].shape)
    axes = attrs.get("axes") if attrs.get("axes") is not None else list(range(len(attrs["starts"])))
    big = np.iinfo(np.int64).max
    ends = [big if end >= big else end for end in attrs["ends"]]
    e.node("Slice", [ins[0], e.const(attrs["starts"]), e.const(ends), e.const([a % rank for a in axes])], [out])


def _reshape(e, node, ins, out, attrs, types):
    e.node("Reshape", [ins[0], e.const(attrs["shape"])], [out])


def _transpose(e, node, ins, out, attrs, types):
    perm = attrs.get("perm")
    if not types[node.inputs[0]].shape:  # a scalar: nothing to permute
        e.node("Identity", ins, [out])
        return
    e.node("Transpose", ins, [out], **({} if perm is None else {"perm": list(perm)}))


def _constant(e, node, ins, out, attrs, types):
    e.initializers.append(e.onnx.numpy_helper.from_array(np.asarray(attrs["value"]), out))


def _dropout(e, node, ins, out, attrs, types):
    """ONNX Dropout with the rate as its ratio: the identity at inference (training_mode defaults to
    false), and read back as chainrule's dropout by the importer."""
    e.node("Dropout", [ins[0], e.const(float(attrs.get("rate", 0.5)), types[node.inputs[0]].dtype)], [out])


def _accuracy(e, node, ins, out, attrs, types):
    """mean(argmax(scores) == labels), the labels' argmax first when they are one-hot/probabilities."""
    scores, labels = ins
    predicted, hits, as_float = e.temp(out), e.temp(out), e.temp(out)
    if attrs.get("threshold") is not None:  # binary: Greater on both sides, then as below
        dtype, truth = types[node.inputs[0]].dtype, e.temp(out)
        e.node("Greater", [scores, e.const(float(attrs["threshold"]), dtype)], [predicted])
        e.node("Greater", [labels, e.const(0.5, types[node.inputs[1]].dtype)], [truth])
        labels = truth
    else:
        e.node("ArgMax", [scores], [predicted], axis=-1, keepdims=0)
    if attrs.get("threshold") is None and types[node.inputs[1]].dtype != "int64":
        classes = e.temp(out)
        e.node("ArgMax", [labels], [classes], axis=-1, keepdims=0)
        labels = classes
    e.node("Equal", [predicted, labels], [hits])
    e.node("Cast", [hits], [as_float], to=_DTYPES[types[node.inputs[0]].dtype])
    e.node("ReduceMean", [as_float], [out], keepdims=0)


# chainrule op -> how to write it as ONNX nodes
EXPORT: dict[str, Callable] = {
    "add": _same("Add"), "sub": _same("Sub"), "mul": _same("Mul"), "div": _same("Div"), "neg": _same("Neg"),
    "exp": _same("Exp"), "log": _same("Log"), "sqrt": _same("Sqrt"), "abs": _same("Abs"), "pow": _pow,
    "sigmoid": _same("Sigmoid"), "tanh": _same("Tanh"), "relu": _same("Relu"), "matmul": _same("MatMul"),
    "sum": _reduce("ReduceSum"), "mean": _reduce("ReduceMean"), "max": _reduce("ReduceMax"),
    "min": _reduce("ReduceMin"), "reshape": _reshape, "transpose": _transpose, "constant": _constant,
    "softmax": lambda e, node, ins, out, attrs, types: e.node("Softmax", ins, [out], axis=attrs.get("axis", -1)),
    "log_softmax": lambda e, node, ins, out, attrs, types: e.node("LogSoftmax", ins, [out],
                                                                   axis=attrs.get("axis", -1)),
    "log1p": _log1p, "softplus": _same("Softplus"), "gelu": _gelu,
    "leaky_relu": lambda e, node, ins, out, attrs, types: e.node("LeakyRelu", ins, [out],
                                                                  alpha=float(attrs.get("alpha", 0.01))),
    "maximum": _same("Max"), "minimum": _same("Min"), "where": _same("Where"), "clip": _clip,
    "argmax": lambda e, node, ins, out, attrs, types: e.node("ArgMax", ins, [out], axis=attrs.get("axis", -1),
                                                              keepdims=int(bool(attrs.get("keepdims")))),
    "one_hot": _one_hot,
    "flatten": lambda e, node, ins, out, attrs, types: e.node("Flatten", ins, [out], axis=attrs.get("axis", 1)),
    "squeeze": lambda e, node, ins, out, attrs, types: e.node("Squeeze", [ins[0], e.const(attrs["axes"])], [out]),
    "unsqueeze": lambda e, node, ins, out, attrs, types: e.node("Unsqueeze", [ins[0], e.const(attrs["axes"])],
                                                                 [out]),
    "broadcast_to": lambda e, node, ins, out, attrs, types: e.node("Expand", [ins[0], e.const(attrs["shape"])],
                                                                    [out]),
    "gather": lambda e, node, ins, out, attrs, types: e.node("Gather", ins, [out], axis=attrs.get("axis", 0)),
    "slice": _slice,
    "layer_norm": lambda e, node, ins, out, attrs, types: e.node("LayerNormalization", ins, [out], axis=-1,
                                                                  epsilon=float(attrs.get("eps", 1e-5))),
    "conv2d": _conv, "max_pool2d": _pool("MaxPool"), "avg_pool2d": _pool("AveragePool", count_include_pad=1),
    "concat": lambda e, node, ins, out, attrs, types: e.node("Concat", ins, [out], axis=attrs["axis"]),
    "dropout": _dropout, "accuracy": _accuracy,
}


# -- losses (keep_loss=True) -------------------------------------------------------------------------

def _loss_reduction(e, per_element: str, out: str, attrs, rank: int) -> None:
    """chainrule's reduction of a per-element loss: mean or sum over every element (a scalar), or none."""
    reduction = attrs.get("reduction", "mean")
    if reduction == "none" or rank == 0:  # a scalar's mean and sum are itself
        e.node("Identity", [per_element], [out])
        return
    # no axes input (and noop_with_empty_axes=0): every axis, to a scalar
    e.node("ReduceMean" if reduction == "mean" else "ReduceSum", [per_element], [out], keepdims=0)


def _mse(e, node, ins, out, attrs, types):
    """(p - t)^2, reduced."""
    diff, square = e.temp(out), e.temp(out)
    e.node("Sub", ins, [diff])
    e.node("Mul", [diff, diff], [square])
    _loss_reduction(e, square, out, attrs, len(types[node.inputs[0]].shape))


def _bce(e, node, ins, out, attrs, types):
    """-(y log p + (1 - y) log(1 - p)) with p = clip(a, eps, 1 - eps), reduced."""
    dtype, (a, y) = types[node.inputs[0]].dtype, ins
    eps = float(attrs.get("eps", 1e-7))
    one = e.const(1.0, dtype)
    p, log_p, q, log_q, y_log_p, not_y, not_y_log_q, total, per = (e.temp(out) for _ in range(9))
    e.node("Clip", [a, e.const(eps, dtype), e.const(1 - eps, dtype)], [p])
    e.node("Log", [p], [log_p])
    e.node("Sub", [one, p], [q])  # chainrule's log1p(-p): 1 - p is exact for p >= 1/2, off by <= ulp(1)/2 below
    e.node("Log", [q], [log_q])
    e.node("Mul", [y, log_p], [y_log_p])
    e.node("Sub", [one, y], [not_y])
    e.node("Mul", [not_y, log_q], [not_y_log_q])
    e.node("Add", [y_log_p, not_y_log_q], [total])
    e.node("Neg", [total], [per])
    _loss_reduction(e, per, out, attrs, len(types[node.inputs[0]].shape))


def _bce_with_logits(e, node, ins, out, attrs, types):
    """max(z, 0) - z y + log(1 + exp(-|z|)): no exp overflows, as chainrule's, reduced."""
    dtype, (z, y) = types[node.inputs[0]].dtype, ins
    positive, zy, magnitude, negative, small, shifted, log_term, linear, per = (e.temp(out) for _ in range(9))
    e.node("Relu", [z], [positive])
    e.node("Mul", [z, y], [zy])
    e.node("Abs", [z], [magnitude])
    e.node("Neg", [magnitude], [negative])
    e.node("Exp", [negative], [small])
    e.node("Add", [small, e.const(1.0, dtype)], [shifted])
    e.node("Log", [shifted], [log_term])
    e.node("Sub", [positive, zy], [linear])
    e.node("Add", [linear, log_term], [per])
    _loss_reduction(e, per, out, attrs, len(types[node.inputs[0]].shape))


def _softmax_cross_entropy(e, node, ins, out, attrs, types):
    """-log_softmax(z)[label] (int64 class labels) or -sum(y log_softmax(z)) (probability labels), the
    class axis last, reduced. LogSoftmax and GatherElements cover every rank (ONNX's
    SoftmaxCrossEntropyLoss wants the classes on axis 1 and class labels only)."""
    (z, labels), logits = ins, types[node.inputs[0]]
    log_p, per = e.temp(out), e.temp(out)
    e.node("LogSoftmax", [z], [log_p], axis=-1)
    if types[node.inputs[1]].dtype == "int64":
        index, picked, squeezed = e.temp(out), e.temp(out), e.temp(out)
        last = e.const([-1])
        e.node("Unsqueeze", [labels, last], [index])  # [..., 1]: each row's label
        e.node("GatherElements", [log_p, index], [picked], axis=-1)
        e.node("Squeeze", [picked, last], [squeezed])
        e.node("Neg", [squeezed], [per])
    else:
        weighted, summed = e.temp(out), e.temp(out)
        e.node("Mul", [labels, log_p], [weighted])
        e.node("ReduceSum", [weighted, e.const([-1])], [summed], keepdims=0)
        e.node("Neg", [summed], [per])
    _loss_reduction(e, per, out, attrs, len(logits.shape) - 1)


# chainrule loss op -> its ONNX nodes; written only with keep_loss=True (losses are training only)
LOSSES: dict[str, Callable] = {
    "mse": _mse, "bce": _bce, "bce_with_logits": _bce_with_logits, "softmax_cross_entropy": _softmax_cross_entropy,
}
NOT_EXPORTED = tuple(LOSSES)  # by default: a model for inference has no loss


def to_onnx(graph: Graph, params: Mapping[str, Any], *, outputs: list[str] | None = None, keep_loss: bool = False):
    """The inference part of ``graph`` with ``params`` as an ``onnx.ModelProto`` (opset :data:`OPSET`),
    checked by ``onnx.checker``. ``outputs``: which of the graph's outputs (default: all but the loss).
    ``keep_loss``: export the loss output too (added to ``outputs``), with the targets and labels it
    reads as graph inputs and its loss ops as ONNX operators (:data:`LOSSES`)."""
    try:
        import onnx
    except ImportError:
        raise ExportError('ONNX export needs the onnx package: pip install "chainrule[onnx]"') from None
    from .plan import compile as compile_plan

    graph = compile_plan(graph).graph  # validated, with types
    types = graph.analysis.types
    loss_output = graph.loss
    chosen = list(outputs) if outputs is not None else [name for name in graph.outputs if name != loss_output]
    if keep_loss and loss_output and loss_output not in chosen:
        chosen.append(loss_output)
    if not chosen:
        raise ExportError(f"graph {graph.name!r} has no output but its loss: add the prediction as an output "
                          "(GraphBuilder.output(name, value)) to export it, or keep the loss (keep_loss=True)")
    unknown = [name for name in chosen if name not in graph.outputs]
    if unknown:
        raise ExportError(f"no output {unknown[0]!r}; the graph's outputs are {', '.join(graph.outputs)}")
    producer = {node.id: node for node in graph.nodes}
    needed: set[str] = set()
    stack = [graph.outputs[name] for name in chosen]
    while stack:
        value = stack.pop()
        if value in needed:
            continue
        needed.add(value)
        if value in producer:
            stack.extend(producer[value].inputs)
    writers = {**EXPORT, **LOSSES} if keep_loss else EXPORT
    e = _Emitter(onnx)
    for node in graph.nodes:
        if node.id not in needed:
            continue
        if node.op not in writers:
            raise ExportError(f"node {node.id!r} ({node.op}) has no ONNX form: "
                              + ("a loss is training only; export the prediction it reads, or keep the loss "
                                 "(keep_loss=True)" if node.op in LOSSES else "not supported by this exporter"))
        writers[node.op](e, node, list(node.inputs), node.id, dict(node.attrs), types)
    for name in graph.parameters:
        if name in needed:
            if name not in params:
                raise ExportError(f"parameter {name!r} has no value: pass the trained parameters")
            e.initializers.append(onnx.numpy_helper.from_array(
                np.asarray(params[name], dtype=graph.parameters[name].dtype), name))
    for name, value in graph.outputs.items():
        if name in chosen and value != name:
            e.node("Identity", [value], [name])

    def value_info(name: str, dtype: str, shape) -> Any:
        dims = [d if isinstance(d, int) else (d if isinstance(d, str) else None) for d in shape]
        return onnx.helper.make_tensor_value_info(name, _DTYPES[dtype], dims)

    inputs = [value_info(name, spec.dtype, spec.shape) for name, spec in graph.inputs.items() if name in needed]
    outs = [value_info(name, types[graph.outputs[name]].dtype, types[graph.outputs[name]].shape) for name in chosen]
    model = onnx.helper.make_model(
        onnx.helper.make_graph(e.nodes, graph.name, inputs, outs, e.initializers),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="chainrule")
    model.ir_version = min(model.ir_version, 9)  # onnxruntime releases lag onnx's newest IR
    onnx.checker.check_model(model, full_check=True)
    return model
