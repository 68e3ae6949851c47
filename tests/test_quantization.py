"""4-bit weights: the methods, the refusals before anything loads, and real NF4 models on the CPU.

bitsandbytes is in the ``dev`` extra (its CPU backend runs NF4), so the 4-bit tests below load
and train real quantized tiny models; the refusals for a machine without bitsandbytes or
without a backend for the device are tested by hiding the package or asking for CUDA on this
CPU-only torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from bitsandbytes.nn import Linear4bit

from mrpo.config.validation import ConfigError
from mrpo.logprobs import model_sequence_logprobs, split_lm_head
from mrpo.models import LoraConfig, load_model
from mrpo.models import quantization as q
from mrpo.references import LiveReferences, ReferenceEnsemble, ReferenceSpec
from mrpo.testing.configs import checked_train_config

LORA = LoraConfig(enabled=True, r=4, alpha=8.0, target_modules=["q_proj", "v_proj"])


def batch(vocab: int = 300) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, vocab, (4, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100
    return ids, torch.ones_like(ids), labels


@pytest.fixture
def no_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )


def test_the_methods_build_bitsandbytes_configs() -> None:
    nf4 = q.quantization_method("nf4").bnb_config(torch.bfloat16)
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant
    assert nf4.bnb_4bit_compute_dtype == torch.bfloat16
    assert q.quantization_method("int8").bnb_config(torch.float16).load_in_8bit
    with pytest.raises(q.OptionError, match="unknown quantization 'nf3'"):
        q.quantization_method("nf3")
    assert q.precision_label("bfloat16", None) == "bfloat16"
    assert q.precision_label("bfloat16", "nf4") == "bfloat16+nf4"


def test_missing_bitsandbytes_is_refused_naming_the_key(
    no_bitsandbytes: None, tmp_path: Path
) -> None:
    with pytest.raises(q.OptionError, match="needs bitsandbytes, which is not installed"):
        q.check_runs("nf4", "cpu")
    with pytest.raises(ConfigError) as info:
        checked_train_config(["model=qlora"], tmp_path)
    assert info.value.key == "model.quantization"
    assert "pip install 'mrpo[gpu]'" in str(info.value)
    pool = "references.pool=[{name: self, source: self}, {name: q, quantization: nf4}]"
    with pytest.raises(ConfigError) as info:
        checked_train_config([pool], tmp_path)
    assert info.value.key == "references.pool.1.quantization"


def test_a_device_the_backend_cannot_quantize_on_is_refused() -> None:
    # This torch has no CUDA: bitsandbytes cannot quantize there, whatever its own build.
    assert not torch.cuda.is_available()
    with pytest.raises(q.OptionError, match="cannot run 'nf4' on cuda"):
        q.check_runs("nf4", "cuda")
    q.check_runs("nf4", "cpu")  # the CPU backend can


def test_a_quantized_policy_needs_lora_and_an_uncast_precision(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        checked_train_config(["model=qlora", "model.lora.enabled=false"], tmp_path)
    assert info.value.key == "model.lora.enabled"
    with pytest.raises(ConfigError) as info:
        checked_train_config(["model=qlora", "trainer.precision=bf16-true"], tmp_path)
    assert info.value.key == "trainer.precision"
    cfg = checked_train_config(["model=qlora"], tmp_path)
    assert (cfg.model.quantization, cfg.model.dtype, cfg.model.lora.enabled) == (
        "nf4",
        "bfloat16",
        True,
    )


def test_nf4_policy_trains_adapters_and_the_fused_head_equals_the_logits_path(
    tiny_model_dir: Path,
) -> None:
    policy = load_model(
        str(tiny_model_dir), dtype="bfloat16", quantization="nf4", lora=LORA, trainable=True
    )
    assert q.quantized_as(policy) == "nf4"
    layer = policy.get_base_model().model.layers[0].self_attn
    assert isinstance(layer.k_proj, Linear4bit)  # quantized and frozen
    assert split_lm_head(policy) is not None  # the head stays a plain linear layer
    ids, mask, labels = batch()
    fused = model_sequence_logprobs(policy, ids, mask, labels, fused_head=True)
    logits = model_sequence_logprobs(policy, ids, mask, labels, fused_head=False)
    torch.testing.assert_close(fused.logps, logits.logps, atol=1e-4, rtol=1e-5)
    fused.logps.sum().backward()
    trained = {n for n, p in policy.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)
    assert not any(p.requires_grad for n, p in policy.named_parameters() if "lora_" not in n)


def test_a_quantized_policy_without_lora_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(q.OptionError) as info:
        load_model(str(tiny_model_dir), quantization="nf4", trainable=True)
    assert info.value.option == "lora"


def test_quantized_references_are_cached_apart_and_score_like_their_logits(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    from mrpo.data.preference import load_preference_data

    examples = load_preference_data(str(hh_file)).examples[:4]
    specs = [
        ReferenceSpec("full", dtype="bfloat16"),
        ReferenceSpec("nf4", dtype="bfloat16", quantization="nf4"),
    ]
    ensemble = ReferenceEnsemble(
        specs, policy_source=str(tiny_model_dir), max_length=96, cache_dir=tmp_path / "cache"
    )
    keys = [ensemble.fingerprint(k, examples) for k in range(2)]
    assert [k.dtype for k in keys] == ["bfloat16", "bfloat16+nf4"]
    assert keys[0].digest != keys[1].digest
    assert len(ensemble.model_groups()) == 2  # the same weights, loaded twice
    logps = ensemble.precompute(examples, progress=False).logps
    assert ensemble.stats.model_loads == 2
    # 4-bit weights change the numbers, a little.
    assert not torch.equal(logps[0].chosen, logps[1].chosen)
    torch.testing.assert_close(logps[0].chosen, logps[1].chosen, atol=2.0, rtol=0.05)
    model = ensemble.load_model(1)
    assert q.quantized_as(model) == "nf4" and split_lm_head(model) is not None
    ids, mask, labels = batch()
    with torch.no_grad():
        fused = model_sequence_logprobs(model, ids, mask, labels, fused_head=True)
        logits = model_sequence_logprobs(model, ids, mask, labels, fused_head=False)
    torch.testing.assert_close(fused.logps, logits.logps, atol=1e-4, rtol=1e-5)


def test_a_4bit_policy_is_not_used_as_its_own_full_precision_reference(
    tiny_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    from mrpo.data.preference import load_preference_data

    examples = load_preference_data(str(hh_file)).examples[:2]
    policy = load_model(
        str(tiny_model_dir), dtype="bfloat16", quantization="nf4", lora=LORA, trainable=True
    )
    ensemble = ReferenceEnsemble(
        [
            ReferenceSpec("self_bf16", dtype="bfloat16"),
            ReferenceSpec("self_nf4", dtype="bfloat16", quantization="nf4", system_prompt="Hi."),
        ],
        policy_source=str(tiny_model_dir),
        max_length=96,
        cache_dir=tmp_path / "cache",
    )
    live = LiveReferences(ensemble, policy=policy, examples=examples)
    # The bf16 reference gets its own full-precision copy of the initial weights. A 4-bit
    # reference could be the policy with its adapters off, were the policy's unquantized
    # layers in the reference's dtype (k-bit training keeps them in float32): a copy too.
    assert live.uses_policy == (False, False)
    full, four_bit = (live._models[ensemble.resolved[k].model_group] for k in range(2))
    assert q.quantized_as(full) is None and q.quantized_as(four_bit) == "nf4"
    chosen, rejected = live.score(examples)
    assert chosen.shape == rejected.shape == (2, 2) and bool(torch.isfinite(chosen).all())


def test_a_4bit_policy_is_saved_merged_into_full_precision_weights(tiny_model_dir: Path) -> None:
    from mrpo.models.merge import merged_policy

    policy = load_model(
        str(tiny_model_dir), dtype="bfloat16", quantization="nf4", lora=LORA, trainable=True
    )
    with torch.no_grad():  # "trained" adapters: B is zero at initialization
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    merged = merged_policy(
        policy, source=str(tiny_model_dir), dtype="bfloat16", lora=LORA, quantization="nf4"
    )
    assert q.quantized_as(merged) is None
    layer = policy.get_base_model().model.layers[0].self_attn.q_proj
    base = load_model(str(tiny_model_dir), dtype="bfloat16", trainable=False)
    scale = LORA.alpha / LORA.r
    update = layer.lora_B["default"].weight.float() @ layer.lora_A["default"].weight.float()
    expected = base.model.layers[0].self_attn.q_proj.weight.float() + scale * update
    got = merged.model.layers[0].self_attn.q_proj.weight
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=1e-2)
