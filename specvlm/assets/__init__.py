"""The bundled default: a small trained LLaVA-OneVision target/draft pair and sample videos.

Trained by ``python -m specvlm.training.train_pair`` on the synthetic shapes task
(``specvlm.synthetic``): clips of coloured shapes that move, appear and change colour, with
descriptions and questions generated from the same ground truth. ``shapes/train_config.json`` holds
every setting and the measured accuracies. Used whenever no --target/--draft is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SHAPES = Path(__file__).resolve().parent / "shapes"


@dataclass(frozen=True)
class SampleVideo:
    path: Path
    prompts: tuple[str, ...]


def default_pair() -> tuple[Path, Path]:
    """(target folder, draft folder) of the bundled pair."""
    target, draft = SHAPES / "target", SHAPES / "draft"
    for folder in (target, draft):
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"the bundled model is missing from the installation: {folder}")
    return target, draft


def sample_videos() -> list[SampleVideo]:
    """The bundled sample clips with the prompts they were shipped with (description first)."""
    records = json.loads((SHAPES / "samples" / "samples.json").read_text())
    return [
        SampleVideo(SHAPES / "samples" / r["video"], tuple(item["prompt"] for item in r["prompts"]))
        for r in records
    ]
