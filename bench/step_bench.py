#!/usr/bin/env python3
"""One training step of the issue-#7 workloads and the digits CNN: chainrule vs hand numpy vs PyTorch.

    python bench/step_bench.py --json step_bench.json
    python bench/step_bench.py --quick --workloads W1_b1 --impls chainrule,hand   # smoke run

One step = forward pass, the loss as a Python float, gradients of every parameter and a
plain SGD update of every parameter, on one fixed batch (workloads W1-W4 in
``../shared/workloads.md``; W5_cnn is examples/digits_cnn.py's network, float32, batch 64,
on random 8x8 images, issue #16). Implementations:

* ``chainrule``: the workload as a graphspec graph (GraphBuilder; W5: the example's own
  ``cnn()``, built with the Layers helpers) on the compiled engine,
  as ``runtime.Trainer`` runs it: ``step = runtime.CompiledStep(plan, SGD(lr))`` and
  ``program = step.program(inputs)`` once, the (fixed) batch written into
  ``program.inputs`` once (the Trainer gathers each batch there), then
  ``step.run(program)`` per step: forward, backward, SGD update (without the Trainer's
  finiteness checks).
* ``interp``: the reference interpreter, ``run = plan.forward(inputs, params); run.loss;
  run.backward(); SGD.step(params, grads)``.
* ``hand``: hand-written numpy, preallocated buffers, ``out=`` everywhere, fused loss
  gradients (adapted from the anchor harness ``../shared/bench/anchor_bench.py``).
* ``torch``: PyTorch eager on CPU (only when ``import torch`` works: the ``bench`` extra).

Method (as the anchor harness): every (implementation, workload) cell runs in its own
persistent subprocess; all start from identical parameters and data. Before timing, each
implementation's loss and gradients at the initial parameters are compared with ``hand``'s
(np.allclose; float64 rtol 1e-9, float32 rtol 1e-4, atol relative to the largest gradient);
a mismatch aborts the run (exit status 1). Timing is interleaved: R rounds, in each round
every implementation (order rotated) resets its parameters, warms up and runs blocks of k
steps; reported are the median of the per-round medians (us/step) and the medians of the
per-round ratios to ``hand`` and to ``torch``; TARGETS bounds chainrule's ratio to one of
them (issue #7's to hand numpy, W5's to PyTorch eager). Peak memory per step is measured in a separate fresh process
with ``tracemalloc`` (numpy reports its data buffers to tracemalloc), started after the
imports: the peak of traced bytes during one step (after two warm-up steps), including
everything the implementation keeps alive (data, parameters, buffers, the plan), plus the
transient part (peak minus the bytes alive before the step).
``compile_ms`` is ``runtime.compile(graph)`` of an already validated graph plus building the
``CompiledStep`` and lowering its tape for the batch's shapes (median of 20; the first call
is reported separately; loading the parameters is ``load_params_ms``).
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOADS = {
    "W1_b1": dict(sizes=[2, 1], act=None, loss="bce", batch=1, dtype="float64", lr=0.1, init="small"),
    "W1_b4096": dict(sizes=[2, 1], act=None, loss="bce", batch=4096, dtype="float64", lr=0.1, init="small"),
    "W2_mlp": dict(sizes=[784, 256, 256, 10], act="relu", loss="softmax_ce", batch=128, dtype="float32",
                   lr=0.01, init="he"),
    "W3_deep": dict(sizes=[32] * 65, act="tanh", loss="mse", batch=16, dtype="float32", lr=0.01, init="xavier"),
    "W4_wide": dict(sizes=[1024, 2048, 2048, 1024], act="relu", loss="mse", batch=512, dtype="float32",
                    lr=0.01, init="he"),
    # examples/digits_cnn.py's network (issue #16): conv 3x3 (1 -> 16, pad 1), relu, max pool 2,
    # conv 3x3 (16 -> 32, pad 1), relu, max pool 2, flatten, linear 128 -> 64, relu, linear 64 -> 10,
    # softmax cross-entropy on int64 labels; 8x8 images in [0, 1)
    "W5_cnn": dict(kind="cnn", channels=[1, 16, 32], image=8, sizes=[128, 64, 10], loss="softmax_ce", batch=64,
                   dtype="float32", lr=0.01, init="he"),
}
WORKLOAD_ORDER = list(WORKLOADS)
# "controls": the compiled step as runtime.Trainer drives it with a cosine schedule (after a warmup)
# and clipping by global norm on (issue #17: they must cost a few scalar operations and one pass
# over the gradients, no more); compare its time with "chainrule"'s in the same run
IMPLS = ["chainrule", "controls", "interp", "hand", "torch"]
TARGET_S = {"default": 1.5, "W4_wide": 3.0}  # seconds of timed stepping per cell, summed over rounds
QUICK_TARGET_S = {"default": 0.2, "W4_wide": 0.8}
# chainrule's compiled step / the reference's, at most: issue #7's against hand numpy, issue #16's W5
# against PyTorch eager
TARGETS = {"W1_b1": (1.3, "hand"), "W1_b4096": (1.1, "hand"), "W2_mlp": (1.05, "hand"), "W3_deep": (0.9, "hand"),
           "W4_wide": (1.05, "hand"), "W5_cnn": (1.3, "torch")}
EXAMPLE_CNN = os.path.join(ROOT, "examples", "digits_cnn.py")


def param_names(spec):
    """The graph's parameter names, in the order of make_data's arrays."""
    if spec.get("kind") == "cnn":  # the Layers helpers' names in examples/digits_cnn.py
        convs = [f"conv2d_{i + 1}.{k}" for i in range(len(spec["channels"]) - 1) for k in ("weight", "bias")]
        return convs + [f"mlp_1.{i}.{k}" for i in range(len(spec["sizes"]) - 1) for k in ("weight", "bias")]
    return [f"{k}{i}" for i in range(len(spec["sizes"]) - 1) for k in ("W", "b")]


def input_names(spec):
    """The graph's names for the batch's inputs and targets."""
    return ("x", "label") if spec.get("kind") == "cnn" else ("x", "y")


def make_data(spec, seed=1234):
    """Parameters [W0, b0, W1, b1, ...] (W: (in, out)), inputs x, targets y (as the anchor); for the
    CNN first each convolution's (out, in, 3, 3) weights and (out, 1, 1) bias, x NCHW images."""
    import numpy as np
    rng = np.random.default_rng(seed)
    dt = np.dtype(spec["dtype"])
    s, B = spec["sizes"], spec["batch"]
    params = []
    if spec.get("kind") == "cnn":
        ch, side = spec["channels"], spec["image"]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            params.append((rng.standard_normal((c_out, c_in, 3, 3)) * math.sqrt(2.0 / (9 * c_in))).astype(dt))
            params.append((rng.standard_normal((c_out, 1, 1)) * 0.01).astype(dt))
        for fan_in, fan_out in zip(s[:-1], s[1:]):
            params.append((rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)).astype(dt))
            params.append((rng.standard_normal(fan_out) * 0.01).astype(dt))
        x = rng.random((B, ch[0], side, side)).astype(dt)
        y = rng.integers(0, s[-1], size=B).astype(np.int64)
        return params, x, y
    for fan_in, fan_out in zip(s[:-1], s[1:]):
        scale = {"he": math.sqrt(2.0 / fan_in), "xavier": 1.0 / math.sqrt(fan_in)}.get(spec["init"], 0.5)
        params.append((rng.standard_normal((fan_in, fan_out)) * scale).astype(dt))
        params.append((rng.standard_normal(fan_out) * 0.01).astype(dt))
    x = rng.standard_normal((B, s[0])).astype(dt)
    if spec["loss"] == "bce":
        y = rng.integers(0, 2, size=(B, 1)).astype(dt)
    elif spec["loss"] == "softmax_ce":
        y = rng.integers(0, s[-1], size=B).astype(np.int64)
    else:
        y = rng.standard_normal((B, s[-1])).astype(dt)
    return params, x, y


