"""Tiny random-weight checkpoints of the real video-LLM architectures, built offline.

What this module promises
-------------------------
* Every checkpoint is an instance of the *real* Hugging Face transformers class
  (``LlavaOnevisionForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
  ``Qwen3VLForConditionalGeneration``, ``Qwen2VLForConditionalGeneration``) with its real
  processor class, only shrunk to a few hundred thousand parameters, random weights, float32.
* Nothing is downloaded: the BPE tokenizer is trained with the ``tokenizers`` library on a
  small English corpus generated deterministically in code, and every config / processor is
  built from constructor arguments.
* The checkpoint is written with ``save_pretrained`` (safetensors weights, config,
  generation_config, tokenizer, image/video processor configs, chat template) and is meant to
  be loaded back through exactly the public path a user takes::

      model = AutoModelForImageTextToText.from_pretrained(path)
      processor = AutoProcessor.from_pretrained(path)

* Everything is deterministic: the same ``(family, role, seed)`` gives bit-identical weights,
  and building never leaves the global torch RNG reseeded (``torch.random.fork_rng``).
* ``build_tiny_pair`` returns a (target, draft) pair of one family that share the tokenizer and
  processor but differ in size, like e.g. Qwen2.5-VL-7B / Qwen2.5-VL-3B.
* Like a trained model, the random ones never emit prompt-structure or media placeholder tokens
  (``<|im_start|>``, ``<video>``, ``<|video_pad|>``, ``<|vision_start|>``, ...) nor ids past the
  tokenizer (``lm_head_pad`` rows): their ``lm_head`` rows are zero, so their logit is 0 while the
  maximum over the ~640 random logits is always positive. Only ``<|im_end|>``/``<|endoftext|>``
  and ordinary text tokens can be generated. Weights use ``initializer_range=0.1`` (real: 0.02) so
  next-token distributions are peaked and greedy argmax margins are not at float-noise level.
* Target and draft are independent random models: expect a near-zero acceptance rate between
  them; use the target as its own draft to exercise full acceptance.

Video token budget (the numbers tests may assert)
-------------------------------------------------
For a clip of ``T`` frames of 64x64 RGB:

* ``llava_onevision``: every frame is resized to 56x56 (whatever its size), SigLIP patch 7 ->
  8x8 patches, 2x2 bilinear pooling -> 4x4 = 16 ``<video>`` tokens per frame, plus 1 trailing
  newline token per video: ``16 * T + 1`` (129 for 8 frames).
* ``qwen2_vl`` / ``qwen2_5_vl`` / ``qwen3_vl``: patch 8, 2x2 spatial merge, temporal patch 2 ->
  4x4 = 16 ``<|video_pad|>`` tokens per temporal patch of 2 frames: ``16 * ceil(T / 2)``
  (64 for 8 frames; ``video_grid_thw == [[4, 8, 8]]``). Qwen3-VL additionally writes a
  ``<t seconds>`` timestamp and a ``<|vision_start|>``/``<|vision_end|>`` pair around every
  temporal patch (real behaviour).

Grid for other frame sizes: Qwen2(.5)-VL pins the per-frame budget at 64*64 pixels, so square
frames of ~48-112 px also give 4x4 (non-square ones give e.g. 3x4 for 64x96). Qwen3-VL budgets
pixels over the whole clip (``16 * 64 * 64``, like the real ``size.longest_edge``): 64x64 frames
give 4x4 for up to 16 frames, but 8 frames of 48x48 give 3x3 and of 112x112 give 5x5.

See :data:`VIDEO_TOKENS_PER_FRAME_UNIT` and :func:`expected_video_tokens`.

Processor kwargs
----------------
The saved processors are configured so that ``processor(text=..., videos=[frames])`` just works
for ``frames`` a pre-sampled ``numpy`` array ``(T, H, W, 3)`` uint8, without extra kwargs:

* all video processors are saved with ``do_sample_frames=False`` (Qwen3-VL's default is ``True``,
  which without ``video_metadata`` would resample the clip to 4 frames assuming 24 fps);
* Qwen video processors are saved with ``cap_pixels_per_frame=False`` (silences the 5.x
  deprecation warning; the tiny budgets never hit the cap anyway);
* Qwen prompts/positions want the clip's fps: without ``video_metadata`` the processors assume
  24 fps (Qwen3-VL warns once and writes ``<0.0 seconds>``, ``<0.1 seconds>``...; Qwen2.5-VL gets
  ``second_per_grid_ts = 2/24`` so all temporal patches share one temporal M-RoPE index). Pass
  ``video_metadata=[VideoMetadata(total_num_frames=T, fps=fps, frames_indices=list(range(T)))]``
  (a dict with the same keys works too; Qwen3-VL needs ``frames_indices``) for realistic
  timestamps. The number of video tokens does not depend on it.

CLI: ``specvlm-tiny --family all --out DIR`` (or ``python -m specvlm.testing.tiny``) writes
``DIR/<family>/{target,draft}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import sys
import zlib
from pathlib import Path

import torch

__all__ = [
    "FAMILIES",
    "ROLES",
    "VIDEO_TOKENS_PER_FRAME_UNIT",
    "build_processor",
    "build_tiny_checkpoint",
    "build_tiny_pair",
    "build_tokenizer",
    "expected_video_tokens",
    "main",
]

FAMILIES: tuple[str, ...] = ("llava_onevision", "qwen2_5_vl", "qwen3_vl", "qwen2_vl")
ROLES: tuple[str, ...] = ("target", "draft")

QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# Number of video placeholder tokens per frame (LLaVA-OV) / per temporal patch of 2 frames (Qwen)
# for 64x64 frames (see the module docstring for other sizes).
VIDEO_TOKENS_PER_FRAME_UNIT = {"llava_onevision": 16, "qwen2_vl": 16, "qwen2_5_vl": 16, "qwen3_vl": 16}

# --------------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------------

# Text tower sizes. head_dim is 16 for both roles so the M-RoPE sections are shared.
_TEXT_SIZES = {
    "target": dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
    ),
    "draft": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64
    ),
}
_HEAD_DIM = 16
# Vision tower sizes.
_VISION_SIZES = {
    "target": dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
    "draft": dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
}
# Weight init std of the tiny models. Larger than the real 0.02 so that the random models have
# peaked (non-degenerate) next-token distributions and greedy decoding has clear argmax margins.
_INIT_RANGE = 0.1

# LLaVA-OneVision: SigLIP image_size 56, patch 7 -> 8x8 patches -> 2x2 pooled to 4x4 per frame.
_LLAVA_IMAGE_SIZE = 56
_LLAVA_PATCH = 7
_LLAVA_PINPOINTS = [[_LLAVA_IMAGE_SIZE * i, _LLAVA_IMAGE_SIZE * j] for i in (1, 2, 3) for j in (1, 2, 3)]
# Qwen: patch 8, merge 2 -> factor 16; a 64x64 frame is an 8x8 patch grid -> 4x4 merged tokens.
_QWEN_PATCH = 8
_QWEN_MERGE = 2
_QWEN_TEMPORAL = 2
_QWEN_FRAME_PIXELS = 64 * 64

# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------

_BPE_VOCAB_SIZE = 640  # byte alphabet (256) + merges

_QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Added (non-special) tokens of the real Qwen tokenizers; Qwen3 adds the reasoning/tool tags.
_QWEN25_ADDED = ["<tool_call>", "</tool_call>"]
_QWEN3_ADDED = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
_LLAVA_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]


def _family_added_tokens(family: str) -> list[tuple[str, bool]]:
    """(token, special) in id order, appended after the BPE vocabulary."""
    _check_family(family)
    if family == "llava_onevision":
        return [(t, True) for t in _LLAVA_SPECIAL]
    extra = _QWEN3_ADDED if family == "qwen3_vl" else _QWEN25_ADDED
    return [(t, True) for t in _QWEN_SPECIAL] + [(t, False) for t in extra]


def _corpus() -> list[str]:
    """A few thousand words of video-description-like English, generated deterministically."""
    rng = random.Random(20240917)
    subjects = [
        "a man", "a woman", "the dog", "two children", "a small cat", "the camera", "a red car",
        "an old man", "a group of people", "the player", "a young girl", "the chef", "a bird",
        "the train", "a person", "the teacher", "a white horse", "the driver", "a little boy",
        "the audience", "a musician", "the robot", "a couple", "the crowd", "a student",
        "the referee", "a farmer", "the police officer", "a dancer", "the baby",
    ]
    adverbs = [
        "slowly", "quickly", "carefully", "suddenly", "happily", "then", "again", "together",
        "finally", "briefly", "quietly", "eagerly", "gently", "nervously", "proudly",
    ]
    verbs = [
        "walks", "runs", "jumps", "sits", "stands", "looks", "turns", "moves", "drives", "cooks",
        "plays", "talks", "opens", "holds", "throws", "catches", "climbs", "rides", "dances",
        "waves", "points", "smiles", "laughs", "paints", "writes", "reads", "swims", "carries",
        "pushes", "pulls", "kicks", "sings", "watches", "cleans", "builds", "follows",
    ]
    places = [
        "across the street", "in the kitchen", "near the window", "on the beach",
        "through the park", "inside the room", "along the river", "under the bridge",
        "at the table", "on the stage", "in the field", "down the road", "into the garden",
        "behind the building", "around the corner", "over the mountain", "next to the car",
        "in front of the house", "at the station", "outside the restaurant", "in the classroom",
        "on the football pitch", "beside the lake", "inside the museum",
    ]
    objects = [
        "a ball", "a book", "the door", "a cup of coffee", "a bicycle", "a guitar", "the phone",
        "a bag", "some flowers", "a camera", "the newspaper", "a sandwich", "an umbrella",
        "a painting", "the keys", "a basket of apples", "a kite", "the microphone",
    ]
    adjectives = [
        "bright", "dark", "sunny", "crowded", "empty", "colorful", "quiet", "noisy", "green",
        "blue", "yellow", "wooden", "modern", "ancient", "beautiful", "rainy", "snowy", "busy",
    ]
    scenes = [
        "street", "kitchen", "park", "beach", "room", "forest", "city", "village", "studio",
        "office", "stadium", "market", "garden", "highway",
    ]
    openers = [
        "The video shows", "In this clip,", "At the beginning,", "Later,", "In the next scene,",
        "At the end of the video,", "Meanwhile,", "The camera follows", "We can see",
    ]
    sentences = []
    for _ in range(320):
        kind = rng.randrange(4)
        if kind == 0:
            s = f"{rng.choice(subjects)} {rng.choice(adverbs)} {rng.choice(verbs)} {rng.choice(places)}."
            s = s[0].upper() + s[1:]
        elif kind == 1:
            s = f"{rng.choice(openers)} {rng.choice(subjects)} that {rng.choice(verbs)} {rng.choice(objects)}."
        elif kind == 2:
            s = (
                f"The scene is a {rng.choice(adjectives)} {rng.choice(scenes)} where "
                f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
            )
        else:
            s = (
                f"{rng.choice(openers)} {rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} "
                f"{rng.choice(places)}, and {rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(adverbs)}."
            )
        sentences.append(s)
    sentences += [
        "Describe the video.", "What happens in the video?", "What is the person doing?",
        "Summarize the clip in one sentence.", "How many people are there?", "Yes.", "No.",
        "The video is 8 seconds long, recorded at 30 frames per second in 2024.",
    ]
    return sentences


def train_bpe(texts, vocab_size: int) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """(vocab sorted by id, merges) of a byte-level BPE with Qwen2's pre-tokenizer trained on ``texts``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = tuple(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = tuple(tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"])
    return vocab, merges


