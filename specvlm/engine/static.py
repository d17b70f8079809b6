"""Static-shape decode steps: compiled, captured as CUDA graphs, near the bandwidth floor.

A one-token step of a 7B model is ~15 us of work per kernel and hundreds of kernels; launched from
Python it costs several times the time to read the weights. Here each step shape (q new tokens and a
visibility pattern among them) is built once per model and replayed:
- the language model's forward is compiled (``torch.compile``, static shapes) so norms, rotary
  embeddings and activations fuse, and each layer's q/k/v and gate/up projections run as one matmul
  each (models/projections.py); the compiled step is captured as a CUDA graph and replayed;
- the KV cache is written at slots ``length + arange(q)`` given by a device tensor, and attention is
  the split-prefix tree attention (engine/tree_attention.py) over the cache, whose filled length is a
  device tensor: it reads each key/value head once for all query heads and all q tokens, only up to
  the filled length, split over it for parallelism; nothing in a step depends on a host value;
- the mask: slots before ``prefix`` are visible; the ``width`` slots from ``prefix`` on follow a
  boolean ``pattern`` (q x width) held in the step's own buffer, so one graph serves every pattern of
  its shape (every level of a draft tree, padded to one q). The two travel on a FlexAttention
  BlockMask, which transformers hands through untouched to the attention entry installed when the
  model was loaded (specvlm/attention.py); the mask's own ``attend`` runs the tree attention.

Off the GPU the same static step runs eagerly (the tree attention's PyTorch form on the filled
slice), which is how the CPU tests check it against the ordinary path. Prefill stays on the
ordinary kernels.

Compilation is on by default on a GPU; ``compile=False`` (or ``SPECVLM_COMPILE=0``) turns it off,
leaving the graphs and the attention kernel. Inductor keeps its compiled code on disk
(``TORCHINDUCTOR_CACHE_DIR``, by default ``~/.cache/specvlm/inductor``), so a later process with the
same model shapes starts warm.
"""

from __future__ import annotations

import functools
import os
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import BlockMask

from specvlm.cache import KVCache
from specvlm.engine.tree_attention import pattern_buffer, tree_attention
from specvlm.models.projections import SHARED_MATMULS, fuse_projections

KV_BLOCK = KVCache.BLOCK


def static_attention(static: "StaticMask", query, key, value, scaling=None):
    """Attention of q new tokens over a whole static cache, under the prefix and pattern of the
    StaticMask ``static`` (its BlockMask's ``attend``: the attention entry installed at load,
    specvlm/attention.py, hands it the step's queries, keys and values).

    query (B, Hq, q, D); key, value (B, Hkv, C, D). The split-prefix tree attention
    (engine/tree_attention.py) folds the query heads sharing a key/value head into rows, so each KV
    head is read once for all of them, and its work follows the filled length, not the capacity;
    one kernel for every step (one token: 5-7 rows per KV head; a draft level: 56; verification:
    130-182). Measured against FlexAttention's decoding kernel (results/attention.md): 1.6-2.3x
    faster on draft levels from 4k to 128k, faster on one-token steps at 64k (7B 1.31 vs 1.61 ms,
    32B 5.10 vs 6.57 ms for all layers), within 6% at 16k. Returns (B, q, Hq, D) like transformers'
    attention functions, and no weights.
    """
    d = query.shape[-1]
    scale = scaling if scaling is not None else d**-0.5
    out = tree_attention(query, key, value, static.prefix, static.pattern, scale)
    return out.transpose(1, 2).contiguous(), None  # on a GPU written token-major: no copy here


