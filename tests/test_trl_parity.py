"""Every TRL loss type with K = 1 equals TRL's own loss on the same log-prob tensors.

TRL (pinned in the ``dev`` extra) computes its losses inside ``DPOTrainer._compute_loss``,
from the per-token log-probs its model returns. The test builds the trainer without its
``__init__`` (no model, data or optimizer), sets the attributes that method reads, and hands
it a log-prob source: a module that returns the given per-token log-probs (zeros off the
completion), as TRL's fused LM head would. mrpo's objective gets the same tensors summed per
response. Values and gradients (with respect to every per-token log-prob) agree to 1e-6.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from mrpo.logprobs import ld_logps, pair_shared_tokens, reduce_rows
from mrpo.logprobs.packed_logprobs import reduce_by_owner
from mrpo.objectives import LOSS_TYPES, get_objective

if sys.version_info < (3, 11):  # the pinned trl has no release for 3.10 (pyproject.toml)
    pytest.skip("trl 1.16 needs Python >= 3.11", allow_module_level=True)
trl = pytest.importorskip("trl", reason="the dev extra pins trl")
from trl import DPOTrainer  # noqa: E402

TRL_LOSS_TYPES = [
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]  # fmt: skip
BATCH, LENGTH = 6, 9


class LogProbSource(torch.nn.Module):
    """Returns fixed per-token log-probs in the shape of TRL's fused-head model output."""

    is_gradient_checkpointing = False

    def __init__(self, per_token: torch.Tensor, completion_mask: torch.Tensor) -> None:
        super().__init__()
        self.per_token = per_token
        self.shift_mask = completion_mask[:, 1:].to(per_token.dtype)

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> SimpleNamespace:
        zeros = torch.zeros_like(self.shift_mask)
        return SimpleNamespace(
            log_probs=self.per_token * self.shift_mask,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=zeros.bool(),
        )


