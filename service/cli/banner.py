"""What ``chainrule serve`` prints once the stack is ready: its URLs, where Redis, the worker
and the logs are, how requests are authenticated, and a first job to submit (with
``chainrule submit`` and with curl)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..client import DEFAULT_URL
from ..examples import EXAMPLES_DIR
from .redis_launcher import redact

if TYPE_CHECKING:
    from .stack import Stack


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def banner(stack: Stack, api_url: str, redis_url: str, auth_line: str, waited: float) -> str:
    assert stack.base_dir is not None and stack.worker is not None and stack.api is not None
    auth_on = not auth_line.startswith("auth is DISABLED")
    logs = [stack.api.log_path, stack.worker.log_path] + ([stack.redis.log_path] if stack.redis else [])
    if stack.redis is None:
        where = "(REDIS_URL)"
    elif stack.temporary:
        where = f"(embedded, pid {stack.redis.pid}; data in {stack.base_dir / 'redis'}, deleted on exit)"
    else:
        where = f"(embedded, pid {stack.redis.pid}; append-only data in {stack.base_dir / 'redis'})"
    examples = _display_path(EXAMPLES_DIR)
    graph, data = f"{examples}/logistic_regression.json", f"{examples}/data/seed_data.json"
    header = ' -H "Authorization: Bearer $KEY"' if auth_on else ""
    # `chainrule submit` defaults to $CHAINRULE_URL or DEFAULT_URL, and $CHAINRULE_API_KEY
    submit_extra = "" if api_url == DEFAULT_URL else f" --url {api_url}"
    submit_extra += ' --api-key "$KEY"' if auth_on else ""
    body = ("import json; print(json.dumps({"
            f'"graph": json.load(open("{graph}")), "data": json.load(open("{data}")), '
            '"optimizer": {"name": "sgd", "lr": 0.5}, "steps": 300, "batch_size": 16, "report_every": 10}))')
    lines = [
        "",
        f"chainrule is ready ({waited:.1f} s):",
        f"  dashboard  {api_url}/ui/   (open it in a browser)",
        f"  API        {api_url}",
        f"  docs       {api_url}/docs",
        f"  redis      {redact(redis_url)} {where}",
        f"  worker     {stack.worker_name} (pid {stack.worker.pid}, prefork pool of {stack.args.workers_count})",
        f"  logs       {', '.join(str(p) for p in logs)}"
        + ("  (deleted on exit: use --data-dir to keep them)" if stack.temporary else ""),
        f"  {auth_line}",
        "",
        "Train the seed graph:",
        f"  chainrule submit {graph} --data {data} --steps 300 --lr 0.5 --batch-size 16 --watch{submit_extra}",
        "or with curl:" + ("  (KEY=one of the keys in CHAINRULE_API_KEYS)" if auth_on else ""),
        f"  python -c '{body}' \\",
        f"    | curl -s -X POST {api_url}/v1/jobs{header} -H 'Content-Type: application/json' --data-binary @-",
        f"  curl -s -N {api_url}/v1/jobs/JOB_ID/events{header}      # JOB_ID: the \"id\" printed above",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)
