"""The ``chainrule`` command line.

Subcommands that need only the graph format import only ``graphspec``, so
``chainrule validate`` stays fast and works without the service's dependencies.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import graphspec
from graphspec.codec import encoding_for_path

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


def _counting_from(low: int):
    """An argparse type: an integer >= ``low`` (argparse names the flag in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    return parse


def _rate(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


_positive = _counting_from(1)


def _check_output(parser: argparse.ArgumentParser, flag: str, path: Path) -> None:
    from runtime.data import DataFileError, check_tensor_path

    try:
        check_tensor_path(path)
    except DataFileError as exc:
        parser.error(f"{flag}: {exc}")


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


def _optimizer_hyper(args: argparse.Namespace) -> dict:
    """The optimizer hyperparameters given on the command line; the ones not given are left to
    the optimizer's own defaults."""
    hyper: dict = {}
    if args.lr is not None:  # else the optimizer's own default (runtime.optimizer_defaults)
        hyper["lr"] = args.lr
    if args.momentum is not None:
        hyper["momentum"] = args.momentum
    if args.nesterov:
        hyper["nesterov"] = True
    if args.weight_decay is not None:
        hyper["weight_decay"] = args.weight_decay
    return hyper


def _cmd_train(args: argparse.Namespace) -> int:
    import runtime
    from runtime.data import load_tensors, save_tensors

    from .progress import ProgressBar

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
        bar = ProgressBar(spec.steps)

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


# -- the HTTP API's client commands (submit, jobs, status, cancel, result) -----------------------

DEFAULT_URL = "http://127.0.0.1:8000"


def _client(args: argparse.Namespace):
    from .client import Client

    url = args.url or os.environ.get("CHAINRULE_URL") or DEFAULT_URL
    return Client(url, api_key=args.api_key or os.environ.get("CHAINRULE_API_KEY") or None, timeout=args.timeout)


def _remote(command):
    """Run a client command: API problems, an unreachable server and bad local files are one
    readable message on stderr and exit 1, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        import httpx  # here, not at parser construction: `chainrule validate` imports only graphspec

        from runtime.errors import ChainruleRuntimeError

        from .client import APIUnreachable, ClientError

        url = args.url or os.environ.get("CHAINRULE_URL") or DEFAULT_URL
        try:
            with _client(args) as client:
                return command(client, args)
        except ClientError as exc:
            print(f"error: {exc}", file=sys.stderr)
        except APIUnreachable:
            print(f"cannot reach the chainrule API at {url} — is `chainrule serve` running?", file=sys.stderr)
        except httpx.TimeoutException:
            print(f"error: the chainrule API at {url} did not answer within {args.timeout:g} s", file=sys.stderr)
        except httpx.HTTPError as exc:
            print(f"error: request to the chainrule API at {url} failed: {exc}", file=sys.stderr)
        except graphspec.GraphSpecError as exc:
            print(f"error: {getattr(args, 'graph', 'the graph')}: cannot read the graph document", file=sys.stderr)
            for issue in exc.issues:
                print(f"  {issue}", file=sys.stderr)
        except (ChainruleRuntimeError, OSError, TypeError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        return 1

    return run


def _loss(value) -> str:
    return "-" if value is None else f"{value:.6g}"


def _progress(job: dict) -> str:
    total = job.get("total_steps")
    return f"{job['step']}/{total}" if total else str(job["step"])


def _when(value: str | None) -> str:
    return (value or "-").replace("T", " ").split(".")[0].rstrip("Z")


def _job_error(job: dict) -> str:
    error = job.get("error") or {}
    text = f"{error.get('type', 'error')}: {error.get('message', '')}"
    if error.get("node"):
        text += f" (at node {error['node']!r})"
    return text


def _final_line(job: dict) -> str:
    return f"{job['id']} {job['state']}: step {_progress(job)}, loss {_loss(job.get('loss'))}"


def _watch(client, job: dict) -> dict:
    """Follow the job's event stream with a progress bar until it ends; returns the final job."""
    from .progress import ProgressBar

    bar = ProgressBar(job.get("total_steps"), stream=sys.stderr)
    stream = client.stream(job["id"])
    last = None
    try:
        for step in stream:
            last = step
            loss = step["loss"] if step["loss"] is not None else float("nan")
            extra = "" if step.get("eval_loss") is None else f"eval {step['eval_loss']:.6g}"
            bar.update(step["step"], loss, extra)
    except KeyboardInterrupt:
        print(f"\nstopped watching; the job goes on (chainrule cancel {job['id']} stops it)", file=sys.stderr)
        raise SystemExit(130) from None
    final = stream.job or client.status(job["id"])
    if last is not None:
        loss = final.get("loss")
        bar.close(final["step"], float("nan") if loss is None else loss)
    return final


def _save_result(client, job_id: str, out: Path) -> dict:
    from runtime.data import save_tensors

    result = client.result(job_id)
    save_tensors(out, result["params"])
    print(f"wrote trained parameters to {out}")
    return result


def _submit(client, args: argparse.Namespace) -> int:
    graph = str(args.graph) if str(args.graph).startswith("sha256:") else args.graph
    job = client.submit(graph, args.data, args.spec, eval_data=args.eval_data, idempotency_key=args.idempotency_key)
    print(job["id"], flush=True)
    if not args.watch and not args.out:
        return 0
    final = _watch(client, job) if args.watch else client.wait(job["id"])
    print(_final_line(final))
    if final["state"] != "succeeded":
        if final["state"] == "failed":
            print(f"error: job {final['id']} failed: {_job_error(final)}", file=sys.stderr)
        else:
            print(f"error: job {final['id']} was {final['state']}", file=sys.stderr)
        return 1
    if args.out:
        _save_result(client, final["id"], args.out)
    return 0


def _jobs(client, args: argparse.Namespace) -> int:
    jobs = client.jobs(state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps(jobs))
        return 0
    if not jobs:
        print("no jobs" + (f" in state {args.state}" if args.state else ""))
        return 0
    rows = [("ID", "STATE", "STEP", "LOSS", "CREATED")]
    rows += [(j["id"], j["state"], _progress(j), _loss(j.get("loss")), _when(j.get("created"))) for j in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _status(client, args: argparse.Namespace) -> int:
    job = client.status(args.job_id)
    if args.json:
        print(json.dumps(job))
        return 0
    fields = [("state", job["state"]), ("step", _progress(job)), ("epochs", job.get("epoch")),
              ("loss", _loss(job.get("loss"))), ("created", _when(job.get("created"))),
              ("started", _when(job.get("started"))), ("finished", _when(job.get("finished"))),
              ("worker", job.get("worker") or "-"), ("attempts", job.get("attempts")), ("graph", job["graph_id"])]
    if job.get("error"):
        fields.append(("error", _job_error(job)))
    print(job["id"])
    for name, value in fields:
        print(f"  {name + ':':<10}{'-' if value is None else value}")
    return 0


def _cancel(client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    print(f"{job['id']} {job['state']}")
    return 0


def _param_summary(array) -> str:
    import numpy as np

    shape = "x".join(map(str, array.shape)) or "scalar"
    head = f"{array.dtype} {shape}"
    if array.size <= 8:
        values = np.array2string(array, precision=6, separator=", ") if array.ndim else f"{array.item():.6g}"
        return f"{head}  {values}"
    if array.dtype.kind in "fi" and array.size:
        a = array.astype(np.float64)
        return f"{head}  mean {a.mean():.4g}  std {a.std():.4g}  min {a.min():.4g}  max {a.max():.4g}"
    return head


def _result(client, args: argparse.Namespace) -> int:
    result = client.result(args.job_id)
    line = f"loss {_loss(result.get('loss'))} after {result['steps']} steps ({result['epochs']} epochs)"
    if result.get("eval_loss") is not None:
        line += f", eval loss {result['eval_loss']:.6g}"
    print(line)
    width = max((len(n) for n in result["params"]), default=0)
    for name, array in result["params"].items():
        print(f"  {name:<{width}}  {_param_summary(array)}")
    if args.out:
        from runtime.data import save_tensors

        save_tensors(args.out, result["params"])
        print(f"wrote trained parameters to {args.out}")
    return 0


def _remote_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("API connection")
    group.add_argument("--url", help=f"the chainrule API (default: $CHAINRULE_URL or {DEFAULT_URL})")
    group.add_argument("--api-key", help="API key (default: $CHAINRULE_API_KEY)")
    group.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    return common


def _training_options(*, service: bool) -> argparse.ArgumentParser:
    """The training settings as flags: the optimizer and its hyperparameters, then one flag per
    runtime.TrainingSpec field (``service``: also the settings only a server has). Flags not
    given stay None, so the spec's own defaults apply."""
    from runtime.optim import OPTIMIZERS, learning_rate_defaults
    from runtime.spec import default_of, settings

    p = argparse.ArgumentParser(add_help=False)
    group = p.add_argument_group("training (see docs/runtime.md: TrainingSpec)")
    group.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="the optimizer (default sgd)")
    group.add_argument("--lr", type=_rate, help=f"learning rate (default: the optimizer's own: {learning_rate_defaults()})")
    group.add_argument("--momentum", type=_rate)
    group.add_argument("--nesterov", action="store_true")
    group.add_argument("--weight-decay", type=_rate)
    for f, setting in settings():
        if f.name == "optimizer" or (setting.service_only and not service):
            continue
        default = default_of(f)
        flag = setting.flag or "--" + f.name.replace("_", "-")
        shown = "" if default is None or isinstance(default, bool) else f" (default {default})"
        if isinstance(default, bool):  # --no-shuffle: the flag says the opposite of the default
            state = "on" if default else "off"
            group.add_argument(flag, dest=f.name, action="store_const", const=not default,
                               help=f"{setting.doc} is {state} by default: this flag turns it {'off' if default else 'on'}")
        elif setting.choices:
            group.add_argument(flag, dest=f.name, choices=setting.choices, help=setting.doc + shown)
        else:
            group.add_argument(flag, dest=f.name, type=_counting_from(setting.minimum or 0), help=setting.doc + shown)
    return p


def _training_spec(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The runtime.TrainingSpec the flags describe; a problem is reported by its flag."""
    import runtime
    from runtime.spec import settings

    options = {f.name: getattr(args, f.name, None) for f, _ in settings() if f.name != "optimizer"}
    try:
        return runtime.TrainingSpec.from_options(args.optimizer, **options, **_optimizer_hyper(args))
    except runtime.SpecError as exc:
        issue = exc.issues[0]
        name = issue["location"].rsplit("/", 1)[-1]
        parser.error(f"--{name.replace('_', '-')}: {issue['message']}")


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

    p = sub.add_parser("train", parents=[_training_options(service=False)], help="train a graph locally with a progress bar")
    p.add_argument("graph", type=Path)
    p.add_argument("--data", type=Path, required=True, help="training tensors by input name (.npz/.json/.msgpack)")
    p.add_argument("--eval-data", type=Path, help="held-out tensors, evaluated every --eval-every steps and at the end")
    p.add_argument("--params", type=Path, help="start from these parameters instead of the initializers")
    p.add_argument("--checkpoint", type=Path, help="write checkpoints here (msgpack)")
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

    remote = _remote_options()
    p = sub.add_parser("submit", parents=[remote, _training_options(service=True)], help="submit a training job to the chainrule API")
    p.add_argument("graph", type=Path, help="graph document (.json or .msgpack, sent inline) or a stored 'sha256:...' id")
    p.add_argument("--data", type=Path, required=True, help="training tensors by input name (.npz/.json/.msgpack)")
    p.add_argument("--eval-data", type=Path, help="held-out tensors, evaluated on the server")
    p.add_argument("--idempotency-key", help="submitting again with the same key returns the same job")
    p.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")
    p.add_argument("--out", type=Path, help="wait for the job and write its trained parameters "
                                            "(.msgpack, .json or .npz)")
    p.set_defaults(func=_remote(_submit))

    p = sub.add_parser("jobs", parents=[remote], help="list your jobs on the chainrule API, newest first")
    p.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelling", "cancelled"))
    p.add_argument("--limit", type=_positive, default=20, help="at most this many (default 20)")
    p.add_argument("--json", action="store_true", help="print the job resources as JSON")
    p.set_defaults(func=_remote(_jobs))

    p = sub.add_parser("status", parents=[remote], help="show a job's state and progress")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print the job resource as JSON")
    p.set_defaults(func=_remote(_status))

    p = sub.add_parser("cancel", parents=[remote], help="cancel a queued or running job")
    p.add_argument("job_id")
    p.set_defaults(func=_remote(_cancel))

    p = sub.add_parser("result", parents=[remote], help="show a succeeded job's loss and trained parameters")
    p.add_argument("job_id")
    p.add_argument("--out", type=Path, help="write the trained parameters (.msgpack, .json or .npz)")
    p.set_defaults(func=_remote(_result))

    from .serve import add_arguments as add_serve_arguments

    add_serve_arguments(sub.add_parser(
        "serve", help="the whole stack locally: embedded Redis (unless REDIS_URL is set), a worker and the API, "
                      "until Ctrl-C"))

    p = sub.add_parser("demo", help="train and explain the seed example")
    p.add_argument("--steps", type=_positive, default=200)
    p.set_defaults(func=_cmd_demo)
    for subparser in sub.choices.values():
        subparser.set_defaults(subparser=subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # what argparse alone cannot say, named by flag, with the subcommand's usage
    if args.command in ("train", "submit"):
        args.spec = _training_spec(args.subparser, args)
    if getattr(args, "out", None) is not None:  # refused now, not after the training it would have saved
        _check_output(args.subparser, "--out", args.out)
    try:
        return args.func(args)
    except BrokenPipeError:  # `chainrule schema | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
