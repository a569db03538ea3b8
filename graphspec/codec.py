"""Reading and writing graph documents: JSON and msgpack, one model, one content hash.

``loads`` never lets anything but :class:`GraphSpecError` escape: size, depth, syntax,
structure, tensor and semantic problems all come back as located issues.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgpack
import numpy as np

from .errors import GraphSpecError, Issue, pointer
from .model import Graph, from_tree, to_tree
from .tensors import TENSOR_EXT_CODE, RawBytes, encode_tensor_json, encode_tensor_raw
from .validate import validate_draft
from .versioning import MIGRATIONS, MigrationRegistry

Encoding = Literal["json", "msgpack"]


@dataclass(frozen=True)
class Limits:
    """Bounds checked before work is spent: a hostile document is refused, not processed."""

    max_bytes: int = 64 * 1024 * 1024
    max_depth: int = 32
    max_nodes: int = 10_000
    max_tensor_elements: int = 16 * 1024 * 1024


DEFAULT_LIMITS = Limits()


def detect_encoding(data: bytes) -> Encoding:
    """A document is a map: msgpack maps start with 0x80-0x8f, 0xde or 0xdf; anything else is read as JSON."""
    first = data[:1]
    return "msgpack" if first and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)) else "json"


def parse(data: bytes | str, encoding: Encoding | None = None, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Bytes to a plain tree (tensors from msgpack as :class:`RawBytes`), within ``limits``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise GraphSpecError([Issue("wrong_type", "", f"expected bytes or str, got {type(data).__name__}")])
    data = bytes(data)
    if len(data) > limits.max_bytes:
        raise GraphSpecError([Issue("too_large", "", f"document is {len(data)} bytes; the limit is {limits.max_bytes}")])
    if not data.strip():
        raise GraphSpecError([Issue("parse_error", "", "empty document")])
    encoding = encoding or detect_encoding(data)
    try:
        tree = _parse_json(data) if encoding == "json" else _parse_msgpack(data, limits)
    except GraphSpecError:
        raise
    except (RecursionError, msgpack.exceptions.StackError):
        raise GraphSpecError([Issue("too_deep", "", f"document nesting exceeds {limits.max_depth} levels")]) from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        reason = str(exc) or type(exc).__name__
        raise GraphSpecError([Issue("parse_error", "", f"not valid {encoding}: {reason}"[:300])]) from None
    _check_plain(tree, limits.max_depth)
    return tree


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed (JSON numbers must be finite)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} in an object")
        out[key] = value
    return out


def _parse_json(data: bytes) -> Any:
    text = data.decode("utf-8-sig")  # a UnicodeDecodeError is a ValueError
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _ext_hook(code: int, payload: bytes) -> RawBytes:
    if code != TENSOR_EXT_CODE:
        raise ValueError(f"unknown msgpack extension type {code}")
    return RawBytes(payload)


def _parse_msgpack(data: bytes, limits: Limits) -> Any:
    return msgpack.unpackb(
        data, raw=False, strict_map_key=True, ext_hook=_ext_hook, use_list=True, object_pairs_hook=_unique_keys,
        max_str_len=limits.max_bytes, max_bin_len=limits.max_bytes, max_ext_len=limits.max_bytes,
        max_array_len=limits.max_bytes, max_map_len=limits.max_bytes,
    )


_SCALARS = (str, int, float, bool, type(None), RawBytes, bytes)


def _check_plain(tree: Any, max_depth: int) -> None:
    """Refuse what no graph document holds, before anything looks at it: nesting deeper than
    ``max_depth``, non-string keys, strings that are not valid Unicode (lone surrogates from
    JSON escapes), and foreign values such as msgpack timestamps."""
    # Each entry's path is (parent's path, key): a JSON pointer is built only for an error, since
    # building one per value cost more than the whole check (a job's data is thousands of values).
    stack: list[tuple[Any, int, tuple | None]] = [(tree, 0, None)]
    while stack:
        value, depth, path = stack.pop()
        if depth > max_depth:
            raise GraphSpecError([Issue("too_deep", _pointer_of(path), f"document nesting exceeds {max_depth} levels")])
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise GraphSpecError([Issue("parse_error", _pointer_of(path),
                                                f"object keys must be strings, got {key!r}"[:200])])
                _check_text(key, path)
                stack.append((item, depth + 1, (path, key)))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (path, i)) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, path)
        elif not isinstance(value, _SCALARS):
            raise GraphSpecError([Issue("parse_error", _pointer_of(path),
                                        f"unsupported value of type {type(value).__name__}")])


def _pointer_of(path: tuple | None) -> str:
    parts = []
    while path is not None:
        path, part = path
        parts.append(part)
    return pointer(*reversed(parts))


def _check_text(text: str, path: tuple | None) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise GraphSpecError([Issue("parse_error", _pointer_of(path),
                                    "string is not valid Unicode (lone surrogate)")]) from None


def from_data(tree: Any, limits: Limits = DEFAULT_LIMITS, migrations: MigrationRegistry = MIGRATIONS) -> Graph:
    """A parsed tree (e.g. a JSON body already decoded) to a validated :class:`Graph`."""
    if not isinstance(tree, dict):
        raise GraphSpecError([Issue("wrong_type", "", "a graph document must be an object")])
    _check_plain(tree, limits.max_depth)
    tree, _ = migrations.upgrade(tree)
    nodes = tree.get("nodes")
    if isinstance(nodes, list) and len(nodes) > limits.max_nodes:
        raise GraphSpecError([Issue("too_large", "/nodes", f"{len(nodes)} nodes; the limit is {limits.max_nodes}")])
    draft = from_tree(tree, max_tensor_elements=limits.max_tensor_elements)
    if draft.graph is None:
        raise GraphSpecError(draft.issues)
    return validate_draft(draft.graph, draft.issues, draft.unresolved)


def loads(data: bytes | str, encoding: Encoding | None = None, *, limits: Limits = DEFAULT_LIMITS,
          migrations: MigrationRegistry = MIGRATIONS) -> Graph:
    """Read a JSON or msgpack document (detected when ``encoding`` is None) and validate it."""
    return from_data(parse(data, encoding, limits), limits, migrations)


def validate(graph: Graph, limits: Limits = DEFAULT_LIMITS) -> Graph:
    """Check a graph made in memory exactly as a reader would check its document.

    Returns the graph as read back (defaults explicit, analysis attached), so code that
    built a :class:`Graph` by hand gets the same guarantees as code that loaded one.
    """
    return from_data(to_tree(graph, encode_tensor_raw), limits)


def load(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS,
         migrations: MigrationRegistry = MIGRATIONS) -> Graph:
    """Read a document from a file; the encoding comes from the content."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise GraphSpecError([Issue("too_large", "", f"{path} is {size} bytes; the limit is {limits.max_bytes}")])
        data = path.read_bytes()
    except OSError as exc:
        raise GraphSpecError([Issue("io_error", "", f"cannot read {path}: {exc.strerror or exc}")]) from None
    return loads(data, limits=limits, migrations=migrations)


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, RawBytes):
        return msgpack.ExtType(TENSOR_EXT_CODE, obj.data)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def pack(tree: Any) -> bytes:
    """msgpack bytes of a plain tree whose tensors are :func:`encode_tensor_raw` dicts (ext type 1)."""
    return msgpack.packb(tree, default=_msgpack_default, use_bin_type=True)


