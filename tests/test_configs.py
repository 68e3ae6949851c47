"""Every config of the packaged tree (``mrpo/conf``) composes, converts to the typed schema
and passes the checks.

Composition goes through Hydra's compose API on the package's config folder, the way ``mrpo-train``
composes it; the composed config is turned into :class:`mrpo.config.TrainConfig` with
``mrpo.config.to_dataclass`` and handed to :func:`mrpo.groups.checks.check_train_config`.
Options that need a value the user must give (``???``) get one here, and a separate test shows that
leaving it out fails naming the key.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from mrpo.config import CONFIG_DIR, EvalRunConfig
from mrpo.config.schema import SWEEPS_GROUP
from mrpo.errors import ConfigError
from mrpo.evals import EVAL_NAMES
from mrpo.models.parallel import FSDP_RUNS_ON_CPU
from mrpo.testing.configs import checked_train_config, compose_config
from mrpo.tracking.backends import OPTIONAL_LOGGERS, module_available
from mrpo.training.optimizer import build_optimizer

PRIMARY_CONFIGS = ("train.yaml", "eval.yaml")
CPU = [] if torch.cuda.is_available() else ["trainer.accelerator=cpu"]
"""Run GPU configs on this machine's CPU when it has no GPU (the checks refuse them otherwise)."""

# Values for the options whose config holds a required value (`???`), keyed by "group/option".
REQUIRED_VALUES: dict[str, Sequence[str]] = {
    "weights/fixed": ["weights.fixed_weights=[1.0]"],  # default references: K=1
    "data/local_file": ["data.source={pairs_file}"],
    "loss/mrpo_official": ["references=prompted", "references.num_refs=2"],  # needs K=2
}

# Options that ask for CUDA GPUs: on a machine without them the checks refuse them (naming
# trainer.accelerator) before anything loads; on the CPU these overrides are what they need,
# and, where a GPU is the only way (DeepSpeed), the key the refusal names.
GPU_EXPERIMENTS = (
    "mrpo_k2_llama_from_mistral", "mrpo_k2_mistral_from_llama", "wu_saferlhf", "wu_ultrafeedback"
)  # fmt: skip
ON_CPU: dict[str, tuple[Sequence[str], str | None]] = {
    "trainer/gpu": (["trainer.accelerator=cpu", "optimizer.fused=false"], None),
    # torch 2.6 (the floor) cannot run FSDP on CPUs (mrpo.models.parallel.FSDP_RUNS_ON_CPU)
    "trainer/fsdp": (
        ["trainer.accelerator=cpu"],
        None if FSDP_RUNS_ON_CPU else "trainer.strategy.name",
    ),
    "trainer/deepspeed": (["trainer.accelerator=cpu"], "trainer.strategy.name"),
    "trainer/deepspeed_zero3": (["trainer.accelerator=cpu"], "trainer.strategy.name"),
    **{f"experiment/{name}": (["trainer.accelerator=cpu"], None) for name in GPU_EXPERIMENTS},
}