# ----------------------------------------------------------------------------- chainrule
def build_graph(spec):
    """The workload as a validated graphspec graph: parameters W0, b0, W1, b1, ...; inputs x, y
    (the CNN: the example's own graph, whose parameters must be make_data's)."""
    if spec.get("kind") == "cnn":
        return example_cnn_graph(spec)
    from graphspec.builder import GraphBuilder
    s, dt = spec["sizes"], spec["dtype"]
    g = GraphBuilder("bench", dtype=dt)
    h = g.input("x", ["N", s[0]])
    if spec["loss"] == "softmax_ce":
        y = g.input("y", ["N"], dtype="int64")
    else:
        y = g.input("y", ["N", s[-1]])
    L = len(s) - 1
    for i in range(L):
        # glorot, not zeros: reporting_overhead.py trains this graph from its own initial values
        # (step_bench loads make_data's), and zero weights would leave every hidden gradient 0
        w = g.param(f"W{i}", [s[i], s[i + 1]], init="glorot")
        b = g.param(f"b{i}", [s[i + 1]], init="zeros")
        h = h @ w + b
        if i < L - 1:
            h = h.relu() if spec["act"] == "relu" else h.tanh()
    if spec["loss"] == "bce":  # the seed graph's form: sigmoid, then BCE on probabilities
        a = h.sigmoid(name="a")
        g.output("a", a)
        g.loss(g.bce(a, y, name="L"))
    elif spec["loss"] == "softmax_ce":
        g.loss(g.softmax_cross_entropy(h, y, name="L"))
    else:
        g.loss(g.mse(h, y, name="L"))
    return g.build()


@functools.lru_cache(maxsize=None)
def example_module():
    """examples/digits_cnn.py, imported from its file (examples/ is not a package)."""
    import importlib.util
    module_spec = importlib.util.spec_from_file_location("digits_cnn_example", EXAMPLE_CNN)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def example_cnn_graph(spec):
    """examples/digits_cnn.py's ``cnn()``, checked against the workload's parameter shapes."""
    graph = example_module().cnn()
    params, x, _ = make_data(spec)
    got = {name: (tuple(p.shape), p.dtype) for name, p in graph.parameters.items()}
    want = {name: (p.shape, spec["dtype"]) for name, p in zip(param_names(spec), params)}
    x_spec = graph.inputs["x"]
    if got != want or x_spec.dtype != spec["dtype"] or tuple(x_spec.shape[1:]) != x.shape[1:]:
        raise RuntimeError(f"{EXAMPLE_CNN} no longer builds W5_cnn's network: parameters {got}, x {x_spec}; the "
                           f"benchmark has {want}, x {x.shape} {spec['dtype']}: update WORKLOADS['W5_cnn'] and its "
                           "hand and torch versions")
    return graph


