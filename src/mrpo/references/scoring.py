"""Scoring tokenized preference pairs with one frozen model, and the identities that key it.

Building blocks of :mod:`mrpo.references`: a batched, no-grad scorer that returns summed
response log-probs and token counts (a :class:`~mrpo.references.logps.RefLogps`), the
fingerprint of the exact rows scored (a part of a
:class:`~mrpo.references.cache_entry.RefCacheKey`), and a context that makes a LoRA policy
behave as its frozen base model ("self" reference without a second copy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from peft import PeftModel
from tqdm.auto import tqdm

from mrpo.data.collate import PreferenceCollator, pair_lengths
from mrpo.data.layout import PADDED, PairLayout, layout_for
from mrpo.data.table import pair_indices, pairs_fingerprint
from mrpo.data.types import TokenizedPair
from mrpo.logprobs import batch_sequence_logprobs
from mrpo.references.logps import RefLogps


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run a peft model as its base model (adapters off); any other model is unchanged."""
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield model
    else:
        yield model


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    pairs: Sequence[TokenizedPair],
    *,
    pad_token_id: int,
    batch_size: int,
    progress: bool = False,
    desc: str | None = None,
    layout: PairLayout = PADDED,
    fused_head: bool = True,
    pair_shared: bool = False,
) -> RefLogps:
    """Score the chosen and rejected response of each pair with ``model``.

    Pairs are sorted by length (longest first) and cut into batches of ``batch_size`` pairs
    (``2 * batch_size`` sequences per forward pass) to cut padding; the results come back in
    input order. The model runs in eval mode without gradients; its mode is restored after.

    Args:
        model: a causal LM whose vocabulary the pairs' token ids belong to.
        pairs: N pairs tokenized with the model's own tokenizer and chat template.
        pad_token_id: id used for padding (masked out, never scored).
        batch_size: pairs per forward pass (>= 1).
        progress: show a tqdm progress bar over the pairs.
        desc: the progress bar's label.
        layout: how a batch's pairs become rows (:mod:`mrpo.data.layout`); a model that
            cannot take packed rows uses the padded layout.
        fused_head: log-probs through the fused LM head where the model allows it (False:
            from full logits; ``model.fused_lm_head``).
        pair_shared: also sum each response's first min(|y_w|, |y_l|) tokens (LD-DPO), into
            the ``chosen_shared`` and ``rejected_shared`` columns (same forward passes).

    Returns:
        :class:`~mrpo.references.logps.RefLogps` of the N pairs, in input order, on the CPU
        (``index`` from the pairs, which must be distinct). The forward passes made are
        ``ceil(N / batch_size)`` (:func:`num_forward_passes`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 pairs, got {batch_size}")
    n = len(pairs)
    lengths = pair_lengths(pairs)
    order = sorted(range(n), key=lambda i: -lengths[i])
    collate = PreferenceCollator(pad_token_id, layout=layout_for(model, layout))
    device = model_device(model)
    logps = torch.zeros(2, n, dtype=torch.float32)
    shared = torch.zeros(2, n, dtype=torch.float32)
    tokens = torch.zeros(2, n, dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=n, desc=desc, unit="pair", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                rows = torch.tensor(order[start : start + batch_size], dtype=torch.int64)
                batch = collate([pairs[i] for i in rows.tolist()]).to(device)
                out = batch_sequence_logprobs(
                    model, batch, fused_head=fused_head, pair_shared=pair_shared
                )
                # Sequences [0, b) of the batch are the chosen responses, [b, 2b) the rejected.
                logps[:, rows] = out.logps.float().cpu().view(2, -1)
                if out.shared_logps is not None:
                    shared[:, rows] = out.shared_logps.float().cpu().view(2, -1)
                tokens[:, rows] = out.num_tokens.cpu().view(2, -1)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    index = torch.from_numpy(pair_indices(pairs).copy())
    extra = {"chosen_shared": shared[0], "rejected_shared": shared[1]} if pair_shared else {}
    return RefLogps(index, logps[0], logps[1], tokens[0], tokens[1], **extra)


def num_forward_passes(num_pairs: int, batch_size: int) -> int:
    """Forward passes :func:`score_pairs` makes for ``num_pairs`` pairs."""
    return -(-num_pairs // batch_size)


def data_fingerprint(pairs: Iterable[TokenizedPair]) -> str:
    """A sha256 of the exact rows a model scores (:func:`mrpo.data.table.pairs_fingerprint`)."""
    return pairs_fingerprint(pairs)
