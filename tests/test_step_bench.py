"""Smoke test of bench/step_bench.py: it runs, checks gradients and writes its JSON (no timing assertions)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_bench_quick_smoke(tmp_path):
    out = tmp_path / "step_bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "step_bench.py"), "--quick", "--workloads", "W1_b1",
         "--impls", "chainrule,interp,hand", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    cells = report["results"]["W1_b1"]
    assert set(cells) == {"chainrule", "interp", "hand"}
    for cell in cells.values():
        assert cell["median_us"] > 0
    for impl in ("chainrule", "interp"):  # both engines' gradients were checked against hand numpy
        assert report["grad_check"]["W1_b1"][impl]["ok"] is True
    assert report["setup"]["W1_b1"]["chainrule"]["compile_ms"] > 0
    assert report["setup"]["W1_b1"]["chainrule"]["load_params_ms"] > 0
    assert report["memory"]["W1_b1"]["chainrule"]["peak_bytes"] > 0