def build_chainrule(spec, params, x, y):
    """The compiled engine, exactly as runtime.Trainer drives it for one batch."""
    import numpy as np
    import runtime
    graph = build_graph(spec)
    step = runtime.CompiledStep(runtime.compile(graph), runtime.SGD(lr=spec["lr"]))
    names = param_names(spec)
    step.load_params(dict(zip(names, params)))
    inputs = dict(zip(input_names(spec), (x, y)))
    # The Trainer gathers each batch straight into the tape's input buffers and calls run();
    # the batch here is fixed, so it is written once (hand numpy reads x and y in place too; its
    # CNN copies x into its padded layout every step, as the compiled step pads it every step).
    program = step.program(inputs)
    for name, buffer in program.inputs.items():
        np.copyto(buffer, inputs[name])

    def grads():
        loss, g = step.gradients(inputs)
        return loss, [g[n] for n in names]

    def reset():
        for n, p0 in zip(names, params):
            step.params[n][...] = p0
    def run():
        return step.run(program)
    run.engine, run.program = step, program  # what build_controls drives itself
    return run, grads, reset


def build_controls(spec, params, x, y):
    """build_chainrule's step with a learning-rate schedule and gradient clipping, as runtime.Trainer
    applies them each update: the scheduled rate set, the step run, the gradients clipped in place
    (a bound that always bites: the costlier path), then the update."""
    import runtime
    from runtime.clipping import clip
    from runtime.schedules import Schedule

    step_fn, grads, reset = build_chainrule(spec, params, x, y)
    engine = step_fn.engine
    schedule, base, count = Schedule("cosine", warmup_steps=100), spec["lr"], [0]

    def step():
        count[0] += 1
        engine.optimizer.lr = schedule.rate(base, count[0] % 10_000 + 1, 10_000)
        loss = engine.run(step_fn.program, update=False, fold=engine.folds(step_fn.program, True))
        clip(engine.gradient_arenas(), clip_norm=1e-3, scale=engine.grad_scale)
        engine.update()
        return loss
    assert isinstance(engine, runtime.CompiledStep)
    return step, grads, reset


def build_interp(spec, params, x, y):
    """The reference interpreter: Plan.forward / Run.backward / SGD.step."""
    import numpy as np
    import runtime
    graph = build_graph(spec)
    plan = runtime.compile(graph)
    opt = runtime.SGD(lr=spec["lr"])
    names = param_names(spec)
    P = {n: np.array(p, copy=True, order="C") for n, p in zip(names, params)}
    inputs = dict(zip(input_names(spec), (x, y)))

    def step():
        run = plan.forward(inputs, P)
        loss = run.loss
        opt.step(P, run.backward())
        return loss

    def grads():
        run = plan.forward(inputs, P)
        g = run.backward()
        return run.loss, [g[n] for n in names]

    def reset():
        for n, p0 in zip(names, params):
            P[n][...] = p0
    return step, grads, reset


def compile_times(spec, params, x, y, n=20):
    """Compiling the validated graph for training: ``runtime.compile``, the ``CompiledStep``
    and lowering the tape for the batch's shapes — everything before step 1 except loading
    the parameters (a copy into the engine's arena plus a finiteness check, proportional to
    their size like the hand-written version's own copy), which is timed separately."""
    import runtime
    graph = build_graph(spec)
    names = param_names(spec)
    named = dict(zip(names, params))
    inputs = dict(zip(input_names(spec), (x, y)))

    def compile_once():
        t0 = time.perf_counter()
        step = runtime.CompiledStep(runtime.compile(graph), runtime.SGD(lr=spec["lr"]))
        t1 = time.perf_counter()
        step.load_params(named)
        t2 = time.perf_counter()
        step.program(inputs)
        t3 = time.perf_counter()
        return (t1 - t0) + (t3 - t2), t2 - t1

    first, _ = compile_once()
    runs = [compile_once() for _ in range(n)]
    return {"compile_first_ms": first * 1e3, "compile_ms": _median([c for c, _ in runs]) * 1e3,
            "load_params_ms": _median([p for _, p in runs]) * 1e3}


