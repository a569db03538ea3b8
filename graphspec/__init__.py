"""graphspec: the chainrule graph format (JSON and msgpack, one model), its op catalogue and validation.

Pure data: depends on nothing but numpy and msgpack.

    import graphspec
    graph = graphspec.load("examples/logistic_regression.json")   # validated, or GraphSpecError
    graphspec.content_hash(graph)                                   # "sha256:..."
    graphspec.dumps(graph, "msgpack")
"""

from .builder import GraphBuilder, Value
from .codec import (
    DEFAULT_LIMITS,
    Limits,
    arrays_equal,
    canonical_bytes,
    content_hash,
    dump,
    dumps,
    from_data,
    load,
    loads,
    parse,
    validate,
)
from .errors import GraphSpecError, Issue
from .model import Graph, Initializer, InputSpec, Metadata, Node, ParamSpec
from .ops import OPS, Attr, OpContract
from .tensors import decode_tensor, encode_tensor_json, encode_tensor_raw
from .types import DTYPES, FLOAT_DTYPES, TensorType
from .validate import Analysis, analyze
from .versioning import CURRENT_VERSION, FORMAT_ID, MIGRATIONS, MigrationRegistry, supported_versions

__version__ = "0.1.0"

__all__ = [
    "Analysis", "Attr", "CURRENT_VERSION", "DEFAULT_LIMITS", "DTYPES", "FLOAT_DTYPES", "FORMAT_ID", "Graph",
    "GraphBuilder", "GraphSpecError", "Initializer", "InputSpec", "Issue", "Limits", "MIGRATIONS", "Metadata",
    "MigrationRegistry", "Node", "OPS", "OpContract", "ParamSpec", "TensorType", "Value", "analyze",
    "arrays_equal", "canonical_bytes", "content_hash", "decode_tensor", "dump", "dumps", "encode_tensor_json",
    "encode_tensor_raw", "from_data", "load", "loads", "parse", "supported_versions", "validate",
]
