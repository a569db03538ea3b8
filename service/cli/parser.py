"""The ``chainrule`` argument parser: every subcommand and flag, the argparse value types, and
the training flags built from ``runtime.spec`` (one flag per ``TrainingSpec`` field).

``parse_args`` also checks what argparse alone cannot (the training spec, the ``--out`` path),
naming the flag, with the subcommand's usage. Building the parser imports no command's
dependencies: each command module imports its own when it runs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import graphspec

from . import local, processes, remote
from .serve import add_arguments as add_serve_arguments


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


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _finite(text: str) -> float:
    """An argparse type: a finite number (the training spec checks its bounds, naming the flag)."""
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _env_log_format() -> str:
    import os

    return os.environ.get("CHAINRULE_LOG_FORMAT", "console")


def _json_object(text: str) -> dict:
    """An argparse type: a JSON object."""
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"optimizer.lr\": {\"values\": [0.1, 1]}}'")
    return value


def _rate(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    value = _number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


_positive = _counting_from(1)


class _RemoteHelp(argparse.HelpFormatter):
    """Fills in ``{default_url}`` (``service.client.DEFAULT_URL``) when help is shown: importing
    the client (httpx) while building the parser would slow down every command."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text and "{default_url}" in text:
            from ..client import DEFAULT_URL

            text = text.replace("{default_url}", DEFAULT_URL)
        return text


def _check_output(parser: argparse.ArgumentParser, flag: str, path: Path) -> None:
    from runtime.data import DataFileError, check_tensor_path

    try:
        check_tensor_path(path)
    except DataFileError as exc:
        parser.error(f"{flag}: {exc}")


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