# ----------------------------------------------------------------------------- hand numpy
def build_hand(spec, params, x, y):
    """Fused forward + backward, in place, preallocated; lr folded into the top gradient."""
    if spec.get("kind") == "cnn":
        return build_hand_cnn(spec, params, x, y)
    import numpy as np
    dt = np.dtype(spec["dtype"])
    s, B, lr = spec["sizes"], spec["batch"], spec["lr"]
    L = len(s) - 1
    W = [p.copy() for p in params[0::2]]
    b = [p.copy() for p in params[1::2]]
    acts = [x] + [np.empty((B, n), dt) for n in s[1:]]  # acts[i+1] = output of layer i
    d = [np.empty((B, n), dt) for n in s[1:]]  # d[i] = lr * dL/dz_i
    dW = [np.empty_like(w) for w in W]
    db = [np.empty_like(v) for v in b]
    hidden_tmp = [np.empty((B, n), dt) for n in s[1:-1]]
    hidden_mask = [np.empty((B, n), bool) for n in s[1:-1]]
    act, loss_kind = spec["act"], spec["loss"]
    out, dout = acts[L], d[L - 1]
    t1 = np.empty((B, s[-1]), dt)
    t2 = np.empty((B, s[-1]), dt)
    colB = np.empty((B, 1), dt)
    colB2 = np.empty((B, 1), dt)
    ar = np.arange(B)
    N = B * s[-1]
    matmul, add, subtract, multiply = np.matmul, np.add, np.subtract, np.multiply
    state = {"update": True}

    def step():
        for i in range(L):
            z = acts[i + 1]
            matmul(acts[i], W[i], out=z)
            add(z, b[i], out=z)
            if i < L - 1:
                if act == "relu":
                    np.maximum(z, 0, out=z)
                else:
                    np.tanh(z, out=z)
        if loss_kind == "bce":  # a = sigmoid(z); loss = mean(softplus(z) - y*z); dL/dz = (a-y)/B
            np.negative(out, out=t1)
            np.exp(t1, out=t1)
            add(t1, 1.0, out=t1)
            np.reciprocal(t1, out=t1)
            np.logaddexp(0.0, out, out=t2)
            multiply(y, out, out=dout)
            subtract(t2, dout, out=t2)
            loss = float(t2.sum()) / B
            subtract(t1, y, out=dout)
            multiply(dout, lr / B, out=dout)
        elif loss_kind == "softmax_ce":
            np.max(out, axis=1, keepdims=True, out=colB)
            subtract(out, colB, out=t1)
            np.exp(t1, out=dout)
            np.sum(dout, axis=1, keepdims=True, out=colB)
            picked = t1[ar, y]
            np.log(colB, out=colB2)
            loss = (float(colB2.sum()) - float(picked.sum())) / B
            np.divide(dout, colB, out=dout)
            dout[ar, y] -= 1.0
            multiply(dout, lr / B, out=dout)
        else:  # mse
            subtract(out, y, out=dout)
            loss = float(np.vdot(dout, dout)) / N
            multiply(dout, 2.0 * lr / N, out=dout)
        upd = state["update"]
        for i in range(L - 1, -1, -1):
            di = d[i]
            matmul(acts[i].T, di, out=dW[i])
            np.sum(di, axis=0, out=db[i])
            if i > 0:
                dp = d[i - 1]
                matmul(di, W[i].T, out=dp)
                a = acts[i]
                if act == "relu":
                    np.greater(a, 0, out=hidden_mask[i - 1])
                    multiply(dp, hidden_mask[i - 1], out=dp)
                else:
                    tmp = hidden_tmp[i - 1]
                    multiply(a, a, out=tmp)
                    subtract(1.0, tmp, out=tmp)
                    multiply(dp, tmp, out=dp)
            if upd:
                subtract(W[i], dW[i], out=W[i])
                subtract(b[i], db[i], out=b[i])
        return loss

    def grads():
        state["update"] = False
        try:
            loss = step()
        finally:
            state["update"] = True
        g = []
        for w_, v_ in zip(dW, db):
            g += [w_ / dt.type(lr), v_ / dt.type(lr)]
        return loss, g

    def reset():
        for i in range(L):
            W[i][...] = params[2 * i]
            b[i][...] = params[2 * i + 1]
    return step, grads, reset


