"""The JSON Schema of the current format, generated from the one model definition.

``python -m graphspec.jsonschema --write`` refreshes the committed copy under
``graphspec/schema/``; a test fails when the committed copy is stale, and another when
the format's fingerprint changes without a version bump.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from .model import DOCUMENT, NODE
from .ops import OPS
from .structure import Obj, collect_defs, Field
from .versioning import CURRENT_VERSION, FORMAT_ID, format_version

SCHEMA_DIR = Path(__file__).parent / "schema"
FINGERPRINTS = SCHEMA_DIR / "fingerprints.json"


def schema_path(version: tuple[int, int] = CURRENT_VERSION) -> Path:
    return SCHEMA_DIR / f"graph-v{version[0]}.{version[1]}.schema.json"


def _node_rules() -> list[dict]:
    """Per-op constraints: exact arity and the op's own attributes (if op is one of X then ...).
    Ops with the same constraints (the unary elementwise ones, say) share one rule: fewer
    conditionals keep the schema within what schema tools (schemathesis's canonicaliser) follow."""
    by_then: dict[str, tuple[dict, list[str]]] = {}
    for name, op in sorted(OPS.items()):
        attrs = Obj({a.name: Field(a.spec, required=a.required) for a in op.attrs})
        then = {"properties": {
            "inputs": {"minItems": op.arity} if op.variadic else {"minItems": op.arity, "maxItems": op.arity},
            "attrs": attrs.schema(),
        }, **({"required": ["attrs"]} if any(a.required for a in op.attrs) else {})}
        by_then.setdefault(json.dumps(then, sort_keys=True), (then, []))[1].append(name)
    rules = []
    for then, names in by_then.values():
        match = {"const": names[0]} if len(names) == 1 else {"enum": names}
        rules.append({"if": {"properties": {"op": match}, "required": ["op"]}, "then": then})
    return rules


def json_schema() -> dict:
    defs = collect_defs(DOCUMENT)
    for op in OPS.values():
        for attr in op.attrs:
            collect_defs(attr.spec, defs)
    node = dict(defs[NODE.name])
    node["properties"] = dict(node["properties"], op={"enum": sorted(OPS)})
    node["allOf"] = _node_rules()
    defs[NODE.name] = node
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://chainrule.dev/schema/graph-v{format_version(CURRENT_VERSION)}.json",
        "title": f"{FORMAT_ID} {format_version(CURRENT_VERSION)}",
        **DOCUMENT.schema(),
        "$defs": dict(sorted(defs.items())),
    }


def dumps_schema() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


def catalogue_table() -> list[dict]:
    """The op contracts as data (what the docs and the fingerprint see)."""
    return [{
        "name": op.name, "since": op.since, "inputs": list(op.inputs), "differentiable": list(op.grad_inputs),
        **({"variadic": True} if op.variadic else {}),
        "attrs": [{"name": a.name, "required": a.required, "default": a.default, "schema": a.spec.schema()}
                  for a in op.attrs],
        "doc": op.doc,
    } for op in sorted(OPS.values(), key=lambda o: o.name)]


def fingerprint() -> str:
    """sha256 over the schema and the op catalogue: any change to either must bump the version."""
    blob = json.dumps({"schema": json_schema(), "ops": catalogue_table()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def committed_fingerprints() -> dict[str, str]:
    return json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.exists() else {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--write" in argv:
        version, current = format_version(CURRENT_VERSION), fingerprint()
        recorded = committed_fingerprints()
        if recorded.get(version, current) != current:
            print(f"the format changed but its version is still {version}: bump CURRENT_VERSION in "
                  "graphspec/versioning.py (minor for additive changes, major + migration otherwise)",
                  file=sys.stderr)
            return 1
        recorded[version] = current
        FINGERPRINTS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        schema_path().write_text(dumps_schema())
        print(f"wrote {schema_path()} and fingerprint {version}: {current}")
    else:
        sys.stdout.write(dumps_schema())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
