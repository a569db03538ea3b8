"""Gates that keep the format honest: committed schema, fingerprint, compat corpus, generated docs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import EXAMPLES, ROOT

import graphspec
from graphspec import jsonschema as gs_schema
from graphspec.catalogue_doc import render
from graphspec.versioning import CURRENT_VERSION, format_version

COMPAT = ROOT / "tests" / "compat"
VALIDATOR = jsonschema.Draft202012Validator(gs_schema.json_schema())


def test_committed_schema_is_current():
    committed = gs_schema.schema_path().read_text()
    assert committed == gs_schema.dumps_schema(), "run: python -m graphspec.jsonschema --write"


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(json.loads(gs_schema.schema_path().read_text()))


def test_format_fingerprint_matches_the_committed_one_for_this_version():
    """Changing a field, an op or an attribute without bumping the version fails here."""
    recorded = gs_schema.committed_fingerprints()
    version = format_version(CURRENT_VERSION)
    assert version in recorded, "record it: python -m graphspec.jsonschema --write"
    assert recorded[version] == gs_schema.fingerprint(), (
        f"the format changed but its version is still {version}: bump CURRENT_VERSION "
        "(minor for additive changes, major + migration otherwise), then record the new fingerprint")


def test_every_op_entry_names_a_released_version():
    released = {tuple(map(int, v.split("."))) for v in gs_schema.committed_fingerprints()}
    for op in graphspec.OPS.values():
        assert tuple(map(int, op.since.split("."))) in released, op.name


def compat_documents():
    return sorted(p for p in COMPAT.rglob("*") if p.suffix in (".json", ".msgpack") and p.name != "MANIFEST.json")


def test_compat_corpus_covers_every_released_version():
    versions = {p.name for p in COMPAT.iterdir() if p.is_dir()}
    assert versions == set(gs_schema.committed_fingerprints())


@pytest.mark.parametrize("path", compat_documents(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_compat_documents_keep_loading_with_stable_ids(path: Path):
    graph = graphspec.load(path)
    manifest = json.loads((path.parent / "MANIFEST.json").read_text())
    if manifest["version"].split(".")[0] == str(CURRENT_VERSION[0]):
        # within a major, a graph's id (content hash) never changes
        assert graphspec.content_hash(graph) == manifest["content_hashes"][path.name]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")) + [p for p in compat_documents() if p.suffix == ".json"],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_json_schema_accepts_valid_documents(path):
    VALIDATOR.validate(json.loads(path.read_text()))


def test_json_schema_and_validator_agree_on_structural_mistakes(example_tree):
    mistakes = [
        lambda t: t.pop("nodes"),
        lambda t: t.update(extra=1),
        lambda t: t["nodes"][0].update(inputs=["x1"]),                 # arity
        lambda t: t["nodes"][5]["attrs"].update(eps=0),                # exclusiveMinimum
        lambda t: t["nodes"][5]["attrs"].update(epsilon=1e-7),         # unknown attribute
        lambda t: t["nodes"][0].update(op="matmull"),
        lambda t: t["parameters"]["w1"].update(value={"dtype": "float64", "shape": [], "data": 0.0}),
        lambda t: t["inputs"]["x1"].update(shape=[0]),
        lambda t: t["inputs"].update({"bad name": {"dtype": "float32", "shape": []}}),
    ]
    for mistake in mistakes:
        tree = example_tree("logistic_regression")
        mistake(tree)
        assert list(VALIDATOR.iter_errors(tree)), mistake
        with pytest.raises(graphspec.GraphSpecError):
            graphspec.from_data(tree)


def test_ops_doc_is_generated_from_the_catalogue():
    assert (ROOT / "docs" / "ops.md").read_text() == render(), "run: python -m graphspec.catalogue_doc > docs/ops.md"
    for name in graphspec.OPS:
        assert f"`{name}`" in render()


def test_schema_tools_can_follow_the_schema():
    """schemathesis (the API conformance tests) generates documents from this schema through
    jsonschema-rs's canonical form; past ~50 per-op conditionals it gives up on the whole
    document (format 1.2's 50 ops did), so ops with the same constraints share one rule."""
    import jsonschema_rs
    from jsonschema_rs import canonical

    form = jsonschema_rs.canonicalize(gs_schema.json_schema(), draft=jsonschema_rs.Draft202012)
    assert form.kind is not canonical.CanonicalKind.RAW
