"""Qwen2.5-VL adapter (Qwen2-VL too: the same video path and M-RoPE).

Video tokens: the processor cuts the clip into temporal patches of ``temporal_patch_size`` (2)
frames and 14px spatial patches; the vision tower merges 2x2 neighbouring patches into one token.
A video of grid (t, H, W) patches therefore becomes ``t * (H/2) * (W/2)`` tokens, temporal-patch
major then row-major: the layout's ``frame`` is the temporal-patch index, ``frames_per_step`` = 2.

Positions are M-RoPE: (temporal, height, width) for video tokens, equal triples for text, from the
model's own ``get_rope_index`` (with ``mm_token_type_ids`` from the processor, or rebuilt from the
token ids when absent, so it never falls back to 1D). Generated tokens continue from
``max(position) + 1``. Dropped tokens keep their positions by default; ``reindex=True`` keeps the kept
video tokens' layout and renumbers the rest as ``get_rope_index`` would for what is left (see
``close_gaps``): text after a video starts after the kept tokens' spatial extent, so gaps left by
dropped tokens close.
"""

from __future__ import annotations

import numpy as np
import torch

from specvlm.layout import VideoTokenLayout, grid_layout
from specvlm.models.base import PreparedInputs, VideoLMAdapter
from specvlm.video import VideoClip


class Qwen2_5_VLAdapter(VideoLMAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl", "qwen2_vl")
    max_aspect_ratio = 200  # the processor's smart_resize refuses more

    def processor_kwargs(self, clip: VideoClip) -> dict:
        kwargs = super().processor_kwargs(clip)
        metadata = video_metadata(clip)
        if metadata is not None:
            kwargs["video_metadata"] = [metadata]
        return kwargs

    def video_features(self, features):
        visual = self.model.model.visual
        out = self.model.model.get_video_features(
            features["pixel_values_videos"].to(visual.device),
            features["video_grid_thw"].to(visual.device),
            return_dict=True,
        )
        pooled = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.cat(list(pooled), dim=0), out

    def mm_token_type_ids(self, features, input_ids: torch.Tensor) -> torch.Tensor:
        if "mm_token_type_ids" in features:
            return features["mm_token_type_ids"].to(input_ids.device)
        types = torch.zeros_like(input_ids, dtype=torch.int)
        types[input_ids == self.video_token_id] = 2
        image_token_id = getattr(self.config, "image_token_id", None)
        if image_token_id is not None:
            types[input_ids == image_token_id] = 1
        return types

    def rope_kwargs(self, features) -> dict:
        kwargs = {}
        if features.get("second_per_grid_ts") is not None:
            kwargs["second_per_grid_ts"] = torch.as_tensor(features["second_per_grid_ts"])
        return kwargs

    def positions(self, features, input_ids):
        attention_mask = features.get("attention_mask")
        position_ids, deltas = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=self.mm_token_type_ids(features, input_ids),
            video_grid_thw=None if features.get("video_grid_thw") is None else features["video_grid_thw"].to(input_ids.device),
            attention_mask=None if attention_mask is None else attention_mask.to(input_ids.device),
            **self.rope_kwargs(features),
        )
        return position_ids, int(position_ids.max()) + 1

    def _merge_size(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    def _temporal_patch(self) -> int:
        return int(getattr(self.config.vision_config, "temporal_patch_size", 2))

    def video_layout(self, features, input_ids) -> VideoTokenLayout:
        grid_thw = features["video_grid_thw"]
        if grid_thw.shape[0] != 1:
            raise ValueError(f"one video per prompt is supported, got {grid_thw.shape[0]}")
        t, h, w = (int(v) for v in grid_thw[0])
        m = self._merge_size()
        seq_index = (input_ids[0] == self.video_token_id).nonzero().flatten()
        return grid_layout(seq_index, (t, h // m, w // m), frames_per_step=self._temporal_patch())

    def position_tensor(self, positions):
        return positions[None].expand(3, -1, -1)

    def reindexed_positions(self, full: PreparedInputs, pruned: PreparedInputs):
        is_video = torch.zeros(pruned.length, dtype=torch.bool)
        is_video[pruned.video.seq_index] = True
        positions = close_gaps(pruned.position_ids, is_video)
        return positions, int(positions.max()) + 1


def close_gaps(position_ids: torch.Tensor, is_video: torch.Tensor) -> torch.Tensor:
    """M-RoPE positions (3, 1, L) of a pruned sequence with the gaps left by dropped tokens closed.

    The rule of ``get_rope_index``, applied to what is left: a text run continues right after the text
    before it, or, after a video run that starts at s, at s + (the larger spatial side of the kept
    tokens); a video run starts right after the text before it and keeps its internal layout. With
    every token kept this returns the positions unchanged.
    """
    out = position_ids.clone()
    flags = is_video.tolist()
    old_text_end = new_text_end = -1  # last text position so far, before and after renumbering
    after_video = None  # where a text run that follows a video run starts
    start = 0
    while start < len(flags):
        end = start
        while end < len(flags) and flags[end] == flags[start]:
            end += 1
        run = position_ids[:, :, start:end]
        if flags[start]:
            origin, new_origin = old_text_end + 1, new_text_end + 1
            out[:, :, start:end] = run - (origin - new_origin)
            after_video = new_origin + int((run[1:] - origin).max()) + 1
        else:
            first = after_video if after_video is not None else new_text_end + 1
            out[:, :, start:end] = first + torch.arange(end - start).view(1, 1, -1)
            old_text_end, new_text_end = int(run[0, 0, -1]), first + end - start - 1
            after_video = None
        start = end
    return out


def video_metadata(clip: VideoClip):
    """transformers' VideoMetadata for a clip with timing, so the processor gets the real frame rate."""
    from transformers.video_utils import VideoMetadata

    if clip.source_fps is None or not clip.source_fps > 0:
        return None
    if clip.indices is not None:
        indices = np.asarray(clip.indices, dtype=int)
    else:
        indices = np.round(np.asarray(clip.timestamps) * clip.source_fps).astype(int)
    # Uniform sampling reaches the last frame, so this is the source's frame count.
    total = int(indices.max()) + 1
    return VideoMetadata(
        total_num_frames=int(total),
        fps=float(clip.source_fps),
        width=clip.width,
        height=clip.height,
        duration=float(total / clip.source_fps),
        frames_indices=[int(i) for i in indices],
    )
