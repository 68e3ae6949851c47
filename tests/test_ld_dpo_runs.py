"""LD-DPO (``loss.ld_alpha``) in the reference cache, the config checks and a training run.

The math and the layouts are in ``tests/test_ld_dpo.py``, TRL parity in
``tests/test_trl_parity.py``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mrpo.cli.train import train
from mrpo.compare.records import read_metrics
from mrpo.config.schema import TrainConfig, to_dataclass
from mrpo.errors import ConfigError
from mrpo.groups.checks import check_train_config
from mrpo.groups.objective import build_objective
from mrpo.references.cache import RefCache
from mrpo.references.cache_entry import RefCacheKey, encode_entry
from mrpo.references.logps import SHARED_FIELDS, RefLogps
from mrpo.references.table import RefTable
from mrpo.testing.runs import run_train_cli, tiny_run_args
from support.bad_inputs.case import MODEL_LOADED, environment

KEY = RefCacheKey(
    model="m",
    tokenizer="t",
    chat_template=None,
    system_prompt=None,
    data="d",
    max_length=64,
    max_prompt_length=None,
    truncation="x",
    dtype="float32",
    numerics="n",
)


def ref_logps(shared: bool) -> RefLogps:
    extra = {name: torch.tensor([-1.0, -2.0]) for name in SHARED_FIELDS} if shared else {}
    return RefLogps(
        torch.tensor([3, 5]),
        torch.tensor([-4.0, -6.0]),
        torch.tensor([-2.0, -3.0]),
        torch.tensor([4, 3]),
        torch.tensor([2, 2]),
        **extra,
    )


def test_the_cache_keeps_entries_with_and_without_shared_sums_apart(tmp_path: Path) -> None:
    ld_key = replace(KEY, shared_logps=True)
    # Entries without the column keep the digest they had before the option existed.
    assert "shared_logps" not in KEY.parts() and ld_key.parts()["shared_logps"] is True
    assert ld_key.digest != KEY.digest
    cache = RefCache(tmp_path)
    cache.put(KEY, ref_logps(shared=False))
    assert cache.get(ld_key) is None  # an entry without the column is never read for LD-DPO
    # ... not even where it stands in the LD entry's place: it is damaged, so recomputed.
    cache.path(ld_key).write_bytes(cache.path(KEY).read_bytes())
    value, hit = cache.get_or_compute(ld_key, lambda: ref_logps(shared=True))
    assert not hit and value.has_shared
    stored = load_file(cache.path(ld_key))
    assert set(SHARED_FIELDS) <= set(stored)
    again = cache.get(ld_key)
    assert again is not None and again.chosen_shared is not None
    assert again.chosen_shared.tolist() == [-1.0, -2.0]
    with pytest.raises(ValueError, match="the key's entry holds"):
        encode_entry(ld_key, ref_logps(shared=False), None)


def test_reference_values_refuse_ld_alpha_without_shared_sums() -> None:
    ref = ref_logps(shared=True)
    # α = 0.5: ℓ_shared + α(ℓ − ℓ_shared) = −1 + 0.5·(−3), −2 + 0.5·(−4); then per token.
    assert [t.tolist() for t in ref.values(ld_alpha=0.5)] == [[-2.5, -4.0], [-1.5, -2.5]]
    table = RefTable.from_logps([ref], length_normalize=[True], names=["r"], ld_alpha=0.5)
    assert table.chosen[0].tolist() == pytest.approx([-2.5 / 4, -4.0 / 3])
    assert ref.select([5]).chosen_shared.tolist() == [-2.0]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="reference 'r': ld_alpha needs"):
        RefTable.from_logps([ref_logps(False)], length_normalize=[False], names=["r"], ld_alpha=0.5)
    with pytest.raises(ValueError, match="both shared-length columns"):
        replace(ref, rejected_shared=None)


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_ld_alpha_outside_its_domain_is_refused_by_key(compose_train, value: str) -> None:
    cfg = to_dataclass(compose_train([f"loss.ld_alpha={value}"]), TrainConfig)
    with pytest.raises(ConfigError) as info:
        check_train_config(cfg)
    assert info.value.key == "loss.ld_alpha"


@pytest.mark.parametrize("loss", ["dpo", "multi_dpo", "mrpo", "simpo"])
def test_ld_alpha_composes_with_every_objective(compose_train, loss: str) -> None:
    cfg = to_dataclass(
        compose_train([f"loss={loss}", "loss.ld_alpha=0.25", "references=prompted"]), TrainConfig
    )
    check_train_config(cfg)
    assert build_objective(cfg).config.ld_alpha == 0.25


@pytest.mark.slow
def test_the_command_line_refuses_ld_alpha_before_loading(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    args = [*tiny_run_args(tiny_model_dir, hh_file, tmp_path / "cache"), "loss.ld_alpha=2"]
    done = run_train_cli(args, tmp_path / "run", env=environment())
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "loss.ld_alpha" in errors[0], output[-3000:]
    assert "Traceback" not in output and not any(m in output for m in MODEL_LOADED)


def test_tiny_run_with_ld_alpha_and_two_cached_references(compose_train, tmp_path: Path) -> None:
    refs = ["references=prompted", "references.num_refs=2"]
    summary = train(compose_train([*refs, "loss.ld_alpha=0.5"]))
    assert summary["num_refs"] == 2 and summary["global_step"] == 2
    assert summary["reference_cache"]["misses"] == 2
    losses = read_metrics(Path(summary["run_dir"]))["train/loss"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses.values())
    entries = sorted((tmp_path / "cache" / "reflogps").glob("*.safetensors"))
    assert len(entries) == 2
    assert all(set(SHARED_FIELDS) <= set(load_file(e)) for e in entries)
    # A run without LD-DPO never takes those entries for its own (nor the reverse).
    plain = train(compose_train(refs, output_dir=tmp_path / "plain"))
    assert plain["reference_cache"]["misses"] == 2 and plain["reference_cache"]["hits"] == 0
    again = train(compose_train([*refs, "loss.ld_alpha=0.5"], output_dir=tmp_path / "again"))
    assert again["reference_cache"]["hits"] == 2 and again["reference_cache"]["misses"] == 0


def test_live_moving_and_cached_references_give_the_same_ld_losses(
    compose_train, tmp_path: Path
) -> None:
    """A static reference scored live and one read from the cache, beside a moving (TR-DPO)
    one, give the same LD-DPO losses: every scorer sums up to the same shared lengths."""
    run = [
        "references=prompted",
        "references.num_refs=2",
        "references.pool.1.source=moving",
        "references.pool.1.alpha=0.5",
        "references.pool.1.every_n_steps=2",
        "weights=sliding_window",
        "trainer.max_steps=4",
        "trainer.max_epochs=2",
        "loss.ld_alpha=0.3",
    ]
    train(compose_train(run, output_dir=tmp_path / "cached"))
    train(compose_train([*run, "references.mode=live"], output_dir=tmp_path / "live"))
    cached, live = (read_metrics(tmp_path / d)["train/loss"] for d in ("cached", "live"))
    assert sorted(cached) == sorted(live) == list(range(4))
    for step in range(4):
        assert live[step] == pytest.approx(cached[step], abs=1e-5), step
