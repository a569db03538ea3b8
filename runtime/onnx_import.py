"""An ONNX model as a chainrule graph: ``runtime.from_onnx(model, loss=...)``.

For the supported subset (:data:`IMPORT`: the operators :mod:`runtime.onnx_export` writes, plus
``Gemm``, ``Identity`` and ``Constant``, which PyTorch's exporter writes): initializers become
parameters holding their values (the initial values of training), graph inputs become inputs
(symbolic dimensions such as a batch ``N`` kept), graph outputs become outputs. A chainrule graph
trains, so it needs a loss: ``loss`` names one (``mse``, ``softmax_cross_entropy``,
``bce_with_logits``) applied to the first output and a new ``target`` input.

Every unsupported node is reported at once, by name and op type; a malformed file, an opset
other than the default domain's, a dimension that is neither a number nor a name, and
initializers over the graphspec limits are clear errors, never a crash.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

import graphspec
from graphspec import GraphBuilder

from .errors import ChainruleRuntimeError

LOSSES = ("mse", "softmax_cross_entropy", "bce_with_logits")
OPSETS = (13, 21)  # the operator versions the IMPORT table was written against
_DTYPES = {1: "float32", 11: "float64", 7: "int64", 9: "bool"}


class ImportError_(ChainruleRuntimeError, ValueError):
    """The ONNX model cannot be read as a chainrule graph; the message lists why."""


class _Importer:
    def __init__(self, onnx_module, model):
        self.onnx, self.model = onnx_module, model
        self.g = GraphBuilder(model.graph.name or "imported", dtype="float32")
        self.values: dict[str, Any] = {}     # ONNX value name -> builder Value
        self.arrays: dict[str, np.ndarray] = {}  # initializers and Constant outputs
        self.params: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise ImportError_(f"{name!r} must be a constant (an initializer) for chainrule to read it")
        return self.arrays[name]

    def value(self, name: str):
        if name not in self.values:  # an initializer read as it is: a parameter holding it
            self.values[name] = self.param_as(name, self.arrays[name])
        return self.values[name]

    def param_as(self, name: str, array: np.ndarray):
        """A parameter holding ``array`` (an initializer reshaped or transposed for chainrule's op)."""
        safe = _safe(name)
        value = self.g.param(safe, list(array.shape), value=array, dtype=array.dtype.name)
        self.params[safe] = array
        return value


def _safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_.:-" else "_" for c in name) or "value"
    return cleaned if cleaned[0].isalpha() or cleaned[0] == "_" else "v_" + cleaned


def _attrs(onnx_module, node) -> dict[str, Any]:
    return {a.name: onnx_module.helper.get_attribute_value(a) for a in node.attribute}


def _unary(op: str) -> Callable:
    return lambda im, node, a: im.g.op(op, im.value(node.input[0]))


def _binary(op: str) -> Callable:
    return lambda im, node, a: im.g.op(op, im.value(node.input[0]), im.value(node.input[1]))


def _gemm(im, node, a):
    x = im.value(node.input[0])
    weight = im.array(node.input[1])
    if a.get("transA", 0):
        raise ImportError_(f"Gemm {node.name!r} with transA is not supported")
    w = im.param_as(node.input[1], np.ascontiguousarray(weight.T) if a.get("transB", 0) else weight)
    y = im.g.op("matmul", x, w)
    if a.get("alpha", 1.0) != 1.0:
        y = im.g.mul(y, float(a["alpha"]))
    if len(node.input) > 2 and node.input[2]:
        bias = im.value(node.input[2])
        y = im.g.add(y, bias if a.get("beta", 1.0) == 1.0 else im.g.mul(bias, float(a["beta"])))
    return y


def _conv(im, node, a):
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ImportError_(f"Conv {node.name!r}: auto_pad is not supported (give explicit pads)")
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        raise ImportError_(f"Conv {node.name!r}: asymmetric pads {pads} are not supported")
    y = im.g.op("conv2d", im.value(node.input[0]), im.value(node.input[1]), stride=list(a.get("strides", [1, 1])),
                padding=pads[:2], dilation=list(a.get("dilations", [1, 1])), groups=int(a.get("group", 1)))
    if len(node.input) > 2 and node.input[2]:
        bias = im.array(node.input[2])
        y = im.g.add(y, im.param_as(node.input[2], bias.reshape(-1, 1, 1)))
    return y


def _pool(op: str) -> Callable:
    def emit(im, node, a):
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:] or a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise ImportError_(f"{node.op_type} {node.name!r}: asymmetric pads, ceil_mode and dilations are not "
                               "supported")
        if op == "avg_pool2d" and not a.get("count_include_pad", 0) and any(pads):
            raise ImportError_(f"AveragePool {node.name!r}: count_include_pad=0 with padding is not supported")
        return im.g.op(op, im.value(node.input[0]), kernel_size=list(a["kernel_shape"]),
                       stride=list(a.get("strides", a["kernel_shape"])), padding=pads[:2])
    return emit


