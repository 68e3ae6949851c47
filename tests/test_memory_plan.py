"""The memory plan's arithmetic on hand-computed figures, the largest batch of a run's pairs,
the measured-speed record, and the overrides it proposes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mrpo.callbacks.progress import progress_figures
from mrpo.cli.preflight import check_memory
from mrpo.config import TrainConfig, to_dataclass
from mrpo.data.layout import PairLayout
from mrpo.data.types import TokenizedPair
from mrpo.errors import ConfigError
from mrpo.planning.batches import epoch_tokens, largest_batch
from mrpo.planning.memory import (
    ModelShape,
    RunShape,
    estimate_memory,
    layer_activation_elements,
    memory_fixes,
)
from mrpo.planning.plan import RunPlan
from mrpo.planning.speed import estimate_seconds, format_duration, read_speed, record_speed

# 2 layers of width 4 (MLP 8), vocabulary 10, 1,000 parameters, 100 in the largest layer.
MODEL = ModelShape(
    parameters=1000,
    layers=2,
    hidden=4,
    intermediate=8,
    heads=2,
    kv_heads=1,
    vocab=10,
    largest_layer=100,
    lora_parameters=50,
)
# The largest batch: 2 rows of 3 positions, 4 scored tokens; float32; AdamW.
RUN = RunShape(batch_tokens=6, rows=2, row_tokens=3, scored_tokens=4, process_bytes=7)


def test_full_fine_tuning_adds_weights_gradients_states_activations_and_head() -> None:
    # 9 x 4 + 4 x 8 = 68 elements per token and layer.
    assert layer_activation_elements(MODEL) == 68
    parts = estimate_memory(MODEL, RUN).components
    assert parts == {
        "process": 7,
        "weights": 4000,  # 1,000 x 4 bytes
        "gradients": 4000,
        "optimizer": 8000,  # two AdamW states
        "activations": 3264,  # 2 layers x 6 tokens x 68 x 4 bytes
        "lm_head": 320,  # a 4-token tile (fewer scored than 1024) x 10 x 4 bytes, and its grad
        "references": 0,
    }
    assert estimate_memory(MODEL, RUN).total == 19591


def test_checkpointing_keeps_layer_inputs_and_one_layer() -> None:
    plan = estimate_memory(MODEL, replace(RUN, gradient_checkpointing=True))
    # 2 layers x 6 tokens x 4 wide x 4 bytes kept, plus one layer's 6 x 68 x 4 recomputed.
    assert plan.components["activations"] == 192 + 1632


def test_lora_trains_adapters_only() -> None:
    parts = estimate_memory(MODEL, replace(RUN, lora=True)).components
    assert parts["weights"] == 4000 + 50 * 4
    assert parts["gradients"] == 200 and parts["optimizer"] == 400


def test_fsdp_shards_weights_gradients_and_states_and_gathers_one_layer() -> None:
    parts = estimate_memory(MODEL, replace(RUN, shards=4)).components
    assert parts["weights"] == 1000 * 4 / 4 + 100 * 4
    assert parts["gradients"] == 1000 and parts["optimizer"] == 2000


def test_logits_path_and_attention_scores_and_live_references() -> None:
    assert estimate_memory(MODEL, replace(RUN, fused_head=False)).components["lm_head"] == 640
    scores = estimate_memory(MODEL, replace(RUN, attention_scores=True)).components
    # per layer: 2 rows x 2 heads x 3**2 x 4 bytes = 144 more
    assert scores["activations"] == 2 * (1632 + 144)
    refs = estimate_memory(MODEL, replace(RUN, live_models=1)).components["references"]
    # a whole copy, one layer's inference activations, one head tile without its gradient
    assert refs == 4000 + 1632 + 160


def test_sixteen_bit_weights_and_activations_halve_them() -> None:
    half = estimate_memory(MODEL, replace(RUN, weight_bytes=2, activation_bytes=2)).components
    assert half["weights"] == 2000 and half["activations"] == 3264 / 2
    assert half["gradients"] == 4000  # float32 gradients and states either way


def test_fixes_that_fit_come_first_and_none_that_change_nothing() -> None:
    total = estimate_memory(MODEL, RUN).total
    fixes = dict(memory_fixes(MODEL, RUN, capacity=total - 5000, devices=1))
    assert "model.fused_lm_head=true" not in fixes  # already on
    assert "references.mode=cached" not in fixes  # nothing live
    assert fixes["model=lora"] == total - 3800 - 7600 + 200  # fits: listed first
    assert next(iter(fixes)) == "model=lora"
    assert fixes["model.gradient_checkpointing=true"] == total - 3264 + 1824
    with_gpus = dict(memory_fixes(MODEL, RUN, capacity=0, devices=2))
    assert with_gpus["trainer=fsdp (over 2 devices)"] < total


def _pair(index: int, prompt: int, chosen: int, rejected: int) -> TokenizedPair:
    return TokenizedPair((1,) * prompt, (2,) * chosen, (3,) * rejected, index)


PAIRS = [_pair(0, 5, 3, 1), _pair(1, 10, 4, 6), _pair(2, 2, 2, 2)]


def test_largest_batch_in_each_layout() -> None:
    # The two costliest pairs are 1 (10 + 4 + 6) and 0 (5 + 3 + 1).
    shared = largest_batch(PAIRS, PairLayout(share_prefix=True), 2)
    assert (shared.rows, shared.row_tokens, shared.positions, shared.scored) == (2, 20, 40, 14)
    padded = largest_batch(PAIRS, PairLayout(), 2)  # rows of prompt + longer response: 16
    assert (padded.rows, padded.row_tokens, padded.positions) == (4, 16, 64)
    packed = largest_batch(PAIRS, PairLayout(share_prefix=True, pack=True), 2)
    assert (packed.rows, packed.row_tokens) == (2, 20)  # 29 tokens in rows of 20
    assert epoch_tokens(PAIRS, PairLayout(share_prefix=True)) == 17 + 9 + 9
    assert epoch_tokens(PAIRS, PairLayout()) == 2 * 17 + 9 + 9


def test_speed_record_round_trip_and_time_estimate(tmp_path: Path) -> None:
    assert read_speed(tmp_path, "cpu|m") is None
    record_speed(tmp_path, "cpu|m", 250.0)
    record_speed(tmp_path, "cpu|other", float("nan"))  # not a measurement: not kept
    assert read_speed(tmp_path, "cpu|m") == 250.0 and read_speed(tmp_path, "cpu|other") is None
    # 1,000 tokens trained and 1,500 scored (a third of the cost) at 250 tokens/s
    assert estimate_seconds(1000, 1500, 250.0) == pytest.approx(6.0)
    assert format_duration(None) == "unknown"
    assert (format_duration(30), format_duration(600), format_duration(7200)) == (
        "~30 s",
        "~10 min",
        "~2.0 h",
    )


def _run_plan(capacity: float) -> RunPlan:
    return RunPlan(
        splits=(4, 2, 0),
        truncated=0,
        references=[],
        steps=2,
        layout="shared",
        memory=estimate_memory(MODEL, RUN),
        device="cpu",
        capacity=capacity,
        fixes=memory_fixes(MODEL, RUN, capacity),
    )


def test_a_plan_beyond_the_device_is_refused_unless_forced(compose_train) -> None:
    cfg = to_dataclass(compose_train(), TrainConfig)
    total = estimate_memory(MODEL, RUN).total
    check_memory(cfg, _run_plan(capacity=total))  # fits exactly: no refusal
    with pytest.raises(ConfigError, match="force_memory") as refused:
        check_memory(cfg, _run_plan(capacity=total - 5000))
    assert "model=lora (~0.0 GB)" in str(refused.value)
    assert "model.gradient_checkpointing=true" in str(refused.value)
    cfg.force_memory = True
    check_memory(cfg, _run_plan(capacity=total - 5000))  # warned, not refused


def test_progress_bar_shows_short_names_in_full() -> None:
    shown = progress_figures(
        {
            "train/loss": torch.tensor(0.69314),
            "train/tokens_per_second": torch.tensor(1234.56),
            "train/step_seconds": 2.5,
            "train/rewards/accuracy": 0.5,  # not shown
        }
    )
    assert shown == {"loss": "0.693", "tok/s": "1235", "s/step": "2.5"}
