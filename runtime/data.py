"""Named-tensor files: data sets, explain inputs and trained parameters.

Three forms, one meaning (a map of name -> tensor):

* ``.npz`` — numpy's archive (read with ``allow_pickle=False``: never unpickle);
* ``.json`` — ``{"x1": {"dtype": ..., "shape": ..., "data": [...]}, ...}``, the graphspec tensor encoding;
* ``.msgpack`` — the same map in msgpack, tensors as raw-bytes extensions.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

import graphspec
from graphspec.codec import DEFAULT_LIMITS, Limits, pack, pretty_json
from graphspec.tensors import TensorDecodeError, decode_tensor, encode_tensor_json, encode_tensor_raw

from .errors import ChainruleRuntimeError


class DataFileError(ChainruleRuntimeError, ValueError):
    """A tensor file that cannot be read; the message names the file and the entry."""


HOW_TO_MAKE = ("chainrule reads named tensors from .npz (np.savez(path, x=..., y=...) with the graph's input "
               "names as keys), .json or .msgpack (runtime.save_tensors(path, {name: array}))")
_SUFFIXES = {".npz": "npz", ".msgpack": "msgpack", ".mpk": "msgpack", ".msgp": "msgpack", ".json": "json"}


def _format(path: Path) -> str:
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        # .npy holds one unnamed array and .csv unnamed columns: which graph input is which
        # would be a guess, so they are refused with the way to write a file that says.
        raise DataFileError(f"{path}: unsupported tensor file type {path.suffix or '(no extension)'!r}; "
                            f"{HOW_TO_MAKE}") from None


def load_tensors(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Read a map of named tensors from .npz, .json or .msgpack (by the extension; any other is
    refused with how to make such a file)."""
    path = Path(path)
    fmt = _format(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if fmt == "npz":
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError) as exc:
            raise DataFileError(f"{path} is not a readable .npz archive: {exc}") from None
    try:
        tree = graphspec.parse(raw, limits=limits)
    except graphspec.GraphSpecError as exc:
        raise DataFileError(f"{path}: {exc.issues[0]} ({HOW_TO_MAKE})") from None
    return tensors_from_tree(tree, str(path), limits=limits)


def tensors_from_tree(tree, source: str = "data", *, limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Decode ``{name: tensor}`` (already parsed JSON/msgpack) into arrays; errors name the entry."""
    if not isinstance(tree, dict):
        raise DataFileError(f"{source}: expected a map of name -> tensor")
    out = {}
    for name, obj in tree.items():
        try:
            out[name] = decode_tensor(obj, graphspec.errors.pointer(name), max_elements=limits.max_tensor_elements)
        except TensorDecodeError as exc:
            raise DataFileError(f"{source}: {exc.issue}") from None
    return out


def check_tensor_path(path: str | os.PathLike) -> None:
    """Refuse a file name whose extension chainrule cannot write or read (before hours of
    training end in a file that cannot be written)."""
    _format(Path(path))


def save_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Write named tensors; the form follows the extension (.npz, .json or .msgpack)."""
    path = Path(path)
    fmt = _format(path)
    if fmt == "npz":
        with path.open("wb") as f:
            np.savez(f, **tensors)
    elif fmt == "msgpack":
        path.write_bytes(pack({k: encode_tensor_raw(np.asarray(v)) for k, v in tensors.items()}))
    else:
        path.write_text(pretty_json({k: encode_tensor_json(np.asarray(v)) for k, v in tensors.items()}) + "\n")