def _remote_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("API connection")
    group.add_argument("--url", help="the chainrule API (default: $CHAINRULE_URL or {default_url})")
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
        elif setting.kind is float:
            group.add_argument(flag, dest=f.name, type=_finite, help=setting.doc + shown)
        elif setting.kind is str:
            group.add_argument(flag, dest=f.name, metavar="JOB_ID", help=setting.doc + shown)
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
        if issue["code"] == "missing_field":  # the spec's rule, said with the flags that satisfy it
            parser.error("give --steps N, --epochs N or both (training stops at whichever comes first)")
        name = issue["location"].rsplit("/", 1)[-1]
        parser.error(f"--{name.replace('_', '-')}: {issue['message']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chainrule", description="chainrule: train computational graphs.")
    parser.add_argument("--version", action="version", version=f"chainrule {graphspec.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate graph documents (JSON or msgpack); exit 1 when any is invalid")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(func=local.validate)

    p = sub.add_parser("convert", help="convert a graph between JSON and msgpack (by the output's extension)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--to", choices=("json", "msgpack"), help="output encoding (default: from the extension)")
    p.set_defaults(func=local.convert)

    p = sub.add_parser("schema", help="print the JSON Schema of the graph format")
    p.set_defaults(func=local.schema)

    p = sub.add_parser("explain", help="one forward and backward pass: every node's value and gradient")
    p.add_argument("graph", type=Path)
    p.add_argument("--inputs", type=Path, required=True, help="named input tensors (.npz, .json or .msgpack)")
    p.add_argument("--params", type=Path, help="named parameter tensors (default: the graph's initializers)")
    p.add_argument("--seed", type=int, default=0, help="seed for initializers when --params is not given")
    p.add_argument("--dot", type=Path, help="also write a Graphviz DOT file with values and gradients")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.set_defaults(func=local.explain)

    p = sub.add_parser("export-onnx", help="write a graph's inference part with trained parameters as ONNX "
                                          '(needs the onnx extra: pip install "chainrule[onnx]")')
    p.add_argument("graph", type=Path)
    p.add_argument("--params", type=Path, help="trained parameters (.npz, .json or .msgpack; default: the "
                                               "graph's initializers, seed 0)")
    p.add_argument("-o", "--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--output", dest="output_name", action="append",
                   help="export this output (repeatable; default: every output but the loss)")
    p.add_argument("--keep-loss", action="store_true",
                   help="also export the loss output, with the targets and labels it reads as model inputs")
    p.set_defaults(func=local.export_onnx)

    p = sub.add_parser("import-onnx", help="read an ONNX model (the supported subset; docs/onnx.md) as a graph "
                                          "document whose parameters hold the model's values")
    p.add_argument("model", type=Path)
    p.add_argument("--loss", required=True, choices=("mse", "softmax_cross_entropy", "bce_with_logits"),
                   help="the loss on the model's first output, against a new input 'target'")
    p.add_argument("-o", "--out", type=Path, required=True, help="the graph document (.json or .msgpack)")
    p.set_defaults(func=local.import_onnx)

    p = sub.add_parser("train", parents=[_training_options(service=False)], help="train a graph locally with a progress bar")
    p.add_argument("graph", type=Path)
    p.add_argument("--data", type=Path, required=True, help="training tensors by input name (.npz/.json/.msgpack)")
    p.add_argument("--eval-data", type=Path, help="held-out tensors, evaluated every --eval-every steps and at the end")
    p.add_argument("--params", type=Path, help="start from these parameters instead of the initializers")
    p.add_argument("--checkpoint", type=Path, help="write checkpoints here (msgpack)")
    p.add_argument("--resume", type=Path, help="continue from a checkpoint file")
    p.add_argument("--out", type=Path, help="write the trained parameters (.msgpack, .json or .npz)")
    p.set_defaults(func=local.train)

    p = sub.add_parser("api", help="run the HTTP API (uvicorn); configuration from CHAINRULE_* / REDIS_URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("console", "json"), default=_env_log_format(),
                   help="console lines, or JSON lines with request ids (default: $CHAINRULE_LOG_FORMAT or console)")
    p.set_defaults(func=processes.api)

    p = sub.add_parser("worker", help="run a Celery training worker; configuration from CHAINRULE_* / REDIS_URL")
    p.add_argument("--concurrency", type=int, default=1, help="jobs trained at once by this worker")
    p.add_argument("--pool", default="prefork", choices=("prefork", "solo", "threads"))
    p.add_argument("--hostname", help="Celery node name (default celery@<host>)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("console", "json"), default=_env_log_format(),
                   help="console lines, or JSON lines with request and job ids (default: $CHAINRULE_LOG_FORMAT or "
                        "console)")
    p.add_argument("--metrics-port", type=_counting_from(1),
                   help="serve this worker's Prometheus metrics on this port (on $CHAINRULE_WORKER_METRICS_HOST, "
                        "default 127.0.0.1; docs/deploy.md)")
    p.set_defaults(func=processes.worker)

    remote_options = _remote_options()
    p = sub.add_parser("submit", parents=[remote_options, _training_options(service=True)],
                       formatter_class=_RemoteHelp, help="submit a training job to the chainrule API")
    p.add_argument("graph", type=Path, help="graph document (.json or .msgpack, sent inline) or a stored 'sha256:...' id")
    p.add_argument("--data", type=Path, required=True, help="training tensors by input name (.npz/.json/.msgpack)")
    p.add_argument("--eval-data", type=Path, help="held-out tensors, evaluated on the server")
    p.add_argument("--idempotency-key", help="submitting again with the same key returns the same job")
    p.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")
    p.add_argument("--out", type=Path, help="wait for the job and write its trained parameters "
                                            "(.msgpack, .json or .npz)")
    p.set_defaults(func=remote.command(remote.submit))

    p = sub.add_parser("sweep", parents=[remote_options, _training_options(service=True)],
                       formatter_class=_RemoteHelp,
                       help="run a hyperparameter sweep on the chainrule API: the job the flags describe, trained with "
                            "each of --space's values; --watch prints trials as they finish and the best")
    p.add_argument("graph", type=Path, help="graph document (.json or .msgpack, sent inline) or a stored 'sha256:...' id")
    p.add_argument("--data", type=Path, required=True, help="training tensors by input name (.npz/.json/.msgpack)")
    p.add_argument("--eval-data", type=Path, help="held-out tensors: the trials are compared by their eval loss")
    p.add_argument("--space", type=_json_object, required=True,
                   help='the search space as JSON, e.g. \'{"optimizer.lr": {"log_uniform": [0.001, 1]}}\' '
                        '(values, uniform or log_uniform per setting)')
    p.add_argument("--method", choices=("random", "grid"), default="random", help="random draws or every combination")
    p.add_argument("--sweep-seed", type=_counting_from(0), default=0, help="the random draws' seed (default 0)")
    p.add_argument("--max-trials", type=_positive, required=True, help="trials in all")
    p.add_argument("--max-concurrent", type=_positive, default=2, help="trials at once (default 2)")
    p.add_argument("--early-termination", choices=("median", "asha"),
                   help="stop trials that fall behind: the median rule, or ASHA's successive halving")
    p.add_argument("--grace-steps", type=_counting_from(0), default=0, help="median: steps before it applies")
    p.add_argument("--min-steps", type=_positive, help="asha: the first rung (required with asha)")
    p.add_argument("--watch", action="store_true", help="follow the sweep until it ends")
    p.set_defaults(func=remote.command(remote.sweep))

    p = sub.add_parser("jobs", parents=[remote_options], formatter_class=_RemoteHelp,
                       help="list your jobs on the chainrule API, newest first")
    p.add_argument("--state", choices=("queued", "running", "succeeded", "failed", "cancelling", "cancelled"))
    p.add_argument("--limit", type=_positive, default=20, help="at most this many (default 20)")
    p.add_argument("--json", action="store_true", help="print the job resources as JSON")
    p.set_defaults(func=remote.command(remote.jobs))

    p = sub.add_parser("status", parents=[remote_options], formatter_class=_RemoteHelp,
                       help="show a job's state and progress")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print the job resource as JSON")
    p.set_defaults(func=remote.command(remote.status))

    p = sub.add_parser("cancel", parents=[remote_options], formatter_class=_RemoteHelp,
                       help="cancel a queued or running job")
    p.add_argument("job_id")
    p.set_defaults(func=remote.command(remote.cancel))

    p = sub.add_parser("delete", parents=[remote_options], formatter_class=_RemoteHelp,
                       help="delete finished jobs and everything they stored (their bytes stop counting "
                            "toward your max_job_bytes)")
    p.add_argument("job_ids", nargs="+", metavar="job_id")
    p.set_defaults(func=remote.command(remote.delete))

    p = sub.add_parser("result", parents=[remote_options], formatter_class=_RemoteHelp,
                       help="show a succeeded job's loss and trained parameters")
    p.add_argument("job_id")
    p.add_argument("--out", type=Path, help="write the trained parameters (.msgpack, .json or .npz)")
    p.set_defaults(func=remote.command(remote.result))

    add_serve_arguments(sub.add_parser(
        "serve", help="the whole stack locally: embedded Redis (unless REDIS_URL is set), a worker and the API, "
                      "until Ctrl-C"))

    p = sub.add_parser("hash-key", help="print what CHAINRULE_API_KEYS stores for an API key: sha256:<digest> "
                                        "(the key from stdin, so it stays out of the shell's history)")
    p.set_defaults(func=local.hash_key)

    p = sub.add_parser("demo", help="train and explain the seed example")
    p.add_argument("--steps", type=_positive, default=200)
    p.set_defaults(func=local.demo)
    for subparser in sub.choices.values():
        subparser.set_defaults(subparser=subparser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed arguments; a training spec or an ``--out`` path that cannot work ends here
    (exit 2, the problem named by its flag)."""
    args = build_parser().parse_args(argv)
    # what argparse alone cannot say, named by flag, with the subcommand's usage
    if args.command in ("train", "submit", "sweep"):
        args.spec = _training_spec(args.subparser, args)
    if getattr(args, "out", None) is not None and args.command not in ("export-onnx", "import-onnx"):  # tensors: refused now, not
        # after the training they would have saved
        _check_output(args.subparser, "--out", args.out)
    return args
