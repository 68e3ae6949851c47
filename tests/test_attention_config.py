"""``model.attn_implementation``: each value works or is refused by name before a model loads.

The CPU refusals go through the config check ``mrpo-train`` runs first (the command line's
exit status 2 is in :mod:`support.bad_inputs`); a model family that lacks a kernel is
refused by the pre-flight, from the model's config alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, Qwen2Config

import mrpo.models.attention as attention
from mrpo.cli.preflight import Preflight, check_model_sources
from mrpo.config import TrainConfig, to_dataclass
from mrpo.errors import ConfigError, OptionError
from mrpo.groups.checks import check_train_config
from mrpo.models.attention import (
    ATTENTION_KERNELS,
    check_attention_model,
    check_attention_runs,
    supported_attention,
)
from mrpo.testing.configs import checked_train_config
from mrpo.testing.models import save_tiny_model
from mrpo.testing.tokenizers import make_tiny_tokenizer
from support.models import make_tiny_family_model

ON_CPU = "trainer.accelerator=cpu"


CPU_REFUSALS = {
    "flex_attention": "FlexAttention has no backward pass on the CPU",
    "flash_attention_2": "flash-attention kernels run on CUDA GPUs only",
    "flash_attention_3": "flash-attention kernels run on CUDA GPUs only",
}


def test_on_the_cpu_only_eager_and_sdpa_pass_the_config_check(tmp_path: Path) -> None:
    cfg = checked_train_config([ON_CPU, "model.attn_implementation=eager"], tmp_path)
    for name in ("sdpa", None):
        cfg.model.attn_implementation = name
        check_train_config(cfg)
    for name, why in CPU_REFUSALS.items():
        cfg.model.attn_implementation = name
        with pytest.raises(ConfigError) as info:
            check_train_config(cfg)
        message = str(info.value)
        assert message.startswith("model.attn_implementation:"), message
        assert f"{name!r} cannot train on the CPU: {why}" in message


def test_every_kernel_has_a_cpu_verdict_and_the_domain_is_closed() -> None:
    # What the CPU can train is exactly what the tests train (test_packed_logprobs.py).
    assert [n for n, k in ATTENTION_KERNELS.items() if k.cpu_refusal is None] == ["eager", "sdpa"]
    with pytest.raises(OptionError, match="unknown 'fast'"):
        check_attention_runs("fast", "cpu")


def test_on_a_gpu_flash_attention_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # No CUDA is needed to decide: the check reads the device kind and the installed packages.
    check_attention_runs("flex_attention", torch.device("cuda"))
    for found in ("is_flash_attn_2_available", "is_kernels_available"):
        monkeypatch.setattr(attention, found, lambda: False)
    with pytest.raises(OptionError, match="'flash_attention_2' needs flash-attn") as info:
        check_attention_runs("flash_attention_2", "cuda")
    assert info.value.option == "attn_implementation"
    monkeypatch.setattr(attention, "is_kernels_available", lambda: True)  # transformers' fallback
    check_attention_runs("flash_attention_2", "cuda")


def test_model_families_that_lack_a_kernel_are_refused() -> None:
    check_attention_model("flex_attention", LlamaConfig())
    check_attention_model("flash_attention_2", Qwen2Config())
    with pytest.raises(OptionError, match="GPT2LMHeadModel does not implement 'flex_attention'"):
        check_attention_model("flex_attention", GPT2Config())
    from transformers import GPT2LMHeadModel

    assert supported_attention(GPT2LMHeadModel) == [
        "eager", "sdpa", "flash_attention_2", "flash_attention_3",
    ]  # fmt: skip


def test_the_preflight_refuses_a_family_without_the_kernel(compose_train, tmp_path: Path) -> None:
    tokenizer = make_tiny_tokenizer("chatml")
    gpt2 = save_tiny_model(
        tmp_path / "gpt2", make_tiny_family_model("gpt2", len(tokenizer)), tokenizer
    )
    overrides = [f"model.source={gpt2}", "model.attn_implementation=flex_attention"]
    cfg = to_dataclass(compose_train(overrides), TrainConfig)
    with pytest.raises(ConfigError, match=r"^model\.attn_implementation: GPT2LMHeadModel does not"):
        check_model_sources(cfg, Preflight())
    cfg.model.attn_implementation = "sdpa"
    check_model_sources(cfg, Preflight())
