"""The device check's last stage: the first K-study with a signal (``kstudy``), if time remains.

``mrpo-train -m +sweeps=num_refs`` (K = 1..4 prompted references, seeds 0, 1, 2: 12 runs)
with the real packaged weights on 2,000 HH-RLHF harmless-base pairs, then ``mrpo-compare``'s
table of the sweep, which goes into the JSON (markdown and CSV). At GPU speed each run is
seconds to a minute; on this project's 2-core CPU the same study takes hours, which is why it
waits for a GPU. ``--smoke``: K = 1, 2, one seed, 16 pairs, 2 steps, on the CPU.
"""

from __future__ import annotations

import contextlib
import csv
import io
import subprocess
from pathlib import Path
from typing import Any

PAIRS = 2000
SEEDS = "0,1,2"
KS = "1,2,3,4"


def sweep_overrides(ctx: Any) -> list[str]:
    """The sweep's command line: sweeps/num_refs.yaml at the study's size."""
    smoke = ctx.smoke
    pairs, val = (16, 4) if smoke else (PAIRS, 200)
    out = [
        "-m", "+sweeps=num_refs", f"references.num_refs={'1,2' if smoke else KS}",
        f"seed={'0' if smoke else SEEDS}", f"data.max_samples={pairs}", f"data.val_size={val}",
        "logger=none", "eval=none", f"paths.cache_dir={ctx.work / 'cache'}",
        f"hydra.sweep.dir={sweep_dir(ctx)}",
    ]  # fmt: skip
    if smoke:
        out += ["trainer.max_steps=2", "trainer.accelerator=cpu", "data.max_length=128"]
        out += ["data.max_prompt_length=96"]
    else:
        out += ["trainer=gpu", "optimizer.fused=false", "data.batch_size=8"]
    return out


def sweep_dir(ctx: Any) -> Path:
    return ctx.work / "kstudy"


def compare_table(ctx: Any) -> dict[str, Any]:
    """``mrpo-compare``'s table of the sweep, as markdown and as rows (from its CSV)."""
    from mrpo.compare.command import main as compare

    out = ctx.work / "kstudy-compare"
    with contextlib.redirect_stdout(io.StringIO()):  # stdout is the check's JSON
        code = compare([str(sweep_dir(ctx)), "--format", "markdown", "--out", str(out)])
    if code != 0:
        raise RuntimeError(f"mrpo-compare exited {code} on {sweep_dir(ctx)}")
    rows = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    return {"markdown": (out / "compare.md").read_text(), "rows": rows}


def run(ctx: Any) -> dict[str, Any]:
    """The sweep within the command's time; cut short, the jobs that finished are compared
    (``"status": "partial"``)."""
    from device_check import real_weights, run_module

    try:
        figures = run_module(ctx, "kstudy", "mrpo.cli.train", sweep_overrides(ctx))
        status = "ok"
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        figures, status = {"stopped": f"{type(err).__name__}: {str(err)[-1500:]}"}, "partial"
    finished = sorted(sweep_dir(ctx).glob("*/summary.json"))
    if not finished:
        raise RuntimeError(f"no job of the sweep finished: {figures.get('stopped')}")
    return {
        "status": status, **real_weights(), **figures, "jobs_finished": len(finished),
        "compare": compare_table(ctx),
    }  # fmt: skip


def plan(ctx: Any) -> dict[str, Any]:
    """Compose one job of the sweep (K = 4, seed 0) and run its config checks."""
    from device_check import check_train

    job = [
        o for o in sweep_overrides(ctx)
        if o != "-m" and not o.startswith(("references.num_refs=", "seed=", "trainer.acc"))
    ]  # fmt: skip
    checked = check_train([*job, "references.num_refs=4", "seed=0"], ctx)
    return {**checked, "weights": "real", "pairs": PAIRS, "ks": KS, "seeds": SEEDS}