def trl_trainer(loss_types: list[str], weights: list[float] | None, **options: float) -> DPOTrainer:
    """A DPOTrainer carrying only what ``_compute_loss`` reads, with DPOConfig's defaults."""
    trainer = DPOTrainer.__new__(DPOTrainer)
    one_process = SimpleNamespace(
        device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t
    )
    trainer.__dict__.update(
        accelerator=one_process,
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        ref_model=None,
        ld_alpha=None,
        beta=options.get("beta", 0.1),
        loss_types=loss_types,
        loss_weights=weights or [1.0] * len(loss_types),
        label_smoothing=options.get("label_smoothing", 0.0),
        f_divergence_type=options.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=options.get("f_alpha_divergence_coef", 0.5),
        use_weighting=False,
        args=SimpleNamespace(
            discopop_tau=options.get("discopop_tau", 0.05), gradient_checkpointing_kwargs=None
        ),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return trainer


def make_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs (2B, T−1), completion mask (2B, T), reference sums (B,), (B,)."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, 4, (2 * BATCH,), generator=gen)
    length = torch.randint(1, LENGTH - 3, (2 * BATCH,), generator=gen)
    positions = torch.arange(LENGTH)
    mask = ((positions >= prompt[:, None]) & (positions < (prompt + length)[:, None])).long()
    per_token = -3.0 * torch.rand(2 * BATCH, LENGTH - 1, generator=gen)
    sums = (per_token * mask[:, 1:]).sum(dim=1)
    ref = sums + torch.randn(2 * BATCH, generator=gen)
    return per_token, mask, ref[:BATCH], ref[BATCH:]


def trl_loss_and_grad(trainer: DPOTrainer, batch: tuple[torch.Tensor, ...]):
    per_token, mask, ref_chosen, ref_rejected = batch
    leaf = per_token.clone().requires_grad_(True)
    source = LogProbSource(leaf, mask)
    trainer.model = source
    inputs = {
        "input_ids": torch.zeros_like(mask),
        "attention_mask": torch.ones_like(mask),
        "completion_mask": mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = trainer._compute_loss(source, inputs, return_outputs=False)
    loss.backward()
    return loss.detach(), leaf.grad


def mrpo_loss_and_grad(objective, batch: tuple[torch.Tensor, ...], normalize: bool):
    per_token, mask, ref_chosen, ref_rejected = batch
    leaf = per_token.clone().requires_grad_(True)
    shift = mask[:, 1:].to(leaf.dtype)
    sums = (leaf * shift).sum(dim=1)
    counts = mask[:, 1:].sum(dim=1)
    refs = torch.cat([ref_chosen, ref_rejected])
    if normalize:  # what loss.length_normalize gives the policy and the references
        sums, refs = sums / counts, refs / counts
    out = objective(
        sums[:BATCH],
        sums[BATCH:],
        refs[None, :BATCH],
        refs[None, BATCH:],
        token_counts=(counts[:BATCH], counts[BATCH:]),
    )
    out.loss.backward()
    return out.loss.detach(), leaf.grad


def assert_parity(
    loss_types: list[str], weights: list[float] | None = None, seed: int = 0, **options: float
) -> None:
    batch = make_batch(seed)
    trainer = trl_trainer(loss_types, weights, **options)
    expected, expected_grad = trl_loss_and_grad(trainer, batch)
    # mrpo's ``ipo`` takes the log-probs as given; TRL's divides by the token counts, which
    # is mrpo's ipo with length_normalize=true (docs/objectives.md's table).
    normalize = loss_types == ["ipo"]
    objective = get_objective(
        "dpo", loss_type=loss_types, loss_weights=weights, length_normalize=normalize, **options
    )
    got, grad = mrpo_loss_and_grad(objective, batch, normalize)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)


def test_trl_menu_is_mrpo_menu() -> None:
    assert set(TRL_LOSS_TYPES) <= set(LOSS_TYPES)
    assert set(LOSS_TYPES) - set(TRL_LOSS_TYPES) == {"simpo"}


@pytest.mark.parametrize("beta", [0.1, 0.7])
@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_each_loss_type_equals_trl(loss_type: str, beta: float) -> None:
    smoothing = {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.05}.get(loss_type, 0.0)
    assert_parity([loss_type], beta=beta, label_smoothing=smoothing, seed=int(beta * 10))


@pytest.mark.parametrize(
    ("loss_types", "weights"),
    [
        (["sigmoid", "sft"], [0.8, 0.2]),
        (["apo_zero", "bco_pair", "hinge"], None),
        (["sigmoid", "sigmoid_norm", "nca_pair"], [1.0, 0.5, 0.25]),
    ],
)
def test_loss_weight_combinations_equal_trl(
    loss_types: list[str], weights: list[float] | None
) -> None:
    assert_parity(loss_types, weights)


F_DIVERGENCE_CASES = [
    ("forward_kl", 0.5),
    ("js_divergence", 0.5),
    ("alpha_divergence", 0.5),
    ("alpha_divergence", 0.2),
    ("alpha_divergence", 1.0),
]


@pytest.mark.parametrize(("divergence", "alpha"), F_DIVERGENCE_CASES)
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "robust", "discopop", "sigmoid_norm"])
def test_f_divergences_equal_trl(loss_type: str, divergence: str, alpha: float) -> None:
    smoothing = 0.1 if loss_type == "robust" else 0.0
    assert_parity(
        [loss_type],
        f_divergence_type=divergence,
        f_alpha_divergence_coef=alpha,
        label_smoothing=smoothing,
    )


# --- LD-DPO (TRL's ld_alpha, arXiv 2409.06411) ------------------------------------------------


