"""Scoring tokenized preference pairs with one frozen model, and the identities that key it.

Building blocks of :mod:`mrpo.references`: a batched, no-grad scorer that returns summed
response log-probs and token counts (a :class:`~mrpo.references.logps.RefLogps`), fingerprints
of a tokenizer and of the exact rows scored (parts of a
:class:`~mrpo.references.cache.RefCacheKey`), and a context that makes a LoRA policy behave as
its frozen base model ("self" reference without a second copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from mrpo.data.collate import PreferenceCollator, pair_lengths
from mrpo.data.layout import PADDED, PairLayout, layout_for
from mrpo.data.types import TokenizedPair
from mrpo.logprobs import batch_sequence_logprobs
from mrpo.references.cache import canonical_json
from mrpo.references.logps import RefLogps

# Runtime settings of a fast tokenizer's JSON that change when a caller pads or truncates a
# call; they do not change how text maps to ids, so they are left out of its identity.
_RUNTIME_TOKENIZER_FIELDS = ("padding", "truncation")


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
    tokens = torch.zeros(2, n, dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=n, desc=desc, unit="pair", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                rows = torch.tensor(order[start : start + batch_size], dtype=torch.int64)
                batch = collate([pairs[i] for i in rows.tolist()]).to(device)
                out = batch_sequence_logprobs(model, batch)
                # Sequences [0, b) of the batch are the chosen responses, [b, 2b) the rejected.
                logps[:, rows] = out.logps.float().cpu().view(2, -1)
                tokens[:, rows] = out.num_tokens.cpu().view(2, -1)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    index = torch.tensor([p.index for p in pairs], dtype=torch.int64)
    return RefLogps(index, logps[0], logps[1], tokens[0], tokens[1])


def num_forward_passes(num_pairs: int, batch_size: int) -> int:
    """Forward passes :func:`score_pairs` makes for ``num_pairs`` pairs."""
    return -(-num_pairs // batch_size)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A sha256 of how a tokenizer maps text to ids (its vocabulary, merges, special tokens).

    Fast tokenizers are hashed through their serialized ``tokenizers`` JSON (minus the
    runtime padding/truncation settings); slow ones through their sorted vocabulary. The class
    name and the special-token map are included too. The chat template is keyed separately.
    """
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for name in _RUNTIME_TOKENIZER_FIELDS:
            spec.pop(name, None)
        digest.update(canonical_json(spec).encode("ascii"))
    else:
        digest.update(canonical_json(sorted(tokenizer.get_vocab().items())).encode("ascii"))
    specials = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    digest.update(canonical_json(specials).encode("ascii"))
    return "sha256:" + digest.hexdigest()


def data_fingerprint(pairs: Iterable[TokenizedPair]) -> str:
    """A sha256 of the exact rows a model scores: each pair's token ids and data set index.

    The rows are hashed in index order, so the same rows listed in another order give the same
    fingerprint (and the same cache entry).
    """
    digest = hashlib.sha256(b"mrpo-pairs-v1\n")
    for p in sorted(pairs, key=lambda p: p.index):
        row = [p.index, list(p.prompt_ids), list(p.chosen_ids), list(p.rejected_ids)]
        digest.update(canonical_json(row).encode("ascii") + b"\n")
    return "sha256:" + digest.hexdigest()
