"""Renders the op catalogue as Markdown (docs/ops.md), so the docs cannot drift from the contracts.

    python -m graphspec.catalogue_doc > docs/ops.md
"""

from __future__ import annotations

import json
import sys

from .ops import OPS
from .versioning import CURRENT_VERSION, format_version


def _attr_cell(op) -> str:
    if not op.attrs:
        return "—"
    parts = []
    for a in op.attrs:
        kind = a.spec.expected() if a.name != "value" else "tensor"
        default = "required" if a.required else f"default `{json.dumps(a.default)}`"
        parts.append(f"`{a.name}` ({kind}, {default}): {a.doc}")
    return "<br>".join(parts)


def render() -> str:
    lines = [
        "# Op catalogue",
        "",
        f"Generated from `graphspec/ops.py` for format {format_version(CURRENT_VERSION)} by "
        "`python -m graphspec.catalogue_doc`; a test fails when this page is stale.",
        "",
        "Every op produces one value. Float ops take float32 or float64 and never cast: all float",
        "inputs of one node share a dtype. Binary elementwise ops broadcast like numpy.",
        "Inputs marked * carry no gradient (targets and labels).",
        "",
    ]
    categories: dict[str, list] = {}
    for op in OPS.values():
        categories.setdefault(op.category, []).append(op)
    for category, ops in categories.items():
        lines += [f"## {category.capitalize()}", "", "| op | inputs | attributes | since | description |",
                  "|---|---|---|---|---|"]
        for op in sorted(ops, key=lambda o: o.name):
            inputs = ", ".join(name if i in op.grad_inputs else name + "*" for i, name in enumerate(op.inputs))
            inputs += ", ..." if op.variadic else ""
            lines.append(f"| `{op.name}` | {inputs or '—'} | {_attr_cell(op)} | {op.since} | {op.doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
