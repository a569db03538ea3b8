"""docs/ui.md's screenshots come from scripts/ui_screenshots.py, a real run (`chainrule serve`,
the Submit page, Chromium): run it here so it cannot rot, into a scratch folder."""

from __future__ import annotations

import importlib.util
import struct

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.integration


def load_script():
    spec = importlib.util.spec_from_file_location("ui_screenshots", ROOT / "scripts" / "ui_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_screenshot_script_walks_every_page_of_the_docs(tmp_path, pytestconfig):
    from browser import chromium_executable

    chromium_executable(pytestconfig)  # installed when missing; the script starts its own Playwright
    script = load_script()
    assert script.main(["--out", str(tmp_path)]) == 0
    written = sorted(p.stem for p in tmp_path.glob("*.png"))
    assert written == sorted(script.SHOTS)
    for name in script.SHOTS:
        width, height = png_size((tmp_path / f"{name}.png").read_bytes())
        assert width == (390 if name.endswith("narrow") else 1280) and height >= 600, (name, width, height)
    docs = (ROOT / "docs" / "ui.md").read_text()
    for name in script.SHOTS:
        assert f"ui/{name}.png" in docs, f"docs/ui.md does not show {name}.png"
