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
    """The seed example end to end: validate, train, then show backpropagation node by node."""
    import numpy as np

    import runtime
    from runtime.data import load_tensors

    from .progress import ProgressBar

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


def _optimizer_from_args(args: argparse.Namespace):
    from runtime import make_optimizer

    hyper = {"lr": args.lr}
    if args.momentum is not None:
        hyper["momentum"] = args.momentum
    if args.nesterov:
        hyper["nesterov"] = True
    if args.weight_decay is not None:
        hyper["weight_decay"] = args.weight_decay
    return make_optimizer(args.optimizer, **hyper)


def _cmd_train(args: argparse.Namespace) -> int:
    import runtime
    from runtime.data import load_tensors, save_tensors

    from .progress import ProgressBar

    graph = _load_graph(args.graph)
    if graph is None:
        return 1
    try:
        optimizer = _optimizer_from_args(args)
        data = load_tensors(args.data)
        eval_data = load_tensors(args.eval_data) if args.eval_data else None
        trainer = runtime.Trainer(graph, optimizer, batch_size=args.batch_size, shuffle=not args.no_shuffle,
                                  seed=args.seed)
        resume = runtime.Checkpoint.load(args.resume) if args.resume else None
        params = None if resume else (load_tensors(args.params) if args.params
                                      else runtime.init_params(graph, seed=args.seed))
        bar = ProgressBar(args.steps)

        def report(step: runtime.StepReport) -> None:
            extra = "" if step.eval_loss is None else f"eval {step.eval_loss:.6g}"
            bar.update(step.step, step.loss, extra)

        checkpoint_path = args.checkpoint
        result = trainer.fit(
            data, params, steps=args.steps, epochs=args.epochs, callback=report, eval_data=eval_data,
            eval_every=args.eval_every if eval_data is not None else None, resume=resume,
            checkpoint_every=args.checkpoint_every if checkpoint_path else None,
            on_checkpoint=(lambda ckpt: ckpt.save(checkpoint_path)) if checkpoint_path else None)
    except (runtime.ChainruleRuntimeError, ValueError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    bar.close(result.steps, result.losses[-1] if result.losses else float("nan"))
    if checkpoint_path:
        result.checkpoint.save(checkpoint_path)
    summary = f"trained {result.steps} steps ({result.epochs} epochs): loss {result.losses[0]:.6g} -> {result.losses[-1]:.6g}"
    if result.eval_losses:
        summary += f", eval loss {result.eval_losses[-1][1]:.6g}"
    print(summary)
    if args.out:
        save_tensors(args.out, result.params)
        print(f"wrote trained parameters to {args.out}")
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("service.app:app", host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, proxy_headers=True)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import app
    from worker.settings import get_settings

    argv = ["worker", "--loglevel", args.log_level.upper(), "-Q", get_settings().queue,
            "--pool", args.pool, "--concurrency", str(args.concurrency)]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv)
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

    p = sub.add_parser("train", help="train a graph locally with a progress bar")
    p.add_argument("graph", type=Path)
    p.add_argument("--data", type=Path, required=True, help="training tensors by input name (.npz/.json/.msgpack)")
    p.add_argument("--eval-data", type=Path, help="held-out tensors, evaluated every --eval-every steps and at the end")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--optimizer", default="sgd", help="sgd, momentum, adam or adamw (default sgd)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--steps", type=int, help="number of updates")
    p.add_argument("--epochs", type=int, help="number of passes over the data (with --steps: whichever comes first)")
    p.add_argument("--batch-size", type=int, help="mini-batch size (default: the whole data set)")
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="seed for initializers and shuffling")
    p.add_argument("--params", type=Path, help="start from these parameters instead of the initializers")
    p.add_argument("--checkpoint", type=Path, help="write checkpoints here (msgpack)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--resume", type=Path, help="continue from a checkpoint file")
    p.add_argument("--out", type=Path, help="write the trained parameters (.msgpack, .json or .npz)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("api", help="run the HTTP API (uvicorn); configuration from CHAINRULE_* / REDIS_URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser("worker", help="run a Celery training worker; configuration from CHAINRULE_* / REDIS_URL")
    p.add_argument("--concurrency", type=int, default=1, help="jobs trained at once by this worker")
    p.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"))
    p.add_argument("--hostname", help="Celery node name (default celery@<host>)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("demo", help="train and explain the seed example")
    p.add_argument("--steps", type=int, default=200)
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
