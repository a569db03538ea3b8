from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest_plugins = ["browser"]  # the `browser` and `offline_page` fixtures (tests/browser.py)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
def example_tree():
    """A fresh, mutable copy of an example document as a plain tree."""
    cache: dict[str, dict] = {}

    def load(name: str) -> dict:
        if name not in cache:
            cache[name] = json.loads((EXAMPLES / f"{name}.json").read_text())
        return copy.deepcopy(cache[name])

    return load
