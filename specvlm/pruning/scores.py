"""Stage I scores: how much attention the question pays to each video token, on the fast kernels.

The target's prefill runs in two parts. The part up to the last video token runs as usual (SDPA /
flash). The short part after it (the question and the assistant header) runs with the attention entry
(specvlm/attention.py) showing each layer's queries and keys to a sink first: per layer, it computes
the softmax attention of those text queries (post-RoPE, as the layer sees them) over every cached
key and adds up the columns of the video tokens; the model's own attention then gives the output. Nothing of size
video x video is ever formed; the extra work is (text tokens x all tokens) per layer.

score[j] = mean over layers, heads and text query positions of softmax(q k^T / sqrt(d))[.., j]

Equal, to float tolerance, to reading the same numbers off an eager run's attention matrices
(tested on every family).
"""

from __future__ import annotations

import contextlib

import torch

from specvlm.attention import scoring


class _Sink:
    def __init__(self, video_slots: torch.Tensor):
        self.video_slots = video_slots  # (n,) cache slots of the video tokens
        self.sums: torch.Tensor | None = None  # (n,) float32
        self.layers = 0
        self.rows = 0  # heads x query positions of one layer

    def add(self, query: torch.Tensor, key: torch.Tensor, scaling: float | None) -> None:
        # query (1, Hq, q, D) post-RoPE; key (1, Hkv, kv, D): every cached key, this chunk's included
        _, hq, q, d = query.shape
        hkv, kv = key.shape[1], key.shape[2]
        scale = scaling if scaling is not None else d**-0.5
        k = key.float().repeat_interleave(hq // hkv, dim=1)  # (1, Hq, kv, D)
        logits = torch.matmul(query.float(), k.transpose(-1, -2)) * scale  # (1, Hq, q, kv)
        # causal: query i sits at slot kv - q + i and sees slots <= that
        slot = torch.arange(kv, device=logits.device)
        limit = kv - q + torch.arange(q, device=logits.device)
        logits = logits.masked_fill(slot[None, :] > limit[:, None], float("-inf"))
        probs = logits.softmax(-1)
        video = probs[..., self.video_slots.to(probs.device)].sum(dim=(0, 1, 2))  # (n,)
        self.sums = video if self.sums is None else self.sums + video.to(self.sums.device)
        self.layers += 1
        self.rows = hq * q

    def scores(self) -> torch.Tensor:
        if self.sums is None:
            raise RuntimeError("no attention was captured: the question part of the prompt is empty")
        return self.sums / (self.layers * self.rows)


@contextlib.contextmanager
def capturing_scores(language_model, video_slots: torch.Tensor):
    """Within the block, the language model's attention also accumulates Stage I scores (through
    the attention entry installed at load, specvlm/attention.py).

    Yields the sink; ``sink.scores()`` gives (n_video,) float32 scores afterwards.
    """
    with scoring(_Sink(video_slots)) as sink:
        yield sink
