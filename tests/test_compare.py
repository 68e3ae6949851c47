"""mrpo-compare: reading run records, grouping, aggregation, rendering, plots and the CLI.

The fixture is a synthetic Hydra multirun ``loss=multi_dpo,mrpo references.num_refs=1,2
seed=0,1,2`` (12 planned jobs) in which job 4 crashed (config.yaml, partial metrics.csv, no
summary.json), job 8 is a numbered gap and job 11, the last one, never started. Expected
means and standard deviations are worked out by hand in the comments.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mrpo.compare import build_comparison, collect_runs
from mrpo.compare.command import main
from mrpo.compare.multirun import sweep_job_overrides
from mrpo.compare.plots import load_curves, mean_curve, moving_average, plot_training_curves
from mrpo.compare.records import flatten_config, read_metrics
from mrpo.compare.render import render_csv, render_markdown, render_text
from mrpo.compare.table import summarize, varying_keys

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PMA = "final/val/policy_margin_accuracy"
ACC = "final/val/rewards/accuracy"
GSM = "final/eval/gsm8k/strict_match"

# Final policy-margin accuracy per (loss, K, seed); jobs 4, 8 and 11 have no summary.
PMA_VALUES = {
    ("multi_dpo", 1, 0): 0.50, ("multi_dpo", 1, 1): 0.60, ("multi_dpo", 1, 2): 0.70,
    ("multi_dpo", 2, 0): 0.55, ("multi_dpo", 2, 2): 0.65,
    ("mrpo", 1, 0): 0.60, ("mrpo", 1, 1): 0.80,
    ("mrpo", 2, 0): 0.75, ("mrpo", 2, 1): 0.75,
}  # fmt: skip
JOBS = [(loss, k, seed) for loss in ("multi_dpo", "mrpo") for k in (1, 2) for seed in (0, 1, 2)]
CRASHED, GAP, TRAILING = 4, 8, 11


def make_config(loss: str, k: int | None, seed: int, pool_size: int = 2) -> dict:
    pool = [{"name": "self", "source": "self", "system_prompt": None}]
    pool += [{"name": f"p{i}", "source": "self", "system_prompt": f"prompt {i}"}
             for i in range(1, pool_size)]  # fmt: skip
    return {
        "seed": seed,
        "model": {"source": "packaged:smollm2-135m-instruct", "lora": {"enabled": False}},
        "references": {"pool": pool, "num_refs": k, "mode": "cached"},
        "loss": {"name": loss, "beta": 0.1, "ctro": loss == "mrpo", "epsilon": 0.1},
        "weights": {"strategy": "uniform", "values": None},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-5},
        "data": {"source": "Anthropic/hh-rlhf", "max_length": 512},
        "eval": {"tasks": ["gsm8k", "truthfulqa"]},
        "paths": {"output_dir": f"/somewhere/{loss}-{k}-{seed}"},
    }


def write_metrics(run_dir: Path, seed: int, steps: int = 10) -> None:
    """Sparse rows as Lightning's CSVLogger writes them: val at 0 and at the end, train per step."""
    (run_dir / "csv" / "attempt_0").mkdir(parents=True, exist_ok=True)
    cols = ["epoch", "step", "train/loss", "train/ref_weight/0", "val/policy_margin_accuracy"]
    rows = [{"epoch": 0, "step": 0, "val/policy_margin_accuracy": 0.5}]
    rows += [
        {"epoch": 0, "step": s, "train/loss": 1.0 - 0.05 * s + 0.1 * seed, "train/ref_weight/0": 1}
        for s in range(steps)
    ]
    rows.append({"epoch": 0, "step": steps - 1, "val/policy_margin_accuracy": 0.6 + 0.1 * seed})
    with (run_dir / "csv" / "attempt_0" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)