@functools.lru_cache(maxsize=1)
def _bpe_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """The tiny checkpoints' BPE, trained on the built-in corpus (deterministic)."""
    return train_bpe(_corpus(), _BPE_VOCAB_SIZE)


_QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-Instruct's template without the tool-calling branches: no default system prompt,
# system content may be a list of text parts, assistant "reasoning" is not rendered.
_QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for content in messages[0].content %}"
    "{%- if 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message.role == 'system') %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Picture ' ~ image_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Video ' ~ video_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# llava-hf/llava-onevision-qwen2-*-ov-hf template: media tokens first, then text, ChatML turns.
_LLAVA_OV_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ '\\n' + message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CHAT_TEMPLATES = {
    "llava_onevision": _LLAVA_OV_CHAT_TEMPLATE,
    "qwen2_vl": _QWEN2_VL_CHAT_TEMPLATE,
    "qwen2_5_vl": _QWEN2_VL_CHAT_TEMPLATE,
    "qwen3_vl": _QWEN3_VL_CHAT_TEMPLATE,
}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def build_tokenizer(family: str):
    """The family's tokenizer: a ``Qwen2Tokenizer`` (byte-level BPE, Qwen2 pre-tokenizer regex) on
    the tiny trained vocabulary, plus the family's special/added tokens appended in the real order,
    ``eos_token='<|im_end|>'``, ``pad_token='<|endoftext|>'``, no BOS, and the family chat template.
    """
    _check_family(family)
    return qwen2_tokenizer(*_bpe_vocab_and_merges(), family)


