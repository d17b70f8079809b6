"""Where a prompt's video tokens sit: in the sequence, and in the video (frame, row, col).

Shared by the models (which build layouts), the pruning strategies (which choose among the tokens)
and the engine; it depends on none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class VideoTokenLayout:
    """Where the droppable video tokens sit in a sequence and where each one sits in the video.

    Tokens are listed in sequence order. ``frame`` is the temporal index of the token grid: a frame
    for LLaVA-OneVision, a temporal patch of ``frames_per_step`` consecutive input frames for Qwen.
    """

    seq_index: torch.Tensor  # (n,) long, position of each video token in its sequence
    frame: torch.Tensor  # (n,) long
    row: torch.Tensor  # (n,) long
    col: torch.Tensor  # (n,) long
    grid: tuple[int, int, int]  # (frames, rows, cols) of the token grid of the full video
    frames_per_step: int = 1

    def __len__(self) -> int:
        return int(self.seq_index.numel())

    def subset(self, keep: torch.Tensor, seq_index: torch.Tensor) -> "VideoTokenLayout":
        return replace(
            self,
            seq_index=seq_index,
            frame=self.frame[keep],
            row=self.row[keep],
            col=self.col[keep],
        )


def grid_layout(seq_index: torch.Tensor, grid: tuple[int, int, int], frames_per_step: int = 1) -> VideoTokenLayout:
    """Layout of tokens that fill a (frames, rows, cols) grid in frame-major, row-major order."""
    t, h, w = grid
    n = t * h * w
    if seq_index.numel() != n:
        raise ValueError(f"expected {n} video tokens for a {t}x{h}x{w} grid, found {seq_index.numel()}")
    k = torch.arange(n)
    return VideoTokenLayout(
        seq_index=seq_index.cpu(),
        frame=k // (h * w),
        row=(k % (h * w)) // w,
        col=k % w,
        grid=(t, h, w),
        frames_per_step=frames_per_step,
    )