def write_run(run_dir: Path, config: dict, summary: dict | None, seed: int = 0) -> Path:
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    write_metrics(run_dir, seed)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def make_summary(loss: str, k: int, seed: int) -> dict:
    pma = PMA_VALUES[(loss, k, seed)]
    summary = {
        "run_dir": "x", "loss": loss, "num_refs": k, "weighting": "uniform", "seed": seed,
        "global_step": 10, "seconds": 12.5,
        PMA: pma, ACC: pma + 0.1, "final/val/rewards/margin": 0.3,
        "before/val/policy_margin_accuracy": 0.5,
        "environment": {"python": "3.12"}, "reference_cache": {"hits": 1},
        "ctro_on": True,  # a boolean is not a score
    }  # fmt: skip
    if (loss, k, seed) == ("mrpo", 2, 0):
        summary[GSM] = 0.25  # only one run evaluated GSM8K
    return summary


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2026-11-23_10-00-00"
    root.mkdir(parents=True)
    plan = {
        "hydra": {
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                        "params": None},
            "overrides": {"task": ["loss=multi_dpo,mrpo", "references.num_refs=1,2",
                                   "seed=0,1,2"]},
        },
        "seed": 0,
    }  # fmt: skip
    (root / "multirun.yaml").write_text(yaml.safe_dump(plan))
    for num, (loss, k, seed) in enumerate(JOBS):
        if num in (GAP, TRAILING):
            continue
        summary = None if num == CRASHED else make_summary(loss, k, seed)
        write_run(root / str(num), make_config(loss, k, seed), summary, seed)
        overrides = [f"loss={loss}", f"references.num_refs={k}", f"seed={seed}"]
        (root / str(num) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return root


# --- records -----------------------------------------------------------------------------


def test_collect_runs_finds_finished_crashed_and_missing_jobs(multirun: Path) -> None:
    found = collect_runs([multirun])
    assert sorted(int(r.path.name) for r in found.runs) == [0, 1, 2, 3, 5, 6, 7, 9, 10]
    skipped = {int(s.path.name): s for s in found.skipped}
    assert sorted(skipped) == [CRASHED, GAP, TRAILING]
    assert "crashed or unfinished: no summary.json" in skipped[CRASHED].reason
    assert skipped[GAP].reason == "missing: no job directory"
    assert skipped[TRAILING].reason == "missing: no job directory"  # known only from the plan
    # The missing job is named by the overrides the sweep planned for it.
    assert skipped[GAP].overrides == ("loss=mrpo", "references.num_refs=1", "seed=2")
    assert skipped[CRASHED].describe().endswith("[loss=multi_dpo references.num_refs=2 seed=1]")


def test_run_record_scores_and_flattened_config(multirun: Path) -> None:
    run = next(r for r in collect_runs([multirun]).runs if r.path.name == "0")
    assert run.scores[PMA] == 0.50
    assert run.scores["seconds"] == 12.5
    assert "environment" not in run.scores and "ctro_on" not in run.scores
    assert run.config["loss.name"] == "multi_dpo"
    assert run.config["optimizer.lr"] == 1e-5
    assert run.config["eval.tasks"] == "gsm8k,truthfulqa"
    assert run.config["references.pool"] == "self,p1"
    assert run.seed == 0


def test_num_refs_null_means_whole_pool() -> None:
    flat = flatten_config(make_config("mrpo", None, 0, pool_size=3))
    assert flat["references.num_refs"] == 3
    assert flatten_config(make_config("mrpo", 2, 0, pool_size=3))["references.num_refs"] == 2


def test_gaps_found_without_multirun_yaml(multirun: Path) -> None:
    (multirun / "multirun.yaml").unlink()
    skipped = {int(s.path.name) for s in collect_runs([multirun]).skipped}
    assert skipped == {CRASHED, GAP}  # the trailing job cannot be known without the plan


def test_unreadable_and_cache_only_runs_are_skipped_with_reasons(tmp_path: Path) -> None:
    bad = write_run(tmp_path / "bad", make_config("dpo", 1, 0), None)
    (bad / "summary.json").write_text("{not json")
    cache = write_run(tmp_path / "cache", make_config("dpo", 1, 0), {"stage": "cache"})
    empty = write_run(tmp_path / "empty", make_config("dpo", 1, 0), make_summary("mrpo", 1, 0))
    (empty / "config.yaml").write_text("")  # parses to None, not a mapping
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "summary.json").write_text(json.dumps(make_summary("mrpo", 1, 0)))
    found = collect_runs([bad, cache, empty, orphan])
    assert found.runs == []
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert "unreadable JSON" in reasons["bad"]
    assert "stage=cache" in reasons["cache"]
    assert "config.yaml: expected a mapping" in reasons["empty"]
    assert reasons["orphan"] == "summary.json without config.yaml: configuration unknown"


