"""The reproductions of the published studies: every experiment composes and runs two steps end to
end on tiny local models, and the sweeps plan the studies' jobs.

The named hub models stand in as tiny random Llamas with two different tokenizers and chat
templates (``chatml`` and ``zephyr``, so every cross-tokenizer path is taken): the policy, the
``self`` reference and every external reference. The data is a local HH-style file with one
very short pair and two pairs too long to fit, so the length filters have something to drop.
Runs happen on the CPU (``trainer.accelerator=cpu``), the 4-bit layers through bitsandbytes'
CPU backend.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from mrpo.cli.train import train
from mrpo.compare.records import read_metrics
from mrpo.objectives.weighting.registry import weighting_params
from mrpo.testing.configs import checked_train_config, compose_config
from mrpo.testing.models import QUANTIZABLE_HIDDEN_SIZE
from mrpo.testing.runs import write_tiny_model
from test_sweeps import SWEEPS_DIR, header, header_commands, plan_jobs, stated_cost

WU_STRATEGIES = (
    "vdw", "vaw", "sliding_window", "sliding_window_one_hot", "thompson", "thompson_prior10"
)  # fmt: skip
WU_REFERENCES = (
    "qwen2_5_0_5b", "yi_1_5_9b", "llama_3_1_8b", "phi_3_medium", "mistral_7b", "qwen2_5_1_5b",
    "qwen3_4b",
)  # fmt: skip


def write_pairs(path: Path, n: int) -> Path:
    """HH transcripts: pair 0 very short, pairs 1 and 2 too long for 96 tokens, the rest alike."""
    lines = []
    for i in range(n):
        prompt = f"How do I make tea? Question {i}."
        good, bad = f"Boil water, add tea ({i}).", "No."
        if i == 0:
            prompt, good, bad = "Tea?", "Yes.", "No!"
        elif i in (1, 2):
            good = " ".join(["Boil the water slowly and wait."] * 12)
        lines.append(
            json.dumps(
                {
                    "chosen": f"\n\nHuman: {prompt}\n\nAssistant: {good}",
                    "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {bad}",
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stand_ins")
    wide = QUANTIZABLE_HIDDEN_SIZE  # the 4-bit experiments take bitsandbytes' CPU kernels
    return {
        "chatml": write_tiny_model(root / "chatml", kind="chatml", seed=0, hidden_size=wide),
        "zephyr": write_tiny_model(root / "zephyr", kind="zephyr", seed=1, hidden_size=wide),
        "chatml2": write_tiny_model(root / "chatml2", kind="chatml", seed=2, hidden_size=wide),
        "zephyr2": write_tiny_model(root / "zephyr2", kind="zephyr", seed=3, hidden_size=wide),
        "data": write_pairs(root / "pairs.jsonl", 48),
        "cache": root / "cache",  # shared: runs on the same rows reuse the references
    }


def tiny(experiment: str, stand_ins: dict[str, Path], pool_size: int) -> list[str]:
    """Overrides that run ``experiment`` on the stand-ins, two steps, on the CPU."""
    others = ("zephyr", "chatml2", "zephyr2")
    pool = [
        f"references.pool.{k}.source={stand_ins[others[(k - 1) % 3]]}" for k in range(1, pool_size)
    ]
    return [
        f"experiment={experiment}",
        "debug=tiny",
        "trainer.accelerator=cpu",
        f"model.source={stand_ins['chatml']}",
        *pool,
        f"data.source={stand_ins['data']}",
        "data.max_samples=null",
        f"paths.cache_dir={stand_ins['cache']}",
        "logger=none",
        "trainer.enable_model_summary=false",
    ]


WU_SPLIT = ["data.val_size=8", "data.test_size=8", "data.train_size=20"]


def run(overrides: Sequence[str], output_dir: Path) -> dict:
    summary = train(compose_config([*overrides, f"paths.output_dir={output_dir}"]))
    assert summary["global_step"] == 2
    losses = read_metrics(output_dir)["train/loss"]
    assert sorted(losses) == [0, 1] and all(math.isfinite(v) for v in losses.values())
    return summary


def ref_weights(run_dir: Path, k: int) -> list[list[float]]:
    metrics = read_metrics(run_dir)
    return [[metrics[f"train/ref_weight/{j}"][step] for j in range(k)] for step in (0, 1)]


def assert_wu_data(summary: dict) -> None:
    data = summary["data"]
    report = data["length_filter"]
    # 48 rows: the short pair falls below the 2.5th percentile, the two long ones do not fit
    # in 96 tokens under some tokenizer; the split draws from the 45 left.
    assert (report["rows"], report["dropped_short"], report["dropped_too_long"]) == (48, 1, 2)
    assert (data["train_pairs"], data["val_pairs"], data["test_pairs"]) == (20, 8, 8)
    assert data["truncated"] == 0  # every kept pair fits every model
    assert len({data["train_fingerprint"], data["val_fingerprint"], data["test_fingerprint"]}) == 3
    # The test split is scored after training: the study's metric is there.
    assert 0.0 <= summary["final/test/policy_margin_accuracy"] <= 1.0
    assert "before/test/policy_margin_accuracy" not in summary


# --- the weighting-strategies study (Wu & Echarghaoui) ---------------------------------


@pytest.mark.parametrize(
    ("strategy", "loss"),
    [(s, ("multi_dpo", "mrpo")[i % 2]) for i, s in enumerate(WU_STRATEGIES)],
)
def test_wu_saferlhf_runs_each_weighting_of_the_study(
    strategy: str, loss: str, stand_ins: dict[str, Path], tmp_path: Path
) -> None:
    overrides = [*tiny("wu_saferlhf", stand_ins, 7), *WU_SPLIT, f"weights={strategy}"]
    summary = run([*overrides, f"loss={loss}"], tmp_path)
    assert summary["num_refs"] == 7 and summary["loss"] == loss
    assert summary["weighting"] == "sliding_window" if "sliding" in strategy else strategy
    assert_wu_data(summary)
    used = ref_weights(tmp_path, 7)
    for step in used:
        assert sum(step) == pytest.approx(1.0, abs=1e-5)
    if strategy in ("sliding_window_one_hot", "thompson", "thompson_prior10"):
        # A single-reference step each batch.
        assert all(sorted(step)[-1] == pytest.approx(1.0) for step in used)
    if strategy in ("vdw", "vaw"):  # fitted once on the validation split, then fixed
        assert used[0] == pytest.approx(used[1])


def test_wu_saferlhf_runs_dpo_with_a_single_selected_reference(
    stand_ins: dict[str, Path], tmp_path: Path
) -> None:
    overrides = [*tiny("wu_saferlhf", stand_ins, 7), *WU_SPLIT]
    summary = run([*overrides, "loss=dpo", "references.select=[phi_3_medium]"], tmp_path)
    assert (summary["num_refs"], summary["loss"]) == (1, "dpo")
    assert_wu_data(summary)


def test_wu_ultrafeedback_runs(stand_ins: dict[str, Path], tmp_path: Path) -> None:
    summary = run([*tiny("wu_ultrafeedback", stand_ins, 7), *WU_SPLIT], tmp_path)
    assert (summary["loss"], summary["weighting"], summary["num_refs"]) == ("multi_dpo", "vaw", 7)
    assert_wu_data(summary)


def test_wu_protocol_values(tmp_path: Path) -> None:
    cfg = checked_train_config(["experiment=wu_saferlhf", "trainer.accelerator=cpu"], tmp_path)
    m, d = cfg.model, cfg.data
    assert (m.source, m.quantization, m.dtype, m.gradient_checkpointing) == (
        "Qwen/Qwen2.5-0.5B-Instruct", "nf4", "bfloat16", True
    )  # fmt: skip
    assert (m.lora.r, m.lora.alpha, len(m.lora.target_modules)) == (32, 16, 7)
    assert [r.name for r in cfg.references.pool] == list(WU_REFERENCES)
    assert all(r.dtype == "bfloat16" and r.length_normalize for r in cfg.references.pool)
    assert len({r.source for r in cfg.references.pool}) == 7
    assert (cfg.loss.beta, cfg.loss.ctro, cfg.loss.length_normalize) == (0.1, False, True)
    assert (cfg.optimizer.lr, cfg.scheduler.name, cfg.scheduler.warmup_ratio) == (
        1e-4, "constant", 0.0
    )  # fmt: skip
    assert (d.train_size, d.val_size, d.test_size, d.batch_size, d.max_length) == (
        5000, 1000, 1000, 50, 1024
    )  # fmt: skip
    assert (d.length_filter.min_percentile, d.length_filter.fit_all_references) == (2.5, True)
    assert d.source == "RLHFlow/PKU-SafeRLHF-30K-standard"
    uf = checked_train_config(["experiment=wu_ultrafeedback", "trainer.accelerator=cpu"], tmp_path)
    assert (uf.data.source, uf.data.split, uf.data.batch_size) == (
        "HuggingFaceH4/ultrafeedback_binarized", "train_prefs", 25
    )  # fmt: skip
    seeded = checked_train_config(
        ["experiment=wu_saferlhf", "trainer.accelerator=cpu", "seed=3"], tmp_path
    )
    assert seeded.data.split_seed == 3 and seeded.weights.strategy == "vaw"


# --- MRPO, K = 2 (Le et al.) -----------------------------------------------------------


@pytest.mark.parametrize("loss", ["mrpo", "mrpo_official", "dpo", "multi_dpo"])
def test_mrpo_k2_llama_from_mistral_runs_each_objective_of_the_sweep(
    loss: str, stand_ins: dict[str, Path], tmp_path: Path
) -> None:
    summary = run([*tiny("mrpo_k2_llama_from_mistral", stand_ins, 2), f"loss={loss}"], tmp_path)
    assert summary["num_refs"] == 2
    assert summary["data"]["test_pairs"] == 0 and "length_filter" not in summary["data"]
    if loss != "dpo":
        assert sum(ref_weights(tmp_path, 2)[0]) == pytest.approx(1.0, abs=1e-5)


def test_mrpo_k2_mistral_from_llama_runs(stand_ins: dict[str, Path], tmp_path: Path) -> None:
    summary = run(tiny("mrpo_k2_mistral_from_llama", stand_ins, 2), tmp_path)
    assert (summary["loss"], summary["weighting"], summary["num_refs"]) == ("mrpo", "arwc", 2)


def test_mrpo_k2_protocol_values(tmp_path: Path) -> None:
    cfg = checked_train_config(
        ["experiment=mrpo_k2_llama_from_mistral", "trainer.accelerator=cpu"], tmp_path
    )
    m = cfg.model
    assert (m.source, m.lora.r, m.lora.alpha, m.lora.dropout) == (
        "meta-llama/Llama-2-7b-chat-hf", 8, 16, 0.0
    )  # fmt: skip
    assert list(m.lora.target_modules) == ["q_proj", "v_proj"]
    pool = cfg.references.pool
    assert [(r.source, r.quantization) for r in pool] == [
        ("self", None), ("teknium/OpenHermes-2.5-Mistral-7B", "nf4")
    ]  # fmt: skip
    loss = cfg.loss
    assert (loss.name, loss.beta, loss.ctro, loss.epsilon, loss.adaptive_epsilon) == (
        "mrpo", 0.1, True, 0.1, True
    )  # fmt: skip
    assert (cfg.weights.strategy, weighting_params(cfg.weights)) == ("arwc", {})
    assert (cfg.optimizer.lr, cfg.scheduler.name) == (1e-5, "cosine")
    effective = cfg.data.batch_size * cfg.trainer.accumulate_grad_batches
    assert (effective, cfg.data.max_length) == (8, 1024)
    reverse = checked_train_config(
        ["experiment=mrpo_k2_mistral_from_llama", "trainer.accelerator=cpu"], tmp_path
    )
    assert reverse.model.source == "teknium/OpenHermes-2.5-Mistral-7B"
    assert reverse.references.pool[1].source == "meta-llama/Llama-2-7b-chat-hf"
    assert reverse.model.lora == m.lora and reverse.loss == loss
    official = checked_train_config(
        ["experiment=mrpo_k2_llama_from_mistral", "trainer.accelerator=cpu", "loss=mrpo_official"],
        tmp_path,
    )
    assert (official.loss.harmonic_pairing, official.loss.ctro) == ("official", True)
    baseline = checked_train_config(
        ["experiment=mrpo_k2_llama_from_mistral", "trainer.accelerator=cpu", "loss=multi_dpo"],
        tmp_path,
    )
    assert (baseline.loss.name, baseline.loss.ctro) == ("multi_dpo", False)


# --- the sweeps --------------------------------------------------------------------------

CPU = "trainer.accelerator=cpu"


def planned(name: str, output_dir: Path, extra: Sequence[str] = ()) -> list[list[str]]:
    _, jobs = plan_jobs([f"+sweeps={name}", f"paths.output_dir={output_dir}", *extra])
    assert len(jobs) == stated_cost(header(SWEEPS_DIR / f"{name}.yaml"))
    return jobs


def swept(job: Sequence[str], key: str) -> str:
    return next(o.split("=", 1)[1] for o in job if o.startswith(f"{key}="))


def test_the_mrpo_k2_sweep_crosses_objectives_sets_and_sizes(tmp_path: Path) -> None:
    jobs = planned("mrpo_k2", tmp_path)
    values = [(swept(j, "loss"), swept(j, "data"), swept(j, "data.train_size")) for j in jobs]
    assert sorted(values) == sorted(
        itertools.product(
            ["dpo", "multi_dpo", "mrpo", "mrpo_official"],
            ["ultrafeedback", "helpsteer", "nectar", "distilabel_math"],
            ["1000", "null"],
        )
    )
    for job in (jobs[0], jobs[-1]):
        cfg = checked_train_config([*job, CPU], tmp_path)
        assert cfg.task_name == "mrpo_k2_llama_from_mistral" and cfg.save_model is False


def test_the_wu_sweeps_cover_the_study_and_their_jobs_pass_the_checks(tmp_path: Path) -> None:
    single = planned("wu_single_reference", tmp_path)
    assert sorted((swept(j, "references.select"), swept(j, "seed")) for j in single) == sorted(
        (f"[{r}]", str(s)) for r in WU_REFERENCES for s in range(5)
    )
    cfg = checked_train_config([*single[-1], CPU], tmp_path)
    assert (cfg.loss.name, cfg.references.select) == ("dpo", ["qwen3_4b"])
    multi = planned("wu_multi_reference", tmp_path)
    runs = sorted((swept(j, "loss"), swept(j, "weights"), swept(j, "seed")) for j in multi)
    assert runs == sorted(
        itertools.product(["mrpo", "multi_dpo"], WU_STRATEGIES, [str(s) for s in range(5)])
    )
    for strategy in WU_STRATEGIES:  # one job of each strategy, composed and checked
        job = next(j for j in multi if swept(j, "weights") == strategy)
        cfg = checked_train_config([*job, CPU], tmp_path)
        assert cfg.loss.ctro is False and cfg.references.select is None
    prior10 = next(j for j in multi if swept(j, "weights") == "thompson_prior10")
    cfg = checked_train_config([*prior10, CPU, "seed=4"], tmp_path)
    assert (cfg.weights.prior, cfg.weights.seed) == ([10.0, 10.0], 4)


@pytest.mark.parametrize("name", ["mrpo_k2", "wu_single_reference", "wu_multi_reference"])
def test_the_documented_commands_plan_the_stated_jobs(name: str, tmp_path: Path) -> None:
    for extra, count in header_commands(header(SWEEPS_DIR / f"{name}.yaml"))[1:]:
        _, jobs = plan_jobs([*extra, f"paths.output_dir={tmp_path}"])
        if count is not None:
            assert len(jobs) == count
        checked_train_config([*jobs[-1], CPU], tmp_path)
