"""Stage I scores on the fast kernels equal the numbers read off an eager run's attention matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specvlm.attention import original
from specvlm.models import load_adapter
from specvlm.testing.tiny import FAMILIES
from specvlm.video import write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    rng = np.random.default_rng(11)
    path = tmp_path_factory.mktemp("scores") / "clip.mp4"
    write_video(path, rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8), fps=4)
    return path


def eager_scores(target_dir, features, prepared) -> torch.Tensor:
    eager = load_adapter(str(target_dir), dtype="float32", attn_implementation="eager")
    with torch.no_grad():
        out = eager.model(**features, output_attentions=True)
    per_layer = [a[0, :, prepared.video_end :, :][..., prepared.video.seq_index] for a in out.attentions]
    return torch.stack([a.mean(dim=(0, 1)) for a in per_layer]).mean(0)


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_equal_the_eager_reference(family, tiny_pairs, video):
    target_dir, _ = tiny_pairs(family)
    adapter = load_adapter(str(target_dir), dtype="float32")  # sdpa
    features = adapter.build_inputs(video, "Describe the video.", num_frames=8)
    prepared = adapter.prepare(features)
    cache = adapter.new_cache(prepared.length)
    config = adapter.language_model.config
    before = config._attn_implementation  # the attention entry installed at load, around the model's sdpa
    logits, scores = adapter.prefill_with_scores(prepared, cache)
    reference = eager_scores(target_dir, features, prepared)
    assert scores.shape == (len(prepared.video),) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference, rtol=1e-4, atol=1e-6)
    assert float(scores.min()) >= 0 and float(scores.sum()) <= 1.0
    # the split prefill's logits match a one-shot prefill's, and the model is left on its kernel
    one_shot = adapter.prefill(prepared, adapter.new_cache(prepared.length))
    torch.testing.assert_close(logits, one_shot, rtol=1e-4, atol=1e-4)
    assert config._attn_implementation == before and original(adapter.language_model) == "sdpa"
    assert cache.length == prepared.length


def test_scores_need_the_full_prompt(tiny_pairs, video):
    adapter = load_adapter(str(tiny_pairs("qwen2_5_vl")[0]), dtype="float32")
    prepared = adapter.prepare(adapter.build_inputs(video, "Describe the video.", num_frames=8))
    pruned = adapter.drop_video_tokens(prepared, torch.arange(4))
    with pytest.raises(ValueError, match="full prompt"):
        adapter.prefill_with_scores(pruned, adapter.new_cache(prepared.length))