class StaticMask:
    """The prefix/pattern mask of one step shape as a FlexAttention BlockMask over a whole capacity.

    ``prefix`` (a 0-d long) and ``pattern`` (q x width bool) are device buffers the caller fills;
    ``update()`` sets the number of KV blocks to visit from the prefix, on the device, so blocks past
    the filled part are never read.
    """

    def __init__(self, q: int, width: int, capacity: int, device, *, group: int = 1):
        if capacity % KV_BLOCK:
            raise ValueError(f"a static mask needs a capacity in whole blocks of {KV_BLOCK}, got {capacity}")
        self.width, self.blocks = width, capacity // KV_BLOCK
        self.prefix = torch.zeros((), dtype=torch.long, device=device)
        self.pattern = pattern_buffer(q, width, device)
        self.num_blocks = torch.zeros(1, 1, 1, dtype=torch.int32, device=device)
        indices = torch.arange(self.blocks, dtype=torch.int32, device=device).view(1, 1, 1, -1)
        prefix, pattern = self.prefix, self.pattern

        def mask_mod(b, h, q_idx, kv_idx):  # q_idx: row r * q + i of a folded group (see static_attention)
            offset = kv_idx - prefix
            inside = (offset >= 0) & (offset < width)
            return (kv_idx < prefix) | (inside & pattern[q_idx % q, offset.clamp(0, width - 1)])

        self.mask_mod = mask_mod
        self.block_mask = BlockMask.from_kv_blocks(
            self.num_blocks, indices, BLOCK_SIZE=(KV_BLOCK, KV_BLOCK), mask_mod=mask_mod,
            seq_lengths=(group * q, capacity), compute_q_blocks=False,
        )  # fmt: skip
        # the attention entry (specvlm/attention.py) runs a mask's own ``attend`` when it has one
        self.block_mask.attend = functools.partial(static_attention, self)

    def update(self) -> None:
        blocks = torch.div(self.prefix + (self.width + KV_BLOCK - 1), KV_BLOCK, rounding_mode="floor")
        self.num_blocks.copy_(blocks.clamp(max=self.blocks).view(1, 1, 1))

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """The same mask as an additive (1, 1, q, capacity) tensor (for checking)."""
        q = self.pattern.shape[0]
        kv = torch.arange(self.blocks * KV_BLOCK, device=self.prefix.device)
        allowed = self.mask_mod(0, 0, torch.arange(q, device=kv.device)[:, None], kv[None])
        return torch.zeros(allowed.shape, dtype=dtype, device=kv.device).masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def block_mask(prefix: int, pattern: torch.Tensor, kv_length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive mask (1, 1, q, kv_length) over the filled part of a cache: slots before ``prefix``
    visible, the ``width`` slots from ``prefix`` on as ``pattern`` (q x width bool) allows."""
    q, width = pattern.shape
    allowed = torch.zeros(q, kv_length, dtype=torch.bool)
    allowed[:, :prefix] = True
    end = min(prefix + width, kv_length)
    allowed[:, prefix:end] = pattern.cpu()[:, : end - prefix]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.to(device)[None, None]


@contextmanager
def _static_run(cache: KVCache):
    """Attention sees the cache's whole capacity (under the step's mask) within the block."""
    cache.full_view = True
    try:
        yield
    finally:
        cache.full_view = False


def default_compile(adapter, compile: bool | None) -> bool:
    """Compile static steps on a GPU unless told not to (argument, the mode chosen at load, or
    SPECVLM_COMPILE=0)."""
    if compile is not None:
        return compile
    if adapter.step_mode is not None:
        return adapter.step_mode[1]
    return adapter.device.type == "cuda" and os.environ.get("SPECVLM_COMPILE", "1") != "0"


def choose_step_mode(adapter, compile: bool | None = None) -> tuple[bool, bool]:
    """The model's step mode, chosen once (when a pair is loaded) and kept on the adapter: eager on a
    CPU, compiled and captured on one GPU, eager under a multi-device map or tensor parallelism.
    Sets the compiler up when it will be used."""
    adapter.step_mode = None
    static = default_static(adapter, None)
    mode = (static, static and default_compile(adapter, compile))
    if mode[1]:
        _prepare_compiler()
    adapter.step_mode = mode
    return mode


def _prepare_compiler() -> None:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "specvlm" / "inductor"))
    config = torch._dynamo.config
    # one compiled graph per (model, step shape, capacity): far more than dynamo's default of 8,
    # past which it would silently run the unfused reference attention
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 256))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4096)


def compiled_language_model(adapter):
    """The adapter's compiled language model (kept on the adapter: dropping the model drops it)."""
    if adapter.compiled_language_model is None:
        _prepare_compiler()
        fuse_projections(adapter.language_model)  # q/k/v and gate/up as one matmul each, once compiled
        adapter.compiled_language_model = torch.compile(
            adapter.language_model, dynamic=False, options={"post_grad_custom_pre_pass": SHARED_MATMULS}
        )
    return adapter.compiled_language_model