def make_ld_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Policy and reference per-token log-probs (2B, T−1) and a completion mask (2B, T) whose
    pairs have unequal lengths (and one pair equal ones)."""
    per_token, mask, _, _ = make_batch(seed)
    mask[BATCH - 1] = mask[2 * BATCH - 1]  # an equal-length pair: LD-DPO leaves it alone
    gen = torch.Generator().manual_seed(seed + 100)
    ref_per_token = per_token + 0.5 * torch.randn(per_token.shape, generator=gen)
    return per_token, ref_per_token, mask


def trl_ld_loss_and_grad(trainer: DPOTrainer, per_token, ref_per_token, mask):
    """TRL's own ``_compute_loss`` with ``ld_alpha`` set: its shared/tail masks from the
    completion mask, applied to the policy's and (not precomputed) the reference's log-probs."""
    leaf = per_token.clone().requires_grad_(True)
    trainer.__dict__.update(
        precompute_ref_logps=False, ref_model=LogProbSource(ref_per_token, mask)
    )
    source = LogProbSource(leaf, mask)
    trainer.model = source
    inputs = {
        "input_ids": torch.zeros_like(mask),
        "attention_mask": torch.ones_like(mask),
        "completion_mask": mask,
    }
    loss = trainer._compute_loss(source, inputs, return_outputs=False)
    loss.backward()
    return loss.detach(), leaf.grad


def mrpo_ld_sums(per_token, mask, alpha, average: bool, by_owner: bool) -> torch.Tensor:
    """(2B,) LD-DPO log-probs through mrpo's padded-row (``reduce_rows``) or packed
    (``reduce_by_owner``) reduction, then :func:`ld_logps`."""
    scored = mask[:, 1:].bool()
    shared_tokens = pair_shared_tokens(scored.sum(dim=1))
    token_logps = torch.where(scored, per_token, per_token.new_zeros(()))
    if by_owner:
        owner = torch.arange(scored.shape[0])[:, None].expand_as(scored)[scored]
        out = reduce_by_owner(token_logps[scored], owner, scored.shape[0], average, shared_tokens)
    else:
        out = reduce_rows(token_logps, scored, average, shared_tokens)
    return ld_logps(out.logps, out.shared_logps, alpha)


@pytest.mark.parametrize("by_owner", [False, True], ids=["rows", "packed"])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("loss_type", [t for t in TRL_LOSS_TYPES if t != "sft"])
def test_ld_alpha_equals_trl(loss_type: str, alpha: float, by_owner: bool) -> None:
    """LD-DPO against TRL 1.16's ``DPOTrainer._compute_loss`` with ``ld_alpha`` (its shared
    and tail masks, on the policy's and the live reference's per-token log-probs), K = 1.

    ``sft`` is left out: TRL's reads the full per-token log-probs, mrpo's the LD-DPO ones
    (docs/objectives.md)."""
    per_token, ref_per_token, mask = make_ld_batch(seed=7)
    smoothing = {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.05}.get(loss_type, 0.0)
    trainer = trl_trainer([loss_type], None, beta=0.5, label_smoothing=smoothing)
    trainer.ld_alpha = alpha
    expected, expected_grad = trl_ld_loss_and_grad(trainer, per_token, ref_per_token, mask)
    normalize = loss_type == "ipo"  # TRL's ipo divides by the token counts (see above)
    objective = get_objective(
        "dpo",
        beta=0.5,
        loss_type=[loss_type],
        label_smoothing=smoothing,
        length_normalize=normalize,
        ld_alpha=alpha,
    )
    leaf = per_token.clone().requires_grad_(True)
    policy = mrpo_ld_sums(leaf, mask, alpha, normalize, by_owner)
    refs = mrpo_ld_sums(ref_per_token, mask, alpha, normalize, by_owner)
    counts = mask[:, 1:].sum(dim=1)
    out = objective(
        policy[:BATCH],
        policy[BATCH:],
        refs[None, :BATCH],
        refs[None, BATCH:],
        token_counts=(counts[:BATCH], counts[BATCH:]),
    )
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(leaf.grad, expected_grad, rtol=1e-6, atol=1e-6)
    # Not vacuous: TRL without ld_alpha gives another loss on the same tensors.
    trainer.ld_alpha = None
    full, _ = trl_ld_loss_and_grad(trainer, per_token, ref_per_token, mask)
    assert not torch.allclose(full, expected, atol=1e-5, rtol=0)
