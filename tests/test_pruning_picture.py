"""Tests for specvlm.pruning.picture: render a selection over a real encoded clip, read the PNG back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from specvlm.layout import grid_layout
from specvlm.pruning import PruneConfig, render_selection, select
from specvlm.pruning import picture
from specvlm.pruning.picture import HEADER, LABEL, PAD, STAGE1_COLOR, STAGE2_COLOR, picture_size
from specvlm.video import load_video, write_video

SIZE = 64
GRID = (8, 4, 4)
CELL = 16


def grey(i: int) -> int:
    return 30 + 25 * i  # frame i's grey level; far from any outline colour


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = np.stack([np.full((SIZE, SIZE, 3), grey(i), np.uint8) for i in range(8)])
    path = write_video(tmp_path_factory.mktemp("clip") / "grey.mp4", frames, fps=8)
    return load_video(path)


def scores_for(n: int) -> torch.Tensor:
    scores = torch.full((n,), 0.01)
    scores[[5, 21, 42, 60]] = torch.tensor([3.0, 2.0, 1.0, 1.0])  # heavy head
    return scores


def cell_origin(grid, panel: int, row: int, col: int, cell: int) -> tuple[int, int]:
    """Top-left pixel of token (row, col) in the given panel, from the documented layout."""
    pw, ph = grid[2] * cell, grid[1] * cell
    x = PAD + (panel % picture.COLUMNS) * (pw + PAD) + col * cell
    y = HEADER + PAD + (panel // picture.COLUMNS) * (LABEL + ph + PAD) + LABEL + row * cell
    return x, y


def border(img: Image.Image, x: int, y: int, cell: int, width: int) -> list[tuple[int, int, int]]:
    """Every pixel of the outline band (``width`` px inside the cell's edge)."""
    px = img.load()
    return [
        px[x + i, y + j]
        for i in range(cell)
        for j in range(cell)
        if min(i, j, cell - 1 - i, cell - 1 - j) < width
    ]


def test_picture_size_rule():
    assert picture_size(GRID, max_frames=8, cell=16) == (480, 36 + 2 * (14 + 64) + 3 * 6)
    assert picture_size(GRID, max_frames=8) == (4 * 384 + 5 * 6, 36 + 2 * (14 + 384) + 3 * 6)  # cell 96
    assert picture_size((64, 14, 14), max_frames=8) == (4 * 378 + 5 * 6, 36 + 2 * (14 + 378) + 3 * 6)  # cell 27
    assert picture_size((2, 3, 5), max_frames=8, cell=10) == (480, 36 + 14 + 30 + 2 * 6)


def test_png_has_the_documented_size_and_outlines(clip, tmp_path):
    layout = grid_layout(torch.arange(10, 10 + 128), GRID)
    scores = scores_for(len(layout))
    sel = select(PruneConfig(ratio=0.75, stage1_mass=0.7), layout, scores)
    first = sel.kept[sel.stage1].tolist()
    second = sel.kept[~sel.stage1].tolist()
    assert first == [5, 21, 42] and second  # 70% of the mass (8.24) needs three tokens
    out = render_selection(clip, layout, sel, scores, tmp_path / "sub" / "sel.png", cell=CELL, title="specvlm")
    assert out == tmp_path / "sub" / "sel.png"
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == picture_size(GRID, max_frames=8, cell=CELL) == (480, 210)
        img = img.convert("RGB")

    width = max(1, CELL // 8)

    def origin(token: int) -> tuple[int, int]:
        f, r, c = (int(layout.frame[token]), int(layout.row[token]), int(layout.col[token]))
        return cell_origin(GRID, f, r, c, CELL)  # 8 frames, all shown: panel == frame

    for token in first:
        band = border(img, *origin(token), CELL, width)
        assert set(band) == {STAGE1_COLOR}, token
    for token in second:
        assert set(border(img, *origin(token), CELL, width)) == {STAGE2_COLOR}, token
    # The inside of a kept cell is video (with heat), not outline.
    x, y = origin(first[0])
    assert img.getpixel((x + CELL // 2, y + CELL // 2)) not in (STAGE1_COLOR, STAGE2_COLOR)
    # A token that is not kept has no outline at all.
    dropped = next(t for t in range(len(layout)) if t not in set(sel.kept.tolist()))
    band = set(border(img, *origin(dropped), CELL, width))
    assert STAGE1_COLOR not in band and STAGE2_COLOR not in band
    # Heat: the hottest token (5, Stage I) is red-tinted, a cold one stays grey.
    r, g, b = img.getpixel((x + CELL // 2, y + CELL // 2))
    assert r > g + 60 and r > b + 60
    x, y = origin(dropped)
    r, g, b = img.getpixel((x + CELL // 2, y + CELL // 2))
    assert abs(r - g) < 20 and abs(r - b) < 20


def test_temporal_steps_show_their_first_frame(clip, tmp_path):
    # Qwen-like: 2 frames per temporal step, 4 steps over the 8 frames; nothing kept, no heat.
    grid = (4, 4, 4)
    layout = grid_layout(torch.arange(64), grid, frames_per_step=2)
    sel = select(PruneConfig("uniform", ratio=1.0), layout)
    out = render_selection(clip, layout, sel, None, tmp_path / "qwen.png", max_frames=3, cell=CELL)
    with Image.open(out) as img:
        assert img.size == picture_size(grid, max_frames=3, cell=CELL)
        img = img.convert("RGB")
    # Shown steps: linspace(0, 3, 3).round() = 0, 2 (1.5 rounds to even), 3 -> frames 0, 4, 6.
    for panel, frame in enumerate((0, 4, 6)):
        x, y = cell_origin(grid, panel, 1, 1, CELL)
        value = np.asarray(img.getpixel((x + CELL // 2, y + CELL // 2)), dtype=float)
        assert np.abs(value - grey(frame)).max() < 8, (panel, frame, value)


def test_default_cell_and_few_frames(clip, tmp_path):
    layout = grid_layout(torch.arange(128), GRID)
    sel = select(PruneConfig("window-middle", ratio=0.5), layout)
    out = render_selection(clip, layout, sel, None, tmp_path / "d.png", max_frames=2)
    with Image.open(out) as img:
        assert img.size == picture_size(GRID, max_frames=2) == (2 * 384 + 3 * 6, 36 + 14 + 384 + 2 * 6)


def test_errors(clip, tmp_path):
    layout = grid_layout(torch.arange(128), GRID)
    sel = select(PruneConfig("uniform"), layout)
    with pytest.raises(ValueError, match="max_frames"):
        render_selection(clip, layout, sel, None, tmp_path / "x.png", max_frames=0)
    with pytest.raises(ValueError, match="shape \\(128,\\)"):
        render_selection(clip, layout, sel, torch.ones(5), tmp_path / "x.png")
    other = select(PruneConfig("uniform"), grid_layout(torch.arange(256), (16, 4, 4)))
    with pytest.raises(ValueError, match="outside the layout"):
        render_selection(clip, layout, other, None, tmp_path / "x.png")
