"""One hypothesis strategy per catalogue op: a small float64 graph that applies the op.

``SAMPLES[op]`` is a strategy of :class:`Sample` (graph, inputs, params, what to check).
Every sample

* applies ``op`` to operands of random shape (rank 0..3, sizes 1..4), with numpy
  broadcasting for the binary elementwise ops (scalars with matrices, [3, 1] with [4]...),
  1-D/2-D/batched matmul, random axes/keepdims/shapes/perms for reductions, reshape,
  transpose and softmax, every loss reduction, int64 and probability labels;
* draws each operand as a parameter, an input (then input gradients are checked too,
  sometimes with symbolic dims such as ``S3``) or a constant;
* keeps values away from non-differentiable points (relu/abs kinks, log/sqrt/pow of
  non-positive numbers, the bce clip, division by ~0);
* exercises fan-out in some draws: the same parameter as both operands (``mul(w, w)``),
  the op's output consumed twice, or an operand used again outside the op;
* reduces the op's output to a scalar loss ``sum(out * R)`` with a random constant ``R``
  (so every gradient component matters), or uses a scalar output directly.

tests/test_gradcheck.py runs :func:`runtime.gradcheck.gradcheck` on these for every op of
``graphspec.OPS``; an op without an entry here fails that suite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import graphspec
from graphspec import GraphBuilder, Value

OP_NODE = "out"  # the id of the node that applies the op under test


@dataclass
class Sample:
    op: str
    graph: graphspec.Graph
    inputs: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    wrt: str = "params"
    notes: list[str] = field(default_factory=list)
    noise: Any = None  # a runtime.Noise: the sample runs as that training step (dropout drops)

    def _repr_pretty_(self, printer, cycle) -> None:  # what hypothesis prints for a falsifying example
        printer.text(repr(self))

    def __repr__(self) -> str:
        nodes = "; ".join(f"{n.id} = {n.op}({', '.join(n.inputs)}"
                          + "".join(f", {k}={v!r}" for k, v in n.attrs.items() if not isinstance(v, np.ndarray))
                          + ")" for n in self.graph.nodes)
        decl = ", ".join([f"input {k}: {s.dtype}{list(s.shape)}" for k, s in self.graph.inputs.items()]
                         + [f"param {k}: {s.dtype}{list(s.shape)}" for k, s in self.graph.parameters.items()])
        return f"Sample({self.op}; {decl}; {nodes}; wrt={self.wrt}; {', '.join(self.notes)})"


def shapes(min_rank: int = 0, max_rank: int = 3) -> st.SearchStrategy[tuple[int, ...]]:
    """Rank drawn first (so rank 3 is as likely as rank 0), then sizes 1..4."""
    return st.integers(min_rank, max_rank).flatmap(
        lambda rank: st.tuples(*(st.integers(1, 4) for _ in range(rank))))


class Draft:
    """A sample under construction: the builder, the values bound so far, and the draw."""

    def __init__(self, draw: Callable, op: str):
        self.draw = draw
        self.op = op
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        self.g = GraphBuilder(f"sample_{op}", dtype="float64")
        self.inputs: dict[str, np.ndarray] = {}
        self.params: dict[str, np.ndarray] = {}
        self.notes: list[str] = []
        self.differentiable: list[Value] = []  # operands that are parameters or float inputs

    # -- values --------------------------------------------------------------------------
    def uniform(self, shape, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, size=shape)

    def signed(self, shape, low: float, high: float) -> np.ndarray:
        """|x| in [low, high] with a random sign: away from 0."""
        return self.rng.choice([-1.0, 1.0], size=shape) * self.rng.uniform(low, high, size=shape)

    # -- operands ----------------------------------------------------------------------------
    def kind(self, allow_const: bool = True) -> str:
        # From the seeded rng rather than a hypothesis draw: derandomized hypothesis favours the
        # first choices so strongly that some ops would never see an input operand.
        kinds = ["param", "param", "input"] + (["const"] if allow_const else [])
        return str(self.rng.choice(kinds))

    def operand(self, name: str, value: np.ndarray, kind: str | None = None, *, symbolic_ok: bool = True) -> Value:
        """``value`` as a parameter, an input (maybe with symbolic dims) or a constant."""
        kind = kind or self.kind()
        value = np.asarray(value)
        if kind == "param":
            v = self.g.param(name, value.shape, value=value)
            self.params[name] = value
            self.differentiable.append(v)
        elif kind == "input":
            declared: list[Any] = list(value.shape)
            if symbolic_ok and self.rng.random() < 0.5:
                declared = [f"S{d}" if d > 1 else d for d in declared]  # one symbol per size: consistent
            v = self.g.input(name, declared, dtype=value.dtype.name)
            self.inputs[name] = value
            if value.dtype.kind == "f":
                self.differentiable.append(v)
        elif kind == "const":
            v = self.g.constant(value, dtype=value.dtype.name, name=name)
        else:
            raise ValueError(kind)
        self.notes.append(f"{name}:{kind}{list(value.shape)}")
        return v

    def operands(self, values: dict[str, np.ndarray], *, symbolic_ok: bool = True) -> list[Value]:
        """Several operands, at least one of them differentiable."""
        kinds = [self.kind() for _ in values]
        if all(k == "const" for k in kinds):
            kinds[0] = "param"
        return [self.operand(n, v, k, symbolic_ok=symbolic_ok) for (n, v), k in zip(values.items(), kinds)]

    def shared(self) -> bool:
        """Whether to feed one parameter to every operand (fan-out into one node)."""
        return self.draw(st.sampled_from([False, False, True]))

    # -- the loss ----------------------------------------------------------------------------
    def finish(self, out: Value, out_shape: tuple[int, ...], wrt: str | None = None) -> Sample:
        """Reduce ``out`` (concrete shape ``out_shape``) to a scalar loss, maybe with fan-out."""
        assert out.name == OP_NODE
        g = self.g
        mode = self.draw(st.sampled_from(["weighted", "weighted", "output twice", "operand twice", "direct"]))
        if mode == "direct" and out_shape != ():
            mode = "weighted"
        if mode == "operand twice" and not self.differentiable:
            mode = "weighted"
        self.notes.append(f"loss: {mode}")
        if mode == "direct":
            loss = out
        else:
            weight = g.constant(self.uniform(out_shape, -1.0, 1.0), name="R")
            loss = g.sum(g.mul(out, weight, name="out_R"), name="loss_sum")
            if mode == "output twice":  # the op's output has two consumers: their gradients add up
                weight2 = g.constant(self.uniform(out_shape, -1.0, 1.0), name="R2")
                loss = g.add(loss, g.mean(g.mul(out, weight2, name="out_R2"), name="loss_mean"), name="loss_total")
            elif mode == "operand twice":  # an operand also reaches the loss outside the op
                first = self.differentiable[0]
                shape = self.inputs[first.name].shape if first.name in self.inputs else self.params[first.name].shape
                weight3 = g.constant(self.uniform(shape, -1.0, 1.0), name="R3")
                loss = g.add(loss, g.sum(g.mul(first, weight3, name="operand_R3"), name="operand_sum"),
                             name="loss_total")
        g.output("out", out)
        g.loss(loss)
        graph = g.build()
        if wrt is None:
            wrt = "all" if self.inputs else "params"
        return Sample(self.op, graph, self.inputs, self.params, wrt, self.notes)


# -- elementwise -------------------------------------------------------------------------------------

@st.composite
def binary(draw, op: str) -> Sample:
    d = Draft(draw, op)
    denominator = op == "div"
    if d.shared():
        shape = draw(shapes())
        w = d.operand("w", d.signed(shape, 0.5, 2.0) if denominator else d.uniform(shape, -2.0, 2.0), "param")
        d.notes.append(f"{op}(w, w)")
        return d.finish(d.g.op(op, w, w, name=OP_NODE), shape)
    bs = draw(mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4))
    sa, sb = bs.input_shapes
    b_value = d.signed(sb, 0.5, 2.0) if denominator else d.uniform(sb, -2.0, 2.0)
    a, b = d.operands({"a": d.uniform(sa, -2.0, 2.0), "b": b_value})
    return d.finish(d.g.op(op, a, b, name=OP_NODE), tuple(bs.result_shape))


UNARY_DOMAINS: dict[str, Callable[[Draft, tuple], np.ndarray]] = {
    "neg": lambda d, s: d.uniform(s, -2.0, 2.0),
    "exp": lambda d, s: d.uniform(s, -2.0, 2.0),
    "log": lambda d, s: d.uniform(s, 0.3, 3.0),
    "sqrt": lambda d, s: d.uniform(s, 0.3, 3.0),
    "abs": lambda d, s: d.signed(s, 0.05, 2.0),   # the kink at 0 is far from +-eps
    "relu": lambda d, s: d.signed(s, 0.05, 2.0),
    "sigmoid": lambda d, s: d.uniform(s, -4.0, 4.0),
    "tanh": lambda d, s: d.uniform(s, -2.5, 2.5),
    "log1p": lambda d, s: d.uniform(s, -0.6, 3.0),
    "softplus": lambda d, s: d.uniform(s, -4.0, 4.0),
    "gelu": lambda d, s: d.uniform(s, -4.0, 4.0),
}


@st.composite
def unary(draw, op: str) -> Sample:
    d = Draft(draw, op)
    shape = draw(shapes())
    (x,) = d.operands({"x": UNARY_DOMAINS[op](d, shape)})
    return d.finish(d.g.op(op, x, name=OP_NODE), shape)


@st.composite
def power(draw) -> Sample:
    d = Draft(draw, "pow")
    shape = draw(shapes())
    exponent = draw(st.one_of(st.sampled_from([0.0, 1.0, 2.0, 3.0, -1.0, -2.0, 0.5, -0.5, 1.5]),
                              st.floats(-2.5, 3.0, allow_nan=False)))
    if float(exponent).is_integer():  # negative bases are fine; stay away from 0
        x_value = d.signed(shape, 0.5, 1.5)
    else:
        x_value = d.uniform(shape, 0.5, 1.5)
    (x,) = d.operands({"x": x_value})
    d.notes.append(f"exponent={exponent!r}")
    return d.finish(d.g.op("pow", x, exponent=float(exponent), name=OP_NODE), shape)


@st.composite
def leaky_relu(draw) -> Sample:
    d = Draft(draw, "leaky_relu")
    shape = draw(shapes())
    alpha = draw(st.sampled_from([0.01, 0.0, 0.2, 1.5]))
    (x,) = d.operands({"x": d.signed(shape, 0.05, 2.0)})  # the kink at 0 is far from +-eps
    d.notes.append(f"alpha={alpha}")
    return d.finish(d.g.op("leaky_relu", x, alpha=alpha, name=OP_NODE), shape)


@st.composite
def extremum(draw, op: str) -> Sample:
    """maximum/minimum of values at least 0.15 apart (on a grid offset by 0.25), so no tie is
    within a finite-difference step; maximum(w, w) ties everywhere, and the gradient goes to a."""
    d = Draft(draw, op)
    if d.shared():
        shape = draw(shapes())
        w = d.operand("w", d.uniform(shape, -2.0, 2.0), "param")
        d.notes.append(f"{op}(w, w)")
        return d.finish(d.g.op(op, w, w, name=OP_NODE), shape)
    bs = draw(mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4))
    sa, sb = bs.input_shapes
    a_value = d.rng.integers(-4, 4, size=sa) * 0.5 + 0.25 + d.uniform(sa, -0.05, 0.05)
    b_value = d.rng.integers(-4, 4, size=sb) * 0.5 + d.uniform(sb, -0.05, 0.05)
    a, b = d.operands({"a": a_value, "b": b_value})
    return d.finish(d.g.op(op, a, b, name=OP_NODE), tuple(bs.result_shape))


@st.composite
def where(draw) -> Sample:
    d = Draft(draw, "where")
    bs = draw(mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, min_side=1, max_side=4))
    sc, sa, sb = bs.input_shapes
    condition = d.operand("c", d.rng.random(sc) < 0.5, str(d.rng.choice(["input", "const"])))
    a, b = d.operands({"a": d.uniform(sa, -2.0, 2.0), "b": d.uniform(sb, -2.0, 2.0)})
    return d.finish(d.g.op("where", condition, a, b, name=OP_NODE), tuple(bs.result_shape))


@st.composite
def clip(draw) -> Sample:
    d = Draft(draw, "clip")
    shape = draw(shapes())
    low, high = draw(st.sampled_from([(-0.5, 0.7), (None, 0.3), (-0.2, None), (0.1, 0.1)]))
    x_value = d.uniform(shape, -2.0, 2.0)
    for bound in (low, high):  # keep every value 0.1 from a bound: the gradient jumps there
        if bound is not None:
            near = np.abs(x_value - bound) < 0.1
            x_value = np.where(near, x_value + np.sign(x_value - bound + 1e-9) * 0.2, x_value)
    (x,) = d.operands({"x": x_value})
    d.notes.append(f"min={low} max={high}")
    return d.finish(d.g.op("clip", x, min=low, max=high, name=OP_NODE), shape)


# -- linear algebra, reductions, shapes ------------------------------------------------------------------

@st.composite
def matmul(draw, vector_dot: bool | None = None) -> Sample:
    """1-D/2-D/batched operands (batch dims broadcasting). ``vector_dot``: None draws 1-D @ 1-D
    (a dot product, a scalar output) like any other case, False never, True always."""
    d = Draft(draw, "matmul")
    m, k, n, batch = (draw(st.integers(1, 4)) for _ in range(4))
    if vector_dot or d.shared():  # w @ w: a vector dot itself, a square matrix or a batch of them
        rank = 1 if vector_dot else draw(st.integers(2 if vector_dot is False else 1, 3))
        if vector_dot and draw(st.booleans()):
            return _matmul_plain(draw, d, (k,), (k,))
        shape = {1: (k,), 2: (k, k), 3: (batch, k, k)}[rank]
        w = d.operand("w", d.uniform(shape, -1.5, 1.5), "param")
        d.notes.append("matmul(w, w)")
        return d.finish(d.g.matmul(w, w, name=OP_NODE), np.matmul(np.zeros(shape), np.zeros(shape)).shape)
    ra, rb = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if vector_dot is False and ra == rb == 1:
        rb = 2
    ba, bb = (draw(st.sampled_from([batch, 1])) for _ in range(2))
    sa = {1: (k,), 2: (m, k), 3: (ba, m, k)}[ra]
    sb = {1: (k,), 2: (k, n), 3: (bb, k, n)}[rb]
    return _matmul_plain(draw, d, sa, sb)


def _matmul_plain(draw, d: Draft, sa: tuple, sb: tuple) -> Sample:
    a, b = d.operands({"a": d.uniform(sa, -1.5, 1.5), "b": d.uniform(sb, -1.5, 1.5)})
    return d.finish(d.g.matmul(a, b, name=OP_NODE), np.matmul(np.zeros(sa), np.zeros(sb)).shape)


def axes(d: Draft, rank: int):
    """None, one axis (maybe negative), or a list of distinct axes in any order (maybe empty).
    Drawn from the seeded rng: derandomized hypothesis rarely reaches e.g. two of three axes."""
    rng = d.rng
    choice = rng.choice(["none", "int", "list", "list"] if rank else ["none", "list"])
    if choice == "none":
        return None
    if choice == "int":
        return int(rng.integers(-rank, rank))
    picked = [int(a) for a in rng.permutation(rank)[:rng.integers(0, rank + 1)]]
    return [a - rank if rng.random() < 0.5 else a for a in picked]


@st.composite
def reduction(draw, op: str) -> Sample:
    d = Draft(draw, op)
    shape = draw(shapes())
    axis = axes(d, len(shape))
    keepdims = bool(d.rng.random() < 0.5)
    (x,) = d.operands({"x": d.uniform(shape, -2.0, 2.0)})
    np_axis = tuple(axis) if isinstance(axis, list) else axis
    out_shape = np.sum(np.zeros(shape), axis=np_axis, keepdims=keepdims).shape
    return d.finish(d.g.op(op, x, axis=axis, keepdims=keepdims, name=OP_NODE), out_shape)


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@st.composite
def reshape(draw) -> Sample:
    d = Draft(draw, "reshape")
    shape = draw(shapes())
    total = int(np.prod(shape))
    factors = draw(st.permutations(_prime_factors(total)))
    rank = draw(st.integers(1 if factors else 0, 4))
    target = [1] * rank
    for f in factors:
        target[draw(st.integers(0, rank - 1))] *= f
    if target and draw(st.booleans()):
        target[draw(st.integers(0, rank - 1))] = -1
    (x,) = d.operands({"x": d.uniform(shape, -2.0, 2.0)}, symbolic_ok=False)
    return d.finish(d.g.reshape(x, shape=target, name=OP_NODE), np.zeros(shape).reshape(target).shape)


@st.composite
def transpose(draw) -> Sample:
    d = Draft(draw, "transpose")
    shape = draw(shapes())
    perm = draw(st.one_of(st.none(), st.permutations(range(len(shape)))))
    (x,) = d.operands({"x": d.uniform(shape, -2.0, 2.0)})
    out_shape = np.transpose(np.zeros(shape), perm).shape
    return d.finish(d.g.transpose(x, perm=None if perm is None else list(perm), name=OP_NODE), out_shape)


@st.composite
def softmax(draw, op: str) -> Sample:
    d = Draft(draw, op)
    shape = draw(shapes(min_rank=1))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    (x,) = d.operands({"x": d.uniform(shape, -3.0, 3.0)})
    return d.finish(d.g.op(op, x, axis=axis, name=OP_NODE), shape)


@st.composite
def constant(draw) -> Sample:
    """A constant (no inputs, no gradient) feeding a parameter's path twice."""
    d = Draft(draw, "constant")
    bs = draw(mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4))
    sc, sw = bs.input_shapes
    c = d.g.constant(d.uniform(sc, -2.0, 2.0), name=OP_NODE)
    w = d.operand("w", d.uniform(sw, -2.0, 2.0), "param")
    d.notes.append(f"{OP_NODE}:constant{list(sc)}")
    # out = w * c + c, renamed: the op under test is the constant itself
    y = d.g.add(d.g.mul(w, c, name="w_c"), c, name="w_c_plus_c")
    weight = d.g.constant(d.uniform(bs.result_shape, -1.0, 1.0), name="R")
    d.g.output("out", c)
    d.g.loss(d.g.sum(d.g.mul(y, weight, name="y_R"), name="loss_sum"))
    return Sample("constant", d.g.build(), d.inputs, d.params, "params", d.notes)


