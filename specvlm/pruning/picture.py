"""A picture of a pruning selection: which video tokens the draft keeps, over the frames.

``render_selection`` writes one PNG (Pillow only): a header with the counts and a colour legend,
then up to ``max_frames`` panels, one per shown temporal index of the token grid, 4 panels per
row. Each panel is the frame resized to the token grid, ``cell`` pixels per token, so token
``(row, col)`` is the square ``[col*cell, (col+1)*cell) x [row*cell, (row+1)*cell)`` of its panel
(like the model, which resizes frames to its grid, the panel ignores the frame's aspect ratio).
Over it: the target's attention as a red heat map (when scores are given) and an outline, drawn
inside the cell, around every kept token: ``STAGE1_COLOR`` for tokens chosen by the score ranking,
``STAGE2_COLOR`` for the others.

Size rule, with ``T = layout.grid[0]``, ``s = min(max_frames, T)`` panels, ``c = min(s, COLUMNS)``
panel columns and ``r = ceil(s / c)`` panel rows, ``pw = grid[2] * cell``, ``ph = grid[1] * cell``:

    width  = max(MIN_WIDTH, c * pw + (c + 1) * PAD)
    height = HEADER + r * (LABEL + ph) + (r + 1) * PAD

``cell`` defaults to ``max(MIN_CELL, PANEL_SIDE // max(grid[1], grid[2]))``: panels about 384 px
on their long side whatever the video's resolution. ``picture_size`` computes the same numbers.

Frames: shown temporal indices are ``linspace(0, T - 1, s).round()``. Temporal index ``t`` covers
clip frames ``t * frames_per_step ...`` (Qwen merges 2 frames per step); the panel shows the first.
The clip should be the one the model saw (for Qwen possibly one frame short, which the model pads);
a clip with another frame count is mapped proportionally, frame ``floor(t * num_frames / T)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from specvlm.pruning.strategies import Selection, _check_scores
from specvlm.video import VideoClip

if TYPE_CHECKING:
    from specvlm.layout import VideoTokenLayout

__all__ = [
    "STAGE1_COLOR",
    "STAGE2_COLOR",
    "HEAT_COLOR",
    "picture_size",
    "render_selection",
]

STAGE1_COLOR: tuple[int, int, int] = (0, 255, 255)  # cyan: chosen by the score ranking
STAGE2_COLOR: tuple[int, int, int] = (255, 210, 0)  # amber: chosen by position
HEAT_COLOR: tuple[int, int, int] = (255, 0, 0)
HEAT_ALPHA = 0.6  # opacity of the hottest token
BACKGROUND: tuple[int, int, int] = (24, 24, 24)
TEXT_COLOR: tuple[int, int, int] = (235, 235, 235)

PAD = 6  # between panels and around the edge
HEADER = 36  # two text lines: counts, legend
LABEL = 14  # text line above each panel
COLUMNS = 4  # panels per row
MIN_WIDTH = 480  # room for the header text
PANEL_SIDE = 384  # default panel long side
MIN_CELL = 8


def _default_cell(grid: tuple[int, int, int]) -> int:
    return max(MIN_CELL, PANEL_SIDE // max(grid[1], grid[2], 1))


def picture_size(grid: tuple[int, int, int], *, max_frames: int = 8, cell: int | None = None) -> tuple[int, int]:
    """(width, height) in pixels of the picture of a token grid ``(frames, rows, cols)``."""
    t, rows, cols = grid
    cell = _default_cell(grid) if cell is None else cell
    s = min(max_frames, t)
    c = min(s, COLUMNS)
    r = math.ceil(s / c)
    width = max(MIN_WIDTH, c * cols * cell + (c + 1) * PAD)
    height = HEADER + r * (LABEL + rows * cell) + (r + 1) * PAD
    return width, height


def _pct(part: int, whole: int) -> str:
    value = 100.0 * part / whole if whole else 0.0
    return f"{value:.1f}".rstrip("0").rstrip(".") + "%"


def _clip_frame(clip: VideoClip, t: int, steps: int, per_step: int) -> int:
    num = clip.num_frames
    if (steps - 1) * per_step + 1 <= num <= steps * per_step:
        return t * per_step
    return min(t * num // steps, num - 1)


def _text_strip(font, text: str, width: int, height: int, color=TEXT_COLOR) -> Image.Image:
    # Drawn on its own strip so long text is clipped at the panel's edge, not over its neighbour.
    strip = Image.new("RGB", (width, height), BACKGROUND)
    ImageDraw.Draw(strip).text((1, 1), text, fill=color, font=font)
    return strip


def render_selection(
    clip: VideoClip,
    layout: "VideoTokenLayout",
    selection: Selection,
    scores: torch.Tensor | None,
    path: str | Path,
    *,
    max_frames: int = 8,
    cell: int | None = None,
    title: str | None = None,
) -> Path:
    """Write the picture of ``selection`` over ``clip`` to ``path`` (PNG); see the module docstring.

    ``scores``: (n,) attention mass per video token of ``layout`` for the heat map, or None.
    ``title`` (e.g. the strategy) prefixes the header's first line. Returns the path.
    """
    n = len(layout)
    frames, rows, cols = layout.grid
    if frames < 1 or rows < 1 or cols < 1:
        raise ValueError(f"layout grid must be at least 1x1x1, got {layout.grid}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if cell is not None and cell < 1:
        raise ValueError(f"cell must be >= 1 pixel, got {cell}")
    kept = selection.kept.detach().cpu().long()
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= n):
        raise ValueError(f"selection indexes video tokens outside the layout's {n}")
    cell = _default_cell(layout.grid) if cell is None else int(cell)
    width, height = picture_size(layout.grid, max_frames=max_frames, cell=cell)

    token_frame = layout.frame.cpu().numpy()
    token_row = layout.row.cpu().numpy()
    token_col = layout.col.cpu().numpy()
    # Per token: 0 not kept, 1 Stage I, 2 Stage II.
    status = np.zeros(n, dtype=np.int8)
    stage1 = selection.stage1.detach().cpu().numpy()
    status[kept.numpy()] = np.where(stage1, 1, 2)
    heat = None
    if scores is not None:
        s = _check_scores(scores, n).numpy()
        low, top = (s.min(), s.max()) if n else (0.0, 0.0)
        # From the coolest to the hottest token, so near-uniform attention still shows its contrast;
        # sqrt: attention is long-tailed, a linear map would leave all but a few tokens invisible.
        heat = HEAT_ALPHA * np.sqrt((s - low) / (top - low)) if top > low else np.zeros(n)

    font = ImageFont.load_default()
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    n1 = int((status == 1).sum())
    n2 = int((status == 2).sum())
    k = n1 + n2
    line = (
        f"kept {k}/{n} video tokens ({_pct(k, n)}): Stage I {n1} ({_pct(n1, n)}), "
        f"Stage II {n2} ({_pct(n2, n)})"
    )
    canvas.paste(_text_strip(font, f"{title}: {line}" if title else line, width - 2 * PAD, 16), (PAD, 2))
    draw = ImageDraw.Draw(canvas)
    legend = [(STAGE1_COLOR, "Stage I (attention rank)"), (STAGE2_COLOR, "Stage II (position)")]
    if heat is not None:
        legend.append((HEAT_COLOR, "target attention"))
    x, y = PAD, 20
    for color, text in legend:
        fill = color if color == HEAT_COLOR else None  # heat is a fill, selections are outlines
        draw.rectangle([x, y + 2, x + 9, y + 11], outline=color, width=2, fill=fill)
        draw.text((x + 14, y + 1), text, fill=TEXT_COLOR, font=font)
        x += 14 + int(draw.textlength(text, font=font)) + 14

    pw, ph = cols * cell, rows * cell
    shown = min(max_frames, frames)
    steps = np.linspace(0, frames - 1, shown).round().astype(np.int64)
    lw = max(1, cell // 8)
    for i, t in enumerate(steps.tolist()):
        x0 = PAD + (i % COLUMNS) * (pw + PAD)
        y0 = HEADER + PAD + (i // COLUMNS) * (LABEL + ph + PAD)
        f = _clip_frame(clip, t, frames, layout.frames_per_step)
        mine = np.flatnonzero(token_frame == t)
        kept_here = mine[status[mine] > 0]
        label = f"t={t} (frame {f}): kept {kept_here.size}"
        canvas.paste(_text_strip(font, label, pw, LABEL), (x0, y0))
        y0 += LABEL

        img = Image.fromarray(clip.frames[f]).resize((pw, ph), Image.Resampling.BILINEAR)
        if heat is not None and mine.size:
            alpha = np.zeros((rows, cols))
            alpha[token_row[mine], token_col[mine]] = heat[mine]
            alpha = np.repeat(np.repeat(alpha, cell, axis=0), cell, axis=1)[..., None]
            blended = np.asarray(img, dtype=np.float64) * (1 - alpha) + np.array(HEAT_COLOR) * alpha
            img = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
        panel = ImageDraw.Draw(img)
        for j in kept_here.tolist():
            cx, cy = int(token_col[j]) * cell, int(token_row[j]) * cell
            color = STAGE1_COLOR if status[j] == 1 else STAGE2_COLOR
            panel.rectangle([cx, cy, cx + cell - 1, cy + cell - 1], outline=color, width=lw)
        canvas.paste(img, (x0, y0))

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
