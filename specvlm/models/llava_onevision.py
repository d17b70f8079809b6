"""LLaVA-OneVision adapter.

Video tokens: every frame goes through the vision tower, is projected and pooled 2x2 (bilinear) to a
``ceil(n/2) x ceil(n/2)`` grid (196 tokens for the released 384px / patch-14 models), frames laid out
one after another, frame-major then row-major. One extra token closes the video: the model's learned
``image_newline`` embedding. It also carries the video token id but is not a spatial token: it is
never dropped and is not part of the layout.

Positions are 1D (``arange``). Dropped tokens leave gaps by default; ``reindex=True`` renumbers the
pruned sequence 0..L'-1, as the reference implementation does.
"""

from __future__ import annotations

import math

import torch

from specvlm.layout import VideoTokenLayout, grid_layout
from specvlm.models.base import PreparedInputs, VideoLMAdapter


def pooled_side(config) -> int:
    """Tokens per side of a frame's grid after the 2x2 bilinear pooling."""
    vision = config.vision_config
    return math.ceil((vision.image_size // vision.patch_size) / 2)


def video_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, frames * grid + 1, D): projected, pooled frame features and the closing newline embedding.

    transformers >= 5.23 appends the newline in ``get_video_features``, older releases in forward.
    """
    config = model.config
    out = model.model.get_video_features(
        pixel_values,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        return_dict=True,
    )
    pooled = out.pooler_output if hasattr(out, "pooler_output") else out  # (B, tokens, D)
    if pooled.shape[1] == pixel_values.shape[1] * pooled_side(config) ** 2:
        newline = model.model.image_newline.to(pooled.device, pooled.dtype)
        pooled = torch.cat([pooled, newline.expand(pooled.shape[0], 1, -1)], dim=1)
    return pooled


class LlavaOnevisionAdapter(VideoLMAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)

    def video_features(self, features):
        pixel_values = features["pixel_values_videos"].to(self.model.device, self.model.dtype)
        return video_features(self.model, pixel_values).flatten(0, 1), None

    def positions(self, features, input_ids):
        n = input_ids.shape[1]
        return torch.arange(n, device=input_ids.device)[None], n

    def video_layout(self, features, input_ids) -> VideoTokenLayout:
        seq_index = (input_ids[0] == self.video_token_id).nonzero().flatten()
        n_frames = int(features["pixel_values_videos"].shape[1])
        side = pooled_side(self.config)
        # The last video-token slot is the trailing newline embedding, not a grid token.
        return grid_layout(seq_index[:-1], (n_frames, side, side))

    def reindexed_positions(self, full: PreparedInputs, pruned: PreparedInputs):
        n = pruned.length
        return torch.arange(n, device=pruned.position_ids.device)[None], n