def test_import_has_no_side_effects() -> None:
    # matplotlib (and its backend choice) and Hydra load only when a plot or a plan is needed.
    code = "import sys, mrpo.compare; print(sorted({'matplotlib', 'hydra'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_path_that_is_no_run_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such directory"):
        collect_runs([tmp_path / "absent"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a run directory"):
        collect_runs([tmp_path / "empty"])


def test_read_metrics_sparse_rows_and_bad_cells(tmp_path: Path) -> None:
    write_metrics(tmp_path, seed=1, steps=3)
    series = read_metrics(tmp_path)
    assert series["train/loss"] == {0: 1.1, 1: pytest.approx(1.05), 2: pytest.approx(1.0)}
    # Step 2 holds both the last training value and the final validation (later row wins).
    assert series["val/policy_margin_accuracy"] == {0: 0.5, 2: pytest.approx(0.7)}
    assert "step" not in series and "epoch" not in series
    path = tmp_path / "csv" / "attempt_0" / "metrics.csv"
    path.write_text(path.read_text().replace("1.1", "oops", 1))
    with pytest.raises(ValueError, match=r"metrics.csv, line 3, column 'train/loss'"):
        read_metrics(tmp_path)


def test_read_metrics_later_attempts_win(tmp_path: Path) -> None:
    write_metrics(tmp_path, seed=1, steps=3)
    resumed = tmp_path / "csv" / "attempt_1"
    resumed.mkdir()
    (resumed / "metrics.csv").write_text("epoch,step,train/loss\n0,2,0.5\n0,3,0.25\n")
    series = read_metrics(tmp_path)
    assert series["train/loss"] == {0: 1.1, 1: pytest.approx(1.05), 2: 0.5, 3: 0.25}


def test_sweep_plan_merges_params_and_command_line() -> None:
    plan = {"hydra": {"sweeper": {"params": {"a": "1,2", "b": "x"}},
                      "overrides": {"task": ["b=y,z", "c=range(2)"]}}}  # fmt: skip
    jobs = sweep_job_overrides(plan)
    # The command line's b replaces the params' b but keeps its position (Hydra's order).
    assert jobs is not None and len(jobs) == 2 * 2 * 2
    assert jobs[0] == ("a=1", "b=y", "c=0") and jobs[-1] == ("a=2", "b=z", "c=1")
    optuna = {"hydra": {"sweeper": {"_target_": "hydra_plugins.OptunaSweeper"}}}
    assert sweep_job_overrides(optuna) is None


# --- aggregation -------------------------------------------------------------------------


def test_summarize_by_hand() -> None:
    # 0.5, 0.6, 0.7: mean 0.6, deviations ±0.1 -> sample variance 0.02 / 2 = 0.01, std 0.1.
    stat = summarize([0.5, 0.6, 0.7])
    assert (stat.mean, stat.n) == (pytest.approx(0.6), 3)
    assert stat.std == pytest.approx(0.1)
    assert summarize([0.4]).std is None and summarize([0.4]).mean == 0.4
    assert summarize([]).n == 0
    assert math.isnan(summarize([0.5, float("nan")]).mean)  # a diverged seed stays visible


def test_grouping_detects_varying_keys_and_aggregates(multirun: Path) -> None:
    comparison = build_comparison(collect_runs([multirun]))
    # seed and paths.output_dir also vary but never define a configuration.
    assert comparison.by == ("loss.name", "references.num_refs", "loss.ctro")
    assert comparison.metrics == (ACC, "final/val/rewards/margin", PMA, GSM)
    rows = {row.values[:2]: row for row in comparison.rows}
    assert [row.values[:2] for row in comparison.rows] == [
        ("mrpo", 1),
        ("mrpo", 2),
        ("multi_dpo", 1),
        ("multi_dpo", 2),
    ]
    md1, md2, mr1, mr2 = (
        rows["multi_dpo", 1],
        rows["multi_dpo", 2],
        rows["mrpo", 1],
        rows["mrpo", 2],
    )
    assert (md1.n, md1.seeds) == (3, (0, 1, 2))
    assert md1.stats[PMA].mean == pytest.approx(0.6) and md1.stats[PMA].std == pytest.approx(0.1)
    # 0.55, 0.65: mean 0.6, sample std sqrt(2 * 0.05² / 1) = 0.0707...
    assert md2.seeds == (0, 2)
    assert md2.stats[PMA].std == pytest.approx(math.sqrt(2 * 0.05**2))
    # 0.6, 0.8: mean 0.7, std sqrt(2 * 0.1²) = 0.1414...; accuracy is PMA + 0.1.
    assert mr1.stats[PMA].mean == pytest.approx(0.7)
    assert mr1.stats[ACC].mean == pytest.approx(0.8)
    assert mr1.stats[ACC].std == pytest.approx(math.sqrt(2 * 0.1**2))
    assert mr2.stats[PMA].std == pytest.approx(0.0)
    assert (mr2.stats[GSM].n, mr2.stats[GSM].mean) == (1, 0.25)
    assert md1.stats[GSM].n == 0
    assert comparison.notes == ()


def test_user_grouping_pools_and_warns(tmp_path: Path) -> None:
    write_run(tmp_path / "a", make_config("dpo", 1, 0), make_summary("mrpo", 1, 0))
    other = make_config("dpo", 1, 1)
    other["data"]["max_length"] = 256
    write_run(tmp_path / "b", other, make_summary("mrpo", 1, 1))
    comparison = build_comparison(collect_runs([tmp_path / "a", tmp_path / "b"]), by=["loss.name"])
    assert [row.n for row in comparison.rows] == [2]
    assert comparison.rows[0].stats[PMA].mean == pytest.approx(0.7)
    assert any("data.max_length" in note for note in comparison.notes)
    # Auto-detection: nothing on the list varies, so all runs form one configuration.
    assert varying_keys(collect_runs([tmp_path / "a", tmp_path / "b"]).runs) == []


def test_unknown_key_or_metric_is_named(multirun: Path) -> None:
    found = collect_runs([multirun])
    with pytest.raises(ValueError, match=r"--by: no finished run has 'loss.nam'.*loss.name"):
        build_comparison(found, by=["loss.nam"])
    with pytest.raises(ValueError, match=r"--metrics: .*'final/val/acc'"):
        build_comparison(found, metrics=["final/val/acc"])


# --- rendering ---------------------------------------------------------------------------


def test_markdown_and_text_tables(multirun: Path) -> None:
    comparison = build_comparison(collect_runs([multirun]), metrics=[PMA, GSM])
    md = render_markdown(comparison)
    header = f"| loss.name | references.num_refs | loss.ctro | n | seeds | {PMA} | {GSM} |"
    assert header in md
    assert "| --- | --- | --- | ---: | ---: | ---: | ---: |" in md
    assert "| multi_dpo | 1 | false | 3 | 0,1,2 | 0.6000 ± 0.1000 | - |" in md
    assert "| mrpo | 2 | true | 2 | 0,1 | 0.7500 ± 0.0000 | 0.2500 (n=1) |" in md
    assert "Skipped runs (3):" in md
    assert f"- {multirun / '8'}: missing: no job directory" in md
    text = render_text(comparison)
    assert text.startswith("9 finished runs in 4 configurations")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("loss.name"))
    header, rule, *body = lines[start : start + 6]
    # Aligned: the score column ends at the same place in every row, under its header.
    end = header.index(PMA) + len(PMA)
    assert all(line[end - 1] != " " and line[end : end + 2] == "  " for line in body)
    assert len(rule) >= len(max(body, key=len))
    assert body[0].startswith("mrpo       1                    true")


def test_csv_table_full_precision(multirun: Path) -> None:
    comparison = build_comparison(collect_runs([multirun]), metrics=[PMA])
    rows = list(csv.DictReader(io.StringIO(render_csv(comparison))))
    assert len(rows) == 4
    md2 = next(r for r in rows if r["loss.name"] == "multi_dpo" and r["references.num_refs"] == "2")
    assert md2["n"] == "2" and md2["seeds"] == "0,2"
    assert float(md2[PMA]) == pytest.approx(0.6)
    assert float(md2[f"{PMA} std"]) == pytest.approx(math.sqrt(2 * 0.05**2))
    single = build_comparison(collect_runs([multirun / "0"]), metrics=[PMA])
    row = next(csv.DictReader(io.StringIO(render_csv(single))))
    assert (row[PMA], row[f"{PMA} std"], row[f"{PMA} n"]) == ("0.5", "", "1")


# --- plots and the command line ----------------------------------------------------------


def test_mean_curve_and_moving_average_by_hand() -> None:
    steps, values = mean_curve([{0: 1.0, 1: 3.0}, {0: 3.0, 2: 5.0}])
    assert steps == [0, 1, 2] and values == [2.0, 3.0, 5.0]
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([1.0, 3.0], 1) == [1.0, 3.0]
    with pytest.raises(ValueError, match="window"):
        moving_average([1.0], 0)


def test_training_curves_skip_absent_metrics_and_report_bad_files(
    multirun: Path, tmp_path: Path
) -> None:
    comparison = build_comparison(collect_runs([multirun]))
    runs = [run for row in comparison.rows for run in row.runs]
    bad = multirun / "0" / "csv" / "attempt_0" / "metrics.csv"
    bad.write_text(bad.read_text().replace("0.5", "n/a", 1))
    curves, problems = load_curves(runs)
    assert [p.path for p in problems] == [multirun / "0"]
    assert problems[0].reason.startswith("no training curves: ")
    assert "'n/a' is not a number" in problems[0].reason
    args = (comparison.rows, comparison.by)
    assert plot_training_curves(*args, "train/absent", curves, tmp_path / "a.png") is None
    assert not (tmp_path / "a.png").exists()
    target = plot_training_curves(*args, "train/loss", curves, tmp_path / "loss.png")
    assert target == tmp_path / "loss.png" and target.read_bytes().startswith(PNG_MAGIC)


def test_cli_end_to_end_writes_tables_and_plots(
    multirun: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main([str(multirun), "--out", str(out), "--format", "markdown"]) == 0
    stdout = capsys.readouterr().out
    assert stdout == (out / "compare.md").read_text()
    assert "| multi_dpo | 1 | false | 3 | 0,1,2 |" in stdout
    assert f"{multirun / '4'}: crashed or unfinished" in stdout
    assert (out / "compare.txt").read_text().startswith("9 finished runs in 4 configurations")
    csv_rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["n"] for r in csv_rows] == ["2", "2", "3", "2"]
    pngs = [
        "final_val_policy_margin_accuracy_vs_references_num_refs.png",
        "curve_train_loss.png",
        "curve_val_policy_margin_accuracy.png",
    ]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
        assert f"plot: {out / name}" in stdout


def test_cli_csv_stdout_is_pure_csv(multirun: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(multirun), "--format", "csv", "--by", "loss.name"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert [(r["loss.name"], r["n"]) for r in rows] == [("mrpo", "4"), ("multi_dpo", "5")]
    assert captured.err.count("skipped: ") == 3
    assert "note: runs averaged in one row also differ in: references.num_refs" in captured.err


def test_cli_errors_and_no_finished_runs(
    tmp_path: Path, multirun: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "absent")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main([str(multirun), "--metrics", "final/val/acuracy"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main([str(multirun), "--plot-x", "loss.nope"]) == 2
    assert "--plot-x" in capsys.readouterr().err
    assert main([str(multirun / "4")]) == 1  # only a crashed run: listed, not a crash
    out = capsys.readouterr().out
    assert "No finished runs to compare." in out
    # Without the multirun plan, the job's overrides come from Hydra's .hydra/overrides.yaml.
    assert "crashed or unfinished: no summary.json" in out
    assert "[loss=multi_dpo references.num_refs=2 seed=1]" in out
