"""Model adapters on tiny real-architecture checkpoints, with the video read from a real mp4."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from specvlm.engine.decoding import decode_target
from specvlm.models import UnsupportedModelError, load_adapter
from specvlm.testing.tiny import FAMILIES, expected_video_tokens
from specvlm.video import VideoClip, write_video

NUM_FRAMES = 8
PROMPT = "Describe the video."


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    """A 16-frame mp4 of a square moving over a gradient, so frames differ."""
    frames = np.zeros((16, 64, 64, 3), dtype=np.uint8)
    frames[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :]
    for i in range(16):
        frames[i, 10 + 2 * i : 26 + 2 * i, 8:24, 1] = 250
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, frames, fps=8)
    return path


class Loaded:
    def __init__(self, family, target_dir, video_path):
        self.family = family
        self.adapter = load_adapter(str(target_dir), dtype="float32")
        self.features = self.adapter.build_inputs(video_path, PROMPT, num_frames=NUM_FRAMES)
        self.prepared = self.adapter.prepare(self.features)

    @property
    def mrope(self) -> bool:
        return self.family != "llava_onevision"


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tiny_pairs, video_path):
    target_dir, _ = tiny_pairs(request.param)
    return Loaded(request.param, target_dir, video_path)


def test_greedy_decoding_equals_generate(loaded):
    adapter, features = loaded.adapter, loaded.features
    ours = decode_target(adapter, loaded.prepared, max_new_tokens=20)
    with torch.no_grad():
        out = adapter.model.generate(**features, max_new_tokens=20, do_sample=False)
    reference = out[0, features["input_ids"].shape[1] :].tolist()
    assert ours.token_ids == reference
    assert ours.stats.new_tokens == len(reference)
    assert ours.stats.target_passes == len(reference) - 1


def _capture_language_model_inputs(adapter, features):
    """The inputs the model's own forward hands its language model."""
    captured = {}

    def hook(module, args, kwargs):
        captured.update(kwargs)

    handle = adapter.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.model(**features)
    finally:
        handle.remove()
    return captured


