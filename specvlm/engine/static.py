"""Static-shape decode steps, captured as CUDA graphs: drafting and verifying near the bandwidth floor.

A one-token step of a 7B model is ~15 us of work per kernel and hundreds of kernels; launched from
Python it costs several times the time to read the weights. Here each step shape (q new tokens
with a fixed attention pattern among them) is captured once as a CUDA graph and replayed:
- the KV cache is written at slots ``length + arange(q)`` given by a device tensor, and attention
  spans the whole preallocated capacity under a mask built on the device from the same length, so
  nothing in the step depends on a Python number;
- attention is grouped-query matmul attention (``gqa_attention``): each key/value head is read
  once for all of its query heads, never repeated into a copy of the cache;
- the prefix/tree mask: slots before ``prefix`` are visible; the ``width`` slots from ``prefix`` on
  follow a fixed boolean ``pattern`` (q x width); everything else is hidden.

Off the GPU (or with ``use_graphs=False``) the same static step runs eagerly, which is how the CPU
tests check it against the ordinary path. Prefill stays on the ordinary kernels.
"""

from __future__ import annotations

import weakref

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from specvlm.engine.cache import KVCache

STATIC_ATTENTION = "specvlm_static_gqa"


def gqa_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """softmax(q k^T * scaling + mask) v with key/value heads shared by groups of query heads.

    query (B, Hq, q, D); key, value (B, Hkv, C, D); attention_mask (B, 1, q, C) additive.
    Returns (B, q, Hq, D) like transformers' attention functions, and no weights.
    """
    b, hq, q, d = query.shape
    hkv, c = key.shape[1], key.shape[2]
    rep = hq // hkv
    scale = scaling if scaling is not None else d**-0.5
    grouped = query.reshape(b, hkv, rep * q, d)  # query heads h*rep..h*rep+rep-1 share kv head h
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scale  # (B, Hkv, rep*q, C)
    scores = scores.view(b, hkv, rep, q, c)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, None].float()  # (B, 1, 1, q, C)
    probs = scores.softmax(-1).to(value.dtype).view(b, hkv, rep * q, c)
    out = torch.matmul(probs, value).view(b, hq, q, d)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(STATIC_ATTENTION, gqa_attention)
AttentionMaskInterface.register(STATIC_ATTENTION, AttentionMaskInterface._global_mapping["sdpa"])


