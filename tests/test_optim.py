"""Optimizers: the update formulas against hand-computed numbers and an independent numpy
reference, dtype preservation, in-place updates, exact state save/restore, the factory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.optim import OPTIMIZERS, SGD, Adam, Optimizer, make_optimizer, optimizer_defaults


def scalar_run(opt: Optimizer, p0: float, grads: list[float]) -> list[float]:
    """Parameter values after each step, for a scalar parameter and a sequence of gradients."""
    params = {"p": np.array(p0)}
    out = []
    for g in grads:
        opt.step(params, {"p": np.array(g)})
        out.append(float(params["p"]))
    return out


# -- hand-computed updates ---------------------------------------------------------------------
def test_sgd_plain_by_hand():
    assert scalar_run(SGD(lr=0.1), 1.0, [0.5, -1.0, 2.0]) == pytest.approx([0.95, 1.05, 0.85], abs=1e-15)


def test_sgd_momentum_by_hand():
    # b1 = g = 0.5; b2 = 0.9*0.5 + 0.5 = 0.95; b3 = 0.9*0.95 + 0.5 = 1.355
    got = scalar_run(SGD(lr=0.1, momentum=0.9), 1.0, [0.5, 0.5, 0.5])
    assert got == pytest.approx([1 - 0.05, 1 - 0.05 - 0.095, 1 - 0.05 - 0.095 - 0.1355], abs=1e-15)


def test_sgd_nesterov_by_hand():
    # step 1: b = 0.5, update g + 0.9 b = 0.95; step 2: b = 0.95, update 0.5 + 0.855 = 1.355
    got = scalar_run(SGD(lr=0.1, momentum=0.9, nesterov=True), 1.0, [0.5, 0.5])
    assert got == pytest.approx([1 - 0.095, 1 - 0.095 - 0.1355], abs=1e-15)


def test_sgd_weight_decay_by_hand():
    # g' = g + wd * p: 0.5 + 0.1*1 = 0.6 -> p = 0.94; then 0.5 + 0.094 = 0.594 -> p = 0.8806
    got = scalar_run(SGD(lr=0.1, weight_decay=0.1), 1.0, [0.5, 0.5])
    assert got == pytest.approx([0.94, 0.8806], abs=1e-15)


def test_sgd_momentum_with_weight_decay_by_hand():
    # step 1: g' = 0.6, b = 0.6, p = 0.94; step 2: g' = 0.594, b = 0.54 + 0.594 = 1.134, p = 0.8266
    got = scalar_run(SGD(lr=0.1, momentum=0.9, weight_decay=0.1), 1.0, [0.5, 0.5])
    assert got == pytest.approx([0.94, 0.8266], abs=1e-15)


def test_adam_bias_correction_by_hand():
    # Bias correction makes the first step lr * g / (|g| + eps) whatever the betas: about lr * sign(g).
    for g in (0.5, -3.0, 1e-3):
        for betas in ((0.9, 0.999), (0.5, 0.9)):
            (p1,) = scalar_run(Adam(lr=0.1, betas=betas), 1.0, [g])
            assert p1 == pytest.approx(1 - 0.1 * g / (abs(g) + 1e-8), abs=1e-15)
    # Step 2 with g = 0.5 then 0.25: m = 0.07, v = 0.00031225, 1 - b1^2 = 0.19, 1 - b2^2 = 0.001999.
    m_hat, v_hat = 0.07 / 0.19, 0.00031225 / 0.001999
    expected2 = 1 - 0.1 * 0.5 / (0.5 + 1e-8) - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
    assert scalar_run(Adam(lr=0.1), 1.0, [0.5, 0.25])[1] == pytest.approx(expected2, abs=1e-12)
    assert expected2 == pytest.approx(0.806782, abs=1e-6)  # the number worked out on paper


def test_adam_l2_versus_adamw_decoupled_by_hand():
    # p = 4, g = 0, wd = 0.5, lr = 0.1.
    # Adam: g' = g + wd*p = 2, first step moves lr*sign(g') -> 3.9.
    (adam,) = scalar_run(Adam(lr=0.1, weight_decay=0.5), 4.0, [0.0])
    assert adam == pytest.approx(4 - 0.1 * 2 / (2 + 1e-8), abs=1e-15)
    # AdamW: p *= 1 - lr*wd -> 3.8, and a zero gradient moves nothing else.
    (adamw,) = scalar_run(Adam(lr=0.1, weight_decay=0.5, decoupled=True), 4.0, [0.0])
    assert adamw == 4 * (1 - 0.1 * 0.5)


# -- an independent numpy reference over several steps -----------------------------------------
def reference(kind: str, p: np.ndarray, grads: list[np.ndarray], **h) -> np.ndarray:
    p = p.copy()
    if kind == "sgd":
        lr, mu, nesterov, wd = h["lr"], h.get("momentum", 0.0), h.get("nesterov", False), h.get("weight_decay", 0.0)
        buf = None
        for g in grads:
            d = g + wd * p
            if mu:
                buf = d.copy() if buf is None else mu * buf + d
                d = d + mu * buf if nesterov else buf
            p = p - lr * d
        return p
    lr, (b1, b2), eps, wd = h["lr"], h.get("betas", (0.9, 0.999)), h.get("eps", 1e-8), h.get("weight_decay", 0.0)
    decoupled = h.get("decoupled", False)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


CASES = [
    ("sgd", {"lr": 0.05}),
    ("sgd", {"lr": 0.05, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.02}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled": True}),
]


@pytest.mark.parametrize("kind,hyper", CASES)
def test_matches_numpy_reference_over_steps(kind, hyper):
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(6)]
    opt = SGD(**hyper) if kind == "sgd" else Adam(**hyper)
    params = {"w": p0.copy()}
    for g in grads:
        opt.step(params, {"w": g})
    np.testing.assert_allclose(params["w"], reference(kind, p0, grads, **hyper), rtol=1e-12, atol=1e-14)
    assert opt.steps == 6


# -- dtype, in place, bookkeeping ------------------------------------------------------------
@pytest.mark.parametrize("kind,hyper", CASES)
def test_float32_stays_float32_and_updates_in_place(kind, hyper):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = np.zeros(3, dtype=np.float32)
    params = {"w": w, "b": b}
    opt = SGD(**hyper) if kind == "sgd" else Adam(**hyper)
    for _ in range(3):
        # float32 gradients, and float64 ones: the parameter keeps its dtype either way
        opt.step(params, {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3)})
    assert params["w"] is w and params["b"] is b
    assert w.dtype == np.float32 and b.dtype == np.float32
    assert np.any(b != 0)
    for kind_state in opt.state.values():
        for buf in kind_state.values():
            assert buf.dtype == np.float32


def test_float32_update_matches_float32_arithmetic():
    p = np.array([1.0, -2.0], dtype=np.float32)
    g = np.array([0.3, 0.7], dtype=np.float32)
    params = {"p": p.copy()}
    SGD(lr=0.1).step(params, {"p": g})
    assert params["p"].tobytes() == (p - np.float32(0.1) * g).tobytes()


def test_step_refuses_bad_gradients_and_parameters():
    opt = SGD(lr=0.1)
    with pytest.raises(ValueError, match="no gradient for parameter 'w'"):
        opt.step({"w": np.zeros(2)}, {})
    with pytest.raises(ValueError, match=r"has shape \[3\], the parameter has \[2\]"):
        opt.step({"w": np.zeros(2)}, {"w": np.zeros(3)})
    frozen = np.zeros(2)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.step({"w": frozen}, {"w": np.ones(2)})
    with pytest.raises(ValueError, match="floating-point"):
        opt.step({"w": np.zeros(2, dtype=np.int64)}, {"w": np.ones(2)})
    assert opt.steps == 0  # nothing was applied
    # gradients for other names (e.g. inputs) are ignored
    params = {"w": np.zeros(2)}
    opt.step(params, {"w": np.ones(2), "x": np.ones(5)})
    np.testing.assert_array_equal(params["w"], [-0.1, -0.1])


# -- state -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,hyper", CASES)
def test_state_dict_restores_bit_for_bit(kind, hyper):
    rng = np.random.default_rng(7)
    grads = [{"w": rng.normal(size=(5,)), "b": rng.normal(size=())} for _ in range(8)]
    make = (lambda: SGD(**hyper)) if kind == "sgd" else (lambda: Adam(**hyper))
    opt = make()
    params = {"w": rng.normal(size=(5,)), "b": np.array(0.5)}
    for g in grads[:3]:
        opt.step(params, g)
    snapshot = opt.state_dict()
    saved = {k: v.copy() for k, v in params.items()}
    frozen = {k: {n: a.copy() for n, a in v.items()} if isinstance(v, dict) else v for k, v in snapshot.items()}
    for g in grads[3:]:
        opt.step(params, g)
    # the snapshot is not changed by later steps
    for key, value in snapshot.items():
        if isinstance(value, dict):
            assert {n: a.tobytes() for n, a in value.items()} == {n: a.tobytes() for n, a in frozen[key].items()}
        else:
            assert value == frozen[key]
    assert snapshot["step"] == 3 and snapshot["optimizer"] == opt.name

    other = make()
    other.load_state_dict(snapshot)
    restored = {k: v.copy() for k, v in saved.items()}
    for g in grads[3:]:
        other.step(restored, g)
    assert {k: v.tobytes() for k, v in restored.items()} == {k: v.tobytes() for k, v in params.items()}
    final_a, final_b = opt.state_dict(), other.state_dict()
    assert final_a["step"] == final_b["step"] == 8
    for key in opt.buffers:
        assert {n: a.tobytes() for n, a in final_a[key].items()} == {n: a.tobytes() for n, a in final_b[key].items()}


def test_load_state_dict_refuses_foreign_state():
    adam = Adam(lr=0.1)
    adam.step({"w": np.zeros(2)}, {"w": np.ones(2)})
    with pytest.raises(ValueError, match="cannot load the state of optimizer 'adam'"):
        SGD(lr=0.1).load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match="cannot load the state of optimizer 'adam'"):
        Adam(lr=0.1, decoupled=True).load_state_dict(adam.state_dict())
    broken = adam.state_dict()
    del broken["exp_avg_sq"]
    with pytest.raises(ValueError, match="keys"):
        Adam().load_state_dict(broken)
    with pytest.raises(ValueError, match="step"):
        Adam().load_state_dict({**adam.state_dict(), "step": -1})


def test_reset_forgets_state():
    opt = SGD(lr=0.1, momentum=0.9)
    opt.step({"w": np.zeros(1)}, {"w": np.ones(1)})
    opt.reset()
    assert opt.steps == 0 and opt.state_dict()["momentum_buffer"] == {}


# -- factory and configuration ---------------------------------------------------------------
def test_make_optimizer_names_and_defaults():
    sgd = make_optimizer("sgd", lr=0.1)
    assert isinstance(sgd, SGD) and sgd.momentum == 0.0
    mom = make_optimizer("momentum", lr=0.1)
    assert isinstance(mom, SGD) and mom.momentum == 0.9
    assert make_optimizer("momentum", lr=0.1, momentum=0.5, nesterov=True).nesterov
    adam = make_optimizer("adam")
    assert isinstance(adam, Adam) and not adam.decoupled and adam.lr == 1e-3 and adam.weight_decay == 0.0
    adamw = make_optimizer("adamw", lr=0.01)
    assert isinstance(adamw, Adam) and adamw.decoupled and adamw.weight_decay == 0.01  # PyTorch's default
    assert adamw.name == "adamw"


@pytest.mark.parametrize("name,hyper", [
    ("sgd", {"lr": 0.1}), ("momentum", {"lr": 0.2, "nesterov": True}), ("adam", {"lr": 0.01, "betas": (0.8, 0.9)}),
    ("adamw", {"weight_decay": 0.0}),
])
def test_config_round_trips_through_the_factory(name, hyper):
    opt = make_optimizer(name, **hyper)
    config = opt.config()
    again = make_optimizer(**config)
    assert type(again) is type(opt) and again.config() == config
    assert isinstance(config["name"], str)


@pytest.mark.parametrize("name,hyper,message", [
    ("sgdd", {"lr": 0.1}, r"unknown optimizer 'sgdd' \(did you mean 'sgd'\?\); choose one of sgd, momentum, adam, adamw"),
    ("rmsprop", {}, "unknown optimizer 'rmsprop'"),
    ("adam", {"learning_rate": 0.1}, "unknown hyperparameter.*'learning_rate'.*adam takes lr, betas, eps, weight_decay"),
    ("sgd", {"lr": 0.1, "betas": (0.9, 0.9)}, "unknown hyperparameter.*'betas'"),
    ("adam", {"decoupled": True}, "unknown hyperparameter.*'decoupled'"),
    ("momentum", {"lr": 0.1, "momentum": 0}, "momentum must be > 0"),
    ("sgd", {"lr": -0.1}, "lr must be a finite number >= 0"),
    ("sgd", {"lr": float("nan")}, "lr must be a finite number"),
    ("sgd", {"lr": "fast"}, "lr must be a number"),
    ("sgd", {"lr": 0.1, "nesterov": True}, "nesterov momentum needs momentum > 0"),
    ("adam", {"betas": (0.9, 1.0)}, r"betas\[1\] must be a finite number in \[0.0, 1.0\)"),
    ("adam", {"betas": 0.9}, "betas must be a pair"),
    ("adamw", {"eps": -1.0}, "eps must be"),
])
def test_make_optimizer_clear_errors(name, hyper, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer(name, **hyper)


@pytest.mark.parametrize("kind,hyper", CASES)
def test_step_never_writes_to_gradients(kind, hyper):
    # Run.backward may hand two parameters the very same gradient array (e.g. both operands of
    # an add): an optimizer must read gradients only.
    g = np.array([0.5, -1.0, 2.0])
    before = g.copy()
    params = {"p": np.ones(3), "q": np.ones(3)}
    opt = SGD(**hyper) if kind == "sgd" else Adam(**hyper)
    for _ in range(3):
        opt.step(params, {"p": g, "q": g})
    assert g.tobytes() == before.tobytes()
    assert params["p"].tobytes() == params["q"].tobytes()
    for buffers in opt.state.values():
        assert not any(np.shares_memory(buf, g) for buf in buffers.values())


def test_a_hyperparameter_beyond_the_float_range_is_a_value_error():
    """JSON allows integers of any size; float() of one overflows: a ValueError, never an OverflowError."""
    with pytest.raises(ValueError, match="finite"):
        make_optimizer(name="sgd", lr=10**400)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_defaults_are_defined_once_and_are_what_make_optimizer_uses(name):
    """The CLI, the client and the API leave unset hyperparameters out, so the library's
    defaults are the only ones: Adam without lr trains at 1e-3, never at SGD's rate."""
    defaults = optimizer_defaults(name)
    built = make_optimizer(name).config()
    assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items()} == \
        {k: v for k, v in built.items() if k != "name"}
    assert defaults["lr"] == {"sgd": 0.01, "momentum": 0.01, "adam": 1e-3, "adamw": 1e-3}[name]