def test_embeddings_and_positions_equal_the_models_own(loaded):
    prepared = loaded.prepared
    seen = _capture_language_model_inputs(loaded.adapter, loaded.features)
    torch.testing.assert_close(prepared.inputs_embeds, seen["inputs_embeds"], rtol=0, atol=0)
    if loaded.mrope:
        assert torch.equal(prepared.position_ids, seen["position_ids"])
        assert prepared.next_position == int(seen["position_ids"].max()) + 1
    else:
        assert seen.get("position_ids") is None  # the model uses arange
        assert torch.equal(prepared.position_ids, torch.arange(prepared.length)[None])
        assert prepared.next_position == prepared.length
    if loaded.family == "qwen3_vl":
        assert torch.equal(prepared.visual_mask, seen["visual_pos_masks"])
        for ours, theirs in zip(prepared.deepstack, seen["deepstack_visual_embeds"], strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_video_layout(loaded):
    prepared, family = loaded.prepared, loaded.family
    layout = prepared.video
    n_expected = expected_video_tokens(family, NUM_FRAMES)
    if family == "llava_onevision":
        n_expected -= 1  # the trailing newline embedding is not a grid token
        assert layout.grid == (NUM_FRAMES, 4, 4) and layout.frames_per_step == 1
    else:
        assert layout.grid == (NUM_FRAMES // 2, 4, 4) and layout.frames_per_step == 2
    assert len(layout) == n_expected
    ids = prepared.input_ids[0]
    assert bool((ids[layout.seq_index] == loaded.adapter.video_token_id).all())
    # frame-major, row-major order, each (frame, row, col) once
    flat = (layout.frame * 16 + layout.row * 4 + layout.col).tolist()
    assert flat == list(range(n_expected))
    if family == "qwen3_vl":
        gaps = torch.diff(layout.seq_index)
        assert int((gaps > 1).sum()) == layout.grid[0] - 1  # timestamp text between temporal patches
    if loaded.mrope:
        # M-RoPE: each video token's (t, h, w) follows its place in the grid
        _assert_grid_positions(prepared.position_ids[:, 0, layout.seq_index], layout)


def _assert_grid_positions(pos, layout):
    """Within each temporal patch, the M-RoPE height/width offsets are the token's row/col."""
    for f in layout.frame.unique():
        at = layout.frame == f
        assert torch.equal(pos[1, at] - pos[1, at].min(), layout.row[at])
        assert torch.equal(pos[2, at] - pos[2, at].min(), layout.col[at])


def _random_keep(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k]


def test_dropping_keeps_original_positions(loaded):
    full = loaded.prepared
    n = len(full.video)
    keep = _random_keep(n, n // 4, seed=1)
    pruned = loaded.adapter.drop_video_tokens(full, keep)
    kept_sorted = torch.sort(keep).values
    assert torch.equal(pruned.kept, kept_sorted)
    assert pruned.length == full.length - (n - kept_sorted.numel())
    # which full-sequence tokens survive: every non-droppable token plus the kept video tokens
    survivors = torch.ones(full.length, dtype=torch.bool)
    survivors[full.video.seq_index] = False
    survivors[full.video.seq_index[kept_sorted]] = True
    assert torch.equal(pruned.input_ids[0], full.input_ids[0, survivors])
    assert torch.equal(pruned.inputs_embeds[0], full.inputs_embeds[0, survivors])
    assert torch.equal(pruned.position_ids[..., :], full.position_ids[..., survivors])
    assert pruned.next_position == full.next_position
    assert torch.equal(pruned.video.frame, full.video.frame[kept_sorted])
    assert torch.equal(pruned.input_ids[0, pruned.video.seq_index], full.input_ids[0, full.video.seq_index[kept_sorted]])
    if loaded.family == "qwen3_vl":
        assert int(pruned.visual_mask.sum()) == pruned.deepstack[0].shape[0] == kept_sorted.numel()
    with pytest.raises(IndexError, match="must lie in"):
        loaded.adapter.drop_video_tokens(full, torch.tensor([n]))
    with pytest.raises(ValueError, match="already pruned"):
        loaded.adapter.drop_video_tokens(pruned, keep)


def test_dropping_with_reindex(loaded):
    full, adapter = loaded.prepared, loaded.adapter
    layout = full.video
    everything = adapter.drop_video_tokens(full, torch.arange(len(layout)), reindex=True)
    assert torch.equal(everything.position_ids, full.position_ids)  # nothing dropped, nothing moves
    assert everything.next_position == full.next_position
    # drop the whole last frame (temporal patch) and the last row and column of the others
    keep = (layout.frame < layout.grid[0] - 1) & (layout.row < layout.grid[1] - 1) & (layout.col < layout.grid[2] - 1)
    keep = keep.nonzero().flatten()
    pruned = adapter.drop_video_tokens(full, keep, reindex=True)
    if not loaded.mrope:
        assert torch.equal(pruned.position_ids, torch.arange(pruned.length)[None])
        assert pruned.next_position == pruned.length
        return
    original = adapter.drop_video_tokens(full, keep)
    pos, orig = pruned.position_ids[:, 0], original.position_ids[:, 0]
    video = pruned.video.seq_index
    first_video = int(video.min())
    # text before the video keeps its positions; kept video tokens keep their grid layout
    assert torch.equal(pos[:, :first_video], orig[:, :first_video])
    _assert_grid_positions(pos[:, video], pruned.video)
    # the question after the video: consecutive equal triples, starting earlier than before
    after = int(video.max()) + 1
    assert torch.equal(pos[0, after:], pos[1, after:]) and torch.equal(pos[0, after:], pos[2, after:])
    assert torch.equal(pos[0, after:], pos[0, after] + torch.arange(pruned.length - after))
    assert int(pos[0, after]) < int(orig[0, after])
    assert pruned.next_position == int(pos.max()) + 1 < full.next_position


def test_keeping_every_token_decodes_like_the_full_prompt(loaded):
    full, adapter = loaded.prepared, loaded.adapter
    everything = adapter.drop_video_tokens(full, torch.arange(len(full.video)))
    assert decode_target(adapter, everything, max_new_tokens=8).token_ids == decode_target(
        adapter, full, max_new_tokens=8
    ).token_ids
    few = adapter.drop_video_tokens(full, torch.arange(0, len(full.video), 10))
    assert len(decode_target(adapter, few, max_new_tokens=8).token_ids) >= 1


def test_prefill_in_two_chunks_equals_one(loaded):
    """The video part and the question part can be prefilled separately (the pruning needs this)."""
    full, adapter = loaded.prepared, loaded.adapter
    one = adapter.new_cache(full.length + 4)
    logits_one = adapter.prefill(full, one)
    two = adapter.new_cache(full.length + 4)
    adapter.prefill(full, two, 0, full.video_end)
    logits_two = adapter.prefill(full, two, full.video_end)
    assert one.length == two.length == full.length
    torch.testing.assert_close(logits_two, logits_one, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="needs a cache holding"):
        adapter.prefill(full, adapter.new_cache(full.length), 3)


def test_unsupported_model_type_is_named(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path
    )
    with pytest.raises(UnsupportedModelError, match=r"'llama'.*llava_onevision.*qwen2_5_vl.*qwen3_vl"):
        load_adapter(str(tmp_path))


def test_chat_messages_need_exactly_one_video(loaded):
    two = [{"role": "user", "content": [{"type": "video"}, {"type": "video"}, {"type": "text", "text": "hi"}]}]
    with pytest.raises(ValueError, match="exactly one video"):
        loaded.adapter.messages(two)
    one = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}]
    assert loaded.adapter.messages(one) is one


def test_the_cache_goes_by_the_keyword_the_model_takes(loaded):
    from specvlm.models.base import cache_keyword

    class Older(torch.nn.Module):  # before transformers renamed it
        def forward(self, inputs_embeds, past_key_values=None, **kwargs): ...

    assert cache_keyword(Older) == "past_key_values"
    assert cache_keyword(type(loaded.adapter.language_model)) == "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # `past_key_values` is deprecated, on every call
        logits = loaded.adapter.prefill(loaded.prepared, loaded.adapter.new_cache(loaded.prepared.length))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("height", [1, 3])
def test_frames_one_or_three_pixels_high_are_read_channels_last(loaded, height):
    """A (T, 3, W, 3) clip is ambiguous to a processor left to guess (it took channels first and
    read the frame wrongly): the features equal those of the same frames handed over channels first."""
    frames = np.random.default_rng(height).integers(0, 256, (4, height, 48, 3), dtype=np.uint8)
    clip = VideoClip(frames=frames, timestamps=np.arange(4.0), source_fps=None, source="thin")
    ours = loaded.adapter.build_inputs(clip, PROMPT)
    kwargs = {**loaded.adapter.processor_kwargs(clip), "input_data_format": "channels_first"}
    text = loaded.adapter.processor.apply_chat_template(loaded.adapter.messages(PROMPT), add_generation_prompt=True,
                                                        tokenize=False)  # fmt: skip
    theirs = loaded.adapter.processor(text=[text], videos=[frames.transpose(0, 3, 1, 2).copy()], return_tensors="pt",
                                      **kwargs)  # fmt: skip
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values_videos"], theirs["pixel_values_videos"])
