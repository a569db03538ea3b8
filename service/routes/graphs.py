"""Graph documents: store, read back, read their analysis, explain; and the format's JSON Schema."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

import graphspec
from graphspec.jsonschema import json_schema

from ..bodies import JSONBytesResponse, MsgpackResponse, negotiated, read_tree, wants_msgpack
from ..deps import ExplainRequestBody, SettingsDep, StoreDep, TenantDep, get_tenant
from ..examples import EXPLAIN_EXAMPLE, SEED_GRAPH
from ..explaining import explain_graph
from ..limits import graph_limits
from ..models import ExplainResponse, GraphAnalysis, GraphCreated
from ..openapi import MSGPACK_TOO, request_body
from ..problems import conflict, graph_problem, not_found, problem_responses
from ..views import graph_analysis

router = APIRouter(prefix="/v1", tags=["graphs"], dependencies=[Depends(get_tenant)],
                   responses=problem_responses(429))  # every route: the tenant's request rate

GraphId = Annotated[str, Path(description="a graph id as returned by POST /v1/graphs, 'sha256:...'",
                              examples=["sha256:6ca77061b38115e0c39b70303e22d7aa579b989998cb1477899da21f8e6bfab5"])]


async def graph_body(request: Request, settings: SettingsDep) -> graphspec.Graph:
    """The request body as a validated graph (JSON or msgpack); 422 lists every problem with its location."""
    limits = graph_limits(settings)
    tree = await read_tree(request, limits)
    try:
        return await run_in_threadpool(graphspec.from_data, tree, limits)
    except graphspec.GraphSpecError as exc:
        raise graph_problem(exc) from None


def stored_graph(graph_id: GraphId, tenant: TenantDep, store: StoreDep) -> graphspec.Graph:
    graph = store.get_graph(tenant, graph_id)
    if graph is None:
        raise not_found("graph", graph_id)
    return graph


GraphBody = Annotated[graphspec.Graph, Depends(graph_body)]
StoredGraph = Annotated[graphspec.Graph, Depends(stored_graph)]


@router.post(
    "/graphs", status_code=201, response_model=GraphCreated,
    summary="Store a graph document",
    description="Validates a graph document (JSON or msgpack by Content-Type) within the server's limits "
                "(max_nodes, max_tensor_elements) and stores it for this tenant under its content hash. "
                "Storing the same document again returns the same id and keeps it for another `graph_retention_s` "
                "(a graph expires that long after it was last stored or used by a job, and lives at least as "
                "long as the jobs that train it); its bytes count toward the tenant's `max_graph_bytes` (429). "
                "An invalid document is a 422 whose "
                "`errors` list every problem with its JSON-pointer location in the document.",
    responses={201: {"description": "Stored; Location is the graph's URL"},
               **problem_responses(400, 401, 413, 415, 422, 503)},
    openapi_extra=request_body("GraphDocument", SEED_GRAPH, "a chainrule graph document (see GET /v1/schema)"),
)
def create_graph(graph: GraphBody, tenant: TenantDep, store: StoreDep, settings: SettingsDep,
                 response: Response) -> GraphCreated:
    graph_id = store.put_graph(tenant, graph, ttl_s=settings.graph_retention_s,
                               max_bytes=settings.limits_for(tenant).max_graph_bytes)
    response.headers["Location"] = f"/v1/graphs/{graph_id}"
    return GraphCreated(id=graph_id, summary=graph.summary())


@router.get(
    "/graphs/{graph_id}", response_class=JSONResponse,
    summary="Read a stored graph document",
    description="The document as stored (canonical form, defaults explicit): JSON, or msgpack with "
                "`Accept: application/msgpack`.",
    responses={200: {"description": "The graph document",
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GraphDocument"}},
                                 "application/msgpack": {}}},
               **problem_responses(401, 404, 503)},
)
def read_graph(graph_id: GraphId, graph: StoredGraph, request: Request) -> Response:
    headers = {"ETag": f'"{graph_id}"', "Vary": "Accept"}
    if wants_msgpack(request):
        return MsgpackResponse(graphspec.dumps(graph, "msgpack"), headers=headers)
    return JSONBytesResponse(graphspec.dumps(graph, "json", indent=None), headers=headers)


@router.delete(
    "/graphs/{graph_id}", status_code=204,
    summary="Delete a stored graph",
    description="Deletes a stored graph no stored job trains (its bytes stop counting toward the tenant's "
                "`max_graph_bytes`). A graph that jobs still use is a 409 naming some of them: delete those "
                "jobs first (DELETE /v1/jobs/{job_id}), or wait for them to expire.",
    responses={204: {"description": "Deleted"}, **problem_responses(401, 404, 409, 503)},
)
def delete_graph(graph_id: GraphId, tenant: TenantDep, store: StoreDep) -> Response:
    users = store.graph_users(tenant, graph_id)
    if users:
        raise conflict(f"graph {graph_id} is used by stored jobs ({', '.join(users)}); delete them first "
                       "(DELETE /v1/jobs/{job_id}) or wait for them to expire", jobs=users)
    if not store.delete_graph(tenant, graph_id):
        raise not_found("graph", graph_id)
    return Response(status_code=204)


@router.get(
    "/graphs/{graph_id}/analysis", response_model=GraphAnalysis,
    summary="Read what validation inferred about a stored graph",
    description="Before anything runs: the node ids in execution order, and the dtype and shape inferred for "
                "every input, parameter and node (shapes may hold symbols such as \"N\", the same size wherever "
                "they appear, or null for a size not known until the data is), with the graph's outputs and "
                "loss. The graph document itself is `GET /v1/graphs/{graph_id}`; this is kept apart so that the "
                "document reads back exactly as stored.",
    responses={200: MSGPACK_TOO, **problem_responses(401, 404, 503)},
)
def read_analysis(graph_id: GraphId, graph: StoredGraph, request: Request) -> Response:
    return negotiated(request, graph_analysis(graph_id, graph), headers={"ETag": f'"{graph_id}"'})


@router.post(
    "/graphs/{graph_id}/explain", response_model=ExplainResponse,
    summary="Explain one forward and backward pass",
    description="Runs the stored graph once on `inputs` (and `params`, or the graph's initial parameters "
                "drawn with `seed`) and returns every node's value and the gradient d(loss)/d(value) that "
                "flowed back to it, in execution order. The inputs' total element count is capped by the "
                "server's max_explain_elements (413).",
    responses=problem_responses(400, 401, 404, 413, 415, 422, 503),
    openapi_extra=request_body("ExplainRequest", EXPLAIN_EXAMPLE, "inputs, and optionally params or a seed"),
)
def explain(graph: StoredGraph, body: ExplainRequestBody, settings: SettingsDep) -> ExplainResponse:
    return explain_graph(graph, body, settings)


@router.get(
    "/schema", response_model=dict[str, Any],
    summary="The graph format's JSON Schema",
    description="JSON Schema (draft 2020-12) of the current graph format, generated from graphspec's model.",
    responses=problem_responses(401),
)
def read_schema() -> dict[str, Any]:
    return _schema()


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json_schema()
