"""Command-line entry points: ``mrpo-train``, ``mrpo-eval``, ``mrpo-compare``.

Only these modules see the Hydra config; :mod:`mrpo.cli.steps` turns the typed config into
the plain arguments of the library modules.
"""