def group_options(conf_dir: Path = CONFIG_DIR) -> list[tuple[str, str]]:
    """(group, option) for every yaml file in a config group folder of ``conf_dir``.

    Groups nest (``hydra/launcher``); the primary configs at the top are not group options.
    """
    options = []
    for path in sorted(conf_dir.rglob("*.yaml")):
        rel = path.relative_to(conf_dir)
        if len(rel.parts) > 1:
            options.append((rel.parent.as_posix(), rel.stem))
    return options


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prompt/chosen/rejected jsonl file for ``data=local_file``."""
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text('{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}\n')
    return path


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


def expect_config_error(overrides: Sequence[str], output_dir: Path) -> str:
    """Compose and convert (both must succeed); the checks must raise. Return the message."""
    with pytest.raises(ConfigError) as info:
        checked_train_config(overrides, output_dir)
    return str(info.value)


# --- every option of every group -------------------------------------------------------


def _train_group_options() -> Iterator[tuple[str, str]]:
    for group, option in group_options():
        # Hydra's own groups: tested below; the sweep files (multirun): in test_sweeps.py;
        # the leaderboard needs hub data sets, refused offline: its own test below.
        if group.split("/")[0] not in ("hydra", SWEEPS_GROUP) and option != "leaderboard":
            yield group, option


def test_config_groups_are_found() -> None:
    groups = {group for group, _ in group_options()}
    expected = {
        "model", "references", "data", "loss", "weights", "optimizer", "scheduler",
        "trainer", "logger", "callbacks", "eval", "paths", "hydra", "experiment", "debug",
        "sweeps",
    }  # fmt: skip
    assert expected <= groups


@pytest.mark.parametrize(("group", "option"), list(_train_group_options()))
def test_every_group_option_composes_and_passes_checks(
    group: str, option: str, pairs_file: Path, output_dir: Path
) -> None:
    extra = [v.format(pairs_file=pairs_file) for v in REQUIRED_VALUES.get(f"{group}/{option}", [])]
    overrides = [f"{group}={option}", *extra]
    if f"{group}/{option}" in ON_CPU and not torch.cuda.is_available():
        with pytest.raises(ConfigError) as info:
            checked_train_config(overrides, output_dir)
        assert info.value.key == "trainer.accelerator"
        cpu, refused = ON_CPU[f"{group}/{option}"]
        if refused is not None:
            with pytest.raises(ConfigError) as info:
                checked_train_config([*overrides, *cpu], output_dir)
            assert info.value.key == refused
            return
        overrides += cpu
    missing = _missing_logger_extra(group, option)
    if missing is not None:  # the core-floors environment (make test-floor) has no extras
        assert f"pip install 'mrpo[{missing}]'" in expect_config_error(overrides, output_dir)
        return
    run_cfg = checked_train_config(overrides, output_dir)
    assert run_cfg.paths.output_dir == str(output_dir)


def _missing_logger_extra(group: str, option: str) -> str | None:
    """The extra of an optional logger that ``logger=<option>`` turns on and that is not
    installed here, else None."""
    if group != "logger":
        return None
    flags = compose_config([f"logger={option}"]).logger
    for flag, entry in OPTIONAL_LOGGERS.items():
        if flags.get(flag) and not module_available(entry.module):
            return entry.extra
    return None


def test_group_choices_are_applied(pairs_file: Path, output_dir: Path) -> None:
    run_cfg = checked_train_config(
        ["loss=multi_dpo", "weights=vaw", "references=prompted", "data=local_file",
         f"data.source={pairs_file}", "optimizer=sgd", "trainer=gpu", *CPU],
        output_dir,
    )  # fmt: skip
    assert run_cfg.loss.name == "multi_dpo"
    assert run_cfg.loss.ctro is False
    assert run_cfg.weights.strategy == "vaw"
    assert [r.name for r in run_cfg.references.pool] == [
        "self", "harmless", "concise", "empathetic"
    ]  # fmt: skip
    assert run_cfg.data.source == str(pairs_file)
    assert run_cfg.optimizer._target_ == "torch.optim.SGD"
    assert run_cfg.trainer.precision == "bf16-mixed"
    assert run_cfg.trainer.max_epochs == 1  # from trainer/default, which gpu extends


@pytest.mark.parametrize(
    ("option", "key"),
    [("weights=fixed", "weights.fixed_weights"), ("data=local_file", "data.source")],
)
def test_required_value_left_out_fails_naming_the_key(
    option: str, key: str, output_dir: Path
) -> None:
    # Both stay `???` and the conversion to the schema fails, naming the key.
    with pytest.raises(ConfigError) as info:
        checked_train_config([option], output_dir)
    assert str(info.value).startswith(f"{key}: ")


def test_experiments_compose(output_dir: Path) -> None:
    experiments = [option for group, option in group_options() if group == "experiment"]
    assert "quickstart" in experiments
    for name in experiments:
        run_cfg = checked_train_config([f"experiment={name}", *CPU], output_dir)
        assert run_cfg.task_name == name


def test_gpu_experiments_as_written_need_a_cuda_gpu(output_dir: Path) -> None:
    for name in ("mrpo_k2_llama_from_mistral", "wu_saferlhf"):
        if torch.cuda.is_available():
            assert checked_train_config([f"experiment={name}"], output_dir).task_name == name
            continue
        with pytest.raises(ConfigError) as info:
            checked_train_config([f"experiment={name}"], output_dir)
        assert info.value.key == "trainer.accelerator"


def test_references_select_picks_pool_entries_by_name_in_order(output_dir: Path) -> None:
    from mrpo.groups.references import num_references, reference_specs

    cfg = checked_train_config(
        ["references=prompted", "references.select=[concise,self]", "loss=multi_dpo"], output_dir
    )
    assert [s.name for s in reference_specs(cfg)] == ["concise", "self"]
    assert num_references(cfg) == 2
    cfg = checked_train_config(["references=prompted", "references.select=[harmless]"], output_dir)
    assert [s.name for s in reference_specs(cfg)] == ["harmless"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["references.select=[nope]"], "references.select"),
        (["references.select=[self,self]"], "references.select"),
        (["references.select=[self,concise]", "references.num_refs=3"], "references.num_refs"),
        (["references.select=[self]", "references.pool.0.dtype=f8"], "references.pool.0.dtype"),
        (["references.select=[concise]", "references.pool.2.dtype=f8"], "references.pool.2.dtype"),
    ],
)
def test_an_unusable_selection_is_refused_naming_the_key(
    overrides: list[str], key: str, output_dir: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        checked_train_config(["references=prompted", *overrides], output_dir)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.test_size=-1"], "data.test_size"),
        (["data.train_size=0"], "data.train_size"),
        (["data.length_filter.min_percentile=100"], "data.length_filter.min_percentile"),
    ],
)
def test_unusable_split_and_filter_settings_are_refused(
    overrides: list[str], key: str, output_dir: Path
) -> None:
    assert expect_config_error(overrides, output_dir).startswith(f"{key}: ")


def test_quickstart_experiment_values(output_dir: Path) -> None:
    run_cfg = checked_train_config(["experiment=quickstart"], output_dir)
    assert run_cfg.references.num_refs == 3
    assert [r.name for r in run_cfg.references.pool[:3]] == ["self", "harmless", "concise"]
    assert (run_cfg.loss.name, run_cfg.weights.strategy) == ("mrpo", "arwc")
    assert run_cfg.data.max_samples == 88


def test_debug_applies_after_experiment(output_dir: Path) -> None:
    run_cfg = checked_train_config(["experiment=quickstart", "debug=tiny"], output_dir)
    assert run_cfg.data.max_samples == 24  # debug wins over the experiment's 88
    assert run_cfg.trainer.max_steps == 2
    assert run_cfg.references.num_refs == 3  # the experiment's value is kept


def test_eval_primary_config_composes(output_dir: Path) -> None:
    cfg = compose_config([f"paths.output_dir={output_dir}"], config_name="eval")
    eval_cfg = OmegaConf.to_object(cfg)
    assert isinstance(eval_cfg, EvalRunConfig)
    assert eval_cfg.eval.tasks  # scores something by default: the built-in tasks
    assert set(eval_cfg.eval.tasks) <= set(EVAL_NAMES)
    assert eval_cfg.eval.harness.include_defaults  # lm-eval's own task configs
    assert eval_cfg.logger.job_type == "eval"


def test_default_launcher_is_local_and_sequential() -> None:
    cfg = compose_config([], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("BasicLauncher")  # local, one job at a time
    assert cfg.hydra.sweeper._target_.endswith("BasicSweeper")


def test_slurm_launcher_config_composes() -> None:
    cfg = compose_config(
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)
    assert launcher.cpus_per_task == 8
    assert launcher.mem_gb == 64
    assert launcher.timeout_min == 120
    # The launcher object is built from this config exactly as `mrpo-train -m` builds it.
    slurm = hydra.utils.instantiate(launcher)
    assert type(slurm).__name__ == "SlurmLauncher"
    assert slurm.params["partition"] == "gpu"


def test_optuna_sweeper_config_composes() -> None:
    cfg = compose_config(["hydra/sweeper=optuna_tpe"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert sweeper.direction == "maximize"  # mrpo-train returns the final val accuracy
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.sampler.seed == 0
    assert sweeper.n_jobs == 1


_PLUGINS = {"launcher": "hydra_submitit_launcher", "sweeper": "hydra_optuna_sweeper"}


def _hydra_plugin_options() -> Iterator[tuple[str, str]]:
    for group, option in group_options():
        if group.split("/")[0] == "hydra" and group != "hydra":
            yield group, option


@pytest.mark.parametrize(("group", "option"), list(_hydra_plugin_options()))
def test_every_hydra_plugin_option_composes(group: str, option: str) -> None:
    """Each file under conf/hydra/<launcher|sweeper>/ composes as that Hydra group's option."""
    plugin = _PLUGINS[group.split("/")[1]]
    importlib.import_module(f"hydra_plugins.{plugin}")  # the dev extra installs both plugins
    cfg = compose_config([f"{group}={option}"], return_hydra_config=True)
    assert cfg.hydra.runtime.choices[group] == option
    assert plugin in cfg.hydra[group.split("/")[1]]._target_


