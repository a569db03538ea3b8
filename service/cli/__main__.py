"""``python -m service.cli``: the ``chainrule`` command (``chainrule serve`` starts its API and
worker this way)."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
