"""One forward and backward pass with every value and gradient kept (runtime.explain)."""

from __future__ import annotations

import numpy as np

import graphspec
import runtime
from graphspec.ops import OPS
from graphspec.types import ContractViolation, TensorType

from .data import decode_map, input_problem
from .limits import declared_totals, graph_limits
from .models import ExplainRequest, ExplainResponse
from .problems import too_large, unprocessable
from .settings import ApiSettings
from .views import json_safe


def explain_graph(graph: graphspec.Graph, req: ExplainRequest, settings: ApiSettings) -> ExplainResponse:
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
    shown = _elements_shown(graph, {**params, **inputs})
    if shown is not None and shown > settings.max_explain_elements:
        raise too_large(f"explaining these inputs would show {shown} values (every node's value and gradient); "
                        f"explain shows at most {settings.max_explain_elements}",
                        location="/inputs", limit=settings.max_explain_elements)
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


def _elements_shown(graph: graphspec.Graph, arrays: dict[str, np.ndarray]) -> int | None:
    """Every value an explanation holds (inputs, parameters, node values; gradients double
    it), from the concrete shapes and the op contracts, before anything is computed: a
    small input can broadcast against parameters into a huge value. None when the shapes do
    not fit; the run then reports where."""
    types = {name: TensorType(np.asarray(a).dtype.name, tuple(np.shape(a))) for name, a in arrays.items()}
    for i in graph.analysis.order:
        node = graph.nodes[i]
        try:
            types[node.id] = OPS[node.op].infer([types[ref] for ref in node.inputs], node.attrs)
        except (ContractViolation, KeyError):
            return None
    return 2 * sum(int(np.prod(t.shape, dtype=object)) for t in types.values())