# --- typos and wrong types fail at composition -----------------------------------------


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("loss.bta=0.2", ["loss.bta", "bta"]),  # misspelt key
        ("loss.beta=high", ["loss.beta", "high"]),  # wrong type
        ("references.num_refs=two", ["references.num_refs", "two"]),
        ("data.batch_size=1.5", ["data.batch_size"]),
        ("loss=mrpoo", ["loss/mrpoo"]),  # unknown group option
        ("seeed=1", ["seeed"]),
    ],
)
def test_typos_and_wrong_types_fail_at_composition(
    override: str, names: list[str], output_dir: Path
) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_config([f"paths.output_dir={output_dir}", override])
    message = f"{info.value} {info.value.__cause__}"
    for name in names:
        assert name in message


def test_typo_in_a_config_file_fails_naming_the_key(tmp_path: Path) -> None:
    conf = shutil.copytree(CONFIG_DIR, tmp_path / "conf")
    (conf / "loss" / "typo.yaml").write_text("name: mrpo\nbeta: 0.1\nepsilonn: 0.2\n")
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["paths.output_dir=x", "loss=typo"], conf_dir=conf)
    message = f"{info.value} {info.value.__cause__}"
    assert "epsilonn" in message
    assert "loss/typo" in message


# --- values that compose but cannot work (mrpo.groups.checks) ---------------------------------


