"""Random-weight models whose language models have the real published sizes, for GPU benchmarks.

Decoding cost is the language model's: its weights and KV cache are read once per forward pass.
These models have the real LM shapes (layers, hidden size, heads, KV heads, MLP width, vocabulary)
of the published pairs, with the tiny vision tower and processor of ``specvlm.testing.tiny``. Their
step costs are real; their outputs are meaningless (acceptance rates need trained models).
"""

from __future__ import annotations

import torch

from specvlm.models import adapter_for
from specvlm.models.base import VideoLMAdapter
from specvlm.testing import tiny

# (family, hidden, layers, heads, kv_heads, intermediate, vocab) from the released configs
LM_SHAPES: dict[str, tuple[str, int, int, int, int, int, int]] = {
    "qwen2.5-vl-32b": ("qwen2_5_vl", 5120, 64, 40, 8, 27648, 152064),
    "qwen2.5-vl-7b": ("qwen2_5_vl", 3584, 28, 28, 4, 18944, 152064),
    "qwen2.5-vl-3b": ("qwen2_5_vl", 2048, 36, 16, 2, 11008, 151936),
    "llava-ov-72b": ("llava_onevision", 8192, 80, 64, 8, 29568, 152128),
    "llava-ov-7b": ("llava_onevision", 3584, 28, 28, 4, 18944, 152128),
    "llava-ov-0.5b": ("llava_onevision", 896, 24, 14, 2, 4864, 151936),
    # for smoke tests of the benchmark scripts on a CPU
    "test-target": ("qwen2_5_vl", 128, 2, 4, 2, 256, 1024),
    "test-draft": ("qwen2_5_vl", 64, 1, 2, 1, 128, 1024),
}


def shape_config(name: str):
    """The tiny checkpoint's config with the language model resized to ``name``."""
    if name not in LM_SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(LM_SHAPES)}")
    family, hidden, layers, heads, kv_heads, intermediate, vocab = LM_SHAPES[name]
    tokenizer = tiny.build_tokenizer(family)
    config = tiny._build_config(family, "target", tokenizer, vocab)
    text = config.text_config
    text.hidden_size, text.num_hidden_layers = hidden, layers
    text.num_attention_heads, text.num_key_value_heads = heads, kv_heads
    text.intermediate_size, text.vocab_size = intermediate, vocab
    text.head_dim = hidden // heads
    text.initializer_range = 0.02
    text.max_position_embeddings = 131072
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = ["full_attention"] * layers
    if family == "qwen2_5_vl":
        half = text.head_dim // 2  # M-RoPE sections in rotary pairs: real [16, 24, 24] of 64
        text.rope_parameters = {**text.rope_parameters, "mrope_section": [half // 4, 3 * half // 8, 3 * half // 8]}
        config.vision_config.out_hidden_size = hidden
    return family, config


def random_adapter(name: str, *, dtype: torch.dtype = torch.bfloat16, device: str = "cuda") -> VideoLMAdapter:
    """An adapter over a random-weight model of LM shape ``name``, built directly on ``device``."""
    family, config = shape_config(name)
    processor = tiny.build_processor(family)
    with torch.device(device):
        model = tiny._model_class(family)._from_config(config, dtype=dtype)
    model.eval()
    eos = processor.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos[1]
    adapter = adapter_for(model, processor)
    # The tiny tokenizer stands in for the real ~152k one: let decoding range over the whole head,
    # as it does with a real checkpoint, so tokens compare with generate's.
    adapter.vocab_size = config.text_config.vocab_size
    return adapter
