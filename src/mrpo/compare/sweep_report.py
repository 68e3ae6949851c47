"""A Hydra callback that ends a multirun with an account of its failed jobs.

A failing job (a bad input, a diverged loss, a crash) does not stop a multirun: the job writes
its failure into its run record (:func:`mrpo.tracking.record.write_failure`) and returns, and
the sweep goes on with the next job. When the sweep is over this callback lists the failed
jobs, one line each with the job's overrides and message, and makes the command exit with
status 1 if there were any (after every job has run), so a script or scheduler sees it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mrpo.compare.records import collect_runs

log = logging.getLogger("mrpo.sweep")

FAILED_PREFIX = "failed"


class SweepReport(Callback):
    """Report failed jobs at the end of a multirun (``hydra.callbacks.sweep_report``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        try:
            found = collect_runs([sweep_dir])
        except ValueError:  # no job directory at all (every job failed before starting)
            return
        failed = [s for s in found.skipped if s.reason.startswith(FAILED_PREFIX)]
        total = len(found.runs) + len(found.skipped)
        if not failed:
            log.info("multirun %s: %d job(s) finished", sweep_dir, len(found.runs))
            return
        lines = [f"multirun {sweep_dir}: {len(failed)} of {total} job(s) failed"]
        lines += [f"  {s.describe()}" for s in failed]
        log.error("%s", "\n".join(lines))
        sys.exit(1)
