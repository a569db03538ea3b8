"""runtime: the numpy execution engine (forward, reverse-mode backward, optimizers, trainer).

Not implemented yet: it is the subject of issue #3. Importing it works so the
distribution's layout is final; it exposes nothing until then.
"""
