"""Optimizers: SGD (with momentum, Nesterov and weight decay), Adam and AdamW.

Each optimizer updates a ``{name: array}`` dict of parameters **in place**, in the
parameters' own dtype (float32 stays float32), from a ``{name: gradient}`` dict such as
:meth:`runtime.Run.backward` returns. Its whole state (step count, momentum buffers,
moments) is plain data plus numpy arrays: :meth:`Optimizer.state_dict` snapshots it and
:meth:`Optimizer.load_state_dict` restores it bit for bit, so a resumed run continues
exactly where it stopped. The formulas are PyTorch's (``torch.optim.SGD``,
``torch.optim.Adam``, ``torch.optim.AdamW``; no dampening, no AMSGrad).

    opt = make_optimizer("adam", lr=1e-2)
    opt.step(params, run.backward())
    opt.config()       # {"name": "adam", "lr": 0.01, ...}: make_optimizer(**opt.config()) rebuilds it
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Mapping

import numpy as np

from graphspec.errors import did_you_mean

Arrays = dict[str, np.ndarray]


class Optimizer:
    """The shared machinery: argument checks, the step counter and state (de)serialisation.

    Subclasses set ``name`` and ``buffers`` (the names of their per-parameter state
    arrays) and implement :meth:`_update` for one parameter.
    """

    name: str = ""
    buffers: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all state: no steps taken, no buffers (as freshly constructed)."""
        self.steps = 0  # number of updates applied so far
        self.state: dict[str, Arrays] = {b: {} for b in self.buffers}

    # -- the update ----------------------------------------------------------------------
    def step(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """Apply one update to every array of ``params``, in place.

        ``grads`` must hold a gradient of the same shape for every parameter (gradients
        for other names, e.g. inputs, are ignored). Gradients are read in the
        parameter's dtype; the parameter's dtype never changes.
        """
        prepared: list[tuple[str, np.ndarray, np.ndarray]] = []
        for name, p in params.items():
            if name not in grads:
                raise ValueError(f"{self.name}: no gradient for parameter {name!r}")
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise ValueError(f"{self.name}: parameter {name!r} must be a floating-point numpy array, "
                                 f"got {type(p).__name__}{'' if not isinstance(p, np.ndarray) else ' ' + p.dtype.name}")
            if not p.flags.writeable:
                raise ValueError(f"{self.name}: parameter {name!r} is read-only; optimizers update parameters "
                                 "in place (pass a writable copy)")
            g = np.asarray(grads[name])
            if g.shape != p.shape:
                raise ValueError(f"{self.name}: gradient of {name!r} has shape {list(g.shape)}, "
                                 f"the parameter has {list(p.shape)}")
            prepared.append((name, p, g.astype(p.dtype, copy=False)))
        self.steps += 1
        for name, p, g in prepared:
            self._update(name, p, g)

    # -- the compiled engine's hooks (runtime.compiled.CompiledStep) ---------------------------
    def gradient_scale(self) -> float:
        """A factor the compiled engine may start the backward pass from instead of 1, so the
        gradients come out multiplied by it and :meth:`step_flat` is cheaper; 1 means none."""
        return 1.0

    def step_flat(self, chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], scale: float) -> bool:
        """One update over flat ``(params, grads, scratch)`` chunks whose gradients are
        multiplied by ``scale``; False when this optimizer has no such path (then the engine
        calls :meth:`step`, with ``scale`` 1)."""
        return False

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _buffer(self, kind: str, name: str, like: np.ndarray) -> np.ndarray | None:
        buf = self.state[kind].get(name)
        if buf is not None and (buf.shape != like.shape or buf.dtype != like.dtype):
            raise ValueError(f"{self.name}: the {kind} of {name!r} is {buf.dtype.name}{list(buf.shape)}, "
                             f"but the parameter is {like.dtype.name}{list(like.shape)}")
        return buf

    # -- description and state -------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The name and hyperparameters, as plain data: ``make_optimizer(**config)`` rebuilds the optimizer."""
        raise NotImplementedError  # pragma: no cover - abstract

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the state: ``{"optimizer": name, "step": n, <buffer>: {param: array}}``.

        The arrays are copies: later steps do not change a snapshot.
        """
        out: dict[str, Any] = {"optimizer": self.name, "step": self.steps}
        for kind in self.buffers:
            out[kind] = {name: np.array(buf, copy=True) for name, buf in self.state[kind].items()}
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot exactly (the arrays are copied, bit for bit)."""
        if not isinstance(state, Mapping):
            raise ValueError(f"{self.name}: an optimizer state must be a dict, got {type(state).__name__}")
        kind = state.get("optimizer")
        if kind != self.name:
            raise ValueError(f"{self.name}: cannot load the state of optimizer {kind!r}")
        expected = {"optimizer", "step", *self.buffers}
        if set(state) != expected:
            raise ValueError(f"{self.name}: an optimizer state has the keys {sorted(expected)}, got {sorted(state)}")
        step = state["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"{self.name}: the state's step must be a non-negative integer, got {step!r}")
        restored: dict[str, Arrays] = {}
        for kind in self.buffers:
            arrays = state[kind]
            if not isinstance(arrays, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, np.ndarray) for k, v in arrays.items()):
                raise ValueError(f"{self.name}: the state's {kind!r} must map parameter names to numpy arrays")
            restored[kind] = {name: np.array(buf, copy=True, order="C") for name, buf in arrays.items()}
        self.steps = step
        self.state = restored

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"<optimizer {self.name}({args})>"