def test_unknown_loss_is_rejected(output_dir: Path) -> None:
    message = expect_config_error(["loss.name=kto"], output_dir)
    assert message.startswith("loss.name:")
    assert "'kto'" in message
    assert "mrpo" in message  # lists the known objectives


def test_fixed_weights_length_must_equal_num_refs(output_dir: Path) -> None:
    overrides = ["references=prompted", "references.num_refs=3", "weights=fixed"]
    checked_train_config([*overrides, "weights.fixed_weights=[0.5,0.3,0.2]"], output_dir)
    message = expect_config_error([*overrides, "weights.fixed_weights=[0.5,0.5]"], output_dir)
    assert message.startswith("weights.fixed_weights:")
    assert "2 entries" in message
    assert "K=3" in message


@pytest.mark.parametrize("beta", ["0", "-0.1"])
def test_beta_must_be_positive(beta: str, output_dir: Path) -> None:
    message = expect_config_error([f"loss.beta={beta}"], output_dir)
    assert message.startswith("loss.beta:")
    assert "> 0" in message


def test_num_refs_cannot_exceed_the_pool(output_dir: Path) -> None:
    checked_train_config(["references=prompted", "references.num_refs=4"], output_dir)
    message = expect_config_error(["references=prompted", "references.num_refs=5"], output_dir)
    assert message.startswith("references.num_refs:")
    assert "pool size 4" in message
    assert "5" in message


def test_shard_timeout_must_be_positive(output_dir: Path) -> None:
    run_cfg = checked_train_config(["references.shard_timeout_s=60"], output_dir)
    assert (run_cfg.references.split_across_ranks, run_cfg.references.shard_timeout_s) == (True, 60)
    message = expect_config_error(["references.shard_timeout_s=0"], output_dir)
    assert message.startswith("references.shard_timeout_s:")
    assert "> 0" in message


def test_logprob_chunk_sizes_must_be_positive(output_dir: Path) -> None:
    assert (
        checked_train_config(["model.logprob_chunk_size=2"], output_dir).model.logprob_chunk_size
        == 2
    )
    message = expect_config_error(["model.logprob_chunk_size=0"], output_dir)
    assert message.startswith("model.logprob_chunk_size:")
    model = checked_train_config(["model.lm_head_chunk_tokens=7"], output_dir).model
    assert (model.fused_lm_head, model.lm_head_chunk_tokens) == (True, 7)
    message = expect_config_error(["model.lm_head_chunk_tokens=0"], output_dir)
    assert message.startswith("model.lm_head_chunk_tokens:")


def test_layout_and_preparation_options(output_dir: Path) -> None:
    data = checked_train_config([], output_dir).data
    # The prompt is shared by default (it pays); packing and token budgets are opt-in.
    assert (data.prefix_sharing, data.packing, data.max_tokens_per_batch) == (True, False, None)
    options = ["data.packing=true", "data.pack_row_tokens=2048", "data.max_tokens_per_batch=4096"]
    data = checked_train_config([*options, "data.num_proc=2"], output_dir).data
    assert (data.pack_row_tokens, data.max_tokens_per_batch, data.num_proc) == (2048, 4096, 2)