class StaticStep:
    """One step shape of one model: q tokens written at ``cache.length``, a q x width pattern among
    the ``width`` slots from the prefix on.

    Call with token ids (1, q), rotary positions (1, q), the prefix length and the pattern, all
    device tensors (or ints), so nothing waits for the device; returns logits (1, q, V) in a buffer
    the next call overwrites. The cache must be a static KVCache (``KVCache(..., static=True)``).
    """

    def __init__(self, adapter, cache: KVCache, q: int, width: int, *, use_graphs: bool | None = None,
                 compile: bool = False, capture_stream: "torch.cuda.Stream | None" = None):  # fmt: skip
        if not cache.static:
            raise ValueError("static steps need a KVCache built with static=True")
        device = adapter.device
        self.adapter, self.cache, self.q = adapter, cache, q
        config = adapter.language_model.config
        group = config.num_attention_heads // config.num_key_value_heads
        self.mask = StaticMask(q, width, cache.capacity, device, group=group)
        self.tokens = torch.zeros(1, q, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, q, dtype=torch.long, device=device)
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        self.language_model = compiled_language_model(adapter) if compile else None
        self.capture_stream = capture_stream
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.warmup_s = 0.0  # compiling and capturing, paid once

    def _run(self) -> torch.Tensor:
        self.mask.update()
        with _static_run(self.cache):
            return self.adapter.step(
                self.tokens, self.positions, self.cache, self.mask.block_mask, language_model=self.language_model
            )

    def _capture(self) -> None:
        cache = self.cache
        length = cache.length
        t0 = time.perf_counter()
        # A graph keeps the cuBLAS workspace of the stream it was captured on (PyTorch keeps one per
        # stream), and replays over it wherever it runs: graphs that may run side by side (the
        # target's verification and an overlapped draft's guess) must be captured on different
        # streams, or their split-K matmuls share scratch memory. Each workspace has its own.
        stream = self.capture_stream or torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up (and compilation) off the capture, as CUDA graphs require
            for _ in range(2):
                self._run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream):
            self.logits = self._run()
        cache.rollback(length)  # the warm-ups wrote slots past the length, nothing was committed
        torch.cuda.synchronize()
        self.warmup_s += time.perf_counter() - t0

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, prefix, pattern: torch.Tensor, *,
                 inline: bool = False) -> torch.Tensor:  # fmt: skip
        """``inline``: run the (compiled) step itself, not its graph: the caller is capturing a graph
        of several steps (Workspace.captured) or warming one up."""
        self.cache.check_room(self.q)
        self.tokens.copy_(tokens, non_blocking=True)
        self.positions.copy_(positions, non_blocking=True)
        if isinstance(prefix, torch.Tensor):
            self.mask.prefix.copy_(prefix, non_blocking=True)
        else:
            self.mask.prefix.fill_(prefix)
        self.mask.pattern.copy_(pattern, non_blocking=True)
        if inline:
            return self._run()
        if not self.use_graphs:
            if self.language_model is not None and self.logits is None:
                t0 = time.perf_counter()
                self.logits = self._run()  # the first call compiles
                self.warmup_s += time.perf_counter() - t0
                return self.logits
            return self._run()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits


def default_static(adapter, static: bool | None) -> bool:
    """Static (graph-captured) steps by default on one GPU; not under a multi-device map, and not
    (yet: untested on GPUs) for a tensor-parallel model."""
    if static is not None:
        return static
    if adapter.step_mode is not None:
        return adapter.step_mode[0]
    device_map = getattr(adapter.model, "hf_device_map", None)
    multi = device_map is not None and len(set(device_map.values())) > 1
    return adapter.device.type == "cuda" and not multi and not adapter.tensor_parallel


