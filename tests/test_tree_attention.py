"""Tree verification attention: the split-prefix parts merged by log-sum-exp equal plain attention."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from specvlm.engine.tree_attention import tree_attention

ROOT = Path(__file__).resolve().parents[1]


def plain(query, key, value, prefix, pattern, scale):
    q, width = pattern.shape
    allowed = torch.zeros(q, prefix + width, dtype=torch.bool)
    allowed[:, :prefix] = True
    allowed[:, prefix:] = pattern
    rep = query.shape[1] // key.shape[1]
    k = key[:, :, : prefix + width].repeat_interleave(rep, 1)
    v = value[:, :, : prefix + width].repeat_interleave(rep, 1)
    return torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=allowed, scale=scale)


@pytest.mark.parametrize("prefix", [0, 1, 63, 200])
def test_tree_attention_equals_plain_attention(prefix):
    g = torch.Generator().manual_seed(prefix)
    q, width = 26, 26
    pattern = torch.rand(q, width, generator=g) > 0.5
    pattern[torch.arange(q), torch.arange(q)] = True  # every node sees itself
    query = torch.randn(1, 8, q, 16, generator=g)
    key, value = torch.randn(2, 1, 2, 512, 16, generator=g)
    ours = tree_attention(query, key, value, torch.tensor(prefix), pattern, 0.25)
    torch.testing.assert_close(ours, plain(query, key, value, prefix, pattern, 0.25), rtol=1e-5, atol=1e-5)


KERNEL_CHECK = """
import torch
from specvlm.engine import tree_attention as ta
g = torch.Generator().manual_seed(0)
for prefix, rows_heads, q in ((0, 2, 26), (5, 7, 26), (300, 5, 26), (777, 7, 3), (64, 7, 11), (129, 5, 19), (1, 2, 70)):
    width = q
    pattern = torch.rand(q, width, generator=g) > 0.5
    pattern[torch.arange(q), torch.arange(q)] = True
    if prefix % 2:  # a step's buffer: rows 16 bytes apart, a view of a wider tensor
        pattern = ta.pattern_buffer(q, width, "cpu").copy_(pattern)
        assert pattern.stride(0) % 16 == 0 and pattern.stride(0) >= width
    query = torch.randn(1, 2 * rows_heads, q, 32, generator=g)
    key, value = torch.randn(2, 1, 2, 1024, 32, generator=g)
    grouped = query.reshape(1, 2, rows_heads * q, 32)
    ref = ta._merge(*ta._parts_reference(grouped, key, value, prefix, pattern, 0.2))
    out = ta._tree_attention_op(grouped.contiguous(), key, value, torch.tensor(prefix), pattern, 0.2)
    assert out.shape == (1, q, 2 * rows_heads, 32) and out.is_contiguous()  # token-major, as o_proj reads it
    out = out.view(1, q, 2, rows_heads, 32).permute(0, 2, 3, 1, 4).reshape(1, 2, rows_heads * q, 32)
    if prefix == 300:  # what torch.compile traces (the fake) is what the kernel returns
        checks = torch.library.opcheck(ta._tree_attention_op, (grouped.contiguous(), key, value, torch.tensor(prefix),
                                                               pattern, 0.2))  # fmt: skip
        assert set(checks.values()) == {"SUCCESS"}, checks
    err = (out - ref).abs().max().item()
    assert err < 1e-4, (prefix, rows_heads, err)
    # parts past a short prefix's end write no output and the merge reads none: poisoned, no change
    outs, lses = ta.launch_parts(grouped.contiguous(), key, value, torch.tensor(prefix), pattern, 0.2,
                                 ta.kernel_config(rows_heads * q, 2, 4))
    empty = torch.isinf(lses) & (lses < 0)
    outs[empty] = float("nan")
    err = (ta.merge(outs, lses, grouped.dtype) - ref).abs().max().item()
    assert err < 1e-4 and (prefix > 200 or empty.any()), (prefix, rows_heads, err)
    assert torch.allclose(ta._merge(outs, lses), ref, atol=1e-4)
    # verification's 16-bit tilings (float32 takes 64-row tiles): 128-row tiles with a sized last one, 32-slot tiles
    # and a whole tile with the last one in one program (fuse_tail: 130 rows as 128 + 16, 77 as 64 + 16)
    configs = (ta.KernelConfig(128, 64, 8, 3, 1), ta.KernelConfig(64, 32, 4, 3, 1),
               ta.KernelConfig(128, 64, 8, 3, 1, fuse_tail=True), ta.KernelConfig(64, 32, 4, 3, 1, fuse_tail=True))
    for config in configs if rows_heads * q > 64 else ():
        out = ta.launch(grouped.contiguous(), key, value, torch.tensor(prefix), pattern, 0.2, config)
        err = (out - ref).abs().max().item()
        assert err < 1e-4, (prefix, rows_heads, config, err)
print("ok")
"""


def test_triton_kernel_under_the_interpreter_equals_the_reference():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_triton_kernel_compiles_for_hopper():
    """The interpreter accepts code the compiler refuses (mismatched block shapes): compile for sm_90."""
    pytest.importorskip("triton")
    from specvlm.engine import tree_attention as ta
    from specvlm.testing.kernels import compile_merge, compile_parts

    for rows, hkv, dtype in ((7, 4, "bf16"), (130, 8, "bf16"), (182, 4, "bf16"), (182, 4, "fp32"), (77, 8, "bf16"), (56, 2, "bf16")):
        # one token (7B), verification (32B, 7B, 11 nodes for 32B), a 0.5B draft level
        assert compile_parts(rows, ta.kernel_config(rows, hkv, 4 if dtype == "fp32" else 2), dtype).asm.get("cubin")
    for rows, config in ((130, ta.KernelConfig(128, 64, 8, 3, 1, fuse_tail=True)),
                         (182, ta.KernelConfig(128, 32, 8, 3, 1, fuse_tail=True))):  # a whole tile and the last in one program
        assert compile_parts(rows, config).asm.get("cubin")
    for parts, warps in ((34, 8), (64, 8), (2, 4)):  # verification, the most parts, a prefix of one part
        assert compile_merge(parts, warps).asm.get("cubin")


def test_float32_is_not_run_as_tf32():
    """A float32 pair verifies in float32: TF32 products flipped near-ties on the GPU (gpu_check)."""
    from specvlm.engine import tree_attention as ta

    assert ta.dot_precision(torch.float32) == "ieee"
    assert ta.dot_precision(torch.bfloat16) == ta.dot_precision(torch.float16) == "tf32"


def test_row_tiles_cut_the_padding():
    """The last tile takes the rows the whole tiles leave, rounded to a power of two (16 at least)."""
    from specvlm.engine import tree_attention as ta

    assert ta.row_tiles(130, 64) == (64, 16)  # 32B, default tree: 144 rows computed, not 192
    assert ta.row_tiles(182, 64) == (64, 64)  # 7B, default tree
    assert ta.row_tiles(77, 64) == (64, 16)  # 7B, an 11-node tree
    assert ta.row_tiles(95, 64) == (64, 32)
    assert ta.row_tiles(56, 64) == (64, 64)  # a draft level
    assert ta.row_tiles(21, 64) == (32, 32)  # one tile shrinks too
    assert ta.row_tiles(7, 16) == (16, 16)  # one token
