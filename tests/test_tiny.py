"""Tiny random-weight checkpoints: built offline, loaded back through the public from_pretrained path."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from transformers.video_utils import VideoMetadata

from specvlm.testing import tiny
from specvlm.testing.tiny import FAMILIES, build_tiny_checkpoint, build_tokenizer, expected_video_tokens

NUM_FRAMES = 8
MESSAGES = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}]

REAL_CLASSES = {
    "llava_onevision": (
        "LlavaOnevisionForConditionalGeneration",
        "LlavaOnevisionProcessor",
        "LlavaOnevisionImageProcessor",
        "LlavaOnevisionVideoProcessor",
    ),
    "qwen2_5_vl": (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLProcessor",
        "Qwen2VLImageProcessor",
        "Qwen2VLVideoProcessor",
    ),
    "qwen3_vl": (
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLProcessor",
        "Qwen2VLImageProcessor",
        "Qwen3VLVideoProcessor",
    ),
    "qwen2_vl": (
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLProcessor",
        "Qwen2VLImageProcessor",
        "Qwen2VLVideoProcessor",
    ),
}
VIDEO_TOKEN = {
    "llava_onevision": "<video>",
    "qwen2_5_vl": "<|video_pad|>",
    "qwen3_vl": "<|video_pad|>",
    "qwen2_vl": "<|video_pad|>",
}


def _frames(num_frames: int = NUM_FRAMES, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(num_frames, size, size, 3), dtype=np.uint8)


def _inputs(processor, frames):
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], videos=[frames], return_tensors="pt")


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def loaded(tiny_pairs):
    cache = {}

    def get(family, role):
        if (family, role) not in cache:
            path = tiny_pairs(family)[0 if role == "target" else 1]
            model = AutoModelForImageTextToText.from_pretrained(path)
            cache[family, role] = (model, AutoProcessor.from_pretrained(path))
        return cache[family, role]

    return get


def test_families_cover_the_brief():
    assert set(FAMILIES) >= {"llava_onevision", "qwen2_5_vl", "qwen3_vl"}
    assert set(FAMILIES) <= set(REAL_CLASSES)


@pytest.mark.parametrize("family", FAMILIES)
def test_pair_loads_back_as_the_real_classes(family, tiny_pairs, loaded):
    model_cls, proc_cls, image_cls, video_cls = REAL_CLASSES[family]
    target_dir, draft_dir = tiny_pairs(family)
    assert (target_dir / "model.safetensors").is_file() and (draft_dir / "model.safetensors").is_file()
    sizes = {}
    for role in ("target", "draft"):
        model, processor = loaded(family, role)
        assert type(model).__name__ == model_cls
        assert type(processor).__name__ == proc_cls
        assert type(processor.image_processor).__name__ == image_cls
        assert type(processor.video_processor).__name__ == video_cls
        assert type(processor.tokenizer).__name__ == "Qwen2Tokenizer"
        assert model.dtype == torch.float32
        tok = processor.tokenizer
        assert model.config.text_config.vocab_size == len(tok)
        assert model.get_output_embeddings().weight.shape[0] == len(tok)
        # token ids in the config and generation config match the tokenizer
        assert model.config.video_token_id == tok.convert_tokens_to_ids(VIDEO_TOKEN[family])
        if family != "llava_onevision":
            assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
            assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
        else:
            assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>")
        im_end, eot = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
        assert list(model.generation_config.eos_token_id) == [im_end, eot]
        assert model.generation_config.pad_token_id == eot
        assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
        text_config = model.config.text_config
        sizes[role] = (_n_params(model), text_config.hidden_size, text_config.num_hidden_layers)
    assert sizes["target"] == (sizes["target"][0], 64, 4)
    assert sizes["draft"] == (sizes["draft"][0], 32, 2)
    assert sizes["draft"][0] < sizes["target"][0]
    # the pair shares one tokenizer vocabulary (and chat template)
    t_tok, d_tok = loaded(family, "target")[1].tokenizer, loaded(family, "draft")[1].tokenizer
    assert t_tok.get_vocab() == d_tok.get_vocab()
    assert AutoTokenizer.from_pretrained(target_dir).get_vocab() == t_tok.get_vocab()
    assert loaded(family, "target")[1].chat_template == loaded(family, "draft")[1].chat_template


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer(family):
    tok = build_tokenizer(family)
    assert 500 <= len(tok) <= 1000
    text = "The video shows a man who slowly walks across the street."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # the BPE actually merged something
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if family == "llava_onevision":
        specials += ["<image>", "<video>"]
    else:
        specials += ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    for special in specials:
        assert len(tok(f"a{special}b")["input_ids"]) == 3, special
    assert tok.bos_token is None
    # deterministic: building again gives the same vocabulary
    assert build_tokenizer(family).get_vocab() == tok.get_vocab()


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template(family, loaded):
    _, processor = loaded(family, "target")
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text.count(VIDEO_TOKEN[family]) == 1
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user" in text and "Describe the video.<|im_end|>" in text
    if family != "llava_onevision":
        assert "<|vision_start|><|video_pad|><|vision_end|>" in text


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_video_tokens(family, loaded):
    model, processor = loaded(family, "target")
    inputs = _inputs(processor, _frames())
    n_video = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert n_video == expected_video_tokens(family, NUM_FRAMES) == {"llava_onevision": 129}.get(family, 64)
    if family == "llava_onevision":
        assert tuple(inputs["pixel_values_videos"].shape) == (1, NUM_FRAMES, 3, 56, 56)
    else:
        assert inputs["video_grid_thw"].tolist() == [[NUM_FRAMES // 2, 8, 8]]  # 4x4 after the 2x2 merge
        assert int((inputs["mm_token_type_ids"] != 0).sum()) == n_video
    if family == "qwen3_vl":  # each temporal patch its own block: "<t seconds><|vision_start|>" + tokens + "<|vision_end|>"
        text = processor.tokenizer.decode(inputs["input_ids"][0]).replace("<|video_pad|>", "V")
        blocks = re.findall(r"<([0-9.]+) seconds><\|vision_start\|>(V+)<\|vision_end\|>", text)
        assert [len(tokens) for _, tokens in blocks] == [n_video // (NUM_FRAMES // 2)] * (NUM_FRAMES // 2)
        assert [float(t) for t, _ in blocks] == sorted(float(t) for t, _ in blocks)
        # the template's own vision_start/end pair is kept around the blocks by older processors, dropped by newer
        vstart = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
        assert int((inputs["input_ids"] == vstart).sum()) in (NUM_FRAMES // 2, NUM_FRAMES // 2 + 1)


def test_qwen3_vl_timestamps_from_metadata(loaded):
    _, processor = loaded("qwen3_vl", "target")
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    meta = VideoMetadata(total_num_frames=NUM_FRAMES, fps=2.0, frames_indices=list(range(NUM_FRAMES)))
    inputs = processor(text=[text], videos=[_frames()], video_metadata=[meta], return_tensors="pt")
    decoded = processor.tokenizer.decode(inputs["input_ids"][0])
    assert "<0.2 seconds>" in decoded and "<3.2 seconds>" in decoded
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == 64


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("role", ["target", "draft"])
def test_generate_is_deterministic(family, role, loaded):
    model, processor = loaded(family, role)
    inputs = _inputs(processor, _frames())
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        second = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(first, second)
    new = first[0, inputs["input_ids"].shape[1] :]
    assert 1 <= new.numel() <= 8
    # placeholder / structural tokens are never generated (their lm_head rows are zero)
    im_start = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    never = {model.config.video_token_id, model.config.image_token_id, im_start}
    assert not set(new.tolist()) & never
    assert int(new.max()) < len(processor.tokenizer)


def test_lm_head_pad(tmp_path):
    pad = 24
    path = build_tiny_checkpoint("qwen2_5_vl", tmp_path / "padded", role="draft", lm_head_pad=pad)
    model = AutoModelForImageTextToText.from_pretrained(path)
    tok = AutoProcessor.from_pretrained(path).tokenizer
    assert len(tok) == len(build_tokenizer("qwen2_5_vl"))
    assert model.config.text_config.vocab_size == len(tok) + pad
    assert model.get_output_embeddings().weight.shape == (len(tok) + pad, 32)
    assert model.get_input_embeddings().weight.shape == (len(tok) + pad, 32)
    assert torch.count_nonzero(model.get_output_embeddings().weight[len(tok) :]) == 0


def test_weights_are_seeded_and_global_rng_untouched(tmp_path):
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    a = build_tiny_checkpoint("qwen2_vl", tmp_path / "a", role="draft", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_tiny_checkpoint("qwen2_vl", tmp_path / "b", role="draft", seed=3)
    c = build_tiny_checkpoint("qwen2_vl", tmp_path / "c", role="draft", seed=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="role"):
        build_tiny_checkpoint("qwen2_5_vl", tmp_path, role="verifier")
    with pytest.raises(ValueError, match="family"):
        build_tiny_checkpoint("llama", tmp_path)
    with pytest.raises(ValueError, match="lm_head_pad"):
        build_tiny_checkpoint("qwen2_5_vl", tmp_path, lm_head_pad=-1)


def test_cli(tmp_path, capsys):
    assert tiny.main(["--family", "qwen2_5_vl", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for role in ("target", "draft"):
        folder = tmp_path / "qwen2_5_vl" / role
        assert str(folder) in out
        assert (folder / "model.safetensors").is_file()
        assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2_5_vl"
        assert (folder / "processor_config.json").is_file() and (folder / "tokenizer.json").is_file()
    with pytest.raises(SystemExit) as exc:
        tiny.main(["--help"])
    assert exc.value.code == 0
    assert "--family" in capsys.readouterr().out
