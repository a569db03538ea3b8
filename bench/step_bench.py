#!/usr/bin/env python3
"""One training step of the issue-#7 workloads: chainrule vs hand-written numpy vs PyTorch.

    python bench/step_bench.py --json step_bench.json
    python bench/step_bench.py --quick --workloads W1_b1 --impls chainrule,hand   # smoke run

One step = forward pass, the loss as a Python float, gradients of every parameter and a
plain SGD update of every parameter, on one fixed batch (workloads in
``../shared/workloads.md``). Implementations:

* ``chainrule``: the workload as a graphspec graph (GraphBuilder) on the compiled engine,
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
steps; reported are the median of the per-round medians (us/step) and the median of the
per-round ratios to ``hand``. Peak memory per step is measured in a separate fresh process
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
}
WORKLOAD_ORDER = list(WORKLOADS)
IMPLS = ["chainrule", "interp", "hand", "torch"]
TARGET_S = {"default": 1.5, "W4_wide": 3.0}  # seconds of timed stepping per cell, summed over rounds
QUICK_TARGET_S = {"default": 0.2, "W4_wide": 0.8}
TARGETS = {"W1_b1": 1.3, "W1_b4096": 1.1, "W2_mlp": 1.05, "W3_deep": 0.9, "W4_wide": 1.05}  # issue #7


def make_data(spec, seed=1234):
    """Parameters [W0, b0, W1, b1, ...] (W: (in, out)), inputs x, targets y (as the anchor)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    dt = np.dtype(spec["dtype"])
    s, B = spec["sizes"], spec["batch"]
    params = []
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
    """The workload as a validated graphspec graph: parameters W0, b0, W1, b1, ...; inputs x, y."""
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
        w = g.param(f"W{i}", [s[i], s[i + 1]], init="zeros")
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


def build_chainrule(spec, params, x, y):
    """The compiled engine, exactly as runtime.Trainer drives it for one batch."""
    import numpy as np
    import runtime
    graph = build_graph(spec)
    step = runtime.CompiledStep(runtime.compile(graph), runtime.SGD(lr=spec["lr"]))
    names = [f"{k}{i}" for i in range(len(params) // 2) for k in ("W", "b")]
    step.load_params(dict(zip(names, params)))
    inputs = {"x": x, "y": y}
    # The Trainer gathers each batch straight into the tape's input buffers and calls run();
    # the batch here is fixed, so it is written once (hand numpy reads x and y in place too).
    program = step.program(inputs)
    for name, buffer in program.inputs.items():
        np.copyto(buffer, inputs[name])

    def grads():
        loss, g = step.gradients(inputs)
        return loss, [g[n] for n in names]

    def reset():
        for n, p0 in zip(names, params):
            step.params[n][...] = p0
    return (lambda: step.run(program)), grads, reset


def build_interp(spec, params, x, y):
    """The reference interpreter: Plan.forward / Run.backward / SGD.step."""
    import numpy as np
    import runtime
    graph = build_graph(spec)
    plan = runtime.compile(graph)
    opt = runtime.SGD(lr=spec["lr"])
    names = [f"{k}{i}" for i in range(len(params) // 2) for k in ("W", "b")]
    P = {n: np.array(p, copy=True, order="C") for n, p in zip(names, params)}
    inputs = {"x": x, "y": y}

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
    names = [f"{k}{i}" for i in range(len(params) // 2) for k in ("W", "b")]
    named = dict(zip(names, params))
    inputs = {"x": x, "y": y}

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


# ----------------------------------------------------------------------------- torch eager
def build_torch(spec, params, x, y):
    import torch
    import torch.nn.functional as F
    L, lr = len(spec["sizes"]) - 1, spec["lr"]
    P = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    act = {"relu": torch.relu, "tanh": torch.tanh, None: None}[spec["act"]]
    loss_kind = spec["loss"]

    def loss_fn():
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


BUILDERS = {"chainrule": build_chainrule, "interp": build_interp, "hand": build_hand, "torch": build_torch}


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
    if impl in ("chainrule", "interp"):
        import graphspec.builder  # noqa: F401
        import runtime  # noqa: F401
    tracemalloc.start()
    spec = WORKLOADS[wl]
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
    n = 2 * (len(spec["sizes"]) - 1)
    ref = np.load(os.path.join(checkdir, f"hand__{wl}.npz"))
    got = np.load(os.path.join(checkdir, f"{impl}__{wl}.npz"))
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
        href = {x["round"]: _median(x["per_step_s"]) for x in cells["hand"]}
        for impl, reps in cells.items():
            meds = [_median(x["per_step_s"]) for x in reps]
            ratios = [_median(x["per_step_s"]) / href[x["round"]] for x in reps]
            cell = {"median_us": _median(meds) * 1e6, "best_round_us": min(meds) * 1e6,
                    "worst_round_us": max(meds) * 1e6, "ratio_vs_hand": _median(ratios),
                    "ratio_vs_hand_rounds": ratios, "rounds": len(reps),
                    "timed_steps": sum(x["k"] * len(x["per_step_s"]) for x in reps),
                    "last_loss": reps[-1]["last_loss"]}
            report["results"].setdefault(wl, {})[impl] = cell
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
    head = ["workload"] + [f"{i} us (x hand)" for i in impls] + ["target", "compile ms (+ load params)",
                                                                   "peak MiB cr/hand"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for wl in workloads:
        if wl not in res:
            continue
        cells = []
        for impl in impls:
            c = res[wl].get(impl)
            cells.append("-" if c is None else f"{c['median_us']:,.1f} ({c['ratio_vs_hand']:.2f})")
        comp = setup.get(wl, {}).get("chainrule", {}).get("compile_ms")
        load = setup.get(wl, {}).get("chainrule", {}).get("load_params_ms")
        m = mem.get(wl, {})
        if "chainrule" in m and "hand" in m:
            pc, ph = m["chainrule"]["peak_bytes"], m["hand"]["peak_bytes"]
            memtxt = f"{pc / 2**20:.2f} / {ph / 2**20:.2f} ({pc / ph:.2f}x)"
        else:
            memtxt = "-"
        cells += [f"<= {TARGETS[wl]}", "-" if comp is None else f"{comp:.2f} (+ {load:.2f})", memtxt]
        print(f"| {wl} | " + " | ".join(cells) + " |")
    print(f"gradient checks: {'all passed' if report['grad_check'] or len(impls) == 1 else 'none'}; "
          f"total wall {report['total_wall_s']:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