def static_mask(
    prefix: torch.Tensor,  # () long, slots before it are visible
    pattern: torch.Tensor,  # (q, width) bool, visibility of the slots [prefix, prefix + width)
    capacity: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive mask (1, 1, q, capacity) built on the device (capturable: no host values)."""
    q, width = pattern.shape
    slot = torch.arange(capacity, device=pattern.device)
    offset = slot - prefix
    in_block = (offset >= 0) & (offset < width)
    block = pattern[:, offset.clamp(0, width - 1)] & in_block  # (q, capacity)
    allowed = (slot < prefix) | block
    mask = torch.zeros(q, capacity, dtype=dtype, device=pattern.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def block_mask(prefix: int, pattern: torch.Tensor, kv_length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive mask (1, 1, q, kv_length) over the filled part of a cache: slots before ``prefix``
    visible, the ``width`` slots from ``prefix`` on as ``pattern`` (q x width bool) allows."""
    q, width = pattern.shape
    allowed = torch.zeros(q, kv_length, dtype=torch.bool)
    allowed[:, :prefix] = True
    allowed[:, prefix : prefix + width] = pattern.cpu()
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.to(device)[None, None]


class StaticStep:
    """One step shape of one model: q tokens written at ``cache.length``, a fixed pattern among them.

    Call with token ids (1, q), rotary positions (1, q) and the prefix length; returns logits
    (1, q, V). The cache must be a static KVCache (``KVCache(..., static=True)``).
    """

    def __init__(self, adapter, cache: KVCache, pattern: torch.Tensor, *, use_graphs: bool | None = None):
        if not cache.static:
            raise ValueError("static steps need a KVCache built with static=True")
        device = adapter.device
        self.adapter, self.cache = adapter, cache
        self.pattern = pattern.to(device)
        q = pattern.shape[0]
        self.tokens = torch.zeros(1, q, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, q, dtype=torch.long, device=device)
        self.prefix = torch.zeros((), dtype=torch.long, device=device)
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def _run(self) -> torch.Tensor:
        adapter, cache = self.adapter, self.cache
        mask = static_mask(self.prefix, self.pattern, cache.capacity, adapter.dtype)
        config = adapter.language_model.config
        original = config._attn_implementation
        config._attn_implementation = STATIC_ATTENTION
        cache.full_view = True
        try:
            return adapter.step(self.tokens, self.positions, cache, mask)
        finally:
            config._attn_implementation = original
            cache.full_view = False

    def _capture(self) -> None:
        cache = self.cache
        length = cache.length
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the capture, as CUDA graphs require
            for _ in range(2):
                self._run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._run()
        cache.rollback(length)  # the warm-ups wrote slots past the length, nothing was committed

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, prefix: int | torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.prefix.copy_(torch.as_tensor(prefix))
        if not self.use_graphs:
            return self._run()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits


def default_static(adapter, static: bool | None) -> bool:
    """Static (graph-captured) steps by default on one GPU; never under a multi-device map."""
    if static is not None:
        return static
    device_map = getattr(adapter.model, "hf_device_map", None)
    multi = device_map is not None and len(set(device_map.values())) > 1
    return adapter.device.type == "cuda" and not multi


# adapter -> {(role, static): Workspace}; weak, so dropping a model frees its caches and graphs
_REUSED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CAPACITY_STEP = 512


class Workspace:
    """A model's KV cache and its steps: the one way the engine runs new tokens.

    ``step(tokens, positions, prefix, pattern)`` writes q tokens at ``cache.length``; they see every
    slot before ``prefix`` and, among the ``width`` slots from ``prefix`` on, those ``pattern``
    (q x width bool) allows. Static workspaces run each pattern as a captured CUDA graph (on a GPU);
    dynamic ones run the ordinary kernels on the filled part of the cache only.
    """

    def __init__(self, adapter, capacity: int, *, static: bool = False, use_graphs: bool | None = None):
        self.adapter = adapter
        self.static = static
        self.use_graphs = use_graphs
        self.cache = adapter.new_cache(capacity, static=static)
        self._steps: dict[tuple, StaticStep] = {}

    @classmethod
    def reuse(cls, adapter, capacity: int, *, role: str, static: bool) -> "Workspace":
        """An emptied workspace of at least ``capacity`` for (adapter, role), kept between calls.

        Keeping it keeps the preallocated cache and the captured graphs, so only the first call
        of a size pays for allocation and capture. One generation at a time per adapter and role.
        """
        kept = _REUSED.setdefault(adapter, {})
        ws = kept.get((role, static))
        if ws is None or ws.cache.capacity < capacity:
            kept.pop((role, static), None)  # free the old buffers before allocating larger ones
            capacity = -(-capacity // _CAPACITY_STEP) * _CAPACITY_STEP
            # a proxy, not the adapter: the workspace must not keep its own key alive
            ws = kept[(role, static)] = cls(weakref.proxy(adapter), capacity, static=static)
        ws.cache.rollback(0)
        return ws

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, prefix: int, pattern: torch.Tensor) -> torch.Tensor:
        """Logits (1, q, V); the tokens' keys/values are written, not committed."""
        if self.static:
            key = (tuple(pattern.shape), pattern.cpu().numpy().tobytes())
            step = self._steps.get(key)
            if step is None:
                step = self._steps[key] = StaticStep(self.adapter, self.cache, pattern, use_graphs=self.use_graphs)
            return step(tokens, positions, prefix)
        cache = self.cache
        q = pattern.shape[0]
        if q == 1 and prefix == cache.length and bool(pattern.all()):
            mask = None  # a plain next-token step: the fast kernels' unmasked path
        else:
            mask = block_mask(prefix, pattern, cache.length + q, self.adapter.dtype, self.adapter.device)
        return self.adapter.step(tokens, positions, cache, mask)
