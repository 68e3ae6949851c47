"""Memory and speed options of the policy change how it runs, never what it computes."""

from __future__ import annotations

import pytest
import torch

from mrpo.cli.train import load_policy, train
from mrpo.config import TrainConfig, to_dataclass
from mrpo.logprobs import batch_sequence_logprobs, model_sequence_logprobs


def logps_and_grads(compose_train, overrides: list[str]) -> tuple[torch.Tensor, dict, object]:
    """Policy log-probs of a fixed batch and the gradients of their sum, under ``overrides``."""
    torch.manual_seed(0)  # LoRA's A matrices are drawn from the global generator
    policy, tokenizer = load_policy(to_dataclass(compose_train(overrides), TrainConfig))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tokenizer), (3, 14), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100  # score the "response" only
    out = model_sequence_logprobs(policy, ids, mask, labels)
    out.logps.sum().backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    return out.logps.detach(), grads, policy


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_log_probs_and_gradients(compose_train, lora):
    base = [f"model.lora.enabled={lora}"]
    plain_logps, plain_grads, _ = logps_and_grads(compose_train, base)
    ckpt_logps, ckpt_grads, policy = logps_and_grads(
        compose_train, [*base, "model.gradient_checkpointing=true"]
    )
    checkpointing = getattr(policy, "is_activation_checkpointing", None)  # transformers >= 5
    if checkpointing is None:
        checkpointing = policy.is_gradient_checkpointing
    assert checkpointing and policy.training
    torch.testing.assert_close(ckpt_logps, plain_logps)
    assert ckpt_grads.keys() == plain_grads.keys()
    # Every trainable parameter gets its gradient, LoRA's adapters included.
    for name, grad in plain_grads.items():
        assert ckpt_grads[name] is not None, name
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5)
    assert any(float(g.abs().sum()) > 0 for g in ckpt_grads.values())


@pytest.mark.slow
def test_compiled_policy_computes_the_same_and_saves_under_the_same_names(compose_train):
    plain_logps, plain_grads, plain = logps_and_grads(compose_train, [])
    compiled_logps, compiled_grads, compiled = logps_and_grads(
        compose_train, ["model.compile=true"]
    )
    torch.testing.assert_close(compiled_logps, plain_logps, atol=1e-5, rtol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-4)
    # Compiled in place: checkpoints and save_pretrained see the usual parameter names.
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    # The backbone is what is compiled: both log-prob paths call it.
    assert compiled.model._compiled_call_impl is not None


def test_log_prob_paths_train_exactly_alike(compose_train, tmp_path, monkeypatch):
    """Fused LM head (the default) in small tiles, logits path whole and chunked: same run."""
    import mrpo.training.module

    seen = []

    def spy(*args, **kwargs):
        seen.append((kwargs["fused_head"], kwargs["head_chunk_tokens"], kwargs["chunk_size"]))
        return batch_sequence_logprobs(*args, **kwargs)

    monkeypatch.setattr(mrpo.training.module, "batch_sequence_logprobs", spy)
    variants = {
        "fused": [],
        "fused_tiles": ["model.lm_head_chunk_tokens=3"],
        "logits": ["model.fused_lm_head=false"],
        "logits_chunked": ["model.fused_lm_head=false", "model.logprob_chunk_size=1"],
    }
    runs = {
        name: train(compose_train(overrides, output_dir=tmp_path / name))
        for name, overrides in variants.items()
    }
    # The options reached the policy's log-prob computation.
    assert set(seen) == {(True, 1024, None), (True, 3, None), (False, 1024, None), (False, 1024, 1)}
    for name, run in runs.items():
        assert run["global_step"] == 2, name
        for key in ("final/val/loss", "final/val/rewards/margin", "before/val/loss"):
            assert run[key] == pytest.approx(runs["fused"][key], abs=1e-5), (name, key)
    assert runs["fused"]["final/val/loss"] != runs["fused"]["before/val/loss"]
