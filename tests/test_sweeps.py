"""The sweep files in sweeps/: their headers, the jobs they launch, and end-to-end runs.

Fast tests compose each Hydra sweep file the way ``mrpo-train -m +sweeps=<name>`` does
(multirun mode), expand the job list with Hydra's own BasicSweeper logic, and compose every job:
each must convert to :class:`mrpo.config.TrainConfig`, pass the config checks and carry W&B
tags that tell it apart from the other jobs. The headers' job counts and commands are checked
against that expansion. Slow tests run each sweep end to end on CPU with a tiny random model
and a tiny HH-format data file (the shared fixtures of conftest.py), two jobs per sweep.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from mrpo.cli.train import logger_labels
from mrpo.compare.command import main as compare_main
from mrpo.compare.multirun import sweep_job_overrides
from mrpo.config import CONFIG_DIR, TrainConfig, register_configs
from mrpo.testing.configs import checked_train_config, compose_config

SWEEPS_DIR = CONFIG_DIR / "sweeps"
HYDRA_SWEEPS = (
    "num_refs", "objectives", "weighting", "ctro", "beta_lr_optuna", "each_reference",
    "aggregation",
)  # fmt: skip
# The published studies' sweeps; their jobs are planned and run in test_reproductions.py.
REPRODUCTION_SWEEPS = ("mrpo_k2", "wu_single_reference", "wu_multi_reference")
# Hydra's basic sweeper
GRID_SWEEPS = ("num_refs", "objectives", "weighting", "ctro", "each_reference", "aggregation")
WANDB_SWEEP = SWEEPS_DIR / "wandb_sweep.yaml"


# --- helpers ---------------------------------------------------------------------------


def compose_multirun(overrides: Sequence[str]) -> DictConfig:
    """The config `mrpo-train -m <overrides>` starts from (sweeps not yet expanded)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return GlobalHydra.instance().hydra.compose_config(  # type: ignore[union-attr]
            config_name="train",
            overrides=[*overrides, "hydra.mode=MULTIRUN"],  # as `-m` adds it
            run_mode=RunMode.MULTIRUN,
            with_log_configuration=False,
        )


def sweep_arguments(name: str, output_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    return [f"+sweeps={name}", f"paths.output_dir={output_dir}", *extra]


def plan_jobs(arguments: Sequence[str]) -> tuple[DictConfig, list[list[str]]]:
    """The multirun config and each job's overrides, as Hydra's basic sweeper makes them."""
    master = compose_multirun(arguments)
    params = master.hydra.sweeper.params or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    [jobs] = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(lines), None)
    return master, jobs


def job_config(master: DictConfig, job: Sequence[str]) -> DictConfig:
    """A job's config with its hydra node, composed as a launcher composes it."""
    hydra_overrides = list(master.hydra.overrides.hydra)
    cfg = compose_config([*hydra_overrides, *job], return_hydra_config=True)
    _ = master.hydra.sweep.dir  # resolved once by the sweeper, which makes the sweep dir
    # Hydra copies the resolver cache so that ${now:...} is the same in every job.
    OmegaConf.copy_cache(from_config=master, to_config=cfg)
    return cfg