def _number(owner: str, key: str, value: Any, *, minimum: float = 0.0, below: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{owner}: {key} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range (JSON allows any)
        value = math.inf
    if not math.isfinite(value) or value < minimum or (below is not None and value >= below):
        bound = f"in [{minimum}, {below})" if below is not None else f">= {minimum}"
        raise ValueError(f"{owner}: {key} must be a finite number {bound}, got {value!r}")
    return value


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD`` (dampening 0).

    With ``t`` counting steps from 1, ``g`` the gradient and ``p`` the parameter::

        g = g + weight_decay * p                       (when weight_decay != 0)
        b = g                     at t = 1             (when momentum != 0)
        b = momentum * b + g      at t > 1
        g = g + momentum * b      (nesterov)   or   g = b   (plain momentum)
        p = p - lr * g
    """

    name = "sgd"
    buffers = ("momentum_buffer",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__()
        self.lr = _number("sgd", "lr", lr)
        self.momentum = _number("sgd", "momentum", momentum)
        if not isinstance(nesterov, bool):
            raise ValueError(f"sgd: nesterov must be true or false, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("sgd: nesterov momentum needs momentum > 0")
        self.nesterov = nesterov
        self.weight_decay = _number("sgd", "weight_decay", weight_decay)

    def _plain(self) -> bool:
        return self.momentum == 0 and self.weight_decay == 0

    def gradient_scale(self) -> float:
        """Plain SGD folds its learning rate into the backward pass (``0 < lr <= 1``: the scaled
        gradients are never larger than the true ones): the update is then one subtraction."""
        return self.lr if self._plain() and 0 < self.lr <= 1 else 1.0

    def step_flat(self, chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], scale: float) -> bool:
        """``p -= lr * g`` elementwise over the arena: the same numbers as per parameter."""
        if not self._plain():
            return False
        subtract = np.subtract
        if scale == 1.0:
            lr, multiply = self.lr, np.multiply
            for p, g, scratch in chunks:
                multiply(g, lr, scratch)
                subtract(p, scratch, p)
        elif scale == self.lr:  # the gradients are lr * g already
            for p, g, _ in chunks:
                subtract(p, g, p)
        else:
            raise ValueError(f"sgd: gradients scaled by {scale}, not by the learning rate {self.lr}")
        self.steps += 1
        return True

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        if self.momentum != 0:
            buf = self._buffer("momentum_buffer", name, p)
            if buf is None:
                buf = self.state["momentum_buffer"][name] = np.array(g, copy=True, order="C")
            else:
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g

    def config(self) -> dict[str, Any]:
        return {"name": "sgd", "lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam``; with ``decoupled=True`` AdamW, as ``torch.optim.AdamW``.

    With ``t`` counting steps from 1 and ``m``, ``v`` starting at zero::

        p = p * (1 - lr * weight_decay)                (AdamW: decoupled weight decay)
        g = g + weight_decay * p                       (Adam: L2 penalty in the gradient)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """

    buffers = ("exp_avg", "exp_avg_sq")

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        if not isinstance(decoupled, bool):
            raise ValueError(f"adam: decoupled must be true or false, got {decoupled!r}")
        self.decoupled = decoupled
        self.name = "adamw" if decoupled else "adam"
        super().__init__()
        self.lr = _number(self.name, "lr", lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{self.name}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_number(self.name, "betas[0]", betas[0], below=1.0),
                      _number(self.name, "betas[1]", betas[1], below=1.0))
        self.eps = _number(self.name, "eps", eps)
        self.weight_decay = _number(self.name, "weight_decay", weight_decay)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        beta1, beta2 = self.betas
        if self.weight_decay != 0:
            if self.decoupled:
                p *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        m = self._buffer("exp_avg", name, p)
        v = self._buffer("exp_avg_sq", name, p)
        if m is None:
            m = self.state["exp_avg"][name] = np.zeros_like(p, order="C")
        if v is None:
            v = self.state["exp_avg_sq"][name] = np.zeros_like(p, order="C")
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        t = self.steps
        step_size = self.lr / (1 - beta1 ** t)
        denom = np.sqrt(v) / math.sqrt(1 - beta2 ** t) + self.eps
        p -= step_size * (m / denom)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}


