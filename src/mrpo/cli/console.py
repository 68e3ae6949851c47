"""The command line composed before Hydra runs, and what the console's quieting needs to know of
a run (the printing itself: :mod:`mrpo.tracking.console`)."""

from __future__ import annotations

import sys
from pathlib import Path

from mrpo.config.compose import check_command_line
from mrpo.config.schema import TrainConfig
from mrpo.errors import InputError
from mrpo.groups.references import reference_specs


def is_quantizing(cfg: TrainConfig) -> bool:
    """Whether the policy or a reference loads quantized weights."""
    specs = reference_specs(cfg)
    return cfg.model.quantization is not None or any(s.quantization for s in specs)


def exit_on_bad_command_line(config_dir: Path, config_name: str, logger: str) -> None:
    """Compose the command line's configs before Hydra runs the job: a wrong type, an unknown
    key or group option ends here with one line naming the key and exit status 2, as every
    other bad value does (Hydra itself would exit 1 with several lines)."""
    try:
        check_command_line(config_dir, config_name, sys.argv[1:])
    except InputError as err:
        print(f"[{logger}][ERROR] - {err.kind}: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
