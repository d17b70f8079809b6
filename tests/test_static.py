"""Static-shape steps (the CUDA-graph path), run eagerly on the CPU against the ordinary path."""

from __future__ import annotations

import pytest
import torch

from specvlm.engine.static import StaticMask, bucket_capacity


@pytest.mark.parametrize("q", [5, 40])  # 4 x 5 rows: FlexAttention; 4 x 40: the grouped matmul
def test_static_attention_equals_sdpa_with_repeated_heads(q):
    g = torch.Generator().manual_seed(0)
    mask = StaticMask(q=q, width=6 + q, capacity=256, device="cpu", group=4)
    mask.prefix.fill_(9)
    pattern = torch.rand(q, 6 + q, generator=g) > 0.4
    mask.pattern.copy_(pattern)
    mask.update()
    assert int(mask.num_blocks) == 1  # the prefix and the pattern fit in the first block of 128
    n = q
    q = torch.randn(1, 8, n, 16, generator=g)
    k = torch.randn(1, 2, 256, 16, generator=g)
    v = torch.randn(1, 2, 256, 16, generator=g)
    ours, weights = mask.block_mask.attend(q, k, v, 0.25)  # what the attention entry runs for this mask
    dense = mask.dense(torch.float32)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1), attn_mask=dense, scale=0.25
    )
    assert weights is None and ours.shape == (1, n, 8, 16)
    torch.testing.assert_close(ours, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_static_mask_places_the_pattern_after_the_prefix():
    pattern = torch.tensor([[True, False, False], [True, True, False]])
    mask = StaticMask(q=2, width=3, capacity=128, device="cpu")
    mask.prefix.fill_(4)
    mask.pattern.copy_(pattern)
    visible = mask.dense(torch.float32)[0, 0] == 0
    expected = torch.zeros(2, 128, dtype=torch.bool)
    expected[:, :4] = True
    expected[:, 4:7] = pattern
    assert torch.equal(visible, expected)
    # the step's pattern buffer: its rows 16 bytes apart (the tree kernel reads them in vectors)
    assert mask.pattern.shape == (2, 3) and mask.pattern.stride() == (16, 1)
    mask.prefix.fill_(300)
    with pytest.raises(ValueError, match="whole blocks"):
        StaticMask(q=2, width=3, capacity=100, device="cpu")


def test_static_mask_visits_only_the_filled_blocks():
    mask = StaticMask(q=1, width=26, capacity=1024, device="cpu")
    for prefix, blocks in ((0, 1), (102, 1), (103, 2), (1000, 8)):
        mask.prefix.fill_(prefix)
        mask.update()
        assert int(mask.num_blocks) == blocks


def test_capacities_come_in_few_sizes():
    sizes = {bucket_capacity(n) for n in range(1, 70000, 37)}
    assert all(bucket_capacity(n) >= n for n in range(1, 70000, 37))
    assert len(sizes) <= 8 + 4 * 5  # multiples of 512 to 4096, then four per doubling
    assert bucket_capacity(16500) == 20480 and bucket_capacity(4096) == 4096


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
    assert set(adapter.workspaces) == {("target", False, False), ("draft", False, False)}  # owned by the model
    ref, ws_ref = weakref.ref(adapter), weakref.ref(adapter.workspaces[("target", False, False)])
    del adapter, ws, again
    gc.collect()
    assert ref() is None and ws_ref() is None  # the model's caches go with it


def test_compilation_is_a_switch(monkeypatch, tiny_pairs):
    from specvlm.engine.static import default_compile
    from specvlm.models import load_adapter

    adapter = load_adapter(str(tiny_pairs("qwen2_5_vl")[1]), dtype="float32")
    assert default_compile(adapter, None) is False  # CPU: eager
    assert default_compile(adapter, True) is True and default_compile(adapter, False) is False
    monkeypatch.setattr(type(adapter), "device", property(lambda self: torch.device("cuda")))
    assert default_compile(adapter, None) is True  # a GPU compiles by default...
    monkeypatch.setenv("SPECVLM_COMPILE", "0")
    assert default_compile(adapter, None) is False  # ...unless told not to
