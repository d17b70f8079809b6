"""Target-only decoding through a model adapter: the baseline every speedup is measured against.

Prefill the whole prompt, then one token per forward pass on a preallocated KV cache. Greedy output
equals the model's own ``generate(do_sample=False)`` token for token (tested per family); sampling
draws from the processed target distribution with the caller's ``torch.Generator``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from specvlm.engine.distributed import agree
from specvlm.engine.sampling import SamplingConfig, next_token
from specvlm.engine.static import Workspace, default_compile, default_static
from specvlm.engine.stopping import StopRule
from specvlm.models.base import PreparedInputs, VideoLMAdapter


@dataclass
class DecodeStats:
    """What one generation call did and how long each phase took (seconds)."""

    new_tokens: int = 0
    target_passes: int = 0  # forward passes of the target after its prefill
    prefill_s: float = 0.0
    decode_s: float = 0.0
    warmup_s: float = 0.0  # of decode_s: compiling and capturing steps this call met first

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else float("nan")


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids; ends with the EOS id when decoding stopped on one
    stats: DecodeStats = field(default_factory=DecodeStats)
    text: str | None = None
    selection: Any = None  # pruning.Selection of the draft's video tokens, when pruned
    scores: torch.Tensor | None = None  # (n_video,) Stage I scores, when computed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Time spent in named phases, measured on the device's own clock (CUDA events on a GPU), so
    timing a phase never makes the host wait for the device. ``mark(name)`` starts a phase and ends
    the one before; ``seconds(name)`` (after the device has finished) sums a phase's spans."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def seconds(self, name: str) -> float:
        total = 0.0
        for (label, start), (_, end) in zip(self.marks, self.marks[1:]):
            if label == name:
                total += start.elapsed_time(end) / 1000 if self.cuda else end - start
        return total


def decode_target(
    adapter: VideoLMAdapter,
    prepared: PreparedInputs,
    *,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    generator: torch.Generator | None = None,
    stop_strings: tuple[str, ...] = (),
    static: bool | None = None,
    compile: bool | None = None,
    on_tokens: Callable[[list[int]], None] | None = None,
) -> GenerationResult:
    """Decode with the target alone; stops on an EOS id (kept in the output), max_new_tokens or a
    stop string (see stopping.StopRule). ``static`` and ``compile`` as in ``speculative_decode``:
    the baseline runs the same compiled, captured one-token step the speculative loop would.
    ``on_tokens`` receives each token as it is decoded (streaming; it may raise to stop)."""
    stop = StopRule(adapter.eos_token_ids, max_new_tokens, stop_strings, adapter.tokenizer)
    stats = DecodeStats()
    ws = Workspace.reuse(adapter, prepared.length + max_new_tokens, role="target",
                         static=default_static(adapter, static), compile=default_compile(adapter, compile))  # fmt: skip
    warm = ws.warmup_s
    cache = ws.cache
    device = adapter.device
    one = torch.ones(1, 1, dtype=torch.bool, device=device)

    _sync(device)
    t0 = time.perf_counter()
    logits = adapter.prefill(prepared, cache)  # (1, V)
    token = agree(next_token(logits, sampling, generator))  # (1,); rank 0's under tensor parallelism
    _sync(device)
    t1 = time.perf_counter()
    stats.prefill_s = t1 - t0

    tokens: list[int] = []
    position = prepared.next_position
    while True:
        token_id = int(token)
        tokens.append(token_id)
        if on_tokens is not None:
            on_tokens([token_id])
        if stop.done(tokens):
            break
        positions = torch.full((1, 1), position, dtype=torch.long, device=device)
        logits = ws.step(token.view(1, 1), positions, cache.length, one)
        cache.commit(1)
        stats.target_passes += 1
        position += 1
        token = agree(next_token(logits[:, -1], sampling, generator))
    _sync(device)
    stats.decode_s = time.perf_counter() - t1
    stats.warmup_s = ws.warmup_s - warm
    stats.new_tokens = len(tokens)
    return GenerationResult(token_ids=tokens, stats=stats)
