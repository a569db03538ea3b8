"""Metrics a training run reports beside its loss: every scalar output of the graph, and an
``accuracy`` for a classification loss that has none.

    graph, names = with_metrics(graph)    # names: the outputs each step reports, e.g. ["accuracy"]

A graph whose loss is ``softmax_cross_entropy`` (classes on the last axis), ``bce``
(probabilities: threshold 0.5) or ``bce_with_logits`` (logits: threshold 0) and that has no
output named ``accuracy`` gets one: an ``accuracy`` node (format 1.2) on the loss's own inputs.
Any other scalar output a graph declares is a metric too (the extension point: add the output).
Metrics are values, not gradients: they do not change what the loss trains.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import graphspec
from graphspec import Graph
from graphspec.model import Node
from graphspec.versioning import format_version, parse_version

CLASSIFICATION = {"softmax_cross_entropy": None, "bce": 0.5, "bce_with_logits": 0.0}  # loss op -> threshold
ACCURACY = "accuracy"


# content hash -> (the graph with its accuracy output, or None when none is added; metric names).
# Adding the output re-validates the whole graph (~0.3 ms for the seed graph), and a worker asks
# for every job (step_metric_names and the Trainer), the API for every submission: the same few
# graphs each time (issue #19's profile: two of the three validations per job). Bounded: cleared
# when full.
_CACHE: dict[str, tuple[Graph | None, tuple[str, ...]]] = {}
_CACHE_SIZE = 256
_CACHE_LOCK = threading.Lock()


def with_metrics(graph: Graph) -> tuple[Graph, list[str]]:
    """``graph`` (with an accuracy output added when its loss classifies) and the names of its metric outputs.

    Remembered per graph content: graphs with the same content get the same graph object back
    (a validated graph is a value: it is never modified)."""
    if graph.analysis is None:
        graph = graphspec.validate(graph)
    key = graphspec.content_hash(graph)
    with _CACHE_LOCK:
        known = _CACHE.get(key)
    if known is None:
        augmented, names = _with_metrics(graph)
        known = (None if augmented is graph else augmented, tuple(names))
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.clear()
            _CACHE[key] = known
    augmented, names = known
    return (graph if augmented is None else augmented), list(names)


def _with_metrics(graph: Graph) -> tuple[Graph, list[str]]:
    loss_node = graph.node(graph.outputs[graph.loss]) if graph.outputs[graph.loss] in {n.id for n in graph.nodes} \
        else None
    if loss_node is not None and loss_node.op in CLASSIFICATION and ACCURACY not in graph.outputs \
            and _reduced(loss_node):
        taken = {n.id for n in graph.nodes} | set(graph.inputs) | set(graph.parameters)
        node_id = next(f"{ACCURACY}_{k}" if k else ACCURACY for k in range(len(taken) + 1)
                       if (f"{ACCURACY}_{k}" if k else ACCURACY) not in taken)
        threshold = CLASSIFICATION[loss_node.op]
        node = Node(node_id, ACCURACY, tuple(loss_node.inputs[:2]),
                    {} if threshold is None else {"threshold": threshold},
                    doc="added by the trainer: the fraction classified right")
        version = max(parse_version(graph.version), parse_version(graphspec.OPS[ACCURACY].since))
        graph = graphspec.validate(replace(graph, nodes=[*graph.nodes, node], outputs={**graph.outputs, ACCURACY: node_id},
                                           version=format_version(version), analysis=None))
    types = graph.analysis.types
    names = [name for name, ref in graph.outputs.items()
             if name != graph.loss and len(types[ref].shape) == 0 and types[ref].dtype.startswith("float")]
    return graph, names


def _reduced(node: Node) -> bool:
    """A loss reduced to a scalar (mean or sum): per-element losses have no single accuracy."""
    return node.attrs.get("reduction", "mean") != "none"
