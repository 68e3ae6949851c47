"""A KV cache of decoding slots, written in place: the memory layout of batched generation.

transformers' default ``DynamicCache`` appends each decoding step's keys and values with
``torch.cat``, which copies the whole cache of every layer at every step: at 16 rows of 1,100
tokens that copy was 63% of a decoding step of SmolLM2-135M on the CPU. :class:`SlotCache`
preallocates, per layer, keys and values of shape (slots, kv_heads, capacity, head_dim) and
writes each step's new column in place; attention reads views of the filled part.

Layout: the active sequences occupy rows ``[0, active)``; they share the column of their next
token, ``length``. A sequence of n tokens fills the columns ``[length - n, length)`` of its row
(its ``start``); the columns before are masked. A finished sequence's row is filled by a new
sequence (:meth:`SlotCache.insert`, its prompt's cache computed on its own) or by the last
active row (:meth:`SlotCache.remove`), so active rows stay contiguous and attention never
gathers rows. Columns that no active row uses any more are dropped from the left
(:meth:`SlotCache.reserve`), which bounds the masked part that attention reads.

Rotary embeddings are applied before keys are cached, with each sequence's own positions, so
where a sequence's columns lie in the buffer does not change its attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

KVPair = tuple[torch.Tensor, torch.Tensor]
# Dropping unused columns costs a copy of the cache; do it once this many have piled up.
COMPACT_COLUMNS = 128


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
    """One layer's slot buffers; :class:`SlotCache` owns the shared ``active`` and ``length``."""

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
        """Write the step's (active, heads, q, dim) keys and values at column ``length``."""
        active, length = self.owner.active, self.owner.length
        end = length + key_states.shape[-2]
        self.keys[:active, :, length:end] = key_states
        self.values[:active, :, length:end] = value_states
        return self.keys[:active, :, :end], self.values[:active, :, :end]

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_mask_sizes(self, query_length: int, *args: Any) -> tuple[int, int]:
        return self.owner.length + query_length, 0

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
        self.active = 0
        self.length = 0
        self.valid = torch.zeros((slots, capacity), dtype=torch.bool, device=device)
        self.start = torch.zeros(slots, dtype=torch.long, device=device)

    @property
    def slots(self) -> int:
        return int(self.valid.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.valid.shape[1])

    def _layer_buffers(self) -> list[KVPair]:
        return [(layer.keys, layer.values) for layer in self._slot_layers]

    def insert(self, prompt: Sequence[KVPair]) -> int:
        """Add a sequence from its own cache (per layer (1, kv_heads, n, head_dim) keys and
        values); return its row, ``active`` before the call."""
        row, n = self.active, int(prompt[0][0].shape[-2])
        if row >= self.slots:
            raise ValueError(f"all {self.slots} slots are in use")
        if n > self.length:  # longer than every active sequence: shift them all right
            self._shift(n - self.length)
        self._reserve_columns(0)
        begin = self.length - n
        for (keys, values), (k, v) in zip(self._layer_buffers(), prompt, strict=True):
            keys[row, :, begin : self.length] = k[0]
            values[row, :, begin : self.length] = v[0]
        self.valid[row] = False
        self.valid[row, begin : self.length] = True
        self.start[row] = begin
        self.active += 1
        return row

    def remove(self, row: int) -> None:
        """Drop the sequence of ``row``; the last active row moves into it."""
        last = self.active - 1
        if not 0 <= row <= last:
            raise ValueError(f"row {row} is not active (active rows: {self.active})")
        if row != last:
            for keys, values in self._layer_buffers():
                keys[row, :, : self.length] = keys[last, :, : self.length]
                values[row, :, : self.length] = values[last, :, : self.length]
            self.valid[row] = self.valid[last]
            self.start[row] = self.start[last]
        self.active = last

    def positions(self) -> torch.Tensor:
        """(active, 1) position of each active sequence's next token (its number of tokens)."""
        return (self.length - self.start[: self.active])[:, None]

    def step_mask(self) -> torch.Tensor:
        """(active, 1, 1, length + 1) boolean attention mask of a decoding step (True: attend),
        after :meth:`reserve` made room for the new column."""
        self.valid[: self.active, self.length] = True
        return self.valid[: self.active, None, None, : self.length + 1]

    def reserve(self) -> None:
        """Make room for one more column, dropping unused columns on the left when many are."""
        unused = int(self.start[: self.active].min()) if self.active else self.length
        if unused >= COMPACT_COLUMNS or (self.length + 1 > self.capacity and unused > 0):
            self._shift(-unused)
        self._reserve_columns(1)

    def advance(self) -> None:
        """Count the column that the last decoding step wrote."""
        self.length += 1

    def _reserve_columns(self, extra: int) -> None:
        """Grow the buffers so that ``length + extra`` columns fit."""
        need = self.length + extra
        if need <= self.capacity:
            return
        grow = max(need - self.capacity, self.capacity // 2)
        for layer in self._slot_layers:
            pad = layer.keys.new_zeros((*layer.keys.shape[:2], grow, layer.keys.shape[-1]))
            layer.keys = torch.cat([layer.keys, pad], dim=2)
            layer.values = torch.cat([layer.values, torch.zeros_like(pad)], dim=2)
        self.valid = torch.cat([self.valid, self.valid.new_zeros((self.slots, grow))], dim=1)

    def _shift(self, delta: int) -> None:
        """Move the active rows' columns by ``delta`` (negative: left) and ``length`` with them."""
        if delta > 0:
            self._reserve_columns(delta)
        new_length = self.length + delta
        active, length = self.active, self.length
        src = slice(max(0, -delta), length)
        dst = slice(max(0, delta), new_length)
        for keys, values in self._layer_buffers():
            keys[:active, :, dst] = keys[:active, :, src].clone()
            values[:active, :, dst] = values[:active, :, src].clone()
        valid = self.valid[:active, src].clone()
        self.valid[:active] = False
        self.valid[:active, dst] = valid
        self.start[:active] += delta
        self.length = new_length