# -- losses ---------------------------------------------------------------------------------------------

REDUCTIONS = st.sampled_from(["mean", "sum", "none"])


def _loss_out_shape(shape, reduction: str):
    return tuple(shape) if reduction == "none" else ()


@st.composite
def pairwise_loss(draw, op: str) -> Sample:
    d = Draft(draw, op)
    shape = draw(shapes())
    reduction = draw(REDUCTIONS)
    attrs: dict[str, Any] = {"reduction": reduction}
    if op == "mse":
        prediction = d.uniform(shape, -2.0, 2.0)
        target = d.uniform(shape, -2.0, 2.0)
    elif op == "bce":  # inside (0.05, 0.95): the clip at eps (< 0.05) is inactive
        prediction = d.uniform(shape, 0.05, 0.95)
        attrs["eps"] = draw(st.sampled_from([1e-7, 1e-4, 0.01]))
        target = d.uniform(shape, 0.0, 1.0) if draw(st.booleans()) \
            else d.rng.integers(0, 2, size=shape).astype(np.float64)
    else:  # bce_with_logits
        prediction = d.uniform(shape, -4.0, 4.0)
        target = d.uniform(shape, 0.0, 1.0) if draw(st.booleans()) \
            else d.rng.integers(0, 2, size=shape).astype(np.float64)
    p = d.operand("prediction", prediction, d.kind(allow_const=False))
    t = d.operand("target", target, draw(st.sampled_from(["input", "const"])))
    return d.finish(d.g.op(op, p, t, name=OP_NODE, **attrs), _loss_out_shape(shape, reduction))


