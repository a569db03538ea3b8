"""Renders the kernel table into docs/runtime.md (between the ops markers).

    python -m runtime.kernels.doc          # rewrite the table in docs/runtime.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from graphspec import OPS

from . import KERNELS

BEGIN, END = "<!-- kernel-table:begin -->", "<!-- kernel-table:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "runtime.md"


def render_table() -> str:
    lines = ["| op | gradient flows to | VJP reads | computes |", "|---|---|---|---|"]
    for name in sorted(KERNELS):
        k, contract = KERNELS[name], OPS[name]
        to = ", ".join(contract.inputs[i] for i in contract.grad_inputs) + (" (each)" if contract.variadic else "") or "—"
        reads = ([contract.inputs[i] for i in k.saves_inputs] + (["output"] if k.saves_out else [])
                 + (["residuals of its forward"] if k.residuals else []))
        lines.append(f"| `{name}` | {to} | {', '.join(reads) or 'shapes only'} | {contract.doc} |")
    return "\n".join(lines)


def with_table(text: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{DOC} lacks the {BEGIN} ... {END} markers")
    return pattern.sub(lambda _: f"{BEGIN}\n{render_table()}\n{END}", text)


if __name__ == "__main__":
    DOC.write_text(with_table(DOC.read_text()))
    print(f"updated the kernel table in {DOC}", file=sys.stderr)
