"""The server processes: ``chainrule api`` (the HTTP API under uvicorn) and ``chainrule worker``
(a Celery training worker). Both read their configuration from CHAINRULE_* / REDIS_URL; this is
what a deployment runs, and what ``chainrule serve`` starts."""

from __future__ import annotations

import argparse


def api(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from worker.logs import uvicorn_config

    os.environ["CHAINRULE_LOG_FORMAT"] = args.log_format  # the app's own loggers, in every uvicorn process
    uvicorn.run("service.app:app", host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, proxy_headers=True, log_config=uvicorn_config(args.log_format, args.log_level))
    return 0


def worker(args: argparse.Namespace) -> int:
    import os

    if args.metrics_port is not None:  # read by every process of the node, pool children included
        os.environ["CHAINRULE_WORKER_METRICS_PORT"] = str(args.metrics_port)
    os.environ["CHAINRULE_LOG_FORMAT"] = args.log_format
    from worker.settings import get_settings

    get_settings.cache_clear()
    from worker.celery_app import app

    argv = ["worker", "--loglevel", args.log_level.upper(), "-Q", get_settings().queue,
            "--pool", args.pool, "--concurrency", str(args.concurrency)]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv)
    return 0