def qwen2_tokenizer(vocab_items, merges, family: str):
    """A ``Qwen2Tokenizer`` over a trained BPE (see ``train_bpe``) with ``family``'s added tokens,
    end/pad tokens and chat template."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab = dict(vocab_items)
    base = len(vocab)
    added = _family_added_tokens(family)
    added_tokens_decoder = {
        base + i: AddedToken(tok, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        for i, (tok, special) in enumerate(added)
    }
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in merges],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        added_tokens_decoder=added_tokens_decoder,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=32768,
        add_prefix_space=False,
    )
    tokenizer.chat_template = _CHAT_TEMPLATES[family]
    # Sanity: every added token is a single token with the id we designed.
    for i, (tok, _) in enumerate(added):
        got = tokenizer.convert_tokens_to_ids(tok)
        if got != base + i:  # pragma: no cover - guards against tokenizer-library changes
            raise RuntimeError(f"tokenizer built wrong: {tok!r} has id {got}, expected {base + i}")
    return tokenizer


def _token_ids(tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


# --------------------------------------------------------------------------------------------
# processor
# --------------------------------------------------------------------------------------------


def build_processor(family: str, tokenizer=None):
    """The family's real processor class with tiny image/video processors (see module docstring)."""
    _check_family(family)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(family)
    chat_template = _CHAT_TEMPLATES[family]

    if family == "llava_onevision":
        from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

        size = {"height": _LLAVA_IMAGE_SIZE, "width": _LLAVA_IMAGE_SIZE}
        siglip_norm = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=_LLAVA_PINPOINTS, **siglip_norm)
        video_processor = LlavaOnevisionVideoProcessor(size=size, do_sample_frames=False, **siglip_norm)
        return LlavaOnevisionProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            num_image_tokens=(_LLAVA_IMAGE_SIZE // _LLAVA_PATCH) ** 2,
            vision_feature_select_strategy="full",
            chat_template=chat_template,
            vision_aspect_ratio="anyres_max_9",
        )

    from transformers import Qwen2VLImageProcessor

    patching = dict(patch_size=_QWEN_PATCH, merge_size=_QWEN_MERGE, temporal_patch_size=_QWEN_TEMPORAL)
    factor = _QWEN_PATCH * _QWEN_MERGE
    if family == "qwen3_vl":
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

        norm = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        image_processor = Qwen2VLImageProcessor(
            size={"shortest_edge": 2 * 2 * factor * factor, "longest_edge": 8 * 8 * factor * factor}, **patching, **norm
        )
        # Qwen3-VL budgets pixels over the whole clip (frames * h * w): up to 16 frames of 64x64
        # keep a 4x4 merged grid per temporal patch.
        video_processor = Qwen3VLVideoProcessor(
            size={"shortest_edge": 2 * 2 * 2 * factor * factor, "longest_edge": 16 * _QWEN_FRAME_PIXELS},
            do_sample_frames=False,
            cap_pixels_per_frame=False,
            fps=2,
            **patching,
            **norm,
        )
        return Qwen3VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=chat_template,
        )

    from transformers import Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 2 * 2 * factor * factor, "longest_edge": 8 * 8 * factor * factor}, **patching
    )
    # Per-frame budget pinned to 64x64: frames of ~48..112 px all map to a 4x4 merged grid.
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": _QWEN_FRAME_PIXELS, "longest_edge": _QWEN_FRAME_PIXELS},
        do_sample_frames=False,
        cap_pixels_per_frame=False,
        **patching,
    )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as processor_cls
    else:
        from transformers import Qwen2VLProcessor as processor_cls
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template,
    )


