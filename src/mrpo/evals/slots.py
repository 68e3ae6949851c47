"""A KV cache of decoding slots, written in place: the memory layout of batched generation.

transformers' default ``DynamicCache`` appends each decoding step's keys and values with
``torch.cat``, which copies the whole cache of every layer at every step: at 16 rows of 1,100
tokens that copy was 63% of a decoding step of SmolLM2-135M on the CPU. :class:`SlotCache`
preallocates, per layer, keys and values of shape (slots, kv_heads, capacity, head_dim) and
writes each step's new columns in place; attention reads views of the filled part.

Layout: the active sequences occupy rows ``[0, active)``, each from column 0: a sequence of n
cached tokens fills the columns ``[0, n)`` of its row (its ``end`` is n), so a token's column
is its position. A decoding step runs ``q`` tokens of every row (the row's last token and up
to ``q - 1`` drafted ones, see :mod:`mrpo.evals.drafts`) and writes them at the columns
``[end, end + q)``; :meth:`SlotCache.advance` then counts, per row, the ones that were kept,
and a later step overwrites the rest. Attention reads the columns ``[0, max(end) + q)`` with a
mask per row and query, so rows of different lengths share the step.

A finished sequence's row is filled by a new sequence (:meth:`SlotCache.insert`, its prompt's
cache computed on its own) or by the last active row (:meth:`SlotCache.remove`), so active rows
stay contiguous and attention never gathers rows.

Rotary embeddings are applied before keys are cached, with each sequence's own positions.

Decoding always runs SDPA (:func:`slot_attention`), whatever attention the model was loaded
with for training: the step masks are in SDPA's boolean form.

Attention of a step of several tokens per row (:func:`grouped_query_attention`): with a mask
and more than one query, transformers' SDPA path copies every key and value head once per query
head sharing it (``repeat_kv``); on SmolLM2-135M (3 key-value heads for 9 query heads) that
copy was 53% of a 16-row, 4-token step on the CPU (2.25 s against 0.52 s without it). The
queries of a key-value head are stacked instead, which is the same attention without the copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

KVPair = tuple[torch.Tensor, torch.Tensor]
SLOT_ATTENTION = "mrpo_slots_sdpa"
"""The name :func:`grouped_query_attention` is registered under in transformers."""


def grouped_query_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, with masked multi-token queries of grouped heads stacked.

    Args:
        query: (batch, heads, q, dim); key, value: (batch, kv_heads, kv, dim).
        attention_mask: (batch, 1, q, kv) boolean or None.

    Returns:
        ((batch, q, heads, dim) output, None), as transformers' attention functions.
    """
    batch, heads, q, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    if attention_mask is None or q == 1 or groups == 1 or attention_mask.shape[1] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # Query head h reads key-value head h // groups (repeat_kv's order): stack each group's
    # queries along the query axis and repeat the (head-independent) mask to match.
    stacked = query.reshape(batch, kv_heads, groups * q, dim)
    mask = attention_mask[:, :, None].expand(-1, -1, groups, -1, -1)
    mask = mask.reshape(batch, 1, groups * q, -1)
    out = torch.nn.functional.scaled_dot_product_attention(
        stacked, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    return out.reshape(batch, heads, q, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(SLOT_ATTENTION, grouped_query_attention)
AttentionMaskInterface.register(SLOT_ATTENTION, sdpa_mask)  # masks are built as for SDPA


@contextmanager
def slot_attention(model: PreTrainedModel) -> Iterator[None]:
    """Run ``model``'s attention as :func:`grouped_query_attention` (SDPA) inside the block,
    whatever implementation it was loaded with; the setting is restored afterwards.

    The slots' step masks are boolean (True: attend), the form SDPA takes. Other kernels
    would misread them: eager attention adds the mask to the scores (a boolean mask adds 0 or
    1, so nothing is masked), FlexAttention takes a ``BlockMask`` (a 4-D tensor crashes its
    CPU kernel), and flash-attention takes no arbitrary mask. Decoding needs no gradient, so
    SDPA is right for every model whose attention goes through transformers' attention
    interface (transformers' own families).
    """
    config = model.config
    configured = config._attn_implementation
    config._attn_implementation = SLOT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = configured


def check_full_attention(config: Any) -> None:
    """Raise ValueError unless every layer of the model attends to the whole sequence.

    The slots' masks know no sliding window and their buffers hold keys and values only, so
    sliding-window, hybrid and linear-attention (state-space) layers are refused.
    """
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    windowed = isinstance(window, int) and getattr(config, "use_sliding_window", True) is not False
    if windowed or any(t != "full_attention" for t in layer_types):
        kind = getattr(config, "model_type", "this model")
        raise ValueError(
            f"batched generation supports models whose layers all attend to the whole sequence; "
            f"{kind} has sliding-window or other attention layers (run lm-eval's task instead)"
        )


def cached_keys_values(cache: Cache) -> list[KVPair]:
    """Every layer's (batch, kv_heads, tokens, head_dim) keys and values of a filled cache."""
    found = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(f"cache layer {layer!r} holds no keys and values")
        found.append((keys, values))
    return found


class _SlotLayer(DynamicLayer):
    """One layer's slot buffers; :class:`SlotCache` owns the rows' ends and the step's shape."""

    keys: torch.Tensor  # always allocated (the base class allows None before first use)
    values: torch.Tensor

    def __init__(self, owner: SlotCache, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.owner = owner
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> KVPair:
        """Write the step's (active, heads, q, dim) keys and values at each row's next columns;
        return the (active, heads, width, dim) views that attention reads."""
        rows, columns, width = self.owner.step_index()
        # Two advanced indices around a slice: the indexed view is (active, q, heads, dim).
        self.keys[rows, :, columns] = key_states.transpose(1, 2)
        self.values[rows, :, columns] = value_states.transpose(1, 2)
        active = rows.shape[0]
        return self.keys[:active, :, :width], self.values[:active, :, :width]

    def get_seq_length(self) -> int:
        return self.owner.longest

    def get_mask_sizes(self, query_length: int, *args: Any) -> tuple[int, int]:
        return self.owner.longest + query_length, 0

    def get_max_length(self) -> int:
        return int(self.keys.shape[-2])


class SlotCache(Cache):
    """Keys and values of up to ``slots`` sequences decoded together (see the module doc).

    Args:
        num_layers, kv_heads, head_dim: the model's cache shape.
        slots: rows of the buffers (the most sequences decoded at once).
        capacity: columns of the buffers; they grow when needed.
        dtype, device: of the buffers (the model's).
    """

    def __init__(
        self,
        *,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        slots: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (slots, kv_heads, capacity, head_dim)
        self._slot_layers = [
            _SlotLayer(
                self,
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(num_layers)
        ]
        super().__init__(layers=list(self._slot_layers))
        self.slots = slots
        self.device = device
        self.ends: list[int] = []  # ends[r]: tokens cached in active row r
        self._step: tuple[torch.Tensor, torch.Tensor, int] | None = None

    @property
    def active(self) -> int:
        """Rows in use."""
        return len(self.ends)

    @property
    def longest(self) -> int:
        """Tokens cached in the longest active row."""
        return max(self.ends, default=0)

    @property
    def capacity(self) -> int:
        return int(self._slot_layers[0].keys.shape[-2])

    def _layer_buffers(self) -> list[KVPair]:
        return [(layer.keys, layer.values) for layer in self._slot_layers]

    def insert(self, prompt: Sequence[KVPair]) -> int:
        """Add a sequence from its own cache (per layer (1, kv_heads, n, head_dim) keys and
        values); return its row, ``active`` before the call."""
        row, n = self.active, int(prompt[0][0].shape[-2])
        if row >= self.slots:
            raise ValueError(f"all {self.slots} slots are in use")
        self._reserve_columns(n)
        for (keys, values), (k, v) in zip(self._layer_buffers(), prompt, strict=True):
            keys[row, :, :n] = k[0]
            values[row, :, :n] = v[0]
        self.ends.append(n)
        return row

    def remove(self, row: int) -> None:
        """Drop the sequence of ``row``; the last active row moves into it."""
        last = self.active - 1
        if not 0 <= row <= last:
            raise ValueError(f"row {row} is not active (active rows: {self.active})")
        if row != last:
            n = self.ends[last]
            for keys, values in self._layer_buffers():
                keys[row, :, :n] = keys[last, :, :n]
                values[row, :, :n] = values[last, :, :n]
            self.ends[row] = n
        self.ends.pop()

    def begin_step(self, query: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepare a step of ``query`` tokens per active row; its inputs for the model.

        Returns:
            positions: (active, query) position ids (row r's tokens at ``ends[r] + i``).
            mask: (active, 1, query, width) boolean attention mask (True: attend), width
            ``max(ends) + query``: query i of row r sees the columns ``[0, ends[r] + i]``.
        """
        if query < 1 or not self.ends:
            raise ValueError(f"a step needs active rows and query >= 1, got {query}")
        width = self.longest + query
        self._reserve_columns(width)
        ends = torch.tensor(self.ends, device=self.device)
        positions = ends[:, None] + torch.arange(query, device=self.device)
        rows = torch.arange(self.active, device=self.device)[:, None].expand(-1, query)
        self._step = (rows, positions, width)
        mask = torch.arange(width, device=self.device) <= positions[:, :, None]
        return positions, mask[:, None]

    def step_index(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(active, q) rows and columns of the step's new keys, and the width attention reads."""
        if self._step is None:
            raise RuntimeError("begin_step() must precede the model call")
        return self._step

    def advance(self, kept: Sequence[int]) -> None:
        """Count, per active row, how many of the step's tokens stay cached (the first ones)."""
        if len(kept) != self.active:
            raise ValueError(f"{len(kept)} counts for {self.active} active rows")
        self.ends = [end + k for end, k in zip(self.ends, kept, strict=True)]
        self._step = None

    def _reserve_columns(self, need: int) -> None:
        """Grow the buffers so that ``need`` columns fit."""
        if need <= self.capacity:
            return
        grow = max(need - self.capacity, self.capacity // 2)
        for layer in self._slot_layers:
            pad = layer.keys.new_zeros((*layer.keys.shape[:2], grow, layer.keys.shape[-1]))
            layer.keys = torch.cat([layer.keys, pad], dim=2)
            layer.values = torch.cat([layer.values, torch.zeros_like(pad)], dim=2)