@st.composite
def softmax_cross_entropy(draw) -> Sample:
    d = Draft(draw, "softmax_cross_entropy")
    shape = draw(shapes(min_rank=1))
    reduction = draw(REDUCTIONS)
    logits = d.operand("logits", d.uniform(shape, -3.0, 3.0), d.kind(allow_const=False))
    label_kind = draw(st.sampled_from(["int64", "probabilities", "unnormalized"]))
    if label_kind == "int64":
        labels = d.rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int64)
    elif label_kind == "probabilities":
        labels = d.rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]).reshape(shape)
    else:  # non-negative weights whose rows need not sum to 1: the VJP is p * sum(y) - y
        labels = d.uniform(shape, 0.0, 1.0)
    lab = d.operand("labels", labels, draw(st.sampled_from(["input", "const"])))
    d.notes.append(f"labels {label_kind}")
    return d.finish(d.g.softmax_cross_entropy(logits, lab, reduction=reduction, name=OP_NODE),
                    _loss_out_shape(shape[:-1], reduction))


# -- format 1.1: reductions to an extremum, indices, shapes -------------------------------------------

@st.composite
def extremum_reduction(draw, op: str) -> Sample:
    """max/min over random axes of distinct values (0.1 apart: no tie within a finite-difference
    step); a second sample with ties checks that the gradient is shared among them."""
    d = Draft(draw, op)
    shape = draw(shapes())
    axis = axes(d, len(shape))
    keepdims = bool(d.rng.random() < 0.5)
    count = int(np.prod(shape, dtype=np.int64))
    values = (d.rng.permutation(count) * 0.1 - count * 0.05).reshape(shape) + d.uniform(shape, -0.02, 0.02)
    (x,) = d.operands({"x": values})
    np_axis = tuple(axis) if isinstance(axis, list) else axis
    out_shape = np.sum(np.zeros(shape), axis=np_axis, keepdims=keepdims).shape
    return d.finish(d.g.op(op, x, axis=axis, keepdims=keepdims, name=OP_NODE), out_shape)


