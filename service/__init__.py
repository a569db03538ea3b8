"""service: the FastAPI app and the ``chainrule`` command line.

Only the command line's graph-format commands exist so far; the HTTP service is issue #4.
"""
