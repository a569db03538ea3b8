"""The commands that need no server: ``validate``, ``convert``, ``schema``, ``demo``, ``explain``
and ``train``.

Each takes the parsed arguments and returns the exit code. ``validate``, ``convert`` and
``schema`` need only ``graphspec``; the others import the runtime when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import graphspec
from graphspec.codec import encoding_for_path


def validate(args: argparse.Namespace) -> int:
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


def convert(args: argparse.Namespace) -> int:
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


def schema(args: argparse.Namespace) -> int:
    from graphspec.jsonschema import dumps_schema

    sys.stdout.write(dumps_schema())
    return 0


def demo(args: argparse.Namespace) -> int:
    """The seed example end to end: validate, train, then show backpropagation node by node."""
    import numpy as np

    import runtime
    from runtime.data import load_tensors

    from ..examples import EXAMPLES_DIR
    from ..progress import ProgressBar

    graph = graphspec.load(EXAMPLES_DIR / "logistic_regression.json")
    types = graph.analysis.types
    print(f"1. The seed graph ({graphspec.content_hash(graph)[:19]}...): {graph.metadata.description}")
    for index in graph.analysis.order:
        node = graph.nodes[index]
        print(f"   {node.id:>4} = {node.op}({', '.join(node.inputs)})".ljust(34) + f"-> {types[node.id]}")

    data = load_tensors(EXAMPLES_DIR / "data" / "seed_data.json")
    print(f"\n2. Training it with SGD (lr 0.5, batches of 16) on {len(data['y'])} separable points:")
    bar = ProgressBar(args.steps, stream=sys.stdout)
    result = runtime.Trainer(graph, runtime.SGD(lr=0.5), batch_size=16, seed=0).fit(
        data, runtime.init_params(graph), steps=args.steps, callback=lambda r: bar.update(r.step, r.loss))
    bar.close(result.steps, result.losses[-1])
    learned = ", ".join(f"{k} = {float(v):.3f}" for k, v in result.params.items())
    print(f"   learned {learned}")

    primitives = graphspec.load(EXAMPLES_DIR / "sigmoid_primitives.json")
    example = load_tensors(EXAMPLES_DIR / "data" / "seed_one_example.json")
    explanation = runtime.explain(primitives, example, result.params)
    print("\n3. One example through the sigmoid built from primitive nodes (x-1, exp, +1, 1/x):\n")
    print("   " + explanation.to_text().replace("\n", "\n   ").rstrip())
    a, z = explanation.row("a"), explanation.row("z")
    sigma = float(a.value[0])
    print(f"\n   d a/d z = grad(z) / grad(a) = {float(z.grad[0] / a.grad[0]):.6f}"
          f" = sigma(z)(1 - sigma(z)) = {sigma * (1 - sigma):.6f}")
    print("\nNext: chainrule explain GRAPH --inputs FILE --dot graph.dot; chainrule train GRAPH --data FILE --steps N")
    return 0 if np.isfinite(result.losses[-1]) else 1


def _load_graph(path: Path):
    try:
        return graphspec.load(path)
    except graphspec.GraphSpecError as exc:
        print(f"{path}: invalid graph", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None


def explain(args: argparse.Namespace) -> int:
    import runtime
    from runtime.data import load_tensors
    from runtime.explain import explain as explain_graph

    graph = _load_graph(args.graph)
    if graph is None:
        return 1
    try:
        inputs = load_tensors(args.inputs)
        params = load_tensors(args.params) if args.params else runtime.init_params(graph, seed=args.seed)
        result = explain_graph(graph, inputs, params)
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


def train(args: argparse.Namespace) -> int:
    import runtime
    from runtime.data import load_tensors, save_tensors
    from runtime.stopping import REASONS

    from ..progress import ProgressBar

    graph = _load_graph(args.graph)
    if graph is None:
        return 1
    try:
        spec = args.spec
        data = load_tensors(args.data)
        eval_data = load_tensors(args.eval_data) if args.eval_data else None
        trainer = runtime.Trainer.from_spec(graph, spec)
        resume = runtime.Checkpoint.load(args.resume) if args.resume else None
        params = None if resume else (load_tensors(args.params) if args.params
                                      else runtime.init_params(graph, seed=spec.seed))
        config = trainer.optimizer.config()
        settings = ", ".join(f"{k} {v}" for k, v in config.items() if k != "name")
        print(f"optimizer {config['name']}: {settings}", flush=True)
        bar = ProgressBar(trainer.total_steps(trainer.check_data(data), spec.steps, spec.epochs))

        def report(step: runtime.StepReport) -> None:
            extra = "" if step.eval_loss is None else f"eval {step.eval_loss:.6g}"
            bar.update(step.step, step.loss, extra)

        checkpoint_path = args.checkpoint
        options = spec.fit_options(has_eval_data=eval_data is not None)
        options["checkpoint_every"] = (spec.checkpoint_every or runtime.DEFAULT_CHECKPOINT_STEPS) if checkpoint_path \
            else None
        result = trainer.fit(data, params, callback=report, eval_data=eval_data, resume=resume,
                             on_checkpoint=(lambda ckpt: ckpt.save(checkpoint_path)) if checkpoint_path else None,
                             **options)
    except (runtime.ChainruleRuntimeError, ValueError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    bar.close(result.steps, float("nan") if result.loss is None else result.loss)
    if checkpoint_path:
        result.checkpoint.save(checkpoint_path)
    summary = f"trained {result.steps} steps ({result.epochs} epochs): loss {result.losses[0]:.6g} -> {result.loss:.6g}"
    if result.eval_losses:
        summary += f", eval loss {result.eval_losses[-1][1]:.6g}"
    summary += "".join(f", {name} {value:.4g}" for name, value in result.metrics.items())
    summary += "".join(f", eval {name} {value:.4g}" for name, value in (result.eval_metrics or {}).items())
    if result.stop_reason not in ("steps", "epochs"):
        summary += f"; stopped early: {REASONS[result.stop_reason]}"
    if result.best_step is not None:
        summary += f"; parameters of step {result.best_step} (the best evaluation)"
    print(summary)
    if args.out:
        save_tensors(args.out, result.params)
        print(f"wrote trained parameters to {args.out}")
    return 0


def export_onnx(args: argparse.Namespace) -> int:
    """The inference part of a graph, with trained parameters, as an ONNX model (runtime.to_onnx)."""
    import runtime
    from runtime.data import load_tensors

    graph = _load_graph(args.graph)
    if graph is None:
        return 1
    try:
        params = load_tensors(args.params) if args.params else runtime.init_params(graph, seed=0)
        model = runtime.to_onnx(graph, params, outputs=args.output_name or None, keep_loss=args.keep_loss)
    except (runtime.ChainruleRuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    Path(args.out).write_bytes(model.SerializeToString())
    outputs = ", ".join(o.name for o in model.graph.output)
    print(f"wrote {args.out} (ONNX opset {model.opset_import[0].version}; outputs {outputs})")
    return 0


def import_onnx(args: argparse.Namespace) -> int:
    """An ONNX model (the supported subset) as a graph document, its initializers as parameter values."""
    import runtime
    from runtime.onnx_import import ImportError_

    try:
        graph, _ = runtime.from_onnx(args.model, loss=args.loss)
    except ImportError_ as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    graphspec.dump(graph, args.out)
    print(f"wrote {args.out}: {len(graph.nodes)} nodes, parameters {', '.join(graph.parameters)}; loss {args.loss} "
          f"on output {next(iter(graph.outputs))!r} against the input 'target'")
    return 0


def hash_key(args: argparse.Namespace) -> int:
    """``sha256:<digest>`` of the API key read from stdin: CHAINRULE_API_KEYS=sha256:<digest>:tenant."""
    from ..settings import key_digest

    key = sys.stdin.readline().strip()
    if not key:
        print("error: give the API key on stdin, e.g. `printf %s \"$KEY\" | chainrule hash-key`", file=sys.stderr)
        return 1
    print(f"sha256:{key_digest(key)}")
    return 0