def build_hand_cnn(spec, params, x, y):
    """The CNN in numpy as fast as we could reasonably write it. Activations are kept
    channels-first, batch-last, (C, H, W, N): im2col is then one copy whose innermost runs are
    whole rows of images (W x N contiguous values), every convolution and its two gradients are
    one matrix product each, and the flatten before the linear layers is free. 2x2 max pooling is
    three elementwise maxima of strided views, written straight into the next convolution's padded
    input; its gradient goes to each window's maximum (a zero maximum, all of the window cut by
    the ReLU, passes nothing). The gradient's fold is nine strided adds. Forward and backward fused,
    buffers preallocated, out= everywhere, lr folded into the top gradient, no input gradient."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view
    dt = np.dtype(spec["dtype"])
    B, lr = spec["batch"], spec["lr"]
    (C0, C1, C2), S1 = spec["channels"], spec["image"]
    S2, S3 = S1 // 2, S1 // 4
    F3, F4 = spec["sizes"][1:]
    P = [p.copy() for p in params]
    G = [np.empty_like(p) for p in P]
    K1, c1, K2, c2, W3, b3, W4, b4 = P
    dK1, dc1, dK2, dc2, dW3, db3, dW4, db4 = G
    matmul, add, multiply, maximum = np.matmul, np.add, np.multiply, np.maximum

    def conv_buffers(c_in, c_out, side):
        """Padded input, its im2col matrix and the window view it is copied from, the output."""
        padded = np.zeros((c_in, side + 2, side + 2, B), dt)
        cols = np.empty((c_in, 3, 3, side, side, B), dt)
        windows = sliding_window_view(padded, (3, 3), axis=(1, 2)).transpose(0, 4, 5, 1, 2, 3)
        out = np.empty((c_out, side, side, B), dt)
        return padded, cols, windows, cols.reshape(c_in * 9, side * side * B), out, out.reshape(c_out, -1)

    xp1, cols1, win1, cols1_m, z1, z1_m = conv_buffers(C0, C1, S1)
    xp2, cols2, win2, cols2_m, z2, z2_m = conv_buffers(C1, C2, S2)
    x_t, xp1_in = x.transpose(1, 2, 3, 0), xp1[:, 1:-1, 1:-1]
    p1 = xp2[:, 1:-1, 1:-1]                        # pool 1 writes conv 2's padded input
    p2 = np.empty((C2, S3, S3, B), dt)
    h = p2.reshape(C2 * S3 * S3, B)               # the flatten: (c, h, w) order, as NCHW's
    a1v, a2v = z1.reshape(C1, S2, 2, S2, 2, B), z2.reshape(C2, S3, 2, S3, 2, B)
    K1_m, dK1_m, K2_m, dK2_m = K1.reshape(C1, -1), dK1.reshape(C1, -1), K2.reshape(C2, -1), dK2.reshape(C2, -1)
    c1_col, c2_col, dc1_v, dc2_v = c1.reshape(C1, 1), c2.reshape(C2, 1), dc1.reshape(C1), dc2.reshape(C2)
    z3, d3, m3 = np.empty((F3, B), dt), np.empty((F3, B), dt), np.empty((F3, B), bool)
    z4, t4, e4, d4 = (np.empty((F4, B), dt) for _ in range(4))
    row, row2 = np.empty((1, B), dt), np.empty((1, B), dt)
    dh = np.empty((C2 * S3 * S3, B), dt)
    dp2, mp2 = dh.reshape(C2, S3, S3, B), np.empty((C2, S3, S3, B), bool)
    dz2, m2 = np.empty_like(z2), np.empty(a2v.shape, bool)
    dcols2 = np.empty_like(cols2)
    dxp2 = np.empty_like(xp2)
    dp1, mp1 = dxp2[:, 1:-1, 1:-1], np.empty((C1, S2, S2, B), bool)
    dz1, m1 = np.empty_like(z1), np.empty(a1v.shape, bool)
    ar = np.arange(B)
    state = {"update": True}

    def step():
        # conv 1, relu, pool 1 (into conv 2's padded input)
        np.copyto(xp1_in, x_t)
        np.copyto(cols1, win1)
        matmul(K1_m, cols1_m, out=z1_m)
        add(z1_m, c1_col, out=z1_m)
        maximum(z1_m, 0, out=z1_m)
        maximum(a1v[:, :, 0, :, 0], a1v[:, :, 0, :, 1], out=p1)
        maximum(p1, a1v[:, :, 1, :, 0], out=p1)
        maximum(p1, a1v[:, :, 1, :, 1], out=p1)
        # conv 2, relu, pool 2
        np.copyto(cols2, win2)
        matmul(K2_m, cols2_m, out=z2_m)
        add(z2_m, c2_col, out=z2_m)
        maximum(z2_m, 0, out=z2_m)
        maximum(a2v[:, :, 0, :, 0], a2v[:, :, 0, :, 1], out=p2)
        maximum(p2, a2v[:, :, 1, :, 0], out=p2)
        maximum(p2, a2v[:, :, 1, :, 1], out=p2)
        # linear, relu, linear (transposed: features x batch)
        matmul(W3.T, h, out=z3)
        add(z3, b3[:, None], out=z3)
        maximum(z3, 0, out=z3)
        matmul(W4.T, z3, out=z4)
        add(z4, b4[:, None], out=z4)
        # softmax cross-entropy over the classes (axis 0); d4 = lr * dL/dz4
        np.max(z4, axis=0, keepdims=True, out=row)
        np.subtract(z4, row, out=t4)
        np.exp(t4, out=e4)
        np.sum(e4, axis=0, keepdims=True, out=row)
        np.log(row, out=row2)
        loss = (float(row2.sum()) - float(t4[y, ar].sum())) / B
        np.divide(e4, row, out=d4)
        d4[y, ar] -= 1.0
        multiply(d4, lr / B, out=d4)
        # backward through the linear layers
        matmul(z3, d4.T, out=dW4)
        np.sum(d4, axis=1, out=db4)
        matmul(W4, d4, out=d3)
        np.greater(z3, 0, out=m3)
        multiply(d3, m3, out=d3)
        matmul(h, d3.T, out=dW3)
        np.sum(d3, axis=1, out=db3)
        matmul(W3, d3, out=dh)
        # pool 2 and relu: to each window's maximum, nothing where the maximum is 0
        np.greater(p2, 0, out=mp2)
        multiply(dp2, mp2, out=dp2)
        np.equal(a2v, p2[:, :, None, :, None], out=m2)
        multiply(m2, dp2[:, :, None, :, None], out=dz2.reshape(a2v.shape))
        # conv 2: weight and bias gradients, then the input's (one product, then the fold)
        dz2_m = dz2.reshape(C2, -1)
        matmul(dz2_m, cols2_m.T, out=dK2_m)
        np.sum(dz2_m, axis=1, out=dc2_v)
        matmul(K2_m.T, dz2_m, out=dcols2.reshape(C1 * 9, -1))
        dxp2.fill(0.0)
        for i in range(3):
            for j in range(3):
                target = dxp2[:, i:i + S2, j:j + S2]
                add(target, dcols2[:, i, j], out=target)
        # pool 1 and relu, conv 1's weight and bias gradients
        np.greater(p1, 0, out=mp1)
        multiply(dp1, mp1, out=dp1)
        np.equal(a1v, p1[:, :, None, :, None], out=m1)
        multiply(m1, dp1[:, :, None, :, None], out=dz1.reshape(a1v.shape))
        dz1_m = dz1.reshape(C1, -1)
        matmul(dz1_m, cols1_m.T, out=dK1_m)
        np.sum(dz1_m, axis=1, out=dc1_v)
        if state["update"]:
            for p, g in zip(P, G):
                np.subtract(p, g, out=p)
        return loss

    def grads():
        state["update"] = False
        try:
            loss = step()
        finally:
            state["update"] = True
        return loss, [g / dt.type(lr) for g in G]

    def reset():
        for p, p0 in zip(P, params):
            p[...] = p0
    return step, grads, reset


# ----------------------------------------------------------------------------- torch eager
def build_torch(spec, params, x, y):
    import torch
    import torch.nn.functional as F
    L, lr = len(spec["sizes"]) - 1, spec["lr"]
    P = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    act = {"relu": torch.relu, "tanh": torch.tanh, None: None}.get(spec.get("act"))
    loss_kind = spec["loss"]

    def cnn_loss():  # the biases are (out, 1, 1) as in the graph; conv2d takes them as a view
        K1, c1, K2, c2, W3, b3, W4, b4 = P
        h = F.max_pool2d(torch.relu(F.conv2d(X, K1, c1.view(-1), padding=1)), 2)
        h = F.max_pool2d(torch.relu(F.conv2d(h, K2, c2.view(-1), padding=1)), 2)
        h = torch.relu(torch.addmm(b3, h.flatten(1), W3))
        return F.cross_entropy(torch.addmm(b4, h, W4), Y)

    def mlp_loss():
        h = X
        for i in range(L):
            h = torch.addmm(P[2 * i + 1], h, P[2 * i])
            if i < L - 1:
                h = act(h)
        if loss_kind == "bce":
            return F.binary_cross_entropy(torch.sigmoid(h), Y)
        if loss_kind == "softmax_ce":
            return F.cross_entropy(h, Y)
        return F.mse_loss(h, Y)

    loss_fn = cnn_loss if spec.get("kind") == "cnn" else mlp_loss

    def step():
        loss = loss_fn()
        gs = torch.autograd.grad(loss, P)
        with torch.no_grad():
            for p, g in zip(P, gs):
                p.add_(g, alpha=-lr)
        return loss.item()

    def grads():
        loss = loss_fn()
        gs = torch.autograd.grad(loss, P)
        return loss.item(), [g.numpy().copy() for g in gs]

    def reset():
        with torch.no_grad():
            for p, p0 in zip(P, params):
                p.copy_(torch.from_numpy(p0))
    return step, grads, reset


BUILDERS = {"chainrule": build_chainrule, "controls": build_controls, "interp": build_interp, "hand": build_hand,
            "torch": build_torch}


# ----------------------------------------------------------------------------- timing
def _median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def time_round(step, target_s, min_blocks=3, block_s=0.005, warm_s=0.05):
    """Short warm-up, then blocks of k steps; the per-step time (s) of every block."""
    n, t0 = 0, time.perf_counter()
    while n < 2 or (time.perf_counter() - t0 < warm_s and n < 5000):
        step()
        n += 1
    est = (time.perf_counter() - t0) / n
    k = max(1, int(block_s / est))
    nblocks = int(min(2000, max(min_blocks, target_s / (k * est))))
    gc.collect()
    per_step = []
    pc = time.perf_counter
    for _ in range(nblocks):
        t0 = pc()
        for _ in range(k):
            step()
        per_step.append((pc() - t0) / k)
    return per_step, k


# ----------------------------------------------------------------------------- workers
def run_step_worker(impl, wl, checkdir):
    """Persistent worker: JSON commands on stdin, JSON replies on a private copy of stdout."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import numpy as np
    spec = WORKLOADS[wl]
    params, x, y = make_data(spec)
    step = reset = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "setup":
            try:
                t0 = time.perf_counter()
                step, grads, reset = BUILDERS[impl](spec, params, x, y)
                reply = {"setup_ms": (time.perf_counter() - t0) * 1e3}
                loss, g = grads()
                np.savez(os.path.join(checkdir, f"{impl}__{wl}.npz"), *g)
                reply["grad_loss"] = float(loss)
                t0 = time.perf_counter()
                reply["first_step_loss"] = step()
                reply["first_step_ms"] = (time.perf_counter() - t0) * 1e3
                reset()
                if impl == "chainrule":
                    reply.update(compile_times(spec, params, x, y))
            except Exception as e:  # noqa: BLE001 - reported to the orchestrator
                import traceback
                reply = {"error": repr(e), "traceback": traceback.format_exc()}
        elif cmd["cmd"] == "time":
            reset()
            t0 = time.perf_counter()
            per_step, k = time_round(step, cmd["target_s"])
            reply = {"per_step_s": per_step, "k": k, "last_loss": step(),
                     "wall_s": time.perf_counter() - t0}
        else:
            break
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


