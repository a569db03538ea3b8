"""One forward and backward pass with every value and gradient kept (runtime.explain)."""

from __future__ import annotations

import graphspec
import runtime
from worker.settings import Settings

from .data import decode_map, input_problem
from .limits import declared_totals, graph_limits
from .models import ExplainRequest, ExplainResponse
from .problems import too_large, unprocessable
from .views import json_safe


def explain_graph(graph: graphspec.Graph, req: ExplainRequest, settings: Settings) -> ExplainResponse:
    elements = declared_totals(req.inputs)[0]
    if elements > settings.max_explain_elements:
        raise too_large(f"the inputs have {elements} elements; explain takes at most {settings.max_explain_elements}",
                        location="/inputs", limit=settings.max_explain_elements)
    limits = graph_limits(settings)
    inputs = decode_map(req.inputs, "/inputs", limits)
    if req.params is not None:
        params = decode_map(req.params, "/params", limits)
    else:
        params = runtime.init_params(graph, seed=req.seed or 0)
    try:
        explanation = runtime.explain(graph, inputs, params)
    except runtime.InputError as exc:
        prefix = "/params" if exc.name in graph.parameters and req.params is not None else "/inputs"
        raise input_problem(exc, prefix) from None
    except runtime.ExecutionError as exc:
        raise unprocessable(str(exc), [{"code": "execution_error", "location": "/inputs", "message": str(exc)}],
                            kind="execution-error", title="The graph cannot run on these inputs") from None
    except runtime.ChainruleRuntimeError as exc:
        raise unprocessable(str(exc), [{"code": "runtime_error", "location": "/inputs", "message": str(exc)}],
                            kind="execution-error", title="The graph cannot run on these inputs") from None
    return ExplainResponse.model_validate(json_safe(explanation.to_dict()))
