"""Batching tokenized preference pairs: the padding collator and a length-grouped sampler.

`PreferenceCollator` pads B pairs into a `PreferenceBatch` (chosen rows first, labels -100 on
prompt and padding), or lays them out as packed rows (:mod:`mrpo.data.layout`: the prompt
shared, padding-free), and attaches cached reference log-probs.

`LengthGroupedBatchSampler` works like transformers' ``LengthGroupedSampler``: each epoch the
rows are shuffled, cut into mega-batches of ``mega_batch_mult * batch_size`` rows, and each
mega-batch is sorted by length and cut into batches, so a batch holds rows of similar length
while the data order stays random at the mega-batch scale. The batch order is then shuffled,
with the batch holding the longest row first (an out-of-memory error shows at the first step,
not hours later). The order depends only on ``(seed, epoch)`` (numpy's ``SeedSequence``),
never on the Python hash seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from mrpo.data.layout import PADDED, PairLayout, pack_pairs
from mrpo.data.table import id_lengths
from mrpo.data.types import PreferenceBatch, RefLookup, TokenizedPair
from mrpo.logprobs import IGNORE_INDEX


class PreferenceCollator:
    """Collate `TokenizedPair`s: rows ``[0, B)`` prompt+chosen, rows ``[B, 2B)`` prompt+rejected.

    Args:
        pad_token_id: id written at padded positions (masked out by ``attention_mask``).
        padding_side: ``"right"`` (training) or ``"left"`` (generation-style layouts).
        pad_to_multiple_of: round the padded length T up to a multiple of this.
        ref_lookup: called with the batch's (B,) int64 index tensor; returns the reference
            log-probs (ref_chosen (K, B), ref_rejected (K, B)) attached to the batch as float32.
        layout: how the pairs become rows (:class:`~mrpo.data.layout.PairLayout`); the
            default pads one row per sequence (``padding_side`` applies to it only).
    """

    def __init__(
        self,
        pad_token_id: int,
        *,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        ref_lookup: RefLookup | None = None,
        layout: PairLayout = PADDED,
    ) -> None:
        if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool):
            raise ValueError(
                f"pad_token_id must be an int, got {pad_token_id!r} (a tokenizer without a pad "
                "token needs one set, e.g. its eos token)"
            )
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.ref_lookup = ref_lookup
        self.layout = layout

    def __call__(self, pairs: Sequence[TokenizedPair]) -> PreferenceBatch:
        """Pad B pairs into (2B, T) tensors (labels -100 on prompt and padding), or pack them."""
        if not pairs:
            raise ValueError("cannot collate an empty list of pairs")
        batch = self._padded(pairs) if self.layout.padded else self._packed(pairs)
        if self.ref_lookup is not None:
            batch.ref_chosen, batch.ref_rejected = self._lookup(batch.index)
        return batch

    def _packed(self, pairs: Sequence[TokenizedPair]) -> PreferenceBatch:
        packed = pack_pairs(
            pairs,
            self.layout,
            pad_token_id=self.pad_token_id,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        return PreferenceBatch(
            input_ids=packed.input_ids,
            attention_mask=packed.attention_mask,
            labels=packed.input_ids.masked_fill(packed.branch == 0, IGNORE_INDEX),
            index=torch.tensor([p.index for p in pairs], dtype=torch.long),
            packed=packed,
        )

    def _padded(self, pairs: Sequence[TokenizedPair]) -> PreferenceBatch:
        rows = [(p.prompt_ids, p.chosen_ids) for p in pairs]
        rows += [(p.prompt_ids, p.rejected_ids) for p in pairs]
        width = max(len(prompt) + len(response) for prompt, response in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (prompt, response) in enumerate(rows):
            n = len(prompt) + len(response)
            start = 0 if self.padding_side == "right" else width - n
            input_ids[i, start : start + n] = torch.tensor([*prompt, *response], dtype=torch.long)
            attention_mask[i, start : start + n] = 1
            # A row's first real token has no context to be predicted from: right padding
            # drops it with the shift, left padding would score it from a padding position.
            response_span = slice(start + max(len(prompt), 1), start + n)
            labels[i, response_span] = input_ids[i, response_span]
        index = torch.tensor([p.index for p in pairs], dtype=torch.long)
        return PreferenceBatch(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, index=index
        )

    def _lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.ref_lookup is not None
        ref_chosen, ref_rejected = self.ref_lookup(index)
        b = index.shape[0]
        for name, t in (("ref_chosen", ref_chosen), ("ref_rejected", ref_rejected)):
            if t.dim() != 2 or t.shape[1] != b:
                raise ValueError(
                    f"ref_lookup returned {name} of shape {tuple(t.shape)}; want (K, {b})"
                )
        if ref_chosen.shape != ref_rejected.shape:
            raise ValueError(
                f"ref_lookup returned ref_chosen {tuple(ref_chosen.shape)} and ref_rejected "
                f"{tuple(ref_rejected.shape)}; the shapes must match"
            )
        return ref_chosen.to(torch.float32), ref_rejected.to(torch.float32)


def pair_lengths(pairs: Sequence[TokenizedPair]) -> list[int]:
    """Padded row length of each pair: prompt + the longer response, in tokens."""
    prompt, chosen, rejected = id_lengths(pairs)
    return (prompt + np.maximum(chosen, rejected)).tolist()


class _EpochSetter:
    """What Lightning sees as the batch sampler's ``sampler``: it calls ``set_epoch`` on
    ``dataloader.batch_sampler.sampler`` at the start of every epoch (never on a batch sampler
    itself), and this forwards the call."""

    def __init__(self, owner: LengthGroupedBatchSampler) -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._owner.lengths)


class LengthGroupedBatchSampler:
    """Yield lists of row indices (use as ``DataLoader(batch_sampler=...)``).

    Each epoch has its own order. The epoch comes from ``epoch_source`` when given (read when
    an epoch's iteration starts: the data module passes the trainer's current epoch, which is
    right also for the first epoch of a resumed run, whose iterator Lightning may create
    before it announces the epoch), else from :meth:`set_epoch` (reached as
    ``batch_sampler.sampler.set_epoch``, where Lightning calls it).

    Args:
        lengths: padded length of each data set item (e.g. `pair_lengths` of the pairs).
        batch_size: items (pairs) per batch.
        seed: base seed; the order of an epoch depends on ``(seed, epoch)`` only.
        shuffle: False gives the same batches every epoch: rows sorted by decreasing length
            (or in input order without ``group_by_length``), for evaluation and reference
            scoring, where order does not matter.
        group_by_length: False gives plain shuffled batches (still seeded per epoch).
        drop_last: drop the last, smaller batch.
        mega_batch_mult: mega-batch size in batches; default ``min(n // (4 * batch_size), 50)``
            and at least 1, as in transformers.
        num_replicas, rank: for data parallel runs, each rank gets every ``num_replicas``-th
            batch; batches are repeated from the start (or dropped with ``drop_last``) so that
            every rank gets the same number.
        epoch_source: returns the epoch to iterate (see above); None uses :meth:`set_epoch`.
        max_tokens: cut batches by a token budget instead of ``batch_size`` items: a batch
            takes items in order while their ``costs`` sum to at most ``max_tokens`` (an item
            costing more is a batch of its own), so the number of items varies per batch;
            ``batch_size`` then only sizes the mega-batches, and ``drop_last`` only evens out
            the ranks' batch counts.
        costs: tokens each item costs, with ``max_tokens`` (e.g.
            :func:`mrpo.data.layout.pair_costs`).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: bool = True,
        drop_last: bool = False,
        mega_batch_mult: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_source: Callable[[], int] | None = None,
        max_tokens: int | None = None,
        costs: Sequence[int] | None = None,
    ) -> None:
        if max_tokens is not None and (max_tokens < 1 or costs is None):
            raise ValueError(f"max_tokens must be >= 1 and come with costs, got {max_tokens}")
        if costs is not None and len(costs) != len(lengths):
            raise ValueError(f"costs has {len(costs)} items, lengths {len(lengths)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        if mega_batch_mult is None:
            mega_batch_mult = max(min(len(lengths) // (4 * batch_size), 50), 1)
        if mega_batch_mult < 1:
            raise ValueError(f"mega_batch_mult must be >= 1, got {mega_batch_mult}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.drop_last = drop_last
        self.mega_batch_mult = mega_batch_mult
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.skip = 0
        self.sampler = _EpochSetter(self)
        self.epoch_source = epoch_source
        self.max_tokens = max_tokens
        self.costs = None if costs is None else np.asarray(costs, dtype=np.int64)
        self._counted: tuple[int, int] | None = None  # (epoch, batches) under a token budget

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order `__iter__` yields."""
        self.epoch = epoch

    def skip_next(self, num_batches: int) -> None:
        """Make the next iteration start after its first ``num_batches`` batches.

        A run resumed from a mid-epoch checkpoint continues the epoch exactly where it stopped:
        the order only depends on ``(seed, epoch)``, so skipping the batches already trained on
        gives the uninterrupted run's remaining batches. Later iterations are whole again.
        """
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        self.skip = num_batches

    def _num_batches_total(self) -> int:
        if self.max_tokens is not None:
            # The number of batches depends on the epoch's order: count them once per epoch.
            if self.epoch_source is not None:
                self.epoch = self.epoch_source()
            if self._counted is None or self._counted[0] != self.epoch:
                self._counted = (self.epoch, len(self._batches()))
            return self._counted[1]
        n, b = len(self.lengths), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __len__(self) -> int:
        total, r = self._num_batches_total(), self.num_replicas
        return total // r if self.drop_last else -(-total // r)

    def _batches(self) -> list[list[int]]:
        if not self.shuffle:
            if not self.group_by_length:
                return self._cut(np.arange(len(self.lengths)))
            return self._cut(np.argsort(-self.lengths, kind="stable"))
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(len(self.lengths))
        if not self.group_by_length:
            return self._cut(perm)
        mega = self.mega_batch_mult * self.batch_size
        # Sort each mega-batch by decreasing length (stable, so ties keep the random order).
        grouped = np.concatenate(
            [
                chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                for chunk in np.split(perm, range(mega, len(perm), mega))
            ]
        )
        batches = self._cut(grouped)
        batches = [batches[i] for i in rng.permutation(len(batches))]
        if not batches:  # fewer rows than one batch, with drop_last
            return batches
        longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i]].max())
        batches.insert(0, batches.pop(longest))
        return batches

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        if self.max_tokens is not None:
            return self._cut_by_tokens(order)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return [b.tolist() for b in batches]

    def _cut_by_tokens(self, order: np.ndarray) -> list[list[int]]:
        assert self.costs is not None and self.max_tokens is not None  # checked in __init__
        batches: list[list[int]] = []
        total = self.max_tokens + 1  # the first item starts a batch
        for i in order.tolist():
            cost = int(self.costs[i])
            if total + cost > self.max_tokens:
                batches.append([])
                total = 0
            batches[-1].append(i)
            total += cost
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the epoch is read when the first batch is asked for, not when the
        # iterator is made (Lightning makes a resumed run's first iterator before it restores
        # the checkpoint's epoch).
        if len(self.lengths) == 0:
            return
        if self.epoch_source is not None:
            self.epoch = self.epoch_source()
        batches = self._batches()
        if self.num_replicas > 1:
            extra = len(batches) % self.num_replicas
            if self.drop_last:
                batches = batches[: len(batches) - extra]
            elif extra:
                need = self.num_replicas - extra
                batches += (batches * (need // len(batches) + 1))[:need]
            batches = batches[self.rank :: self.num_replicas]
        skip, self.skip = self.skip, 0
        yield from batches[skip:]