def run_mem_worker(impl, wl, out_path):
    """Peak traced memory of one step, in a fresh process traced from the start."""
    import tracemalloc

    import numpy  # noqa: F401 - imports happen before tracing: module objects are not the step's memory
    spec = WORKLOADS[wl]
    if impl in ("chainrule", "controls", "interp"):
        import graphspec.builder  # noqa: F401
        import runtime  # noqa: F401
        if spec.get("kind") == "cnn":
            example_module()
    tracemalloc.start()
    params, x, y = make_data(spec)
    step, _, _ = BUILDERS[impl](spec, params, x, y)
    step()
    step()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    with open(out_path, "w") as f:
        json.dump({"peak_bytes": peak, "alive_before_bytes": before, "transient_bytes": peak - before}, f)


class Worker:
    def __init__(self, impl, wl, checkdir):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--workloads", wl,
               "--checkdir", checkdir]
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.impl = impl
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)

    def ask(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.impl} died (rc={self.p.poll()})")
        return json.loads(line)

    def close(self):
        try:
            self.p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.p.stdin.flush()
            self.p.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.p.kill()
            self.p.wait()


def check_grads(checkdir, impl, wl, losses):
    """Compare impl's loss and gradients at the initial parameters with hand's."""
    import numpy as np
    spec = WORKLOADS[wl]
    n = len(param_names(spec))
    ref = np.load(os.path.join(checkdir, f"hand__{wl}.npz"))
    got = np.load(os.path.join(checkdir, f"{impl}__{wl}.npz"))
    if len(ref.files) != n or len(got.files) != n:
        return {"ok": False, "reason": f"{len(got.files)} gradients, hand {len(ref.files)}, parameters {n}"}
    f64 = spec["dtype"] == "float64"
    rtol = 1e-9 if f64 else 1e-4
    worst, ok = 0.0, True
    for i in range(n):
        r, g = ref[f"arr_{i}"].astype(np.float64), got[f"arr_{i}"].astype(np.float64)
        if r.shape != g.shape:
            return {"ok": False, "reason": f"param {i}: shape {g.shape} vs hand {r.shape}"}
        scale = float(np.abs(r).max()) or 1.0
        atol = scale * (1e-10 if f64 else 1e-5)
        ok &= bool(np.allclose(g, r, rtol=rtol, atol=atol))
        worst = max(worst, float(np.abs(g - r).max()) / scale)
    loss_ok = math.isclose(losses[impl], losses["hand"], rel_tol=rtol, abs_tol=1e-12)
    return {"ok": ok and loss_ok, "max_abs_err_over_max_grad": worst, "rtol": rtol,
            "loss": losses[impl], "hand_loss": losses["hand"], "loss_ok": loss_ok}


