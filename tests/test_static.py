"""Static-shape steps (the CUDA-graph path), run eagerly on the CPU against the ordinary path."""

from __future__ import annotations

import torch

from specvlm.engine.static import gqa_attention, static_mask


def test_gqa_attention_equals_sdpa_with_repeated_heads():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, 5, 16, generator=g)
    k = torch.randn(1, 2, 11, 16, generator=g)
    v = torch.randn(1, 2, 11, 16, generator=g)
    allowed = torch.rand(5, 11, generator=g) > 0.3
    allowed[:, 0] = True
    mask = torch.zeros(5, 11).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
    ours, weights = gqa_attention(None, q, k, v, mask, scaling=0.25)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1), attn_mask=mask, scale=0.25
    )
    assert weights is None and ours.shape == (1, 5, 8, 16)
    torch.testing.assert_close(ours, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_static_mask_places_the_pattern_after_the_prefix():
    pattern = torch.tensor([[True, False, False], [True, True, False]])
    mask = static_mask(torch.tensor(4), pattern, capacity=9, dtype=torch.float32)[0, 0]
    visible = mask == 0
    expected = torch.zeros(2, 9, dtype=torch.bool)
    expected[:, :4] = True
    expected[:, 4:7] = pattern
    assert torch.equal(visible, expected)
    assert float(mask.min()) == torch.finfo(torch.float32).min


def test_workspaces_are_reused_and_do_not_keep_models_alive(tiny_pairs):
    import gc
    import weakref

    from specvlm.engine.static import Workspace
    from specvlm.models import load_adapter

    adapter = load_adapter(str(tiny_pairs("qwen2_5_vl")[1]), dtype="float32")
    ws = Workspace.reuse(adapter, 100, role="target", static=False)
    ws.cache.commit(7)
    again = Workspace.reuse(adapter, 60, role="target", static=False)
    assert again is ws and again.cache.length == 0  # same buffers, emptied
    assert Workspace.reuse(adapter, 60, role="draft", static=False) is not ws  # one per role
    assert Workspace.reuse(adapter, 5000, role="target", static=False).cache.capacity >= 5000  # grown
    ref = weakref.ref(adapter)
    del adapter, ws, again
    gc.collect()
    assert ref() is None
