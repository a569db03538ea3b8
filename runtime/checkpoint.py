"""Training checkpoints: everything needed to continue a run bit for bit, in msgpack.

A :class:`Checkpoint` holds the graph's content hash, the position in the data (step,
epoch, batch index within the epoch, and the shuffler's RNG state at the start of that
epoch), the parameters, the optimizer's config and state, and the loss history.
:meth:`Checkpoint.to_bytes` writes a msgpack map; every array is a graphspec tensor
``{dtype, shape, data}`` whose ``data`` is msgpack extension type 1 holding the raw
little-endian bytes (the same encoding graph documents use), so nothing is ever pickled
and reading a checkpoint cannot run code::

    {"format": "chainrule.checkpoint", "version": 1, "graph_hash": "sha256:...",
     "step": 120, "epoch": 3, "batch_index": 2,
     "params": {name: tensor}, "optimizer": {"name": "adam", "lr": ...},
     "optimizer_state": {"optimizer": "adam", "step": 120, "exp_avg": {name: tensor}, ...},
     "rng_state": {"bit_generator": "PCG64", "state": "<hex>", "inc": "<hex>", ...} | nil,
     "settings": {"batch_size": 32 | nil, "shuffle": true, "seed": 0, "examples": 1000 | nil,
                  "engine": "compiled" | "interpreter"},
     "best_loss": float | nil, "last_loss": float | nil,
     "losses": tensor float64[step], "eval_losses": [[step, loss], ...],
     "best_params": {name: tensor} | nil}                            (version 2 only)

Version 2 adds ``best_params``: the parameters of the best evaluation, kept for a run that
ends with them (``restore_best``). A checkpoint without them is written as version 1, so
workers that read only version 1 keep reading what they can use.

A reader refuses a document whose ``format`` is not ``chainrule.checkpoint`` or whose
``version`` it does not know, with a :class:`CheckpointError` that says so.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from graphspec.codec import Limits, pack, parse
from graphspec.errors import GraphSpecError
from graphspec.tensors import RawBytes, TensorDecodeError, decode_tensor, encode_tensor_raw

from .errors import ChainruleRuntimeError

CHECKPOINT_FORMAT = "chainrule.checkpoint"
CHECKPOINT_VERSION = 2  # the newest this reader reads; 1 is written when it says everything
# Checkpoints hold whole models: larger bounds than graph documents, still bounded.
CHECKPOINT_LIMITS = Limits(max_bytes=16 * 1024**3, max_depth=16, max_tensor_elements=2**34)

_FIELDS = ("format", "version", "graph_hash", "step", "epoch", "batch_index", "params", "optimizer",
           "optimizer_state", "rng_state", "settings", "best_loss", "last_loss", "losses", "eval_losses")


class CheckpointError(ChainruleRuntimeError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the run it is resumed into."""


