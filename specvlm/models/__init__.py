"""Model adapters, one file per family, and loading a checkpoint from a hub id or a folder."""

from __future__ import annotations

from typing import Any

import torch

from specvlm.models.base import (
    PreparedInputs,
    UnsupportedModelError,
    VideoLMAdapter,
    VideoTokenLayout,
)
from specvlm.models.llava_onevision import LlavaOnevisionAdapter
from specvlm.models.qwen2_5_vl import Qwen2_5_VLAdapter
from specvlm.models.qwen3_vl import Qwen3VLAdapter

ADAPTERS: tuple[type[VideoLMAdapter], ...] = (LlavaOnevisionAdapter, Qwen2_5_VLAdapter, Qwen3VLAdapter)

__all__ = [
    "ADAPTERS",
    "PreparedInputs",
    "UnsupportedModelError",
    "VideoLMAdapter",
    "VideoTokenLayout",
    "adapter_class",
    "adapter_for",
    "load_adapter",
    "supported_model_types",
]


def supported_model_types() -> tuple[str, ...]:
    return tuple(t for cls in ADAPTERS for t in cls.model_types)


def adapter_class(model_type: str) -> type[VideoLMAdapter]:
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise UnsupportedModelError(
        f"unsupported model type {model_type!r}; supported families: {', '.join(supported_model_types())}"
    )


def adapter_for(model, processor) -> VideoLMAdapter:
    """Wrap an already loaded model and processor."""
    return adapter_class(model.config.model_type)(model, processor)


def load_adapter(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    attn_implementation: str | None = "sdpa",
) -> VideoLMAdapter:
    """Load a model and its processor from a hub id or a local folder, through from_pretrained.

    The family is checked from the config before any weight is read.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    if device is not None and device_map is not None:
        raise ValueError("give either device or device_map, not both")
    config = AutoConfig.from_pretrained(name_or_path)
    cls = adapter_class(config.model_type)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        name_or_path, dtype=dtype, device_map=device_map, attn_implementation=attn_implementation
    )
    if device is not None:
        model = model.to(device)
    model.eval()
    processor = AutoProcessor.from_pretrained(name_or_path)
    return cls(model, processor)