@st.composite
def argmax(draw) -> Sample:
    """argmax has no gradient: its int64 output labels a softmax cross-entropy whose logits do."""
    d = Draft(draw, "argmax")
    shape = draw(shapes(min_rank=1))
    keepdims = False
    x = d.operand("x", d.uniform(shape, -2.0, 2.0), str(d.rng.choice(["input", "const"])))
    out = d.g.op("argmax", x, axis=-1, keepdims=keepdims, name=OP_NODE)
    logits_shape = shape[:-1] + (int(d.rng.integers(1, 4)) + shape[-1],)  # classes > any index argmax gives
    z = d.operand("z", d.uniform(logits_shape, -2.0, 2.0), "param")
    d.g.output("out", out)
    d.g.loss(d.g.softmax_cross_entropy(z, out, reduction="sum", name="L"))
    return Sample("argmax", d.g.build(), d.inputs, d.params, "params", d.notes)


@st.composite
def one_hot(draw) -> Sample:
    """one_hot has no gradient: a parameter weights its output."""
    d = Draft(draw, "one_hot")
    shape = draw(shapes(max_rank=2))
    depth = int(d.rng.integers(1, 5))
    idx = d.operand("i", d.rng.integers(0, depth, size=shape).astype(np.int64),
                    str(d.rng.choice(["input", "const"])))
    out = d.g.op("one_hot", idx, depth=depth, dtype="float64", name=OP_NODE)
    w = d.operand("w", d.uniform(shape + (depth,), -2.0, 2.0), "param")
    d.g.output("out", out)
    d.g.loss(d.g.sum(d.g.mul(out, w, name="weighted"), name="L"))
    return Sample("one_hot", d.g.build(), d.inputs, d.params, "params", d.notes)


