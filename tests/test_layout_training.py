"""Training with the prompt shared, with packing, with token budgets: the same run, faster.

A run with each layout option gives the validation losses of the padded run (to 1e-4, as the
log-probs agree to float rounding); every run logs its throughput, and ``summary.json`` keeps
the totals.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mrpo.training.module
from mrpo.cli.train import train
from mrpo.compare.records import read_metrics
from mrpo.data.collate import LengthGroupedBatchSampler
from mrpo.logprobs import batch_sequence_logprobs
from mrpo.training.gradients import clip_and_measure

# Live references too: they score each batch through the same layouts.
COMMON = ["references=prompted", "references.num_refs=2", "save_model=false"]
PADDED = "data.prefix_sharing=false"
VARIANTS = {
    "padded": [PADDED],
    "prefix_sharing": [],  # the default
    "packing": [PADDED, "data.packing=true"],
    "both": ["data.packing=true"],
    "one_row": ["data.packing=true", "data.pack_row_tokens=100000"],
    "live_both": ["data.packing=true", "references.mode=live"],
    "live_padded": [PADDED, "references.mode=live"],
}


def test_every_layout_trains_exactly_like_the_padded_one(compose_train, tmp_path, monkeypatch):
    layouts = []

    def spy(model, batch, **kwargs):
        layouts.append(None if batch.packed is None else tuple(batch.input_ids.shape))
        return batch_sequence_logprobs(model, batch, **kwargs)

    monkeypatch.setattr(mrpo.training.module, "batch_sequence_logprobs", spy)
    runs = {}
    for name, overrides in VARIANTS.items():
        layouts.clear()
        runs[name] = train(compose_train([*COMMON, *overrides], output_dir=tmp_path / name))
        # The option reached the policy: packed rows in every step but the padded runs'.
        assert all((shape is None) == ("padded" in name) for shape in layouts), name
    base = runs["padded"]
    for name, run in runs.items():
        assert run["global_step"] == 2, name
        for key in ("before/val/loss", "final/val/loss", "final/val/rewards/margin"):
            assert run[key] == pytest.approx(base[key], abs=1e-4), (name, key)
    assert base["final/val/loss"] != base["before/val/loss"]  # training moved the policy
    # The prompt computed once: fewer tokens through the policy for the same pairs.
    shared, padded = runs["prefix_sharing"]["throughput"], base["throughput"]
    assert shared["pairs"] == padded["pairs"] == 4
    assert shared["tokens"] < padded["tokens"]
    assert runs["one_row"]["throughput"]["padding_fraction"] == 0.0
    assert runs["live_both"]["final/val/loss"] == pytest.approx(
        runs["live_padded"]["final/val/loss"], abs=1e-4
    )


def test_throughput_is_logged_every_step_and_totalled(compose_train, tmp_path):
    summary = train(compose_train([], output_dir=tmp_path / "run"))
    metrics = read_metrics(Path(summary["run_dir"]))
    names = ("tokens_per_second", "pairs_per_second", "step_seconds", "padding_fraction")
    for name in (*names, "peak_memory_gb", "grad_norm"):
        values = metrics[f"train/{name}"]
        assert sorted(values) == [0, 1], name
        assert all(v >= 0 for v in values.values()), name
    totals = summary["throughput"]
    assert totals["batches"] == 2 and totals["pairs"] == 4
    assert totals["seconds"] == pytest.approx(sum(metrics["train/step_seconds"].values()))
    assert totals["tokens_per_second"] == pytest.approx(totals["tokens"] / totals["seconds"])
    assert 0 <= totals["padding_fraction"] < 1 and totals["peak_memory_gb"] > 0.1
    assert all(v > 0 for v in metrics["train/grad_norm"].values())


def test_token_budget_batches(compose_train, tmp_path):
    """Batches cut by a token budget: as many pairs as fit, the validation unchanged."""
    base = train(compose_train(["trainer.max_steps=-1"], output_dir=tmp_path / "base"))
    budget = train(
        compose_train(
            [
                "trainer.max_steps=-1",
                "data.packing=true",
                "data.max_tokens_per_batch=330",
            ],
            output_dir=tmp_path / "budget",
        )
    )
    assert budget["before/val/loss"] == pytest.approx(base["before/val/loss"], abs=1e-4)
    # One epoch over the same 16 training pairs, in fewer, larger batches than 2 pairs each.
    assert base["throughput"]["pairs"] == budget["throughput"]["pairs"] == 16
    assert budget["global_step"] < base["global_step"] == 8


def test_token_budget_sampler_respects_the_budget_and_covers_every_row():
    costs = [10, 12, 8, 15, 9, 11, 30, 7]
    sampler = LengthGroupedBatchSampler(costs, 2, seed=3, max_tokens=35, costs=costs)
    batches = list(sampler)
    assert len(sampler) == len(batches)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(sum(costs[i] for i in b) <= 35 for b in batches)
    assert max(len(b) for b in batches) > 2  # not batch_size: as many as fit
    assert list(LengthGroupedBatchSampler(costs, 2, seed=3, max_tokens=35, costs=costs)) == batches
    alone = LengthGroupedBatchSampler([100, 1], 2, shuffle=False, max_tokens=10, costs=[100, 1])
    assert list(alone) == [[0], [1]]  # a row over the budget is a batch of its own
    ranks = [
        list(LengthGroupedBatchSampler(costs, 2, seed=3, max_tokens=35, costs=costs, **r))
        for r in ({"num_replicas": 2, "rank": 0}, {"num_replicas": 2, "rank": 1})
    ]
    assert len(ranks[0]) == len(ranks[1])  # every rank steps the same number of times
    assert ranks[0][0] == batches[0] and ranks[1][0] == batches[1]
    with pytest.raises(ValueError, match="max_tokens"):
        LengthGroupedBatchSampler(costs, 2, max_tokens=10)


def test_clip_and_measure_is_clip_grad_norm():
    def params():
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
        for p in ps:
            p.grad = torch.randn_like(p) * 3
        return [*ps, torch.nn.Parameter(torch.randn(2))]  # one without a gradient

    expected, mine = params(), params()
    norm = torch.nn.utils.clip_grad_norm_(expected, 1.0)
    assert clip_and_measure(mine, 1.0) == pytest.approx(float(norm))
    for a, b in zip(expected[:2], mine[:2], strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    measured = params()
    before = [p.grad.clone() for p in measured[:2]]
    assert clip_and_measure(measured, None) == pytest.approx(float(norm))
    assert all(torch.equal(a, p.grad) for a, p in zip(before, measured, strict=False))
    assert clip_and_measure([torch.nn.Parameter(torch.ones(1))], 1.0) == 0.0
