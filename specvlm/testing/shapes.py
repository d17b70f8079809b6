"""Random-weight models whose language models have the real published sizes, for GPU benchmarks.

Decoding cost is the language model's: its weights and KV cache are read once per forward pass.
These models have the real LM shapes (layers, hidden size, heads, KV heads, MLP width, vocabulary)
of the published pairs, with the tiny vision tower and processor of ``specvlm.testing.tiny``. Their
step costs are real; their outputs are meaningless (acceptance rates need trained models).
"""

from __future__ import annotations

import torch

from specvlm.models import adapter_for
from specvlm.layout import grid_layout
from specvlm.models.base import PreparedInputs, VideoLMAdapter
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


# Tokenizer lengths of the released checkpoints: a pair shares one tokenizer even where its models'
# embedding tables are padded to different sizes (LLaVA-OV-7B 152128 rows, -0.5B 151936).
TOKENIZER_LENGTH = {"qwen2_5_vl": 151665, "llava_onevision": 151647}


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
    # The tiny tokenizer stands in for the real ~152k one: decoding ranges over the real tokenizer's
    # length, as with a real checkpoint (the head's padding rows are cut off), the same for a target
    # and its draft; the test shapes use their whole (shared) head.
    vocab = config.text_config.vocab_size
    adapter.vocab_size = min(TOKENIZER_LENGTH.get(family, vocab), vocab)
    return adapter


def weight_bytes(adapter) -> int:
    """Bytes of the language model and head read per step (embedding rows are gathered, not read)."""
    lm = adapter.language_model
    n = sum(p.numel() * p.element_size() for name, p in lm.named_parameters() if not name.startswith("embed_tokens"))
    head = adapter.model.lm_head.weight
    return n + head.numel() * head.element_size()


def kv_bytes(adapter, context: int) -> int:
    """Bytes of the KV cache of ``context`` tokens (read once per step)."""
    c = adapter.language_model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * context * adapter.dtype.itemsize


def memory_bytes(name: str, capacity: int, itemsize: int = 2) -> int:
    """Bytes a random model of LM shape ``name`` takes on its device, from the shape alone (before
    building it): its language model, an untied head (an upper bound where the release ties it) and
    a KV cache of ``capacity`` slots."""
    _, hidden, layers, heads, kv_heads, intermediate, vocab = LM_SHAPES[name]
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + hidden + 2 * kv_heads * head_dim  # q, o; k, v; biases
    per_layer = attention + 3 * hidden * intermediate + 2 * hidden  # the MLP, two norms
    parameters = 2 * vocab * hidden + layers * per_layer + hidden
    kv = 2 * layers * kv_heads * head_dim * capacity
    return (parameters + kv) * itemsize


def copy_bandwidth(device: str = "cuda") -> float:
    """Bytes read + written per second of a large device-to-device copy (median of 10)."""
    import statistics
    import time

    n = 2**31 if device == "cuda" else 2**24
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * n * 2 / statistics.median(times[2:])


def token_local(adapter: VideoLMAdapter) -> None:
    """Zero every layer's output projections (attention o_proj, MLP down_proj).

    Each step still does all of its work (same kernels, same bytes), but the residual stream then
    holds only the token's own embedding: a token's logits depend on that token alone, so a tree
    pass and a one-token pass agree on the next token even in bf16, where random models have
    near-tied logits that different kernels round apart.
    """
    for layer in adapter.language_model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()


def synthetic_layout(context: int, *, frame_tokens: int = 196, before: int = 16, question: int = 48) -> tuple[int, int, int]:
    """(frames, side, length) of ``synthetic_inputs``'s prompt for ``context``: whole frames of
    side x side video tokens between the text, ``length`` tokens in all (at most ``context``)."""
    side = int(frame_tokens**0.5)
    frames = (context - before - question) // (side * side)
    if frames < 1:
        raise ValueError(f"a context of {context} tokens holds no frame of {side * side} video tokens")
    return frames, side, before + frames * side * side + question


def synthetic_inputs(
    adapter: VideoLMAdapter, context: int, *, frame_tokens: int = 196, before: int = 16, question: int = 48, seed: int = 0
) -> PreparedInputs:
    """A prompt of ``context`` tokens laid out like a video chat: ``before`` text tokens, whole
    frames of ``frame_tokens`` video tokens (random embeddings), the question. Same token ids and
    layout for any adapter and seed, so a target and a draft get the same prompt."""
    frames, side, length = synthetic_layout(context, frame_tokens=frame_tokens, before=before, question=question)
    n_video = frames * side * side
    device = adapter.device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(adapter.vocab_size, 1000), (1, length), generator=g)
    ids[0, before : before + n_video] = adapter.video_token_id
    ids = ids.to(device)
    hidden = adapter.language_model.config.hidden_size
    with torch.no_grad():
        embeds = adapter.embed(ids).clone()
        video = 0.02 * torch.randn(n_video, hidden, generator=g)
        embeds[0, before : before + n_video] = video.to(device, embeds.dtype)
    positions = adapter.position_tensor(torch.arange(length, device=device)[None])
    layout = grid_layout(torch.arange(before, before + n_video), (frames, side, side))
    return PreparedInputs(input_ids=ids, inputs_embeds=embeds, position_ids=positions, video=layout, next_position=length)