@st.composite
def flatten(draw) -> Sample:
    d = Draft(draw, "flatten")
    shape = draw(shapes())
    axis = int(d.rng.integers(0, len(shape) + 1))
    (x,) = d.operands({"x": d.uniform(shape, -2.0, 2.0)})
    out_shape = (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))
    return d.finish(d.g.op("flatten", x, axis=axis, name=OP_NODE), out_shape)


@st.composite
def squeeze(draw) -> Sample:
    d = Draft(draw, "squeeze")
    shape = list(draw(shapes()))
    count = min(int(d.rng.integers(1, 3)), len(shape) + 1)
    ones = sorted(int(a) for a in d.rng.choice(len(shape) + count, size=count, replace=False))
    for a in ones:  # insert size-1 axes to squeeze out again
        shape.insert(a, 1)
    picked = [a - len(shape) if d.rng.random() < 0.5 else a for a in ones]
    (x,) = d.operands({"x": d.uniform(tuple(shape), -2.0, 2.0)})
    out_shape = tuple(n for i, n in enumerate(shape) if i not in ones)
    return d.finish(d.g.op("squeeze", x, axes=picked, name=OP_NODE), out_shape)


@st.composite
def unsqueeze(draw) -> Sample:
    d = Draft(draw, "unsqueeze")
    shape = draw(shapes())
    rank = len(shape) + int(d.rng.integers(1, 3))
    new = sorted(int(a) for a in d.rng.choice(rank, size=rank - len(shape), replace=False))
    (x,) = d.operands({"x": d.uniform(shape, -2.0, 2.0)})
    dims = iter(shape)
    out_shape = tuple(1 if i in new else next(dims) for i in range(rank))
    return d.finish(d.g.op("unsqueeze", x, axes=[a - rank if d.rng.random() < 0.5 else a for a in new],
                           name=OP_NODE), out_shape)


