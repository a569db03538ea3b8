"""The ``chainrule`` command line: ``main(argv)`` parses the arguments and runs the subcommand.

One module per job:

* ``parser``: the argparse parser (``build_parser``), its value types and the training flags
  built from ``runtime.spec``;
* ``local``: the commands that need no server (validate, convert, schema, demo, explain, train);
* ``remote``: the HTTP API's client commands (submit, jobs, status, cancel, result) and their output;
* ``processes``: ``api`` and ``worker``, one server process each;
* ``serve`` (with ``stack``, ``children``, ``redis_launcher``, ``access`` and ``banner``): the
  whole stack on one machine.

Subcommands that need only the graph format import only ``graphspec``, so ``chainrule validate``
stays fast and works without the service's dependencies: building the parser imports none of them.
"""

from __future__ import annotations

from .parser import build_parser, parse_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `chainrule schema | head`
        return 0


__all__ = ["build_parser", "main"]
