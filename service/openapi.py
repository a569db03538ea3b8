"""OpenAPI additions: request bodies in JSON or msgpack, and the schemas they reference.

Bodies that may be msgpack are read by dependencies (service/deps.py), not by FastAPI,
so their schemas (pydantic models and the graphspec document schema) are added here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from graphspec.jsonschema import json_schema

from .models import DryRun, ExplainRequest, JobRequest, Problem, SweepRequest, Tensor

REF = "#/components/schemas/{model}"
# A response that answers msgpack too when asked (Accept: application/msgpack), for `responses=`.
MSGPACK_TOO = {"content": {"application/msgpack": {}}}
_GRAPH_PREFIX = "Graph"


def request_body(schema_name: str, example: Any, description: str) -> dict[str, Any]:
    """An ``openapi_extra`` entry: a required body in JSON or msgpack with ``example``."""
    ref = {"$ref": REF.format(model=schema_name)}
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": ref, "example": example},
        "application/msgpack": {"schema": ref},
    }}}


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                name = v.removeprefix("#/$defs/")
                out[k] = REF.format(model=_GRAPH_PREFIX + name[:1].upper() + name[1:])
            else:
                out[k] = _rewrite_refs(v)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def graph_document_schemas() -> dict[str, Any]:
    """graphspec's JSON Schema as components: GraphDocument plus its definitions (GraphNode...)."""
    schema = json_schema()
    defs = schema.pop("$defs", {})
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    out = {"GraphDocument": _rewrite_refs(schema)}
    for name, definition in defs.items():
        out[_GRAPH_PREFIX + name[:1].upper() + name[1:]] = _rewrite_refs(definition)
    return out


def extra_schemas() -> dict[str, Any]:
    _, top = models_json_schema([(JobRequest, "validation"), (ExplainRequest, "validation"),
                                 (SweepRequest, "validation"),
                                 (Problem, "serialization"), (Tensor, "serialization"),
                                 (DryRun, "serialization")], ref_template=REF)
    return {**top.get("$defs", {}), **graph_document_schemas()}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 description=app.description, routes=app.routes, tags=app.openapi_tags)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in extra_schemas().items():
                components.setdefault(name, definition)
            _problems_for_validation_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problems_for_validation_errors(schema: dict[str, Any]) -> None:
    """FastAPI documents its own 422 shape; this API answers every error with a Problem."""
    problem = {"description": "Invalid request: located `errors` (JSON pointers)",
               "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            if "HTTPValidationError" in str(responses.get("422", "")):
                responses["422"] = problem
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
