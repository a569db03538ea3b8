"""Each op's derivative is written once: its kernel's numpy ``forward`` and ``vjp``, which the
interpreter calls and the compiled engine traces. These tests fail when an op gains a compiled
derivative of its own that is not a declared fusion:

* a kernel is one forward and one VJP — there is no field for a second, compiled form;
* the compiled engine's modules never single out a catalogue op by name (only the declared
  fusions' patterns do, in fusions.py), so no op can have engine code of its own;
* every call on a lowered tape comes from a kernel's trace, or is the engine's own
  bookkeeping (copies, gradient sums where a value fans out, unbroadcasting): nothing else
  computes anything — checked over every op's gradient-check samples, float64 and float32;
* every op's kernel traces (none falls back to the adapter), so each is run through its one
  definition on the compiled engine too — and, replaying the interpreter's own calls, gives
  its losses and gradients bit for bit (where no fusion replaces a pattern).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import graphspec
import runtime
from op_samples import SAMPLES, Sample, to_float32
from runtime.compiled import fusions, trace

COMPILED = Path(runtime.__file__).parent / "compiled"
BOOKKEEPING = {np.copyto, np.add, np.add.reduce}  # copies, fan-out sums, unbroadcast sums


def test_a_kernel_is_one_forward_and_one_vjp():
    # "draws" is a random kernel's sampler (dropout's mask), an input both engines pass, not a form of it
    assert {f.name for f in dataclasses.fields(runtime.kernels.Kernel)} == {
        "op", "forward", "vjp", "saves_out", "saves_inputs", "residuals", "draws"}


def _op_names_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in graphspec.OPS}


@pytest.mark.parametrize("module", sorted(p.name for p in COMPILED.glob("*.py") if p.name != "fusions.py"))
def test_the_compiled_engine_names_no_op(module):
    """Engine code that tests ``n.op == "tanh"`` would be tanh's second definition. ``constant``
    is no computation: its value is copied into a buffer once."""
    assert _op_names_in(COMPILED / module) <= {"constant"}, module


def test_fusions_name_only_the_ops_of_their_declared_patterns():
    assert _op_names_in(COMPILED / "fusions.py") == {"sigmoid", "bce"}
    declared = {value for value in vars(fusions).values() if isinstance(value, runtime.kernels.Kernel)}
    assert declared == set(fusions.FUSIONS), "a fused kernel must be listed in fusions.FUSIONS"
    assert not {k.op for k in fusions.FUSIONS} & set(graphspec.OPS), "a fusion is no catalogue op"


def _lower_recording(sample: Sample):
    """Lower ``sample`` and split its tapes' calls into those its kernels' traces made and the rest."""
    traced: set[int] = set()
    original = trace.Template.instantiate

    def recording(self, e, *args, **kwargs):
        before, seed_before = len(e.tape), len(e.seed_tape)
        result = original(self, e, *args, **kwargs)
        traced.update(id(entry) for entry in e.tape[before:] + e.seed_tape[seed_before:])
        return result

    trace.Template.instantiate = recording
    try:
        step = runtime.CompiledStep(sample.graph, grad_inputs=sample.wrt != "params")
        step.load_params(sample.params)
        program = step.program(sample.inputs, random=sample.noise is not None)
    finally:
        trace.Template.instantiate = original
    own = [entry for entry in program.tape + program.seed_tape if id(entry) not in traced]
    return program, own


def _assert_same_bits_as_the_interpreter(sample: Sample) -> None:
    grad_inputs = sample.wrt != "params"
    run = runtime.compile(sample.graph).forward(sample.inputs, sample.params, grad_inputs=grad_inputs,
                                                noise=sample.noise)
    expected = run.backward() if run.grad_path else {}
    step = runtime.CompiledStep(sample.graph, grad_inputs=grad_inputs)
    step.load_params(sample.params)
    loss, grads = step.gradients(sample.inputs, sample.noise)
    assert loss == run.loss or (np.isnan(loss) and np.isnan(run.loss)), f"{sample!r}: loss {loss} != {run.loss}"
    for name, value in expected.items():
        if name in grads:
            np.testing.assert_array_equal(grads[name], value, err_msg=f"{sample!r}: d(loss)/d({name})")


def _bookkeeping(fn) -> bool:
    return fn in BOOKKEEPING or getattr(fn, "func", None) in BOOKKEEPING


@pytest.mark.parametrize("op", sorted(graphspec.OPS))
def test_every_op_runs_compiled_through_its_one_definition(op):
    checked = []

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(SAMPLES[op])
    def check(sample):
        for variant in (sample, to_float32(sample)):
            program, own = _lower_recording(variant)
            assert program.adapted == () and program.untraced == {}, f"{variant!r}: {program.untraced}"
            assert op in program.native or op == "constant" or op in {"sigmoid", "bce"} & set(program.fused)
            computing = [fn for fn, _ in own if not _bookkeeping(fn)]
            assert not computing, f"{variant!r}: the engine computed {computing} outside any kernel's trace"
            if not program.fused:  # the interpreter's calls, replayed: the same bits
                _assert_same_bits_as_the_interpreter(variant)
        checked.append(sample)

    check()
    assert len(checked) >= 10


def test_the_recording_sees_a_hand_written_compiled_derivative(monkeypatch):
    """The check above is not vacuous: a call the lowering emits itself, as a hand-written
    derivative would, is caught."""
    from runtime.compiled import lower as lowering
    original = lowering._emit_unbroadcast

    def with_a_hand_written_scale(e, g, out):
        e.emit(np.multiply, g, 1.0, g)  # what a second definition of some VJP would look like
        original(e, g, out)
    monkeypatch.setattr(lowering, "_emit_unbroadcast", with_a_hand_written_scale)
    g = graphspec.GraphBuilder("bias", dtype="float64")
    g.loss(g.sum(g.add(g.input("x", [3, 2]), g.param("b", [2]))))
    sample = Sample("add", g.build(), {"x": np.ones((3, 2))}, {"b": np.zeros(2)})
    _, own = _lower_recording(sample)
    assert np.multiply in [fn for fn, _ in own if not _bookkeeping(fn)]
