"""Command-line entry points: ``mrpo-train`` (:mod:`.train`, with its pre-flight
:mod:`.preflight`) and ``mrpo-eval`` (:mod:`.evaluate`); ``mrpo-compare`` is
:mod:`mrpo.compare.command`. Only these modules see the Hydra config.
"""
