"""The ``chainrule`` command line.

Subcommands that need only the graph format import only ``graphspec``, so
``chainrule validate`` stays fast and works without the service's dependencies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import graphspec
from graphspec.codec import encoding_for_path

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            graph = graphspec.load(path)
        except graphspec.GraphSpecError as exc:
            failed += 1
            if args.json:
                print(json.dumps({"file": str(path), "valid": False, "issues": exc.to_list()}))
            else:
                print(f"{path}: invalid, {len(exc.issues)} problem(s)")
                for issue in exc.issues:
                    print(f"  {issue.location or '/'}: {issue.message} [{issue.code}]")
                    if issue.hint:
                        print(f"      hint: {issue.hint}")
            continue
        if args.json:
            print(json.dumps({"file": str(path), "valid": True, "id": graphspec.content_hash(graph),
                              "summary": graph.summary()}))
        else:
            s = graph.summary()
            print(f"{path}: valid ({graph.version}) {graphspec.content_hash(graph)}")
            print(f"  {s['nodes']} nodes, {len(s['inputs'])} inputs, {len(s['parameters'])} parameters "
                  f"({s['parameter_count']} values), loss {s['loss']!r}")
    return 1 if failed else 0


def _cmd_convert(args: argparse.Namespace) -> int:
    try:
        graph = graphspec.load(args.input)
    except graphspec.GraphSpecError as exc:
        print(f"{args.input}: cannot convert an invalid document", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    encoding = args.to or encoding_for_path(args.output)
    Path(args.output).write_bytes(graphspec.dumps(graph, encoding))
    print(f"wrote {args.output} ({encoding}, {graphspec.content_hash(graph)})")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from graphspec.jsonschema import dumps_schema

    sys.stdout.write(dumps_schema())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The seed example: what the format knows about it before anything runs."""
    for name in ("logistic_regression.json", "sigmoid_primitives.json"):
        path = EXAMPLES_DIR / name
        graph = graphspec.load(path)
        types = graph.analysis.types
        print(f"\n{graph.name}  ({path.name}, {graphspec.content_hash(graph)[:19]}...)")
        if graph.metadata.description:
            print(f"  {graph.metadata.description}")
        for index in graph.analysis.order:
            node = graph.nodes[index]
            print(f"  {node.id:>10} = {node.op}({', '.join(node.inputs)})".ljust(44) + f"-> {types[node.id]}")
        print(f"  loss: {graph.loss} = {graph.outputs[graph.loss]}")
    print("\nThe runtime (issue #3) will train these; today the demo shows the validated, shape-inferred graphs.")
    return 0


def _load_graph(path: Path):
    try:
        return graphspec.load(path)
    except graphspec.GraphSpecError as exc:
        print(f"{path}: invalid graph", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None


def _cmd_explain(args: argparse.Namespace) -> int:
    import runtime
    from runtime.data import load_tensors
    from runtime.explain import explain

    graph = _load_graph(args.graph)
    if graph is None:
        return 1
    try:
        inputs = load_tensors(args.inputs)
        params = load_tensors(args.params) if args.params else runtime.init_params(graph, seed=args.seed)
        result = explain(graph, inputs, params)
    except runtime.ChainruleRuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        sys.stdout.write(result.to_text())
    if args.dot:
        Path(args.dot).write_text(result.to_dot())
        print(f"wrote {args.dot} (render it with: dot -Tpng {args.dot} -o graph.png)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chainrule", description="chainrule: train computational graphs.")
    parser.add_argument("--version", action="version", version=f"chainrule {graphspec.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate graph documents (JSON or msgpack); exit 1 when any is invalid")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("convert", help="convert a graph between JSON and msgpack (by the output's extension)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--to", choices=("json", "msgpack"), help="output encoding (default: from the extension)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("schema", help="print the JSON Schema of the graph format")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("explain", help="one forward and backward pass: every node's value and gradient")
    p.add_argument("graph", type=Path)
    p.add_argument("--inputs", type=Path, required=True, help="named input tensors (.npz, .json or .msgpack)")
    p.add_argument("--params", type=Path, help="named parameter tensors (default: the graph's initializers)")
    p.add_argument("--seed", type=int, default=0, help="seed for initializers when --params is not given")
    p.add_argument("--dot", type=Path, help="also write a Graphviz DOT file with values and gradients")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("demo", help="show the seed example graphs")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `chainrule schema | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
