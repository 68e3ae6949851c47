"""Reference weights α: pure formulas, strategy objects, the Thompson bandit, the registry."""