@pytest.mark.parametrize(
    "override",
    [
        "data.pack_row_tokens=0",
        "data.max_tokens_per_batch=0",
        "data.num_proc=0",
        "model.attn_implementation=fast",
    ],
)
def test_bad_layout_and_preparation_values_name_their_key(override: str, output_dir: Path) -> None:
    message = expect_config_error([override], output_dir)
    assert message.startswith(override.split("=")[0] + ":")


def test_official_pairing_needs_two_references(output_dir: Path) -> None:
    base = ["loss=mrpo", "loss.harmonic_pairing=official", "references=prompted"]
    checked_train_config([*base, "references.num_refs=2"], output_dir)
    message = expect_config_error([*base, "references.num_refs=3"], output_dir)
    assert message.startswith("loss.harmonic_pairing:")
    assert "K=2" in message
    assert "K=3" in message


def test_unknown_trainer_argument_is_rejected(output_dir: Path) -> None:
    message = expect_config_error(["+trainer.max_step=10"], output_dir)
    assert message.startswith("trainer.max_step:")
    assert "lightning.Trainer" in message


def test_unknown_eval_task_is_rejected(output_dir: Path, tmp_path: Path) -> None:
    checked_train_config(["eval=quick"], output_dir)
    # Not built in, so an lm-eval name: checked against lm-eval's index (here only its
    # shipped GSM8K/TruthfulQA overrides and an empty folder, to skip indexing lm-eval's tasks).
    only = [f"eval.harness.include_path=[{tmp_path}]", "eval.harness.include_defaults=false"]
    message = expect_config_error(["eval=quick", "eval.tasks=[gsm8k,gsm9k]", *only], output_dir)
    assert message.startswith("eval.tasks: unknown task 'gsm9k'")
    message = expect_config_error(
        ["eval=quick", "+eval.harness.num_fewshot.gsm8k=3", *only], output_dir
    )
    assert message.startswith("eval.harness.num_fewshot.gsm8k: names no lm-eval task")


def test_leaderboard_set_and_its_offline_refusal(
    output_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets.config
    from huggingface_hub import constants

    cfg = compose_config([f"paths.output_dir={output_dir}", "eval=leaderboard"])
    ev = OmegaConf.to_object(cfg).eval  # type: ignore[union-attr]
    assert ev.tasks == ["arc_challenge", "hellaswag", "mmlu", "winogrande", "truthfulqa", "gsm8k"]
    assert ev.harness.num_fewshot == {
        "arc_challenge": 25,
        "hellaswag": 10,
        "mmlu": 5,
        "winogrande": 5,
    }
    eval_cfg = compose_config(
        [f"paths.output_dir={output_dir}", "eval=leaderboard"], config_name="eval"
    )
    assert OmegaConf.to_object(eval_cfg).eval.tasks == ev.tasks  # type: ignore[union-attr]
    # No hub and an empty cache: refused before anything loads, naming the task and data set.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    message = expect_config_error(["eval=leaderboard"], output_dir)
    assert message.startswith("eval.tasks: lm-eval task 'arc_challenge' cannot get its data")
    assert "allenai/ai2_arc (ARC-Challenge)" in message


# --- instantiation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "cls"), [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_optimizer_partial_instantiates(
    option: str, cls: type[torch.optim.Optimizer], output_dir: Path
) -> None:
    run_cfg = checked_train_config([f"optimizer={option}", "optimizer.lr=0.25"], output_dir)
    factory = build_optimizer(run_cfg.optimizer)  # what mrpo-train hands the module
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    optimizer = factory(params)
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["lr"] == 0.25
    assert optimizer.param_groups[0]["params"] == params


def test_adamw_is_fused_and_steps_like_the_default_implementation(output_dir: Path) -> None:
    run_cfg = checked_train_config(["optimizer=adamw", "optimizer.weight_decay=0.1"], output_dir)
    factory = build_optimizer(run_cfg.optimizer)
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator)]
    grads = [[torch.randn(p.shape, generator=generator) for p in start] for _ in range(3)]
    results = []
    for make in (factory, lambda ps: torch.optim.AdamW(ps, lr=5e-6, weight_decay=0.1)):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = make(params)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        results.append((optimizer, [p.detach() for p in params]))
    (fused, fused_params), (_, reference_params) = results
    assert fused.defaults["fused"] is True
    for a, b in zip(fused_params, reference_params, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    assert not torch.equal(fused_params[0], start[0])
