"""The layout of a run directory: the local record that needs no W&B to read.

- ``config.yaml``: the fully resolved config;
- ``csv/attempt_<n>/metrics.csv``: metrics over steps (Lightning's ``CSVLogger``), one folder
  per attempt, so a resumed run keeps what an interrupted attempt logged;
- ``summary.json``: final scores, timings, versions, git commit (only once a run finished).

Kept free of heavy imports: ``mrpo-compare`` reads records through it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"


def metrics_files(run_dir: Path) -> list[Path]:
    """The run's CSV metric files, oldest attempt first."""
    files = Path(run_dir).glob("csv/attempt_*/metrics.csv")
    return sorted(files, key=lambda p: int(p.parent.name.removeprefix("attempt_")))


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