@st.composite
def broadcast_to(draw) -> Sample:
    d = Draft(draw, "broadcast_to")
    bs = draw(mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4))
    source, target = bs.input_shapes[0], tuple(bs.result_shape)
    (x,) = d.operands({"x": d.uniform(source, -2.0, 2.0)})
    return d.finish(d.g.op("broadcast_to", x, shape=list(target), name=OP_NODE), target)


@st.composite
def gather(draw) -> Sample:
    """An embedding-style lookup, repeated indices included (their gradients add up)."""
    d = Draft(draw, "gather")
    shape = draw(shapes(min_rank=1))
    axis = int(d.rng.integers(-len(shape), len(shape)))
    index_shape = draw(shapes(max_rank=2))
    indices = d.rng.integers(0, shape[axis], size=index_shape).astype(np.int64)
    params = d.operand("table", d.uniform(shape, -2.0, 2.0), str(d.rng.choice(["param", "param", "input"])))
    idx = d.operand("idx", indices, str(d.rng.choice(["input", "const"])))
    a = axis % len(shape)
    out_shape = tuple(shape[:a]) + tuple(index_shape) + tuple(shape[a + 1:])
    d.notes.append(f"axis={axis}")
    return d.finish(d.g.op("gather", params, idx, axis=axis, name=OP_NODE), out_shape)


@st.composite
def slice_(draw) -> Sample:
    d = Draft(draw, "slice")
    shape = draw(shapes(min_rank=1))
    count = int(d.rng.integers(1, len(shape) + 1))
    picked = [int(a) for a in d.rng.permutation(len(shape))[:count]]
    starts, ends, out_shape = [], [], list(shape)
    for a in picked:
        size = shape[a]
        first = int(d.rng.integers(0, size))
        stop = int(d.rng.integers(first + 1, size + 1))
        starts.append(first - size if d.rng.random() < 0.3 else first)  # negative starts count from the end
        ends.append(stop + 5 if stop == size and d.rng.random() < 0.3 else stop)  # an end past the size clamps
        out_shape[a] = stop - first
    (x,) = d.operands({"x": d.uniform(shape, -2.0, 2.0)})
    give_axes = bool(d.rng.random() < 0.7) or picked != list(range(count))
    attrs = dict(starts=starts, ends=ends, axes=picked if give_axes else None)
    d.notes.append(str(attrs))
    return d.finish(d.g.op("slice", x, **attrs, name=OP_NODE), tuple(out_shape))


