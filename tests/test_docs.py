"""Docs say what the code does: embedded documents load, the seed example is the real file,
and the Python snippets in docs/format.md run."""

from __future__ import annotations

import json
import os
import re

import pytest
from conftest import EXAMPLES, ROOT

import graphspec

FORMAT_DOC = (ROOT / "docs" / "format.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", FORMAT_DOC, flags=re.S)


def test_the_seed_document_in_the_docs_is_the_example_file():
    documents = [json.loads(b) for b in blocks("json") if b.lstrip().startswith('{\n  "format"')]
    assert documents, "docs/format.md should show the seed example in full"
    assert documents[0] == json.loads((EXAMPLES / "logistic_regression.json").read_text())


def test_python_snippets_in_the_format_doc_run(capsys):
    runnable = [b for b in blocks("python")
                if ("import graphspec" in b or "from graphspec" in b) and "not runnable" not in b.splitlines()[0]]
    assert runnable
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for snippet in runnable:
            exec(compile(snippet, "docs/format.md", "exec"), {"__name__": "docs_snippet"})
    except graphspec.GraphSpecError as exc:  # snippets that demonstrate errors catch their own
        pytest.fail(f"a docs snippet raised: {exc}")
    finally:
        os.chdir(cwd)


RUNTIME_DOC = ROOT / "docs" / "runtime.md"


def test_runtime_kernel_table_is_generated_from_the_registry():
    from runtime.kernels import KERNELS
    from runtime.kernels.doc import with_table

    text = RUNTIME_DOC.read_text()
    assert text == with_table(text), "run: python -m runtime.kernels.doc"
    for op in KERNELS:
        assert f"| `{op}` |" in text


def test_runtime_doc_seed_walkthrough_runs():
    snippet = re.findall(r"```python\n(.*?)```", RUNTIME_DOC.read_text(), flags=re.S)[0]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(snippet, "docs/runtime.md", "exec"), {"__name__": "docs_snippet", "print": lambda *a: None})
    finally:
        os.chdir(cwd)


def test_readme_python_snippets_run_in_order(tmp_path):
    """The library snippets, here; the one that talks to a running service (service.client) is
    run against a real `chainrule serve` by .ci/readme_smoke.py, with every README command.
    In a scratch folder linked to examples/, so files a snippet writes stay out of the clone."""
    namespace = {"__name__": "readme", "print": lambda *a: None}
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    snippets = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    library = [s for s in snippets if "service.client" not in s]
    assert len(snippets) - len(library) == 1, "one README snippet uses the client; the smoke runs it"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for snippet in library:
            exec(compile(snippet, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert namespace["result"].losses[-1] < namespace["result"].losses[0]
    assert (tmp_path / "my_data.npz").exists()  # the bring-your-own-data snippet ran
