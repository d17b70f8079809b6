"""The tree attention kernel compiled for a Hopper GPU (sm_90) on any machine, GPU or not: its
launch signature built the way a launch specialises it, for the compile test and for
``benchmarks/attention.py --resources`` (registers, spills, shared memory)."""

from __future__ import annotations

import torch
import triton
from triton.backends.compiler import GPUTarget

from specvlm.engine import tree_attention as ta


def compile_parts(rows: int, config: ta.KernelConfig, dtype: str = "bf16", d: int = 128,
                  pattern_aligned: bool = True):  # fmt: skip
    """The parts kernel for ``rows`` query rows per KV head at ``config``'s tiling, inputs of
    ``dtype`` ("bf16" or "fp32"). A launch specialises pointers and the integers divisible by 16:
    the strides, and the pattern's row stride only when its rows are 16 bytes apart
    (``pattern_aligned``, the engine's step buffers)."""
    names = ta._parts_kernel.arg_names
    pointers = {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}", "PREFIX": "*i64", "PATTERN": "*i8",
                "O": "*fp32", "LSE": "*fp32"}  # fmt: skip
    block_m, tail_m = ta.row_tiles(rows, config.block_m)
    precision = ta.dot_precision(torch.float32 if dtype == "fp32" else torch.bfloat16)
    constants = {"D": d, "BLOCK_M": block_m, "TAIL_M": tail_m, "BLOCK_N": config.block_n, "PRECISION": precision,
                 "FUSED": ta.fused_tail(rows, config)}  # fmt: skip
    signature = {n: pointers.get(n) or ("constexpr" if n in constants else "fp32" if n == "scale" else "i32")
                 for n in names}  # fmt: skip
    aligned = [n for n in names if n in pointers or (n.startswith("s") and n != "scale" and (pattern_aligned or n != "spn"))]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    source = triton.compiler.ASTSource(fn=ta._parts_kernel, signature=signature, constexprs=constants, attrs=attrs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def compile_merge(parts: int, warps: int, d: int = 128, out_dtype: str = "bf16"):
    """The merge kernel over ``parts`` parts, for sm_90."""
    pointers = {"O": "*fp32", "LSE": "*fp32", "OUT": f"*{out_dtype}"}
    constants = {"D": d, "BLOCK_P": triton.next_power_of_2(parts)}
    signature = {n: pointers.get(n) or ("constexpr" if n in constants else "i32") for n in ta._merge_kernel.arg_names}
    source = triton.compiler.ASTSource(fn=ta._merge_kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