# name -> (class, fixed arguments, defaults that differ from the class's, accepted hyperparameters)
_FACTORY: dict[str, tuple[type, dict[str, Any], dict[str, Any], tuple[str, ...]]] = {
    "sgd": (SGD, {}, {}, ("lr", "momentum", "nesterov", "weight_decay")),
    "momentum": (SGD, {}, {"momentum": 0.9}, ("lr", "momentum", "nesterov", "weight_decay")),
    "adam": (Adam, {}, {}, ("lr", "betas", "eps", "weight_decay")),
    "adamw": (Adam, {"decoupled": True}, {"weight_decay": 1e-2}, ("lr", "betas", "eps", "weight_decay")),
}
OPTIMIZERS: tuple[str, ...] = tuple(_FACTORY)


def optimizer_defaults(name: str) -> dict[str, Any]:
    """The hyperparameters ``make_optimizer(name)`` uses when they are not given, e.g.
    ``{"lr": 0.001, "betas": (0.9, 0.999), ...}`` for ``"adam"``. The one source of the defaults:
    the command line, the Python client and the HTTP API leave out what the user did not set."""
    if name not in _FACTORY:
        make_optimizer(name)  # raises the usual "unknown optimizer" error
    cls, fixed, defaults, accepted = _FACTORY[name]
    signature = inspect.signature(cls.__init__).parameters
    out = {k: signature[k].default for k in accepted if signature[k].default is not inspect.Parameter.empty}
    out.update({k: v for k, v in defaults.items() if k in accepted})
    return out


def learning_rate_defaults() -> str:
    """Each optimizer's default learning rate, for help texts: "sgd 0.01, momentum 0.01, ..."."""
    return ", ".join(f"{name} {optimizer_defaults(name)['lr']:g}" for name in OPTIMIZERS)


def make_optimizer(name: str, **hyper: Any) -> Optimizer:
    """An optimizer by name: ``"sgd"``, ``"momentum"`` (SGD, momentum 0.9 unless given, must be > 0),
    ``"adam"`` or ``"adamw"`` (Adam with decoupled weight decay, 0.01 unless given, as in PyTorch).

    Hyperparameters not given take :func:`optimizer_defaults` (learning rate: 0.01 for SGD and
    momentum, 1e-3 for Adam and AdamW). Unknown names and unknown hyperparameters are
    ValueErrors that list what is accepted.
    """
    if name not in _FACTORY:
        hint = did_you_mean(name, _FACTORY)
        raise ValueError(f"unknown optimizer {name!r}" + (f" ({hint})" if hint else "")
                         + f"; choose one of {', '.join(OPTIMIZERS)}")
    cls, fixed, defaults, accepted = _FACTORY[name]
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        hints = [h for h in (did_you_mean(u, accepted) for u in unknown) if h]
        raise ValueError(f"{name}: unknown hyperparameter(s) {', '.join(map(repr, unknown))}"
                         + (f" ({'; '.join(hints)})" if hints else "") + f"; {name} takes {', '.join(accepted)}")
    if name == "momentum" and "momentum" in hyper and hyper["momentum"] == 0:
        raise ValueError("momentum: momentum must be > 0 (use 'sgd' for plain gradient descent)")
    return cls(**{**defaults, **hyper, **fixed})
