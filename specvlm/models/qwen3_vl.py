"""Qwen3-VL adapter.

Like Qwen2.5-VL (temporal patches of 2 frames, 2x2 spatial merge, M-RoPE from ``get_rope_index``),
with two differences handled here:
- the processor writes each temporal patch as its own block, ``<t seconds><|vision_start|>`` +
  tokens + ``<|vision_end|>``, so the video tokens are not contiguous in the sequence (the layout's
  ``seq_index`` says where each one is; the timestamps come from the clip's real frame times);
- "deepstack": features from intermediate vision layers are added to the hidden states of the first
  decoder layers at the visual positions. They travel with their tokens: dropping a video token drops
  its deepstack rows, and a prefill in chunks passes each chunk its own rows.
"""

from __future__ import annotations

import torch

from specvlm.models.base import PreparedInputs
from specvlm.models.qwen2_5_vl import Qwen2_5_VLAdapter


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    family = "qwen3_vl"
    model_types = ("qwen3_vl",)

    def rope_kwargs(self, features) -> dict:
        return {}

    def attach_extras(self, prepared: PreparedInputs, is_video: torch.Tensor, extras) -> PreparedInputs:
        deepstack = getattr(extras, "deepstack_features", None)
        if deepstack:
            prepared.visual_mask = is_video[None]
            # per layer: a tuple of per-video tensors (transformers >= 5.23) or one tensor (older)
            prepared.deepstack = [
                feat if isinstance(feat, torch.Tensor) else torch.cat(list(feat), dim=0) for feat in deepstack
            ]
        return prepared

    def chunk_kwargs(self, prepared: PreparedInputs, start: int, end: int) -> dict:
        if prepared.visual_mask is None:
            return {}
        mask = prepared.visual_mask[:, start:end]
        first = int(prepared.visual_mask[0, :start].sum())
        n = int(mask.sum())
        if n == 0:
            return {}
        return {
            "visual_pos_masks": mask,
            "deepstack_visual_embeds": [d[first : first + n] for d in prepared.deepstack],
        }