@dataclass(eq=False)
class Checkpoint:
    """The state of a training run after ``step`` updates.

    ``epoch``/``batch_index`` give the next batch to run (batch ``batch_index`` of epoch
    ``epoch``, both from 0); ``rng_state`` is the shuffler's state *before* it drew the
    permutation of ``epoch`` (plain data, see :func:`rng_state_to_plain`). ``losses`` is
    the training loss of every step so far, ``eval_losses`` the ``(step, loss)`` pairs
    of every evaluation; ``best_loss`` is the lowest training loss, ``last_loss`` the
    latest. ``settings`` records the trainer's batch size, shuffling, seed and example
    count, which a resumed run must share. Compare two checkpoints with
    ``a.to_bytes() == b.to_bytes()`` (bit for bit).
    """

    graph_hash: str
    step: int
    epoch: int
    batch_index: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, Any]
    optimizer_state: dict[str, Any]
    rng_state: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    best_loss: float | None = None
    last_loss: float | None = None
    losses: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    best_params: dict[str, np.ndarray] | None = None

    # -- bytes -----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        tree = {
            "format": CHECKPOINT_FORMAT,
            "version": 1 if self.best_params is None else 2,
            "graph_hash": self.graph_hash,
            "step": int(self.step),
            "epoch": int(self.epoch),
            "batch_index": int(self.batch_index),
            "params": {name: encode_tensor_raw(np.asarray(a)) for name, a in self.params.items()},
            "optimizer": _encode_tree(self.optimizer),
            "optimizer_state": _encode_tree(self.optimizer_state),
            "rng_state": _encode_tree(self.rng_state),
            "settings": _encode_tree(self.settings),
            "best_loss": None if self.best_loss is None else float(self.best_loss),
            "last_loss": None if self.last_loss is None else float(self.last_loss),
            "losses": encode_tensor_raw(np.asarray(self.losses, dtype=np.float64).reshape(-1)),
            "eval_losses": [[int(s), float(v)] for s, v in self.eval_losses],
        }
        if self.best_params is not None:
            tree["best_params"] = {name: encode_tensor_raw(np.asarray(a)) for name, a in self.best_params.items()}
        try:
            return pack(tree)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CheckpointError(f"cannot encode checkpoint: {exc}") from None

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: Limits = CHECKPOINT_LIMITS) -> "Checkpoint":
        """Read a checkpoint written by :meth:`to_bytes`; :class:`CheckpointError` when it is not one."""
        if isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:1]) in (b"{", b"["):
            raise CheckpointError("not a checkpoint: this looks like JSON; checkpoints are msgpack")
        try:
            tree = parse(data, "msgpack", limits)
        except GraphSpecError as exc:
            raise CheckpointError(f"not a readable checkpoint: {exc.issues[0].message}") from None
        if not isinstance(tree, dict):
            raise CheckpointError(f"not a checkpoint: expected a map, got {type(tree).__name__}")
        fmt = tree.get("format")
        if fmt != CHECKPOINT_FORMAT:
            raise CheckpointError(f"not a checkpoint: format is {fmt!r}, expected {CHECKPOINT_FORMAT!r}")
        version = tree.get("version")
        if version not in (1, 2) or isinstance(version, bool):
            raise CheckpointError(f"unsupported checkpoint version {version!r}: this reader reads versions 1 to "
                                  f"{CHECKPOINT_VERSION} (written by a newer chainrule?)")
        fields = _FIELDS + (("best_params",) if version == 2 else ())
        missing = [f for f in fields if f not in tree]
        if missing:
            raise CheckpointError(f"checkpoint is missing field(s) {', '.join(missing)}")
        unknown = sorted(set(tree) - set(fields))
        if unknown:
            raise CheckpointError(f"checkpoint has unknown field(s) {', '.join(unknown)} for version {version}")
        max_elements = limits.max_tensor_elements

        def tensor(obj: Any, loc: str, *, allow_nonfinite: bool = False) -> np.ndarray:
            try:
                array = decode_tensor(obj, loc, max_elements=max_elements, allow_nonfinite=allow_nonfinite)
            except TensorDecodeError as exc:
                raise CheckpointError(f"checkpoint {exc.issue.location or '/'}: {exc.issue.message}") from None
            return np.array(array, copy=True, order="C")  # writable: optimizers update parameters in place

        if not isinstance(tree["params"], dict):
            raise CheckpointError("checkpoint /params must be a map of tensors")
        params = {name: tensor(obj, f"/params/{name}") for name, obj in tree["params"].items()}
        best_params = tree.get("best_params")
        if best_params is not None:
            if not isinstance(best_params, dict):
                raise CheckpointError("checkpoint /best_params must be a map of tensors or nil")
            best_params = {name: tensor(obj, f"/best_params/{name}") for name, obj in best_params.items()}
        losses = tensor(tree["losses"], "/losses", allow_nonfinite=True)
        if losses.dtype != np.float64 or losses.ndim != 1:
            raise CheckpointError("checkpoint /losses must be a float64 vector")
        eval_losses = tree["eval_losses"]
        if not isinstance(eval_losses, list) or not all(
                isinstance(e, list) and len(e) == 2 and _is_int(e[0]) and isinstance(e[1], float) for e in eval_losses):
            raise CheckpointError("checkpoint /eval_losses must be a list of [step, loss] pairs")
        for key in ("step", "epoch", "batch_index"):
            if not _is_int(tree[key]) or tree[key] < 0:
                raise CheckpointError(f"checkpoint /{key} must be a non-negative integer, got {tree[key]!r}")
        if len(losses) != tree["step"]:
            raise CheckpointError(f"checkpoint has {len(losses)} losses for {tree['step']} steps")
        for key in ("best_loss", "last_loss"):
            if tree[key] is not None and not isinstance(tree[key], float):
                raise CheckpointError(f"checkpoint /{key} must be a number or nil")
        for key in ("optimizer", "settings"):
            if not isinstance(tree[key], dict):
                raise CheckpointError(f"checkpoint /{key} must be a map")
        if not isinstance(tree["graph_hash"], str):
            raise CheckpointError("checkpoint /graph_hash must be a string")
        if tree["rng_state"] is not None and not isinstance(tree["rng_state"], dict):
            raise CheckpointError("checkpoint /rng_state must be a map or nil")
        return cls(
            graph_hash=tree["graph_hash"], step=tree["step"], epoch=tree["epoch"], batch_index=tree["batch_index"],
            params=params, optimizer=tree["optimizer"],
            optimizer_state=_decode_tree(tree["optimizer_state"], "/optimizer_state", tensor),
            rng_state=tree["rng_state"], settings=tree["settings"], best_loss=tree["best_loss"],
            last_loss=tree["last_loss"], losses=[float(v) for v in losses],
            eval_losses=[(int(s), float(v)) for s, v in eval_losses], best_params=best_params,
        )

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint atomically (a temporary file in the same folder, then renamed)."""
        path = Path(path)
        data = self.to_bytes()
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, *, limits: Limits = CHECKPOINT_LIMITS) -> "Checkpoint":
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > limits.max_bytes:
                raise CheckpointError(f"{path} is {size} bytes; the limit is {limits.max_bytes}")
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
        return cls.from_bytes(data, limits=limits)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encode_tree(value: Any) -> Any:
    """Plain data with numpy arrays as raw tensors (numpy scalars become Python numbers)."""
    if isinstance(value, np.ndarray):
        return encode_tensor_raw(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"checkpoint maps need string keys, got {key!r}")
            out[key] = _encode_tree(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_encode_tree(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_tensor(obj: Any) -> bool:
    return isinstance(obj, dict) and set(obj) == {"dtype", "shape", "data"} and isinstance(obj["data"], RawBytes)


def _decode_tree(value: Any, loc: str, tensor) -> Any:
    if _is_tensor(value):
        return tensor(value, loc)
    if isinstance(value, dict):
        return {k: _decode_tree(v, f"{loc}/{k}", tensor) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_tree(v, f"{loc}/{i}", tensor) for i, v in enumerate(value)]
    return value


# -- the shuffler's RNG state as plain data ----------------------------------------------------
def rng_state_to_plain(state: Mapping[str, Any]) -> dict[str, Any]:
    """A PCG64 ``bit_generator.state`` as msgpack-safe plain data (its 128-bit integers as hex)."""
    if state.get("bit_generator") != "PCG64":
        raise CheckpointError(f"only PCG64 generator states can be stored, got {state.get('bit_generator')!r}")
    inner = state["state"]
    return {"bit_generator": "PCG64", "state": format(int(inner["state"]), "x"), "inc": format(int(inner["inc"]), "x"),
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def rng_state_from_plain(plain: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`rng_state_to_plain`: a state to assign to ``Generator.bit_generator.state``."""
    try:
        if plain["bit_generator"] != "PCG64":
            raise ValueError(f"unknown bit generator {plain['bit_generator']!r}")
        state = {"bit_generator": "PCG64", "state": {"state": int(plain["state"], 16), "inc": int(plain["inc"], 16)},
                 "has_uint32": int(plain["has_uint32"]), "uinteger": int(plain["uinteger"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint /rng_state is not a PCG64 state: {exc}") from None
    return state