def _reduce(op: str) -> Callable:
    def emit(im, node, a):
        axes = [int(v) for v in im.array(node.input[1])] if len(node.input) > 1 and node.input[1] else a.get("axes")
        return im.g.op(op, im.value(node.input[0]), axis=None if axes is None else list(axes),
                       keepdims=bool(a.get("keepdims", 1)))
    return emit


def _dropout(im, node, a):
    if len(node.output) > 1 and node.output[1]:
        raise ImportError_(f"Dropout {node.name!r}: its mask output is not supported")
    if len(node.input) > 2 and node.input[2]:
        raise ImportError_(f"Dropout {node.name!r}: a training_mode input is not supported (chainrule drops "
                           "while training and not elsewhere)")
    rate = float(im.array(node.input[1])) if len(node.input) > 1 and node.input[1] else 0.5
    return im.g.op("dropout", im.value(node.input[0]), rate=rate)


# ONNX op type -> how to write it with the builder
IMPORT: dict[str, Callable] = {
    **{k: _binary(v) for k, v in {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "MatMul": "matmul",
                                  "Max": "maximum", "Min": "minimum"}.items()},
    **{k: _unary(v) for k, v in {"Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Abs": "abs",
                                 "Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu", "Softplus": "softplus"}.items()},
    "Identity": lambda im, node, a: im.value(node.input[0]),
    "LeakyRelu": lambda im, node, a: im.g.op("leaky_relu", im.value(node.input[0]), alpha=float(a.get("alpha", 0.01))),
    "Gemm": _gemm, "Conv": _conv, "MaxPool": _pool("max_pool2d"), "AveragePool": _pool("avg_pool2d"),
    "Flatten": lambda im, node, a: im.g.op("flatten", im.value(node.input[0]), axis=int(a.get("axis", 1))),
    "Reshape": lambda im, node, a: im.g.op("reshape", im.value(node.input[0]),
                                           shape=[int(v) for v in im.array(node.input[1])]),
    "Transpose": lambda im, node, a: im.g.op("transpose", im.value(node.input[0]),
                                             perm=list(a["perm"]) if "perm" in a else None),
    "Softmax": lambda im, node, a: im.g.op("softmax", im.value(node.input[0]), axis=int(a.get("axis", -1))),
    "LogSoftmax": lambda im, node, a: im.g.op("log_softmax", im.value(node.input[0]), axis=int(a.get("axis", -1))),
    "ReduceSum": _reduce("sum"), "ReduceMean": _reduce("mean"), "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "Gather": lambda im, node, a: im.g.op("gather", im.value(node.input[0]), im.value(node.input[1]),
                                          axis=int(a.get("axis", 0))),
    "Where": lambda im, node, a: im.g.op("where", *(im.value(i) for i in node.input)),
    "LayerNormalization": lambda im, node, a: im.g.op("layer_norm", *(im.value(i) for i in node.input[:3]),
                                                      eps=float(a.get("epsilon", 1e-5))),
    "Concat": lambda im, node, a: im.g.op("concat", *(im.value(i) for i in node.input), axis=int(a["axis"])),
    "Dropout": _dropout,
}


