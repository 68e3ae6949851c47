"""What ``mrpo-train`` does with its config groups beyond each group's own settings class:
the checks in order (:mod:`.checks`), the relations between groups (:mod:`.trainer`,
:mod:`.moving`), and the builds that read several groups (:mod:`.references`,
:mod:`.objective`, :mod:`.callbacks`), which :mod:`mrpo.cli.train` calls in order.
"""