def expected_video_tokens(family: str, num_frames: int) -> int:
    """Number of video placeholder tokens in the prompt for ``num_frames`` frames of 64x64.

    LLaVA-OV: ``16 * num_frames + 1`` (the +1 is the newline embedding appended after the grid);
    Qwen families: ``16 * ceil(num_frames / 2)``.
    """
    _check_family(family)
    per = VIDEO_TOKENS_PER_FRAME_UNIT[family]
    if family == "llava_onevision":
        return per * num_frames + 1
    return per * math.ceil(num_frames / _QWEN_TEMPORAL)


# --------------------------------------------------------------------------------------------
# model configs
# --------------------------------------------------------------------------------------------


def llava_onevision_config(
    tokenizer,
    *,
    vocab_size: int,
    text: dict,  # hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size
    vision: dict,  # hidden_size, intermediate_size, num_layers, num_heads
    image_size: int,
    patch_size: int,
    initializer_range: float,
):
    """A LlavaOnevisionConfig (Qwen2 text model, SigLIP vision tower) with this tokenizer's ids."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    eos, pad, image_token, video_token = _token_ids(tokenizer, "<|im_end|>", "<|endoftext|>", "<image>", "<video>")
    text_config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_act="silu",
        max_position_embeddings=4096,
        initializer_range=initializer_range,
        rms_norm_eps=1e-6,
        use_cache=True,
        attention_dropout=0.0,
        pad_token_id=pad,
        bos_token_id=pad,
        eos_token_id=eos,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=False,
        use_sliding_window=False,
        **text,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=vision["hidden_size"],
        intermediate_size=vision["intermediate_size"],
        num_hidden_layers=vision["num_layers"],
        num_attention_heads=vision["num_heads"],
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    return LlavaOnevisionConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token,
        video_token_index=video_token,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[image_size * i, image_size * j] for i in (1, 2, 3) for j in (1, 2, 3)],
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )


def _build_config(family: str, role: str, tokenizer, vocab_size: int):
    t = _TEXT_SIZES[role]
    v = _VISION_SIZES[role]
    eos, pad = _token_ids(tokenizer, "<|im_end|>", "<|endoftext|>")
    common_text = dict(
        vocab_size=vocab_size,
        hidden_act="silu",
        max_position_embeddings=4096,
        initializer_range=_INIT_RANGE,
        rms_norm_eps=1e-6,
        use_cache=True,
        attention_dropout=0.0,
        pad_token_id=pad,
        **t,
    )

    if family == "llava_onevision":
        return llava_onevision_config(
            tokenizer,
            vocab_size=vocab_size,
            text=t,
            vision=v,
            image_size=_LLAVA_IMAGE_SIZE,
            patch_size=_LLAVA_PATCH,
            initializer_range=_INIT_RANGE,
        )

    image_token, video_token, vstart, vend = _token_ids(
        tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )
    ids = dict(
        image_token_id=image_token, video_token_id=video_token, vision_start_token_id=vstart, vision_end_token_id=vend
    )
    vision_common = dict(
        depth=v["num_layers"],
        hidden_size=v["hidden_size"],
        num_heads=v["num_heads"],
        in_channels=3,
        patch_size=_QWEN_PATCH,
        spatial_merge_size=_QWEN_MERGE,
        temporal_patch_size=_QWEN_TEMPORAL,
        initializer_range=_INIT_RANGE,
    )

    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLTextConfig, Qwen3VLVisionConfig

        text_config = Qwen3VLTextConfig(
            **common_text,
            head_dim=_HEAD_DIM,
            attention_bias=False,
            # real: mrope_section [24, 20, 20] of 64 rotary pairs, interleaved
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
        )
        text_config.bos_token_id = pad
        text_config.eos_token_id = eos
        vision_config = Qwen3VLVisionConfig(
            **vision_common,
            hidden_act="gelu_pytorch_tanh",
            intermediate_size=v["intermediate_size"],
            out_hidden_size=t["hidden_size"],
            num_position_embeddings=16 * 16,
            deepstack_visual_indexes=list(range(v["num_layers"])),
        )
        return Qwen3VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=False, **ids)

    text_kwargs = dict(
        **common_text,
        bos_token_id=pad,
        eos_token_id=eos,
        use_sliding_window=False,
        # real: mrope_section [16, 24, 24] of 64 rotary pairs
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
    )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLVisionConfig

        vision_config = Qwen2_5_VLVisionConfig(
            **vision_common,
            hidden_act="silu",
            intermediate_size=v["intermediate_size"],
            out_hidden_size=t["hidden_size"],
            tokens_per_second=2,
            # window of 32 px = 2x2 merged tokens, so a 4x4 grid has 4 windows; last block full attention
            window_size=2 * _QWEN_MERGE * _QWEN_PATCH,
            fullatt_block_indexes=[v["num_layers"] - 1],
        )
        return Qwen2_5_VLConfig(
            text_config=Qwen2_5_VLTextConfig(**text_kwargs),
            vision_config=vision_config,
            tie_word_embeddings=False,
            **ids,
        )

    from transformers import Qwen2VLConfig
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig

    vision_common = {k: val for k, val in vision_common.items() if k != "hidden_size"}
    vision_config = Qwen2VLVisionConfig(
        **vision_common,
        embed_dim=v["hidden_size"],
        hidden_size=t["hidden_size"],  # Qwen2-VL: merger output size
        hidden_act="quick_gelu",
        mlp_ratio=v["intermediate_size"] // v["hidden_size"],
    )
    return Qwen2VLConfig(
        text_config=Qwen2VLTextConfig(**text_kwargs), vision_config=vision_config, tie_word_embeddings=False, **ids
    )


def _model_class(family: str):
    import transformers

    return getattr(
        transformers,
        {
            "llava_onevision": "LlavaOnevisionForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
            "qwen3_vl": "Qwen3VLForConditionalGeneration",
            "qwen2_vl": "Qwen2VLForConditionalGeneration",
        }[family],
    )


def _never_generated_ids(tokenizer, config_vocab: int) -> list[int]:
    """Special tokens other than the two end tokens, plus the rows past the tokenizer (lm_head_pad)."""
    keep = {"<|im_end|>", "<|endoftext|>"}
    ids = [i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special and tok.content not in keep]
    return sorted(ids) + list(range(len(tokenizer), config_vocab))


def _seed_for(family: str, role: str, seed: int) -> int:
    return zlib.crc32(f"specvlm-tiny/{family}/{role}/{seed}".encode())


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def build_tiny_checkpoint(
    family: str,
    out_dir: str | Path,
    *,
    role: str = "target",
    seed: int = 0,
    lm_head_pad: int = 0,
) -> Path:
    """Build one tiny random checkpoint of ``family`` and ``save_pretrained`` it into ``out_dir``.

    ``role`` is ``"target"`` (text hidden 64, 4 layers, 4 heads / 2 KV heads, vision 2 layers) or
    ``"draft"`` (text hidden 32, 2 layers, 2 heads / 1 KV head, vision 1 layer). ``lm_head_pad > 0``
    makes the config ``vocab_size`` (embedding and lm_head rows) larger than the tokenizer by that
    many, like Qwen2.5-VL-3B (151936) vs -7B (152064) which share one tokenizer.
    Weights are drawn from a torch generator seeded by ``(family, role, seed)``; the global RNG is
    left untouched. Writes safetensors weights, config, generation_config and the processor
    (tokenizer, image/video processor, chat template). Returns ``Path(out_dir)``.
    """
    from transformers import GenerationConfig

    _check_family(family)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    if not isinstance(lm_head_pad, int) or lm_head_pad < 0:
        raise ValueError(f"lm_head_pad must be a non-negative int, got {lm_head_pad!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(family)
    processor = build_processor(family, tokenizer)
    config = _build_config(family, role, tokenizer, len(tokenizer) + lm_head_pad)
    config.dtype = torch.float32

    eos, pad = _token_ids(tokenizer, "<|im_end|>", "<|endoftext|>")
    generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad, do_sample=False)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_for(family, role, seed))
        model = _model_class(family)(config)
    model = model.to(torch.float32).eval()
    model.generation_config = generation_config
    # Like a trained model, never emit prompt-structure / media placeholder tokens or the padded
    # vocabulary rows: zero lm_head rows give logit 0 while ~640 random logits always have a
    # positive maximum, so these ids are never the argmax (a generated <video>/<|video_pad|>
    # would otherwise break re-encoding the sequence with the vision features).
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[_never_generated_ids(tokenizer, config_vocab=head.shape[0])] = 0.0

    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_pair(family: str, root: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Build ``root/target`` and ``root/draft`` of ``family`` (same tokenizer, different sizes)."""
    root = Path(root)
    target = build_tiny_checkpoint(family, root / "target", role="target", seed=seed)
    draft = build_tiny_checkpoint(family, root / "draft", role="draft", seed=seed)
    return target, draft


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="specvlm-tiny",
        description=(
            "Build tiny random-weight (target, draft) checkpoint pairs of real video-LLM architectures, "
            "offline, into OUT/<family>/{target,draft}."
        ),
    )
    parser.add_argument("--family", default="all", choices=("all", *FAMILIES), help="family to build (default: all)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    args = parser.parse_args(argv)

    families = FAMILIES if args.family == "all" else (args.family,)
    for family in families:
        target, draft = build_tiny_pair(family, args.out / family, seed=args.seed)
        print(f"{family}\ttarget\t{target}")
        print(f"{family}\tdraft\t{draft}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
