"""Offline comparison of ``mrpo-train`` runs from their local records (``mrpo-compare``).

- :mod:`~mrpo.compare.records`: find and read run and multirun directories;
- :mod:`~mrpo.compare.table`: group runs into configurations, mean ± std over seeds;
- :mod:`~mrpo.compare.render`: text, markdown and CSV tables;
- :mod:`~mrpo.compare.plots`: PNG plots (matplotlib, Agg canvas); :mod:`~mrpo.compare.outputs`:
  the tables and plots written by ``--out``;
- :mod:`~mrpo.compare.wandb_view`, :mod:`~mrpo.compare.wandb_sweep`: a sweep's W&B view;
- the command line is :mod:`mrpo.compare.command`.
"""

from mrpo.compare.records import RunCollection, RunRecord, SkippedRun, collect_runs
from mrpo.compare.table import Comparison, build_comparison

__all__ = [
    "Comparison",
    "RunCollection",
    "RunRecord",
    "SkippedRun",
    "build_comparison",
    "collect_runs",
]