def bucket_capacity(n: int) -> int:
    """Capacities come in few sizes (multiples of 512 up to 4096, then four per doubling), so a new
    prompt length rarely needs newly compiled steps."""
    if n <= 4096:
        return -(-n // 512) * 512
    step = 1 << (n.bit_length() - 3)  # a quarter of the power of two below n
    return -(-n // step) * step


class Workspace:
    """A model's KV cache and its steps: the one way the engine runs new tokens.

    ``step(tokens, positions, prefix, pattern)`` writes q tokens at ``cache.length``; they see every
    slot before ``prefix`` and, among the ``width`` slots from ``prefix`` on, those ``pattern``
    (q x width bool) allows. Static workspaces run one compiled, captured step per (q, width) shape
    (on a GPU); dynamic ones run the ordinary kernels on the filled part of the cache only.
    """

    MAX_CAPTURED = 8  # graphs kept by ``captured`` (one per key: tree, pending tokens, sampling rule)

    def __init__(self, adapter, capacity: int, *, static: bool = False, use_graphs: bool | None = None,
                 compile: bool = False):  # fmt: skip
        self.adapter = adapter
        self.static = static
        self.compile = compile and static
        self.use_graphs = use_graphs
        self.cache = adapter.new_cache(capacity, static=static)
        self._steps: dict[tuple[int, int], StaticStep] = {}
        # its steps' graphs are captured on a stream of its own (see StaticStep._capture)
        self.capture_stream = torch.cuda.Stream(adapter.device) if static and adapter.device.type == "cuda" else None
        self._captured: OrderedDict[object, Captured] = OrderedDict()  # least recently used first
        self.buffers: dict[object, object] = {}  # inputs of the captured graphs, filled before each replay
        self._evicted_warmup_s = 0.0
        self.inline = False  # steps run inline (inside a graph being captured by ``captured``)

    @classmethod
    def reuse(cls, adapter, capacity: int, *, role: str, static: bool, compile: bool = False) -> "Workspace":
        """An emptied workspace of at least ``capacity`` for (adapter, role), kept between calls.

        Keeping it keeps the preallocated cache and the compiled, captured steps, so only the first
        call of a size pays for allocation, compilation and capture. One generation at a time per
        adapter and role.
        """
        kept = adapter.workspaces  # owned by the adapter: dropping the model frees its caches and graphs
        key = (role, static, compile and static)
        ws = kept.get(key)
        if ws is None or ws.cache.capacity < capacity:
            kept.pop(key, None)  # free the old buffers before allocating larger ones
            # a proxy, not the adapter: the workspace must not keep its own key alive
            ws = kept[key] = cls(weakref.proxy(adapter), bucket_capacity(capacity), static=static, compile=compile)
        ws.cache.rollback(0)
        return ws

    @property
    def warmup_s(self) -> float:
        """Seconds spent so far compiling and capturing this workspace's steps and graphs."""
        steps = sum(step.warmup_s for step in self._steps.values())
        return steps + sum(c.warmup_s for c in self._captured.values()) + self._evicted_warmup_s

    @property
    def graphs(self) -> bool:
        """Whether this workspace replays captured CUDA graphs."""
        return self.static and self.capture_stream is not None and self.use_graphs is not False

    def captured(self, key, run):
        """``run()``'s outputs, from one CUDA graph of all its device work (several steps, say),
        captured at the first call for ``key`` and replayed after.

        ``run`` may read the host only for what is fixed for ``key``; anything else it reads must sit
        in device buffers that live as long as the workspace (the caller fills them before the
        call); its steps run inline in the graph. The cache's length moves as ``run`` moved it when
        it was captured. The first call runs ``run`` twice uncaptured (compiling its steps), then
        captures it, on the workspace's capture stream.
        """
        cache = self.cache
        start = cache.length
        entry = self._captured.get(key)
        if entry is None:
            while len(self._captured) >= self.MAX_CAPTURED:  # each holds a memory pool: keep a bounded few
                old, evicted = self._captured.popitem(last=False)
                self.buffers.pop(old, None)
                self._evicted_warmup_s += evicted.warmup_s
            entry = self._captured[key] = Captured(self, run)
        self._captured.move_to_end(key)
        cache.check_room(entry.moved + entry.room)
        entry.graph.replay()
        cache.mirror(start + entry.moved)
        return entry.outputs

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, prefix: int, pattern: torch.Tensor) -> torch.Tensor:
        """Logits (1, q, V); the tokens' keys/values are written, not committed."""
        if self.static:
            key = tuple(pattern.shape)
            step = self._steps.get(key)
            if step is None:
                step = self._steps[key] = StaticStep(
                    self.adapter, self.cache, *key, use_graphs=self.use_graphs, compile=self.compile,
                    capture_stream=self.capture_stream,
                )
            return step(tokens, positions, prefix, pattern, inline=self.inline)
        cache = self.cache
        q = pattern.shape[0]
        if q == 1 and prefix == cache.length and bool(pattern.all()):
            mask = None  # a plain next-token step: the fast kernels' unmasked path
        else:
            mask = block_mask(prefix, pattern, cache.length + q, self.adapter.dtype, self.adapter.device)
        return self.adapter.step(tokens, positions, cache, mask)


class Captured:
    """One ``Workspace.captured`` graph: its outputs, how far it moves the cache's length, and the
    room past that length its steps write into."""

    def __init__(self, ws: Workspace, run):
        cache = ws.cache
        start = cache.length
        t0 = time.perf_counter()
        stream = ws.capture_stream
        stream.wait_stream(torch.cuda.current_stream())
        ws.inline = True
        try:
            with torch.cuda.stream(stream):  # warm-up (and compilation) off the capture
                for _ in range(2):
                    run()
                    moved = cache.length - start
                    cache.rollback(start)
            self.moved = moved
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=stream):
                self.outputs = run()
        finally:
            ws.inline = False
            cache.mirror(start)  # the capture moved the host's length only
        cache.rollback(start)
        torch.cuda.synchronize()
        self.room = max((step.q for step in ws._steps.values()), default=0)
        self.warmup_s = time.perf_counter() - t0
