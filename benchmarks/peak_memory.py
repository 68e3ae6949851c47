"""Run a module as ``python -m`` does, then write its peak CUDA memory to a JSON file.

``python benchmarks/peak_memory.py <out.json> <module> [args...]``: used by ``device_check.py``
to read the peak GPU memory of a training or evaluation process from the outside. The file
holds ``{"peak_gpu_gb": ..., "exit": ...}`` (``peak_gpu_gb`` null without CUDA).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path


def main() -> None:
    out, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    code: int | str | None = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:  # the entry points exit 2 / 3 on user errors and divergence
        code = done.code
    finally:
        import torch

        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        Path(out).write_text(json.dumps({"peak_gpu_gb": peak, "exit": code}))
    sys.exit(code)


if __name__ == "__main__":
    main()