def from_onnx(model: Any, *, loss: str, name: str | None = None) -> tuple[graphspec.Graph, dict[str, np.ndarray]]:
    """``model`` (an ``onnx.ModelProto``, or the bytes or path of one) as (graph, initial parameters),
    with ``loss`` (one of :data:`LOSSES`) on its first output against a new ``target`` input."""
    try:
        import onnx
    except ImportError:
        raise ImportError_('ONNX import needs the onnx package: pip install "chainrule[onnx]"') from None
    if loss not in LOSSES:
        raise ImportError_(f"loss must be one of {', '.join(LOSSES)}: a chainrule graph trains on a loss, which an "
                           "ONNX model does not have")
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
        except Exception as exc:  # noqa: BLE001 - a malformed protobuf raises DecodeError and others
            raise ImportError_(f"not an ONNX model: {type(exc).__name__}: {exc}"[:500]) from None
    for opset in model.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            raise ImportError_(f"opset domain {opset.domain!r} is not supported (only the default ONNX domain)")
        if not OPSETS[0] <= opset.version <= OPSETS[1]:
            raise ImportError_(f"ONNX opset {opset.version} is not supported: chainrule reads opsets "
                               f"{OPSETS[0]} to {OPSETS[1]} (re-export the model with one of them)")
    unsupported = [f"{node.name or '(unnamed)'} ({node.op_type})" for node in model.graph.node
                   if node.op_type not in IMPORT and node.op_type != "Constant"]
    if unsupported:
        raise ImportError_(f"{len(unsupported)} node(s) have no chainrule form: {', '.join(unsupported)}; supported: "
                           f"{', '.join(sorted(IMPORT))}")
    im = _Importer(onnx, model)
    if name:
        im.g.name = name
    limits = graphspec.DEFAULT_LIMITS
    for init in model.graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        if array.size > limits.max_tensor_elements:
            raise ImportError_(f"initializer {init.name!r} has {array.size} elements; the limit is "
                               f"{limits.max_tensor_elements}")
        im.arrays[init.name] = array
    for value in model.graph.input:
        if value.name in im.arrays:
            continue
        t = value.type.tensor_type
        if t.elem_type not in _DTYPES:
            raise ImportError_(f"input {value.name!r} has ONNX element type {t.elem_type}, which chainrule does not read")
        dims = []
        for k, d in enumerate(t.shape.dim):
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(_safe(d.dim_param))
            else:
                raise ImportError_(f"input {value.name!r}: dimension {k} has neither a size nor a name "
                                   "(dynamic shapes cannot be inferred); name it in the model")
        im.values[value.name] = im.g.input(_safe(value.name), dims, dtype=_DTYPES[t.elem_type])
    for node in model.graph.node:
        a = _attrs(onnx, node)
        if node.op_type == "Constant":
            im.arrays[node.output[0]] = np.asarray(onnx.numpy_helper.to_array(a["value"]))
            continue
        try:
            im.values[node.output[0]] = IMPORT[node.op_type](im, node, a)
        except graphspec.GraphSpecError as exc:
            raise ImportError_(f"node {node.name or node.output[0]!r} ({node.op_type}): {exc}") from None
    outputs = [o.name for o in model.graph.output]
    for out in outputs:
        im.g.output(_safe(out), im.values[out])
    prediction = im.values[outputs[0]]
    target_dtype = "int64" if loss == "softmax_cross_entropy" else prediction.dtype
    target_shape = list(prediction.shape[:-1]) if loss == "softmax_cross_entropy" else list(prediction.shape)
    target = im.g.input("target", target_shape, dtype=target_dtype)
    im.g.loss(im.g.op(loss, prediction, target))
    return im.g.build(), im.params