def header(path: Path) -> str:
    """The leading comment block of a file, without the comment markers."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)


def header_commands(text: str) -> list[tuple[list[str], int | None]]:
    """Each documented `mrpo-train -m ...` command: its overrides and its stated job count."""
    commands = []
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        if not line.startswith("mrpo-train -m"):
            continue
        command, _, comment = line.partition("#")
        count = re.search(r"\((\d+) jobs\)", comment)
        commands.append((shlex.split(command)[2:], int(count.group(1)) if count else None))
    return commands


def stated_cost(text: str) -> int:
    match = re.search(r"Cost: (\d+) (?:jobs|trials|runs)", text)
    assert match, "the header states the number of jobs"
    return int(match.group(1))


def tags_of(run_cfg: TrainConfig) -> frozenset[str]:
    return frozenset([*logger_labels(run_cfg)["tags"], *run_cfg.logger.tags])


@dataclass(frozen=True)
class Plan:
    """A sweep as `mrpo-train -m` plans it: the arguments, the jobs and their configs."""

    arguments: list[str]
    master: DictConfig
    jobs: list[list[str]]
    configs: list[TrainConfig]


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def planned(output_dir: Path) -> Callable[[str], Plan]:
    """Plan a sweep file and compose + check every job once per module (composing is slow)."""
    plans: dict[str, Plan] = {}

    def plan(name: str) -> Plan:
        if name not in plans:
            arguments = sweep_arguments(name, output_dir)
            master, jobs = plan_jobs(arguments)
            configs = [checked_train_config(job, output_dir) for job in jobs]
            plans[name] = Plan(arguments, master, jobs, configs)
        return plans[name]

    return plan


# --- the folder and the headers --------------------------------------------------------


def test_sweeps_folder_holds_the_documented_files() -> None:
    names = {p.name for p in SWEEPS_DIR.iterdir()}
    expected = {f"{name}.yaml" for name in HYDRA_SWEEPS + REPRODUCTION_SWEEPS}
    expected |= {WANDB_SWEEP.name, "README.md"}
    assert names == expected
    readme = (SWEEPS_DIR / "README.md").read_text()
    for name in expected - {"README.md"}:
        assert name in readme


@pytest.mark.parametrize("name", HYDRA_SWEEPS + REPRODUCTION_SWEEPS)
def test_header_says_question_command_and_cost(name: str) -> None:
    path = SWEEPS_DIR / f"{name}.yaml"
    assert path.read_text().startswith("# @package _global_\n")  # overrides the whole config
    text = header(path)
    for field in ("Question:", "Command:", "Cost:"):
        assert field in text
    assert re.search(r"~[\d.]+ min\s+per\s+(?:job|trial)", text)  # a time estimate
    assert header_commands(text)[0] == ([f"+sweeps={name}"], None)


# --- grid sweeps: every job composes and passes the checks -----------------------------


@pytest.mark.parametrize("name", GRID_SWEEPS)
def test_grid_sweep_jobs_compose_and_pass_checks(name: str, planned: Callable[[str], Plan]) -> None:
    plan = planned(name)  # every job composed, converted to TrainConfig and checked
    assert plan.master.hydra.sweeper._target_.endswith("BasicSweeper")
    assert len(plan.jobs) == stated_cost(header(SWEEPS_DIR / f"{name}.yaml"))
    for cfg in plan.configs:
        assert cfg.task_name == "quickstart"  # on top of the quickstart experiment
        assert f"sweep:{name}" in cfg.logger.tags
        # Scores only: no 1.6 GB checkpoints nor a final model directory per job.
        assert cfg.callbacks.checkpoint.save_top_k == 0
        assert cfg.callbacks.checkpoint.save_last is False
        assert cfg.save_model is False
    # Every job is its own W&B run in one group: the tags must tell the jobs apart.
    assert len({tags_of(cfg) for cfg in plan.configs}) == len(plan.jobs)
    # mrpo-compare plans the same jobs from the multirun.yaml Hydra writes.
    multirun = OmegaConf.to_container(plan.master, resolve=False)
    multirun["hydra"]["overrides"]["task"] = plan.arguments
    assert sweep_job_overrides(multirun) == [tuple(job) for job in plan.jobs]


def test_num_refs_sweep_values(planned: Callable[[str], Plan]) -> None:
    cfgs = planned("num_refs").configs
    assert [(c.references.num_refs, c.seed) for c in cfgs] == list(
        itertools.product([1, 2, 3, 4], [0, 1, 2])
    )
    assert {c.loss.name for c in cfgs} == {"mrpo"}
    # The same pool in the same order for every K: K=k uses the first k references.
    assert {tuple(r.name for r in c.references.pool) for c in cfgs} == {
        ("self", "harmless", "concise", "empathetic")
    }


def test_objectives_sweep_values(planned: Callable[[str], Plan]) -> None:
    cfgs = planned("objectives").configs
    assert [(c.loss.name, c.seed) for c in cfgs] == list(
        itertools.product(["dpo", "multi_dpo", "mrpo"], [0, 1, 2])
    )
    assert {c.references.num_refs for c in cfgs} == {3}


def test_weighting_sweep_values(planned: Callable[[str], Plan]) -> None:
    cfgs = planned("weighting").configs
    strategies = ["uniform", "arwc", "vdw", "vaw", "sliding_window", "thompson"]
    assert [(c.weights.strategy, c.seed) for c in cfgs] == list(
        itertools.product(strategies, [0, 1, 2])
    )
    assert {c.loss.name for c in cfgs} == {"mrpo"}


def test_each_reference_sweep_selects_each_pool_entry_alone(
    planned: Callable[[str], Plan], output_dir: Path
) -> None:
    cfgs = planned("each_reference").configs
    pool = ["self", "harmless", "concise", "empathetic"]  # the quickstart's prompted pool
    assert [(c.references.select, c.seed) for c in cfgs] == [
        ([name], seed) for name in pool for seed in (0, 1, 2)
    ]
    assert {c.loss.name for c in cfgs} == {"dpo"}
    # Any pool: the entries come from the composed pool, not from the sweep file.
    other = "references.pool=[{name:x,source:self},{name:y,source:self}]"
    _, jobs = plan_jobs(sweep_arguments("each_reference", output_dir, [other, "seed=0"]))
    selects = [checked_train_config(job, output_dir).references.select for job in jobs]
    assert selects == [["x"], ["y"]]


def test_aggregation_sweep_values(planned: Callable[[str], Plan]) -> None:
    cfgs = planned("aggregation").configs
    aggregations = ["harmonic", "geometric", "arithmetic", "loss_mixture"]
    assert [(c.loss.aggregation, c.weights.strategy, c.seed) for c in cfgs] == list(
        itertools.product(aggregations, ["uniform", "arwc"], [0, 1, 2])
    )
    assert {(c.loss.name, c.loss.ctro, c.references.num_refs) for c in cfgs} == {("mrpo", False, 3)}


def test_ctro_sweep_lists_each_setting_once(planned: Callable[[str], Plan]) -> None:
    cfgs = planned("ctro").configs
    settings = [(c.loss.ctro, c.loss.adaptive_epsilon, c.loss.epsilon) for c in cfgs]
    clipped = [(True, adaptive, eps) for adaptive in (False, True) for eps in (0.05, 0.1, 0.2, 0.4)]
    off = (False, True, 0.1)  # ε and its mode keep their defaults, unused without clipping
    assert settings == [setting for setting in [off, *clipped] for _ in range(3)]
    assert [c.seed for c in cfgs] == [0, 1, 2] * 9
    assert {c.loss.name for c in cfgs} == {"mrpo"}
    fixed_02 = cfgs[settings.index((True, False, 0.2))]
    assert {"ctro:True", "adaptive_epsilon:False", "epsilon:0.2"} <= tags_of(fixed_02)


@pytest.mark.parametrize("name", GRID_SWEEPS)
def test_documented_commands_plan_the_stated_jobs(name: str, output_dir: Path) -> None:
    for extra, count in header_commands(header(SWEEPS_DIR / f"{name}.yaml"))[1:]:
        # (the first, plain command is the plan checked job by job above)
        _, jobs = plan_jobs([*extra, f"paths.output_dir={output_dir}"])
        if count is not None:
            assert len(jobs) == count
        for job in (jobs[0], jobs[-1]):
            checked_train_config(job, output_dir)


def test_command_line_overrides_replace_sweep_params(output_dir: Path) -> None:
    """How a sweep is cut down (the slow tests below) or widened from the command line."""
    _, jobs = plan_jobs(sweep_arguments("num_refs", output_dir, ["references.num_refs=1,2"]))
    assert len(jobs) == 2 * 3
    _, jobs = plan_jobs(sweep_arguments("num_refs", output_dir, ["seed=0", "loss=dpo,mrpo"]))
    values = [tuple(o.split("=", 1)[1] for o in job if o.startswith(("references.", "loss=")))
              for job in jobs]  # fmt: skip
    assert values == list(itertools.product("1234", ["dpo", "mrpo"]))
    cfg = checked_train_config(jobs[-1], output_dir)
    assert (cfg.references.num_refs, cfg.loss.name, cfg.seed) == (4, "mrpo", 0)
    _, jobs = plan_jobs(sweep_arguments("ctro", output_dir, ["loss.name=multi_dpo", "seed=0"]))
    assert len(jobs) == 9
    for job in (jobs[0], jobs[-1]):
        assert checked_train_config(job, output_dir).loss.name == "multi_dpo"


def test_sweep_jobs_share_a_named_wandb_group(planned: Callable[[str], Plan]) -> None:
    plan = planned("weighting")
    groups, names = set(), set()
    for num, (job, run_cfg) in enumerate(zip(plan.jobs[:2], plan.configs, strict=False)):
        cfg = job_config(plan.master, job)
        assert cfg.hydra.mode == RunMode.MULTIRUN
        with open_dict(cfg):
            cfg.hydra.job.num = num  # what the launcher sets
        HydraConfig.instance().set_config(cfg)
        try:
            labels = logger_labels(run_cfg)
        finally:
            HydraConfig.instance().cfg = None
        groups.add(run_cfg.logger.group or labels["group"])
        names.add(labels["name"])
    [group] = groups  # one group per sweep, named after it
    assert re.fullmatch(r"weighting_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}", group)
    assert len(names) == 2
    assert all("sweeps" not in n and "weights=" in n for n in names)


# --- the Optuna sweep ------------------------------------------------------------------


def test_optuna_sweep_composes_and_its_search_space_passes_checks(output_dir: Path) -> None:
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import LogUniformDistribution

    arguments = sweep_arguments("beta_lr_optuna", output_dir)
    master = compose_multirun(arguments)
    sweeper = master.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize"
    assert sweeper.n_trials == stated_cost(header(SWEEPS_DIR / "beta_lr_optuna.yaml"))
    lines = [f"{k}={v}" for k, v in sweeper.params.items()] + arguments
    space, fixed = create_params_from_overrides(lines)
    assert space == {
        "loss.beta": LogUniformDistribution(0.01, 1.0),
        "optimizer.lr": LogUniformDistribution(1e-6, 1e-4),
    }
    assert set(fixed) == {"+sweeps", "paths.output_dir"}
    # The corners of the search space are valid configs, with tags telling them apart.
    tags = set()
    for beta, lr in itertools.product((0.01, 1.0), (1e-6, 1e-4)):
        job = [f"{k}={v}" for k, v in fixed.items()] + [f"loss.beta={beta}", f"optimizer.lr={lr}"]
        run_cfg = checked_train_config(job, output_dir)
        assert (run_cfg.loss.beta, run_cfg.optimizer.lr) == (beta, lr)
        tags.add(tags_of(run_cfg))
    assert len(tags) == 4


# --- the W&B sweep ---------------------------------------------------------------------


def test_wandb_sweep_runs_compose_and_pass_checks(output_dir: Path) -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    spec = yaml.safe_load(WANDB_SWEEP.read_text())
    assert entry_points(group="console_scripts", name=spec["program"])  # mrpo-train
    assert spec["command"] == ["${program}", "${args_no_hyphens}"]
    assert spec["method"] == "grid"
    assert spec["metric"] == {"name": "final/val/rewards/accuracy", "goal": "maximize"}
    params = spec["parameters"]
    values = [p["values"] if "values" in p else [p["value"]] for p in params.values()]
    grid = [dict(zip(params, point, strict=True)) for point in itertools.product(*values)]
    assert len(grid) == stated_cost(header(WANDB_SWEEP))
    # The arguments the W&B agent puts on the command line for each run.
    runs = [
        create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
        for point in grid
    ]
    parser = OverridesParser.create()
    for run in runs:
        assert [o.key_or_group for o in parser.parse_overrides(run["args_no_hyphens"])] == list(
            params
        )
    # Composing is slow: compose the corners of the grid (both objectives, smallest and
    # largest K); the other runs differ from them only in values checked the same way.
    corners = [
        (point, run)
        for point, run in zip(grid, runs, strict=True)
        if point["seed"] == 0 and point["references.num_refs"] in (1, 4)
    ]
    assert len(corners) == 4
    seen = set()
    for point, run in corners:
        run_cfg = checked_train_config(run["args_no_hyphens"], output_dir)
        assert (run_cfg.loss.name, run_cfg.references.num_refs, run_cfg.seed) == (
            point["loss"], point["references.num_refs"], point["seed"]
        )  # fmt: skip
        assert run_cfg.task_name == "quickstart"
        assert run_cfg.callbacks.checkpoint.save_top_k == 0
        assert run_cfg.save_model is False
        seen.add(tags_of(run_cfg))
    assert len(seen) == len(corners)


# --- end to end (slow) -----------------------------------------------------------------


def run_sweep(
    name: str, extra: Sequence[str], model_dir: Path, data_file: Path, sweep_dir: Path
) -> subprocess.CompletedProcess[str]:
    """`mrpo-train -m +sweeps=<name>` on the tiny model and HH-style data, in a subprocess."""
    command = [
        sys.executable, "-m", "mrpo.cli.train", "-m", f"+sweeps={name}", "debug=tiny",
        f"model.source={model_dir}", "data=local_file", f"data.source={data_file}",
        f"paths.cache_dir={sweep_dir.parent / 'cache'}", "logger.mode=offline",
        f"hydra.sweep.dir={sweep_dir}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WANDB_MODE", None)  # the config's logger.mode decides
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=sweep_dir.parent, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def job_summaries(sweep_dir: Path) -> list[dict[str, Any]]:
    job_dirs = sorted(
        (p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    return [json.loads((d / "summary.json").read_text()) for d in job_dirs]


# Two jobs per sweep: the command-line values replace the sweep file's.
SLOW_CASES = {
    "num_refs": (["references.num_refs=1,2", "seed=0"], ("num_refs", [1, 2])),
    "objectives": (["loss=dpo,multi_dpo", "seed=0"], ("loss", ["dpo", "multi_dpo"])),
    "weighting": (["weights=vdw,thompson", "seed=0"], ("weighting", ["vdw", "thompson"])),
    "ctro": (
        ["loss={ctro:false},{ctro:true,adaptive_epsilon:false,epsilon:0.2}", "seed=0"],
        ("loss", ["mrpo", "mrpo"]),
    ),
    "each_reference": (
        ["seed=0"],
        ("references.select", [["self"], ["harmless"], ["concise"], ["empathetic"]]),
    ),
    "aggregation": (
        ["loss.aggregation=geometric,loss_mixture", "weights=uniform", "seed=0"],
        ("loss.aggregation", ["geometric", "loss_mixture"]),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_grid_sweep_runs_end_to_end(
    name: str,
    tiny_model_dir: Path,
    hh_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    extra, (key, expected) = SLOW_CASES[name]
    sweep_dir = tmp_path / "sweep"
    run_sweep(name, extra, tiny_model_dir, hh_file, sweep_dir)
    assert (sweep_dir / "multirun.yaml").is_file()
    summaries = job_summaries(sweep_dir)
    if "." in key:  # a config key: read it from each job's resolved config.yaml
        section, field = key.split(".")
        configs = [yaml.safe_load((sweep_dir / str(i) / "config.yaml").read_text())
                   for i in range(len(summaries))]  # fmt: skip
        assert [c[section][field] for c in configs] == expected
    else:
        assert [s[key] for s in summaries] == expected
    assert not list(sweep_dir.rglob("*.ckpt"))  # sweeps keep scores, not checkpoints
    for summary in summaries:
        assert summary["global_step"] == 2
        assert 0.0 <= summary["final/val/rewards/accuracy"] <= 1.0
        assert summary["wandb_dir"] and Path(summary["wandb_dir"]).is_dir()
    if name == "ctro":
        configs = [yaml.safe_load((sweep_dir / str(i) / "config.yaml").read_text()) for i in (0, 1)]
        assert [(c["loss"]["ctro"], c["loss"]["epsilon"]) for c in configs] == [
            (False, 0.1), (True, 0.2)
        ]  # fmt: skip
        assert "epsilon:0.2" in configs[1]["logger"]["tags"]
    assert compare_main([str(sweep_dir), "--format", "csv"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 1 + len(expected)  # header + one row per configuration (one seed each)


@pytest.mark.slow
def test_optuna_sweep_runs_end_to_end(tiny_model_dir: Path, hh_file: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    extra = ["hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1"]
    run_sweep("beta_lr_optuna", extra, tiny_model_dir, hh_file, sweep_dir)
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"loss.beta", "optimizer.lr"}
    summaries = job_summaries(sweep_dir)
    assert len(summaries) == 2
    assert results["best_value"] == max(s["final/val/rewards/accuracy"] for s in summaries)
    for i in range(2):
        cfg = yaml.safe_load((sweep_dir / str(i) / "config.yaml").read_text())
        assert 0.01 <= cfg["loss"]["beta"] <= 1.0
        assert 1e-6 <= cfg["optimizer"]["lr"] <= 1e-4
