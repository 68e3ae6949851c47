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

from mrpo.errors import ConfigError
from mrpo.logprobs import model_sequence_logprobs, split_lm_head
from mrpo.models import LoraConfig, load_model
from mrpo.models import quantization as q
from mrpo.references import LiveReferences, ReferenceEnsemble, ReferenceSpec
from mrpo.testing.configs import checked_train_config
from mrpo.testing.runs import write_tiny_model

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
    tiny_4bit_model_dir: Path,
) -> None:
    policy = load_model(
        str(tiny_4bit_model_dir), dtype="bfloat16", quantization="nf4", lora=LORA, trainable=True
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


def test_a_quantized_policy_without_lora_is_refused(tiny_4bit_model_dir: Path) -> None:
    with pytest.raises(q.OptionError) as info:
        load_model(str(tiny_4bit_model_dir), quantization="nf4", trainable=True)
    assert info.value.option == "lora"


def test_quantized_references_are_cached_apart_and_score_like_their_logits(
    tiny_4bit_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    from mrpo.data.preference import load_preference_data

    examples = load_preference_data(str(hh_file)).examples[:4]
    specs = [
        ReferenceSpec("full", dtype="bfloat16"),
        ReferenceSpec("nf4", dtype="bfloat16", quantization="nf4"),
    ]
    ensemble = ReferenceEnsemble(
        specs, policy_source=str(tiny_4bit_model_dir), max_length=96, cache_dir=tmp_path / "cache"
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
    tiny_4bit_model_dir: Path, hh_file: Path, tmp_path: Path
) -> None:
    from mrpo.data.preference import load_preference_data

    examples = load_preference_data(str(hh_file)).examples[:2]
    policy = load_model(
        str(tiny_4bit_model_dir), dtype="bfloat16", quantization="nf4", lora=LORA, trainable=True
    )
    ensemble = ReferenceEnsemble(
        [
            ReferenceSpec("self_bf16", dtype="bfloat16"),
            ReferenceSpec("self_nf4", dtype="bfloat16", quantization="nf4", system_prompt="Hi."),
        ],
        policy_source=str(tiny_4bit_model_dir),
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


def test_a_4bit_policy_is_saved_merged_into_full_precision_weights(
    tiny_4bit_model_dir: Path,
) -> None:
    from mrpo.models.merge import merged_policy

    policy = load_model(
        str(tiny_4bit_model_dir), dtype="bfloat16", quantization="nf4", lora=LORA, trainable=True
    )
    with torch.no_grad():  # "trained" adapters: B is zero at initialization
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    merged = merged_policy(
        policy, source=str(tiny_4bit_model_dir), dtype="bfloat16", lora=LORA, quantization="nf4"
    )
    assert q.quantized_as(merged) is None
    layer = policy.get_base_model().model.layers[0].self_attn.q_proj
    base = load_model(str(tiny_4bit_model_dir), dtype="bfloat16", trainable=False)
    scale = LORA.alpha / LORA.r
    update = layer.lora_B["default"].weight.float() @ layer.lora_A["default"].weight.float()
    expected = base.model.layers[0].self_attn.q_proj.weight.float() + scale * update
    got = merged.model.layers[0].self_attn.q_proj.weight
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=1e-2)


# --- bitsandbytes' CPU kernels: the AVX-512-BF16 layout and the generic path -------------------

SCORE_4BIT = """
import json, sys, torch
import bitsandbytes.nn.modules as modules
from mrpo.logprobs import model_sequence_logprobs
from mrpo.models import load_model
if sys.argv[2] == "generic":
    modules.has_avx512bf16 = lambda: False  # as on a CPU without AVX-512-BF16
model = load_model(sys.argv[1], dtype="bfloat16", quantization="nf4", trainable=False)
ids = torch.randint(0, 300, (4, 12), generator=torch.Generator().manual_seed(0))
labels = ids.clone()
labels[:, :5] = -100
with torch.no_grad():
    out = model_sequence_logprobs(model, ids, torch.ones_like(ids), labels, fused_head=False)
print(json.dumps({
    "capability": torch.backends.cpu.get_cpu_capability(),
    "packed": [bool(m.support_avx512bf16_for_cpu) for m in model.modules()
               if hasattr(m, "support_avx512bf16_for_cpu")],
    "logps": out.logps.float().tolist(),
}))
"""


def score_4bit(model_dir: Path, path: str, env: dict[str, str] | None = None) -> dict:
    """Load ``model_dir`` in NF4 in a fresh process and score :func:`batch`'s rows (``path``:
    ``"native"`` as bitsandbytes chooses on this CPU, ``"generic"`` without AVX-512-BF16)."""
    import json
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", SCORE_4BIT, str(model_dir), path],
        capture_output=True, text=True, env=full_env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _repack_round_trip(layer: Linear4bit) -> None:
    """bitsandbytes' AVX-512-BF16 repacking of ``layer``'s weight (Python code, runs on any
    CPU) and its inverse, on copies: the weight's 4-bit codes come back unchanged."""
    import copy

    import bitsandbytes.functional as bnbf

    state = copy.deepcopy(layer.weight.quant_state)
    codes = layer.weight.data.clone()
    packed, packed_state = bnbf._convert_weight_packed_for_cpu(codes.clone(), state)
    assert packed_state.packing_format_for_cpu
    restored, _ = bnbf._convert_weight_packed_for_cpu_inverse(packed, packed_state)
    assert torch.equal(restored.view(torch.uint8), codes.view(torch.uint8))


def test_the_4bit_fixture_fits_the_avx512_layout_and_the_narrow_model_does_not(
    tiny_4bit_model_dir: Path, tiny_model_dir: Path
) -> None:
    # Forced on every CPU: the repacking an AVX-512-BF16 CPU runs at a 4-bit layer's first
    # inference call takes every layer of the 4-bit fixture ...
    model = load_model(
        str(tiny_4bit_model_dir), dtype="bfloat16", quantization="nf4", trainable=False
    )
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    for layer in layers:
        out_features, in_features = layer.weight.quant_state.shape
        assert q.cpu_packed_layout_fits(
            out_features, in_features, layer.weight.quant_state.blocksize
        )
        _repack_round_trip(layer)
    # ... and fails on the 32-wide model, the failure this fixture exists to avoid.
    narrow = load_model(str(tiny_model_dir), dtype="bfloat16", quantization="nf4", trainable=False)
    layer = next(m for m in narrow.modules() if isinstance(m, Linear4bit))
    with pytest.raises(RuntimeError, match="invalid for input of size"):
        _repack_round_trip(layer)


def test_layers_the_avx512_layout_cannot_hold_keep_the_generic_kernel(
    tiny_4bit_model_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bitsandbytes.nn.modules as modules

    def packed_flags(directory: Path) -> dict[str, bool]:
        model = load_model(str(directory), dtype="bfloat16", quantization="nf4", trainable=False)
        return {
            n: m.support_avx512bf16_for_cpu
            for n, m in model.named_modules()
            if isinstance(m, Linear4bit)
        }

    narrowest = write_tiny_model(tmp_path / "w16", hidden_size=16)  # no layer fills a block
    plain = load_model(str(narrowest), dtype="bfloat16", quantization="nf4", trainable=False)
    ids, mask, labels = batch()
    with torch.no_grad():
        expected = model_sequence_logprobs(plain, ids, mask, labels, fused_head=False).logps
    # As on an AVX-512-BF16 CPU: bitsandbytes builds every 4-bit layer for its packed kernel.
    monkeypatch.setattr(modules, "has_avx512bf16", lambda: True)
    forced = load_model(str(narrowest), dtype="bfloat16", quantization="nf4", trainable=False)
    assert not any(
        m.support_avx512bf16_for_cpu for m in forced.modules() if isinstance(m, Linear4bit)
    )
    with torch.no_grad():  # inference, where the packed path would have raised
        got = model_sequence_logprobs(forced, ids, mask, labels, fused_head=False).logps
    assert torch.equal(got, expected)
    # The layout decides per layer: at width 32 only down_proj (64 in, 32 out) fits.
    narrow = packed_flags(tiny_model_dir)
    assert {n.rsplit(".", 1)[-1] for n, packed in narrow.items() if packed} == {"down_proj"}
    assert all(packed_flags(tiny_4bit_model_dir).values())
    # A trainable 4-bit policy never repacks: its training steps need the generic backward.
    policy = load_model(
        str(tiny_4bit_model_dir), dtype="bfloat16", quantization="nf4", lora=LORA, trainable=True
    )
    layers = [m for m in policy.modules() if isinstance(m, Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)


def test_the_4bit_model_scores_alike_on_every_cpu_path(tiny_4bit_model_dir: Path) -> None:
    # What bitsandbytes chooses on this CPU (the packed AVX-512-BF16 kernel where the CPU has
    # it), against the generic path with torch's capability lowered to AVX2 (ATEN_CPU_CAPABILITY),
    # as on a CPU without AVX-512: the same model scores the same rows alike, within bf16.
    model = load_model(
        str(tiny_4bit_model_dir), dtype="bfloat16", quantization="nf4", trainable=False
    )
    packed = {m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, Linear4bit)}
    assert len(packed) == 1  # one kernel for every layer of the fixture, whichever this CPU has
    ids, mask, labels = batch()
    with torch.no_grad():
        native = model_sequence_logprobs(model, ids, mask, labels, fused_head=False).logps
    lowered = score_4bit(tiny_4bit_model_dir, "generic", {"ATEN_CPU_CAPABILITY": "avx2"})
    assert lowered["capability"] == "AVX2" and not any(lowered["packed"])
    torch.testing.assert_close(native.float(), torch.tensor(lowered["logps"]), atol=0.25, rtol=0.02)