def dumps(graph: Graph, encoding: Encoding = "json", *, indent: int | None = 2) -> bytes:
    """Encode a graph: readable JSON (small tensors inline) or compact msgpack (raw tensor bytes)."""
    if encoding == "json":
        tree = to_tree(graph, encode_tensor_json)
        if indent is None:
            return json.dumps(tree, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        return (pretty_json(tree, indent) + "\n").encode("utf-8")
    if encoding == "msgpack":
        return pack(to_tree(graph, encode_tensor_raw))
    raise ValueError(f"unknown encoding {encoding!r}; use 'json' or 'msgpack'")


def pretty_json(value: Any, indent: int = 2, width: int = 100, _level: int = 0) -> str:
    """Indented JSON that keeps short arrays and objects on one line (shapes, rows, small nodes)."""
    flat = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
    if not isinstance(value, (dict, list)) or len(flat) + indent * _level <= width:
        return flat
    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {pretty_json(v, indent, width, _level + 1)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if not any(isinstance(v, (dict, list)) for v in value):  # numbers: fill lines, not one per line
        lines, line = [], ""
        for text in (json.dumps(v, ensure_ascii=False, allow_nan=False) for v in value):
            if line and len(inner) + len(line) + len(text) + 2 > width:
                lines.append(inner + line.rstrip())
                line = ""
            line += text + ", "
        lines.append(inner + line.rstrip(", "))
        return "[\n" + "\n".join(lines) + "\n" + pad + "]"
    items = [inner + pretty_json(v, indent, width, _level + 1) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def dump(graph: Graph, path: str | os.PathLike, encoding: Encoding | None = None) -> None:
    """Write a graph; the encoding follows the file extension (.msgpack/.mpk -> msgpack) unless given."""
    path = Path(path)
    encoding = encoding or encoding_for_path(path)
    path.write_bytes(dumps(graph, encoding))


def encoding_for_path(path: str | os.PathLike) -> Encoding:
    return "msgpack" if Path(path).suffix.lower() in (".msgpack", ".mpk", ".msgp") else "json"


def canonical_bytes(graph: Graph) -> bytes:
    """The canonical encoding: sorted-key compact JSON, every tensor as base64, defaults left out.

    It depends only on the graph's content, so a graph read from JSON or from msgpack,
    with inline or base64 tensors, has the same canonical bytes and content hash. Values
    equal to their defaults are left out so that a later minor version adding an
    attribute with a default does not change the id of any existing graph.
    """
    tree = to_tree(graph, lambda a: encode_tensor_json(a, inline_limit=-1), explicit_defaults=False)
    return json.dumps(tree, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def content_hash(graph: Graph) -> str:
    """``sha256:<hex>`` of the canonical encoding: the graph's id."""
    return "sha256:" + hashlib.sha256(canonical_bytes(graph)).hexdigest()


def arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (NaN payloads and -0.0 included)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes(order="C") == b.tobytes(order="C")
