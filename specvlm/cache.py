"""A preallocated KV cache with an explicit length, pluggable into Hugging Face models.

The cache promises:
- every layer's keys and values live in one buffer of fixed capacity, allocated once (lazily, on the
  layer's own device, so a model spread over GPUs by a device map just works);
- a forward pass writes its new tokens at slots ``[length, length + q)`` and attends over
  ``[0, length + q)``; nothing is committed until the caller says so, so rejecting speculative
  tokens costs nothing: the length simply does not advance (gpt-fast style);
- ``commit(n)`` keeps the first ``n`` written slots, ``commit_path(slots)`` keeps an arbitrary
  subset (an accepted tree path) by compacting it in place to ``[length, length + len(slots))``;
  ``move(src, dst)`` is the same copy with a device-side index and no host check, so an engine can
  compact without waiting for the device;
- a static cache (``static=True``) keeps every layer in one buffer when the layers agree in shape
  and device, so one copy moves a path in all layers, and rounds its capacity up to whole attention
  blocks (``BLOCK`` slots).

The cache knows nothing about positions: rotary positions are the model adapter's business.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class CacheFullError(RuntimeError):
    """Raised when a forward pass would write past the preallocated capacity."""


class _StaticKVLayer(CacheLayerMixin):
    """One layer's buffers, shaped [batch, kv_heads, capacity, head_dim]."""

    # Not "compileable": transformers then materialises a causal mask even for one-token steps, and
    # any mask sends SDPA down the grouped-query path that copies the whole cache per layer.
    is_compileable = False
    is_sliding = False

    def __init__(self, owner: "KVCache"):
        super().__init__()
        self.owner = owner
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, k_dim = key_states.shape
        owner = self.owner
        capacity = owner.capacity
        self.dtype, self.device = key_states.dtype, key_states.device
        shape = (batch, heads, capacity, k_dim)
        if owner.static and k_dim == value_states.shape[-1]:
            storage = owner.storage
            if storage is None and self is owner.layers[0]:
                storage = owner.storage = key_states.new_zeros((len(owner.layers), 2) + shape)
            if storage is not None and storage.shape[2:] == shape and storage.device == key_states.device:
                index = owner.layers.index(self)
                self.keys, self.values = storage[index, 0], storage[index, 1]
                self.is_initialized = True
                return
            owner.storage = None  # layers differ: each keeps its own buffers
        self.keys = key_states.new_zeros(shape)
        self.values = value_states.new_zeros((batch, heads, capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        owner = self.owner
        q = key_states.shape[-2]
        if owner.full_view:
            # a static step: slots from the device-side length, no host value read (a captured graph
            # replays with the current length; the step checked the capacity before running)
            slots = (owner.length_tensor + torch.arange(q, device=owner.length_tensor.device)).to(self.keys.device)
            self.keys.index_copy_(2, slots, key_states)
            self.values.index_copy_(2, slots, value_states)
            return self.keys, self.values
        start = owner.length
        end = start + q
        owner.check_room(q)
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0

    def get_max_length(self) -> int:
        return self.owner.capacity

    def reset(self) -> None:
        if self.is_initialized:
            self.keys.zero_()
            self.values.zero_()

    def move_slots(self, src: torch.Tensor, dst_start: int) -> None:
        """Copy slots ``src`` (ascending) to ``[dst_start, dst_start + len(src))``."""
        if not self.is_initialized:
            return
        src = src.to(self.keys.device, non_blocking=True)
        n = src.numel()
        # index_select makes a copy first, so overlapping source and destination ranges are safe.
        self.keys[:, :, dst_start : dst_start + n] = self.keys.index_select(2, src)
        self.values[:, :, dst_start : dst_start + n] = self.values.index_select(2, src)


class KVCache(Cache):
    """Fixed-capacity KV cache for a decoder-only language model.

    Args:
        num_layers: number of decoder layers of the language model.
        capacity: slots per layer; must hold the prompt, the generated tokens and one
            speculative block.
    """

    BLOCK = 128  # static caches hold whole blocks of this many slots (FlexAttention's KV block)

    def __init__(self, num_layers: int, capacity: int, *, static: bool = False, device=None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if static:
            capacity = -(-capacity // self.BLOCK) * self.BLOCK
        self.capacity = capacity
        self.storage: torch.Tensor | None = None  # (layers, 2, B, H, capacity, D) when layers share one buffer
        self._length = 0
        # static: writes go to slots given by a device tensor mirror of the length, so a step can be
        # captured as a CUDA graph; full_view: attention sees the whole capacity (under a mask)
        self.static = static
        self.full_view = False
        self.length_tensor = torch.zeros((), dtype=torch.long, device=device) if static else None
        super().__init__(layers=[_StaticKVLayer(self) for _ in range(num_layers)])

    @property
    def length(self) -> int:
        return self._length

    @length.setter
    def length(self, value: int) -> None:
        self._length = value
        if self.length_tensor is not None:
            self.length_tensor.fill_(value)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def check_room(self, q: int) -> None:
        if self.length + q > self.capacity:
            raise CacheFullError(
                f"KV cache capacity {self.capacity} exceeded: {self.length} tokens cached, "
                f"{q} more requested; build the cache with a larger capacity"
            )

    def commit(self, n: int) -> None:
        """Keep the first ``n`` slots written by the last forward pass."""
        if n < 0 or self.length + n > self.capacity:
            raise ValueError(f"cannot commit {n} slots at length {self.length} (capacity {self.capacity})")
        self._length += n
        if self.length_tensor is not None:
            # added on the device, not set from the host: a commit captured in a CUDA graph moves
            # the length from wherever a replay finds it
            self.length_tensor.add_(n)

    def mirror(self, length: int) -> None:
        """Set the host's copy of the length only: the device's already holds it (a replayed graph
        moved it)."""
        if not 0 <= length <= self.capacity:
            raise ValueError(f"length {length} outside a cache of capacity {self.capacity}")
        self._length = length

    def commit_path(self, slots: torch.Tensor) -> None:
        """Keep the written slots ``slots`` (offsets from the current length, ascending), in order.

        Used after tree verification: the accepted root-to-leaf path is scattered over the block
        that was written; it is compacted to the front of the block in place.
        """
        offsets = slots.flatten().to("cpu", torch.long)
        n = offsets.numel()
        if n == 0:
            return
        if bool((offsets[1:] <= offsets[:-1]).any()) or int(offsets[0]) < 0:
            raise ValueError(f"path slots must be ascending and non-negative, got {offsets.tolist()}")
        if self.length + int(offsets[-1]) >= self.capacity:  # index_select would fail (on GPU: device assert)
            raise ValueError(
                f"path slot {int(offsets[-1])} at length {self.length} lies past capacity {self.capacity}"
            )
        if not torch.equal(offsets, torch.arange(n)):
            self.move(offsets + self.length, self.length)
        self.commit(n)

    def move(self, src: torch.Tensor, dst_start: int) -> None:
        """Copy the slots ``src`` (absolute, ascending, each >= its destination) to ``[dst_start, ...)``
        in every layer. Nothing is checked on the host: ``src`` may live on the device, so the copy is
        queued without waiting for it."""
        if src.numel() == 0:
            return
        if self.storage is not None:
            src = src.to(self.storage.device, non_blocking=True)
            n = src.numel()
            self.storage[:, :, :, :, dst_start : dst_start + n] = self.storage.index_select(4, src)
            return
        for layer in self.layers:
            layer.move_slots(src, dst_start)

    def save(self, start: int, count: int) -> list[torch.Tensor]:
        """A copy of the slots ``[start, start + count)`` of every layer (queued, not waited for),
        for ``restore``: a speculative write over them can be undone."""
        if self.storage is not None:
            return [self.storage[:, :, :, :, start : start + count].clone()]
        return [t[:, :, start : start + count].clone() for layer in self.layers if layer.is_initialized
                for t in (layer.keys, layer.values)]  # fmt: skip

    def restore(self, saved: list[torch.Tensor], start: int) -> None:
        """Put back slots copied by ``save(start, ...)``."""
        if self.storage is not None:
            self.storage[:, :, :, :, start : start + saved[0].shape[4]] = saved[0]
            return
        buffers = [t for layer in self.layers if layer.is_initialized for t in (layer.keys, layer.values)]
        for buffer, copy in zip(buffers, saved, strict=True):
            buffer[:, :, start : start + copy.shape[2]] = copy

    def rollback(self, length: int) -> None:
        """Forget everything after the first ``length`` slots."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length}: cache holds {self.length}")
        self.length = length

    def crop(self, max_length: int) -> None:
        """Hugging Face's crop: a negative value removes that many tokens."""
        self.rollback(self.length + max_length if max_length < 0 else min(max_length, self.length))

    def reset(self) -> None:
        self.length = 0