@st.composite
def layer_norm(draw) -> Sample:
    d = Draft(draw, "layer_norm")
    shape = draw(shapes(min_rank=1))
    features = shape[-1]
    x_value = d.uniform(shape, -2.0, 2.0)
    if features > 1:  # a row whose values nearly agree has a variance near 0: keep them spread
        x_value = x_value + np.arange(features) * 0.5
    x, scale, bias = d.operands({"x": x_value, "scale": d.uniform((features,), 0.5, 1.5),
                                 "bias": d.uniform((features,), -1.0, 1.0)}, symbolic_ok=False)
    eps = float(draw(st.sampled_from([1e-5, 1e-3, 0.5])))
    d.notes.append(f"eps={eps}")
    return d.finish(d.g.op("layer_norm", x, scale, bias, eps=eps, name=OP_NODE), shape)


@st.composite
def conv2d(draw) -> Sample:
    d = Draft(draw, "conv2d")
    groups = int(d.rng.choice([1, 1, 2, 3]))
    channels, out_channels = groups * int(d.rng.integers(1, 3)), groups * int(d.rng.integers(1, 3))
    size = (int(d.rng.integers(1, 4)), int(d.rng.integers(1, 4)))
    stride, dilation = [int(v) for v in d.rng.integers(1, 3, size=2)], int(d.rng.integers(1, 3))
    padding = int(d.rng.integers(0, 2))
    height, width = [int(d.rng.integers(max(1, (k - 1) * dilation + 1 - 2 * padding), 7)) for k in size]
    x, w = d.operands({"x": d.uniform((int(d.rng.integers(1, 3)), channels, height, width), -1.0, 1.0),
                       "w": d.uniform((out_channels, channels // groups) + size, -1.0, 1.0)}, symbolic_ok=False)
    attrs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    d.notes.append(str(attrs))
    out = d.g.op("conv2d", x, w, **attrs, name=OP_NODE)
    return d.finish(out, tuple(out.shape))


@st.composite
def pool(draw, op: str) -> Sample:
    """Windows of distinct values (no tie within a finite-difference step), padding at most half
    the window (so no window is all padding)."""
    d = Draft(draw, op)
    size = [int(v) for v in d.rng.integers(1, 4, size=2)]
    stride = None if d.rng.random() < 0.4 else [int(v) for v in d.rng.integers(1, 3, size=2)]
    padding = int(d.rng.integers(0, min(size) // 2 + 1))
    shape = (int(d.rng.integers(1, 3)), int(d.rng.integers(1, 3)),
             int(d.rng.integers(size[0], 7)), int(d.rng.integers(size[1], 7)))
    count = int(np.prod(shape))
    values = (d.rng.permutation(count) * 0.1 - count * 0.05).reshape(shape) + d.uniform(shape, -0.02, 0.02)
    (x,) = d.operands({"x": values}, symbolic_ok=False)
    attrs = dict(kernel_size=size, stride=stride, padding=padding)
    d.notes.append(str(attrs))
    out = d.g.op(op, x, **attrs, name=OP_NODE)
    return d.finish(out, tuple(out.shape))


@st.composite
def concat(draw) -> Sample:
    """One to four operands of one rank, sizes differing along a random axis; sometimes one
    parameter twice (its gradient is the sum of its two stretches)."""
    d = Draft(draw, "concat")
    shape = draw(shapes(min_rank=1))
    axis = int(d.rng.integers(-len(shape), len(shape)))
    if d.shared():
        w = d.operand("w", d.uniform(shape, -2.0, 2.0), "param")
        d.notes.append(f"concat(w, w), axis={axis}")
        out_shape = list(shape)
        out_shape[axis] *= 2
        return d.finish(d.g.op("concat", w, w, axis=axis, name=OP_NODE), tuple(out_shape))
    values = {}
    for k in range(int(d.rng.integers(1, 5))):
        part = list(shape)
        part[axis] = int(d.rng.integers(1, 4))
        values[f"x{k}"] = d.uniform(tuple(part), -2.0, 2.0)
    operands = d.operands(values, symbolic_ok=False)
    d.notes.append(f"axis={axis}")
    out_shape = np.concatenate(list(values.values()), axis=axis).shape
    return d.finish(d.g.op("concat", *operands, axis=axis, name=OP_NODE), out_shape)


@st.composite
def dropout(draw) -> Sample:
    """Mostly a training step (a Noise: the same mask at every finite-difference point), some
    without one (the identity); rates from none dropped to nearly all."""
    from runtime import Noise

    d = Draft(draw, "dropout")
    shape = draw(shapes())
    rate = float(draw(st.sampled_from([0.0, 0.2, 0.5, 0.9])))
    (x,) = d.operands({"x": d.uniform(shape, -2.0, 2.0)})
    sample = d.finish(d.g.op("dropout", x, rate=rate, name=OP_NODE), shape)
    if d.rng.random() < 0.75:
        sample.noise = Noise(int(d.rng.integers(0, 2**31)), int(d.rng.integers(1, 10**6)))
    sample.notes.append(f"rate={rate}, {sample.noise or 'not training'}")
    return sample


@st.composite
def accuracy(draw) -> Sample:
    """accuracy has no gradient: it is added to a cross-entropy loss of the same scores, whose
    gradient alone reaches them. Scores on a 0.1 grid: no argmax flips within a finite-difference step."""
    d = Draft(draw, "accuracy")
    shape = draw(shapes(min_rank=1))
    count = int(np.prod(shape))
    z = d.operand("z", (d.rng.permutation(count) * 0.1 - count * 0.05 + 0.025).reshape(shape), "param")
    if d.rng.random() < 0.3:  # binary: scores against a threshold (on the grid's half-steps: no flips)
        threshold = float(d.rng.choice([0.0, 0.5]))
        targets = d.operand("targets", (d.rng.random(shape) < 0.5).astype(np.float64),
                            str(d.rng.choice(["input", "const"])))
        out = d.g.op("accuracy", z, targets, threshold=threshold, name=OP_NODE)
        d.notes.append(f"threshold={threshold}")
        d.g.output("out", out)
        d.g.loss(d.g.add(d.g.bce_with_logits(z, targets, reduction="sum", name="L"), out, name="L_plus"))
        return Sample("accuracy", d.g.build(), d.inputs, d.params, "params", d.notes)
    labels_value = d.rng.integers(0, shape[-1], size=shape[:-1])
    if d.rng.random() < 0.5:
        labels = d.operand("labels", labels_value, str(d.rng.choice(["input", "const"])))
    else:  # one-hot rows: their argmax is the label
        labels = d.operand("labels", np.eye(shape[-1])[labels_value], str(d.rng.choice(["input", "const"])))
    out = d.g.op("accuracy", z, labels, name=OP_NODE)
    d.g.output("out", out)
    d.g.loss(d.g.add(d.g.softmax_cross_entropy(z, labels, reduction="sum", name="L"), out, name="L_plus"))
    return Sample("accuracy", d.g.build(), d.inputs, d.params, "params", d.notes)


# -- the table ---------------------------------------------------------------------------------------

SAMPLES: dict[str, st.SearchStrategy[Sample]] = {
    **{op: binary(op) for op in ("add", "sub", "mul", "div")},
    **{op: unary(op) for op in UNARY_DOMAINS},
    "pow": power(),
    "matmul": matmul(),
    **{op: reduction(op) for op in ("sum", "mean")},
    "reshape": reshape(),
    "transpose": transpose(),
    **{op: softmax(op) for op in ("softmax", "log_softmax")},
    "constant": constant(),
    **{op: pairwise_loss(op) for op in ("mse", "bce", "bce_with_logits")},
    "softmax_cross_entropy": softmax_cross_entropy(),
    "leaky_relu": leaky_relu(),
    **{op: extremum(op) for op in ("maximum", "minimum")},
    "where": where(),
    "clip": clip(),
    **{op: extremum_reduction(op) for op in ("max", "min")},
    "argmax": argmax(),
    "one_hot": one_hot(),
    "flatten": flatten(),
    "squeeze": squeeze(),
    "unsqueeze": unsqueeze(),
    "broadcast_to": broadcast_to(),
    "gather": gather(),
    "slice": slice_(),
    "layer_norm": layer_norm(),
    "conv2d": conv2d(),
    **{op: pool(op) for op in ("max_pool2d", "avg_pool2d")},
    "concat": concat(),
    "dropout": dropout(),
    "accuracy": accuracy(),
}


def to_float32(sample: Sample) -> Sample:
    """The same sample with every float tensor (declarations, constants, values) float32."""
    from runtime.gradcheck import cast_graph

    def cast(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in values.items()}

    return Sample(sample.op, cast_graph(sample.graph, "float32"), cast(sample.inputs), cast(sample.params),
                  sample.wrt, sample.notes + ["float32"], sample.noise)