def machine_info():
    import importlib.metadata as md
    info = {"python": platform.python_version(), "platform": platform.platform(), "nproc": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for p in ("numpy", "torch"):
        try:
            info[p] = md.version(p)
        except Exception:  # noqa: BLE001
            info[p] = None
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default=",".join(WORKLOAD_ORDER))
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 7, quick 2)")
    ap.add_argument("--w4-rounds", type=int, default=None, help="rounds for W4_wide (default: min(rounds, 3))")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 short rounds, W4_wide skipped")
    ap.add_argument("--gap-s", type=float, default=0.1, help="idle gap between cells")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mem-out", help=argparse.SUPPRESS)
    ap.add_argument("--checkdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        if a.mem_out:
            run_mem_worker(a.worker, a.workloads, a.mem_out)
        else:
            run_step_worker(a.worker, a.workloads, a.checkdir)
        return 0

    workloads = [w for w in a.workloads.split(",") if w]
    impls = [i for i in a.impls.split(",") if i]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    for i in impls:
        if i not in IMPLS:
            ap.error(f"unknown implementation {i!r}; known: {', '.join(IMPLS)}")
    if "hand" not in impls:
        impls.insert(0, "hand")  # the reference for the gradient check and the ratios
    if a.quick:
        workloads = [w for w in workloads if w != "W4_wide"]
    if "torch" in impls:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch is not installed (the 'bench' extra): skipping it", file=sys.stderr)
            impls.remove("torch")
    rounds = a.rounds or (2 if a.quick else 7)
    targets = QUICK_TARGET_S if a.quick else TARGET_S
    t_start = time.time()
    report = {"machine": machine_info(), "quick": a.quick, "rounds": rounds, "impls": impls,
              "workloads": {w: WORKLOADS[w] for w in workloads}, "targets": TARGETS,
              "memory_method": "tracemalloc, started after imports in a fresh process: peak traced bytes during "
                               "one step (after 2 warm-up steps), data/params/buffers/plan included; "
                               "transient = peak - bytes alive before the step",
              "setup": {}, "grad_check": {}, "memory": {}, "results": {}}
    failed = False
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="step_bench_") as tmp:
        workers = {}
        for wl in workloads:
            losses = {}
            for impl in impls:
                print(f"== setup {impl} {wl}", file=sys.stderr, flush=True)
                w = Worker(impl, wl, tmp)
                info = w.ask(cmd="setup")
                report["setup"].setdefault(wl, {})[impl] = info
                if "error" in info:
                    print(info.get("traceback", info["error"]), file=sys.stderr)
                    w.close()
                    failed = True
                    continue
                workers[(impl, wl)] = w
                losses[impl] = info["grad_loss"]
            if "hand" not in losses:
                continue
            for impl in impls:
                if impl == "hand" or impl not in losses:
                    continue
                chk = check_grads(tmp, impl, wl, losses)
                report["grad_check"].setdefault(wl, {})[impl] = chk
                if not chk["ok"]:
                    failed = True
                    print(f"GRADIENT CHECK FAILED: {impl} {wl}: {chk}", file=sys.stderr)
            for impl in ("chainrule", "hand"):
                if impl not in impls:
                    continue
                out = os.path.join(tmp, f"mem_{impl}_{wl}.json")
                p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", impl,
                                    "--workloads", wl, "--mem-out", out], env=env)
                if p.returncode == 0:
                    with open(out) as f:
                        report["memory"].setdefault(wl, {})[impl] = json.load(f)
        if failed:
            for w in workers.values():
                w.close()
            print("step_bench: setup or gradient check failed; not timing", file=sys.stderr)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(report, f, indent=1)
            return 1

        raw = {}
        for r in range(max(rounds, a.w4_rounds or 0)):
            print(f"== round {r + 1}", file=sys.stderr, flush=True)
            for wl in workloads:
                wl_rounds = (a.w4_rounds or min(rounds, 3)) if wl == "W4_wide" else rounds
                if r >= wl_rounds:
                    continue
                names = [i for i in impls if (i, wl) in workers]
                order = names[r % len(names):] + names[:r % len(names)]
                tgt = targets.get(wl, targets["default"]) / wl_rounds
                for impl in order:
                    rep = workers[(impl, wl)].ask(cmd="time", target_s=tgt)
                    rep["round"] = r
                    raw.setdefault(wl, {}).setdefault(impl, []).append(rep)
                    print(f"  {wl:9s} {impl:10s} {_median(rep['per_step_s']) * 1e6:12.1f} us/step",
                          file=sys.stderr, flush=True)
                    time.sleep(a.gap_s)
        for w in workers.values():
            w.close()

    for wl, cells in raw.items():
        # each cell's ratio to hand numpy and to torch, per round (the references ran in that round)
        refs = {ref: {x["round"]: _median(x["per_step_s"]) for x in cells[ref]} for ref in ("hand", "torch")
                if ref in cells}
        for impl, reps in cells.items():
            meds = [_median(x["per_step_s"]) for x in reps]
            cell = {"median_us": _median(meds) * 1e6, "best_round_us": min(meds) * 1e6,
                    "worst_round_us": max(meds) * 1e6}
            for ref, per_round in refs.items():
                ratios = [_median(x["per_step_s"]) / per_round[x["round"]] for x in reps]
                cell[f"ratio_vs_{ref}"], cell[f"ratio_vs_{ref}_rounds"] = _median(ratios), ratios
            cell.update({"rounds": len(reps), "timed_steps": sum(x["k"] * len(x["per_step_s"]) for x in reps),
                         "last_loss": reps[-1]["last_loss"]})
            report["results"].setdefault(wl, {})[impl] = cell
        target, ref = TARGETS[wl]
        got = report["results"][wl].get("chainrule", {}).get(f"ratio_vs_{ref}")
        report.setdefault("verdicts", {})[wl] = {"target": target, "vs": ref, "ratio": got,
                                                 "met": None if got is None else got <= target}
    report["total_wall_s"] = time.time() - t_start
    try:
        report["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    print_table(report, impls, workloads)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def print_table(report, impls, workloads):
    res, mem, setup = report["results"], report["memory"], report["setup"]
    vs_torch = "torch" in impls
    head = (["workload"] + [f"{i} us (x hand{', x torch' if vs_torch and i != 'torch' else ''})" for i in impls]
            + ["target (chainrule)", "compile ms (+ load params)", "peak MiB cr/hand"])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for wl in workloads:
        if wl not in res:
            continue
        cells = []
        for impl in impls:
            c = res[wl].get(impl)
            ratios = [f"{c[f'ratio_vs_{ref}']:.2f}" for ref in ("hand", "torch") if c and f"ratio_vs_{ref}" in c
                      and not (ref == "torch" and impl == "torch")]
            cells.append("-" if c is None else f"{c['median_us']:,.1f} ({', '.join(ratios)})")
        comp = setup.get(wl, {}).get("chainrule", {}).get("compile_ms")
        load = setup.get(wl, {}).get("chainrule", {}).get("load_params_ms")
        m = mem.get(wl, {})
        if "chainrule" in m and "hand" in m:
            pc, ph = m["chainrule"]["peak_bytes"], m["hand"]["peak_bytes"]
            memtxt = f"{pc / 2**20:.2f} / {ph / 2**20:.2f} ({pc / ph:.2f}x)"
        else:
            memtxt = "-"
        verdict = report.get("verdicts", {}).get(wl, {})
        target, ref = TARGETS[wl]
        met = {True: "met", False: "missed", None: f"not measured (no {ref})"}[verdict.get("met")]
        cells += [f"<= {target} x {ref}: {met}", "-" if comp is None else f"{comp:.2f} (+ {load:.2f})", memtxt]
        print(f"| {wl} | " + " | ".join(cells) + " |")
    print(f"gradient checks: {'all passed' if report['grad_check'] or len(impls) == 1 else 'none'}; "
          f"total wall {report['total_wall_s']:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
