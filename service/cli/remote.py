"""The HTTP API's client commands: ``submit``, ``jobs``, ``status``, ``cancel`` and ``result``,
with what they print (the progress bar of ``--watch``, the jobs table, a job's fields, a
parameter summary).

``command(fn)`` turns ``fn(client, args)`` into a subcommand: it opens the
``service.client.Client`` (``--url``, else ``$CHAINRULE_URL``, else ``DEFAULT_URL``) and turns
API problems, an unreachable server and bad local files into one readable line on stderr and
exit 1, never a traceback. httpx and the client are imported only when such a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import graphspec


def _url(args: argparse.Namespace) -> str:
    from ..client import DEFAULT_URL

    return args.url or os.environ.get("CHAINRULE_URL") or DEFAULT_URL


def command(fn):
    """Run a client command: API problems, an unreachable server and bad local files are one
    readable message on stderr and exit 1, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        import httpx  # here, not at parser construction: `chainrule validate` imports only graphspec

        from runtime.errors import ChainruleRuntimeError

        from ..client import APIUnreachable, Client, ClientError

        url = _url(args)
        try:
            api_key = args.api_key or os.environ.get("CHAINRULE_API_KEY") or None
            with Client(url, api_key=api_key, timeout=args.timeout) as client:
                return fn(client, args)
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


# -- what the commands print ---------------------------------------------------------------
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


def _watch(client, job: dict) -> dict:
    """Follow the job's event stream with a progress bar until it ends; returns the final job."""
    from ..progress import ProgressBar

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


def _write_params(out: Path, params: dict) -> None:
    from runtime.data import save_tensors

    save_tensors(out, params)
    print(f"wrote trained parameters to {out}")


# -- the commands: fn(client, args) -> exit code ------------------------------------------
def submit(client, args: argparse.Namespace) -> int:
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
        _write_params(args.out, client.result(final["id"])["params"])
    return 0


def sweep(client, args: argparse.Namespace) -> int:
    graph = str(args.graph) if str(args.graph).startswith("sha256:") else args.graph
    rule = None
    if args.early_termination == "median":
        rule = {"rule": "median", "grace_steps": args.grace_steps}
    elif args.early_termination == "asha":
        rule = {"rule": "asha", "min_steps": args.min_steps}
    found = client.submit_sweep(graph, args.data, args.space, args.spec, max_trials=args.max_trials,
                                method=args.method, seed=args.sweep_seed, max_concurrent=args.max_concurrent,
                                early_termination=rule, eval_data=args.eval_data)
    print(found["id"], flush=True)
    if not args.watch:
        return 0
    reported: set[int] = set()
    while True:
        found = client.sweep(found["id"])
        for trial in found["trials"]:
            if trial["index"] not in reported and trial["state"] in ("succeeded", "failed", "cancelled"):
                reported.add(trial["index"])
                print(_trial_line(trial, found["objective"]), flush=True)
        if found["state"] in ("succeeded", "cancelled"):
            break
        time.sleep(0.5)
    best = found["best"]
    if best is None:
        print(f"sweep {found['id']} {found['state']}: no trial reported its {found['objective']}", file=sys.stderr)
        return 1
    print(f"best: {_trial_line(best, found['objective'])} (sweep {found['id']} {found['state']})")
    return 0


def _trial_line(trial: dict, objective: str) -> str:
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["assignment"].items())
    why = f", {trial['stop_reason']}" if trial.get("stop_reason") not in (None, "steps", "epochs") else ""
    return (f"trial {trial['index']} [{values}]: {trial['state']} at step {trial['step']}, "
            f"{objective} {_loss(trial['objective'])}{why}  ({trial['job_id']})")


def jobs(client, args: argparse.Namespace) -> int:
    found = client.jobs(state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps(found))
        return 0
    if not found:
        print("no jobs" + (f" in state {args.state}" if args.state else ""))
        return 0
    rows = [("ID", "STATE", "STEP", "LOSS", "CREATED")]
    rows += [(j["id"], j["state"], _progress(j), _loss(j.get("loss")), _when(j.get("created"))) for j in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def status(client, args: argparse.Namespace) -> int:
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


def cancel(client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    print(f"{job['id']} {job['state']}")
    return 0


def delete(client, args: argparse.Namespace) -> int:
    for job_id in args.job_ids:
        client.delete(job_id)
        print(f"{job_id} deleted")
    return 0


def result(client, args: argparse.Namespace) -> int:
    found = client.result(args.job_id)
    line = f"loss {_loss(found.get('loss'))} after {found['steps']} steps ({found['epochs']} epochs)"
    if found.get("eval_loss") is not None:
        line += f", eval loss {found['eval_loss']:.6g}"
    print(line)
    width = max((len(n) for n in found["params"]), default=0)
    for name, array in found["params"].items():
        print(f"  {name:<{width}}  {_param_summary(array)}")
    if args.out:
        _write_params(args.out, found["params"])
    return 0
