"""Tree verification attention at flash-decoding speed: many query rows over a long filled prefix.

A verification pass runs a whole draft tree (26 nodes) through the target: with 5-7 query heads per
KV head that is 130-182 query rows per KV head, more than FlexAttention's decoding kernel takes, and
its other kernels (and SDPA's) parallelise over query blocks only, a handful of programs for the
whole KV. Here (cascade attention):
- the prefix (every slot before ``prefix``, visible to every row) is split over its *filled* length
  into ``splits`` parts, a count fixed per KV-head count, each part's bounds computed on the device
  from ``prefix``, so the work follows the filled length and never the capacity, and a graph
  captured once replays at any length; each program reads one part of one KV head for one tile of
  rows, the row tiles of one part running side by side so the part is read from memory once;
- the block of ``width`` slots from ``prefix`` on (the tree's own nodes) is one more part, under the
  ``pattern`` (q x width) mask; a pattern whose rows start 16 bytes apart (``pattern_buffer``) is
  read in whole vectors, which keeps the kernel's registers from spilling;
- the parts are merged by their log-sum-exp.
On a GPU the parts are one Triton kernel and the merge one more; elsewhere the same arithmetic runs in PyTorch on the
filled slice (the reference the GPU kernel is tested against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch ships triton wherever it has CUDA
    triton = None


@dataclass(frozen=True)
class KernelConfig:
    """Tiling of one launch: rows and slots per program, warps, pipeline stages, and programs per SM
    that the prefix's parts aim at (for each tile of rows). ``fuse_tail``: rows that make one whole
    tile and a smaller last one run in one program per part, each KV tile loaded once for both."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    per_sm: int = 2
    fuse_tail: bool = False


def kernel_config(rows: int, kv_heads: int, element_size: int = 2) -> KernelConfig:
    """The tiling for ``rows`` query rows per KV head, from the timed tilings
    (``benchmarks/attention.py --sweep [--few-rows] [--grid ...]``, results/tree_kernel_sweep.jsonl;
    all layers of a step, ms at 64k / 16k / 4k, this kernel's records labelled ``aligned``, H100):
    - verification with 4 or fewer KV heads (7B, 182 rows): 64-row tiles of 32 slots, 3 stages, one
      program per SM (2.40 / 1.02 / 0.66 against 2.64 / 1.23 / 0.76 at two per SM, 3.01 / 1.22 /
      0.86 for 128-row tiles; fewer, longer parts write fewer partial outputs);
    - verification with 8 KV heads (32B, 130 rows): 128-row tiles of 8 warps, 3 stages, one program
      per SM (11.4 / 3.64 / 1.82; 12.2 / 4.85 / 2.80 at two per SM); a last tile of 16 rows runs in
      the same program as the whole one (``fuse_tail``; label ``fused``, kernel ``d606145b14``: 9.45
      / 3.47 against 11.39 / 3.66 at 64k / 16k, one H100). A larger tail stays apart: fused, 7B's
      128 + 64 rows took 2.82 / 1.24 against 2.36 / 1.04 for its 64-row tiles;
    - a draft level (17-64 rows, one tile of 64, the 0.5B draft's 56): 4 warps, 3 stages, one
      program per SM (0.55 / 0.30 / 0.23 against 0.61 / 0.32 / 0.25 with 8 warps);
    - one token (16 rows or fewer): kept from the previous kernel's sweep (H200); on this kernel its
      neighbours (32 or 64 slots, one or two programs per SM) lie within 2% of each other for 7B
      but for 32 slots at one per SM.
    Parts of at least 512-2048 slots (a floor on a part's length, timed as commit 3cf9552's ``min_part``, kernel
    ``0568f68c7e``) were slower, or within 1%, everywhere but 7B's verification at 64k, where one
    program per SM does better still; 256-row tiles (16 warps) were slower for every shape. Float32 (4-byte elements) keeps 64-row tiles and two stages: its tiles
    take twice the shared memory, and three stages of 128 rows would not fit in an SM's.
    """
    if element_size > 2 and rows > 16:
        return KernelConfig(block_m=64, block_n=64, num_stages=2, per_sm=2)
    if rows <= 16:
        return KernelConfig(block_m=16, block_n=64, num_stages=3, per_sm=2)
    if rows <= 64:
        return KernelConfig(block_m=64, block_n=64, num_stages=3, per_sm=1)
    if kv_heads <= 4:
        return KernelConfig(block_m=64, block_n=32, num_stages=3, per_sm=1)
    small_tail = row_tiles(rows, 128)[1] <= 16
    return KernelConfig(block_m=128, block_n=64, num_warps=8, num_stages=3, per_sm=1, fuse_tail=small_tail)


if triton is not None:

    @triton.jit
    def _kv(K, V, skn, svn, n0, end, MODE: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
        """One KV tile from slot ``n0``: MODE 0 a whole tile, loaded without a mask; else the slots
        before ``end`` (zeros past it)."""
        cols = n0 + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, D)
        if MODE == 0:
            k = tl.load(K + cols[:, None] * skn + dims[None, :])
            v = tl.load(V + cols[:, None] * svn + dims[None, :])
        else:
            valid = cols < end
            k = tl.load(K + cols[:, None] * skn + dims[None, :], mask=valid[:, None], other=0.0)
            v = tl.load(V + cols[:, None] * svn + dims[None, :], mask=valid[:, None], other=0.0)
        return k, v

    @triton.jit
    def _update(acc, m_i, l_i, q, k, v, PATTERN, spn, n0, j0, end, rows, M, Q_LEN, qk_scale,
                MODE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """One KV tile (``_kv``'s, from slot ``n0``) of the online softmax. MODE 0: a whole tile of the
        prefix, scored without a mask (every tile of a part but the prefix's last); 1: the prefix's
        last, partial tile; 2: the pattern block, its columns from ``j0`` on (a multiple of BLOCK_N, so
        that with a row stride ``spn`` of 16 bytes the pattern loads in whole vectors: a gather of
        single bytes costs the kernel every register it has, and spills). Only 1 and 2 guard rows
        that have seen nothing yet."""
        cols = n0 + tl.arange(0, BLOCK_N)
        valid = cols < end
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if MODE == 1:
            s = tl.where(valid[None, :], s, float("-inf"))
        if MODE == 2:
            allowed = tl.load(PATTERN + (rows % Q_LEN)[:, None] * spn + (j0 + tl.arange(0, BLOCK_N))[None, :],
                              mask=(rows[:, None] < M) & valid[None, :], other=0) != 0  # fmt: skip
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        if MODE == 0:  # every score finite, so m_new is
            m_safe = m_new
        else:
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s * qk_scale - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        return acc, m_new, l_i

    @triton.jit
    def _tile(acc, m_i, l_i, q, K, V, PATTERN, skn, svn, spn, n0, j0, end, rows, M, Q_LEN, qk_scale,
              MODE: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """One KV tile loaded and scored for one block of rows (see ``_update``)."""
        k, v = _kv(K, V, skn, svn, n0, end, MODE, BLOCK_N, D)
        return _update(acc, m_i, l_i, q, k, v, PATTERN, spn, n0, j0, end, rows, M, Q_LEN, qk_scale, MODE, BLOCK_N,
                       PRECISION)  # fmt: skip

    @triton.jit
    def _tile2(acc, m_i, l_i, q, rows, acc2, m2, l2, q2, rows2, K, V, PATTERN, skn, svn, spn, n0, j0, end, M, Q_LEN,
               qk_scale, MODE: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """One KV tile loaded once and scored for two blocks of rows."""
        k, v = _kv(K, V, skn, svn, n0, end, MODE, BLOCK_N, D)
        acc, m_i, l_i = _update(acc, m_i, l_i, q, k, v, PATTERN, spn, n0, j0, end, rows, M, Q_LEN, qk_scale, MODE,
                                BLOCK_N, PRECISION)  # fmt: skip
        acc2, m2, l2 = _update(acc2, m2, l2, q2, k, v, PATTERN, spn, n0, j0, end, rows2, M, Q_LEN, qk_scale, MODE,
                               BLOCK_N, PRECISION)  # fmt: skip
        return acc, m_i, l_i, acc2, m2, l2

    @triton.jit
    def _finish(O, LSE, som, rows, M, acc, m_i, l_i, D: tl.constexpr):
        """Write one block of rows' part output and base-2 log-sum-exp."""
        dims = tl.arange(0, D)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))  # base 2
        keep = rows < M
        # a part that saw nothing (past a short prefix's end) writes only its log-sum-exp, -inf, and
        # the merge never reads its output: at 4k, half the parts of a 63-part split
        tl.store(O + rows[:, None] * som + dims[None, :], out, mask=(keep & (l_i > 0.0))[:, None])
        tl.store(LSE + rows, lse, mask=keep)

    @triton.jit
    def _bounds(prefix, part, SPLITS, BLOCK_N: tl.constexpr):
        """A part's share of the prefix: ``start``, the end of its whole tiles, and its ``end``."""
        blocks = tl.cdiv(prefix, BLOCK_N)
        per = tl.cdiv(blocks, SPLITS)
        start = part * per * BLOCK_N
        end = tl.minimum(start + per * BLOCK_N, prefix)
        whole = tl.maximum(end - end % BLOCK_N, start)
        return start, whole, end

    @triton.jit
    def _rows2(Q, K, V, PATTERN, O, LSE, sqm, skn, svn, spn, som, part, prefix, M, Q_LEN, WIDTH, SPLITS, scale,
               BM: tl.constexpr, BM2: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
               PRECISION: tl.constexpr):  # fmt: skip
        """Every row of one KV head over one part: BM rows and the BM2 after them, each KV tile loaded
        once for both (a whole tile and a small last one in one program: no program of the grid
        holds only the few rows past the whole tiles)."""
        rows = tl.arange(0, BM)
        rows2 = BM + tl.arange(0, BM2)
        dims = tl.arange(0, D)
        q = tl.load(Q + rows[:, None] * sqm + dims[None, :], mask=rows[:, None] < M, other=0.0)
        q2 = tl.load(Q + rows2[:, None] * sqm + dims[None, :], mask=rows2[:, None] < M, other=0.0)
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, D], tl.float32)
        m2 = tl.full([BM2], float("-inf"), tl.float32)
        l2 = tl.zeros([BM2], tl.float32)
        acc2 = tl.zeros([BM2, D], tl.float32)
        qk_scale = scale * 1.4426950408889634  # exp2
        if part < SPLITS:
            start, whole, end = _bounds(prefix, part, SPLITS, BLOCK_N)
            for n0 in range(start, whole, BLOCK_N):
                acc, m_i, l_i, acc2, m2, l2 = _tile2(acc, m_i, l_i, q, rows, acc2, m2, l2, q2, rows2, K, V, PATTERN, skn,
                                                     svn, spn, n0, 0, end, M, Q_LEN, qk_scale, 0, BLOCK_N, D,
                                                     PRECISION)  # fmt: skip
            if whole < end:
                acc, m_i, l_i, acc2, m2, l2 = _tile2(acc, m_i, l_i, q, rows, acc2, m2, l2, q2, rows2, K, V, PATTERN, skn,
                                                     svn, spn, whole, 0, end, M, Q_LEN, qk_scale, 1, BLOCK_N, D,
                                                     PRECISION)  # fmt: skip
        else:
            for j0 in range(0, WIDTH, BLOCK_N):
                acc, m_i, l_i, acc2, m2, l2 = _tile2(acc, m_i, l_i, q, rows, acc2, m2, l2, q2, rows2, K, V, PATTERN, skn,
                                                     svn, spn, prefix + j0, j0, prefix + WIDTH, M, Q_LEN, qk_scale, 2,
                                                     BLOCK_N, D, PRECISION)  # fmt: skip
        _finish(O, LSE, som, rows, M, acc, m_i, l_i, D)
        _finish(O, LSE, som, rows2, M, acc2, m2, l2, D)

    @triton.jit
    def _rows(Q, K, V, PATTERN, O, LSE, sqm, skn, svn, spn, som, row0, part, prefix, M, Q_LEN, WIDTH, SPLITS,
              scale, BM: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
        """BM rows from ``row0`` over one part (Q ... LSE already at this part's KV head)."""
        rows = row0 + tl.arange(0, BM)
        dims = tl.arange(0, D)
        q = tl.load(Q + rows[:, None] * sqm + dims[None, :], mask=rows[:, None] < M, other=0.0)
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, D], tl.float32)
        qk_scale = scale * 1.4426950408889634  # exp2
        if part < SPLITS:  # a share of the prefix: whole tiles, then the prefix's partial last one
            start, whole, end = _bounds(prefix, part, SPLITS, BLOCK_N)
            for n0 in range(start, whole, BLOCK_N):
                acc, m_i, l_i = _tile(acc, m_i, l_i, q, K, V, PATTERN, skn, svn, spn, n0, 0, end, rows, M, Q_LEN,
                                      qk_scale, 0, BLOCK_N, D, PRECISION)  # fmt: skip
            if whole < end:
                acc, m_i, l_i = _tile(acc, m_i, l_i, q, K, V, PATTERN, skn, svn, spn, whole, 0, end, rows, M, Q_LEN,
                                      qk_scale, 1, BLOCK_N, D, PRECISION)  # fmt: skip
        else:  # the pattern block
            for j0 in range(0, WIDTH, BLOCK_N):
                acc, m_i, l_i = _tile(acc, m_i, l_i, q, K, V, PATTERN, skn, svn, spn, prefix + j0, j0, prefix + WIDTH,
                                      rows, M, Q_LEN, qk_scale, 2, BLOCK_N, D, PRECISION)  # fmt: skip
        _finish(O, LSE, som, rows, M, acc, m_i, l_i, D)

    @triton.jit
    def _parts_kernel(
        Q, K, V, PREFIX, PATTERN, O, LSE,
        sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, spn, sob, soh, sos, som, slb, slh, sls,
        HKV, M, Q_LEN, WIDTH, SPLITS, scale,
        D: tl.constexpr, BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr, FUSED: tl.constexpr,
    ):  # fmt: skip
        """Program (tile, part, batch x KV head): BLOCK_M rows of one part, the last tile TAIL_M
        rows (fewer when the rows overrun the whole tiles by a little: 130 rows are two tiles of 64
        and one of 16, not three of 64). FUSED (one whole tile and the last): one program per part
        runs both, BLOCK_M + TAIL_M rows."""
        tile, part, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        b, h = bh // HKV, bh % HKV
        prefix = tl.load(PREFIX).to(tl.int32)
        Q += b * sqb + h * sqh
        K += b * skb + h * skh
        V += b * svb + h * svh
        O += b * sob + h * soh + part * sos
        LSE += b * slb + h * slh + part * sls
        if FUSED:
            _rows2(Q, K, V, PATTERN, O, LSE, sqm, skn, svn, spn, som, part, prefix, M, Q_LEN, WIDTH, SPLITS, scale,
                   BLOCK_M, TAIL_M, BLOCK_N, D, PRECISION)  # fmt: skip
        elif TAIL_M < BLOCK_M:
            if tile == tl.num_programs(0) - 1:
                _rows(Q, K, V, PATTERN, O, LSE, sqm, skn, svn, spn, som, tile * BLOCK_M, part, prefix, M, Q_LEN, WIDTH,
                      SPLITS, scale, TAIL_M, BLOCK_N, D, PRECISION)  # fmt: skip
            else:
                _rows(Q, K, V, PATTERN, O, LSE, sqm, skn, svn, spn, som, tile * BLOCK_M, part, prefix, M, Q_LEN, WIDTH,
                      SPLITS, scale, BLOCK_M, BLOCK_N, D, PRECISION)  # fmt: skip
        else:
            _rows(Q, K, V, PATTERN, O, LSE, sqm, skn, svn, spn, som, tile * BLOCK_M, part, prefix, M, Q_LEN, WIDTH,
                  SPLITS, scale, BLOCK_M, BLOCK_N, D, PRECISION)  # fmt: skip

    @triton.jit
    def _merge_kernel(
        O, LSE, OUT, sob, soh, sop, som, slb, slh, slp, sub, suh, sur, sui, HKV, P, Q_LEN,
        D: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """One launch for the merge: each program weighs every part of one row of one KV head by
        its log-sum-exp, all parts loaded at once (a loop over them waits on each load in turn,
        which made the merge cost more than the parts), and writes the row in the output's dtype.
        Row ``r * Q_LEN + i`` (query head ``r`` of the KV head's group, token ``i``) is written at
        ``r * sur + i * sui``: grouped as the rows came, or token-major, as attention's output goes
        on to the output projection (one copy less)."""
        row, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // HKV, bh % HKV
        parts = tl.arange(0, BLOCK_P)
        dims = tl.arange(0, D)
        inside = parts < P
        lses = tl.load(LSE + b * slb + h * slh + parts * slp + row, mask=inside, other=float("-inf"))
        top = tl.max(lses, 0)
        top = tl.where(top == float("-inf"), 0.0, top)
        w = tl.exp2(lses - top)
        total = tl.sum(w, 0)
        seen = inside & (lses > float("-inf"))  # parts that saw nothing wrote no output
        o = tl.load(O + b * sob + h * soh + parts[:, None] * sop + row * som + dims[None, :], mask=seen[:, None],
                    other=0.0)  # fmt: skip
        out = tl.sum(w[:, None] * o, 0) / tl.where(total == 0.0, 1.0, total)
        tl.store(OUT + b * sub + h * suh + (row // Q_LEN) * sur + (row % Q_LEN) * sui + dims, out.to(OUT.dtype.element_ty))


@lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _splits(hkv: int, batch: int, device, per_sm: int) -> int:
    """Parts of the prefix: about ``per_sm`` programs per SM for each tile of rows; at most 63, so
    that with the pattern block's part the merge loads a power of two."""
    return max(1, min(63, per_sm * _multiprocessors(device) // (batch * hkv)))


def row_tiles(rows: int, block_m: int) -> tuple[int, int]:
    """Rows per program and rows of the last tile: the last takes the smallest power of two (16 at
    least, the tensor cores' smallest) holding what the whole tiles leave; a single tile shrinks
    the same way. The default tree's 130 rows (32B) are 64 + 64 + 16 (was 64 x 3: a third of the
    work on padding)."""
    tiles = -(-rows // block_m)
    last = rows - (tiles - 1) * block_m
    tail = min(block_m, max(16, 1 << (last - 1).bit_length()))
    return (tail, tail) if tiles == 1 else (block_m, tail)


def fused_tail(rows: int, config: KernelConfig) -> bool:
    """Whether ``config`` runs ``rows`` rows as one program per part: asked for (``fuse_tail``), and
    the rows make exactly one whole tile and a last one."""
    return config.fuse_tail and -(-rows // config.block_m) == 2


def pattern_buffer(q: int, width: int, device) -> torch.Tensor:
    """A (q, width) bool buffer for a step's pattern whose rows start 16 bytes apart (a view of a
    wider one): the kernel then loads its pattern tiles in whole vectors. Compiled for sm_90 (Triton
    3.6, ``benchmarks/attention.py --resources``), a pattern of 26 columns in rows of 26 bytes made
    every verification tiling use all 255 registers, most of them spilling; in rows of 32, none
    spills (results/tree_kernel_resources.jsonl)."""
    return torch.zeros(q, -(-width // 16) * 16, dtype=torch.bool, device=device)[:, :width]


def dot_precision(dtype: torch.dtype) -> str:
    """Float32 inputs stay float32 (Triton's default for them is TF32, which flips near-ties that
    the target's own float32 steps do not); 16-bit inputs take the tensor cores as they are."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _merge(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """outs (B, Hkv, P, M, D) fp32, lses (B, Hkv, P, M) base-2 log-sum-exps -> (B, Hkv, M, D)."""
    top = lses.amax(2, keepdim=True)
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    w = torch.exp2(lses - top)
    seen = torch.where(w[..., None] > 0, outs, 0.0)  # the kernel's parts that saw nothing wrote no output
    return (seen * w[..., None]).sum(2) / w.sum(2)[..., None]


def _parts_reference(grouped, key, value, prefix: int, pattern, scale):
    """The prefix and the pattern block as two parts, in PyTorch over the filled slice."""
    q, width = pattern.shape
    rows = grouped.shape[2]
    scores = torch.matmul(grouped.float(), key[:, :, : prefix + width].float().transpose(-1, -2)) * scale
    allowed = torch.zeros(rows, prefix + width, dtype=torch.bool, device=grouped.device)
    allowed[:, :prefix] = True
    allowed[:, prefix:] = pattern.repeat(rows // q, 1)
    outs, lses = [], []
    for sel in (slice(0, prefix), slice(prefix, prefix + width)):
        s = scores[..., sel].masked_fill(~allowed[:, sel], float("-inf"))
        lse = torch.logsumexp(s, -1)
        p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
        outs.append(torch.matmul(p, value[:, :, sel].float()))
        lses.append(lse / math.log(2.0))
    return torch.stack(outs, 2), torch.stack(lses, 2)


def tree_attention(query, key, value, prefix: torch.Tensor, pattern: torch.Tensor, scale: float) -> torch.Tensor:
    """query (B, Hq, q, D) over key/value (B, Hkv, C, D): slots before ``prefix`` (a 0-d device
    tensor) visible to all, slots ``prefix + j`` where ``pattern[i, j]``. Returns (B, Hq, q, D)."""
    b, hq, q, d = query.shape
    hkv = key.shape[1]
    rows = hq // hkv * q
    grouped = query.reshape(b, hkv, rows, d)  # row r * q + i: head h * rep + r, token i
    if query.device.type != "cuda" or triton is None:
        outs, lses = _parts_reference(grouped, key, value, int(prefix), pattern, scale)
        return _merge(outs, lses).to(query.dtype).view(b, hq, q, d)
    # written token-major, (B, q, Hq, D): the layout the output projection reads, so the caller's
    # transpose back is a view and no copy follows
    return _tree_attention_op(grouped.contiguous(), key, value, prefix, pattern, scale).transpose(1, 2)


@torch.library.custom_op("specvlm::tree_attention", mutates_args=())
def _tree_attention_op(grouped: torch.Tensor, key: torch.Tensor, value: torch.Tensor, prefix: torch.Tensor,
                       pattern: torch.Tensor, scale: float) -> torch.Tensor:  # fmt: skip
    """Grouped rows (B, Hkv, rows, D) -> (B, q, Hq, D), token-major."""
    config = kernel_config(grouped.shape[2], grouped.shape[1], grouped.element_size())
    return launch(grouped, key, value, prefix, pattern, scale, config, token_major=True)


def launch(grouped, key, value, prefix, pattern, scale: float, config: KernelConfig, *,
           token_major: bool = False) -> torch.Tensor:  # fmt: skip
    """The GPU kernel on grouped rows (B, Hkv, rows, D) with a given tiling, and the merge (its
    output grouped like the rows, or token-major: see ``merge``)."""
    outs, lses = launch_parts(grouped, key, value, prefix, pattern, scale, config)
    return merge(outs, lses, grouped.dtype, pattern.shape[0] if token_major else None)


def launch_parts(grouped, key, value, prefix, pattern, scale: float, config: KernelConfig):
    """The parts' kernel alone: outs (B, Hkv, P, rows, D) fp32 and their base-2 log-sum-exps."""
    b, hkv, rows, d = grouped.shape
    q, width = pattern.shape
    splits = _splits(hkv, b, grouped.device, config.per_sm)
    block_m, tail_m = row_tiles(rows, config.block_m)
    outs = torch.empty(b, hkv, splits + 1, rows, d, dtype=torch.float32, device=grouped.device)
    lses = torch.empty(b, hkv, splits + 1, rows, dtype=torch.float32, device=grouped.device)
    if key.stride(-1) != 1 or value.stride(-1) != 1:
        key, value = key.contiguous(), value.contiguous()
    if pattern.stride(-1) != 1:
        pattern = pattern.contiguous()
    fused = fused_tail(rows, config)
    grid = (1 if fused else triton.cdiv(rows, block_m), splits + 1, b * hkv)
    _parts_kernel[grid](
        grouped, key, value, prefix, pattern.view(torch.int8), outs, lses,  # bool as bytes, no copy
        grouped.stride(0), grouped.stride(1), grouped.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), pattern.stride(0), outs.stride(0), outs.stride(1), outs.stride(2),
        outs.stride(3), lses.stride(0), lses.stride(1), lses.stride(2),
        hkv, rows, q, width, splits, scale, D=d, BLOCK_M=block_m, TAIL_M=tail_m, BLOCK_N=config.block_n,
        PRECISION=dot_precision(grouped.dtype), FUSED=fused,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return outs, lses


def merge(outs: torch.Tensor, lses: torch.Tensor, dtype: torch.dtype, q: int | None = None) -> torch.Tensor:
    """``_merge`` in one GPU launch (the PyTorch form is a dozen kernels over every part, which cost
    more than the parts themselves at short prefixes): outs (B, Hkv, P, M, D) fp32 -> (B, Hkv, M, D),
    or, given the step's ``q`` tokens, token-major (B, q, Hq, D) with row ``r * q + i`` at query head
    ``h * (M // q) + r``, token ``i``."""
    b, hkv, parts, rows, d = outs.shape
    if q is None:
        out = torch.empty(b, hkv, rows, d, dtype=dtype, device=outs.device)
        strides, q_len = (out.stride(0), out.stride(1), 0, out.stride(2)), rows  # every row has r = 0
    else:
        out = torch.empty(b, q, hkv * (rows // q), d, dtype=dtype, device=outs.device)
        strides, q_len = (out.stride(0), rows // q * out.stride(2), out.stride(2), out.stride(1)), q
    block_p = triton.next_power_of_2(parts)
    _merge_kernel[(rows, b * hkv)](
        outs, lses, out, outs.stride(0), outs.stride(1), outs.stride(2), outs.stride(3), lses.stride(0),
        lses.stride(1), lses.stride(2), *strides, hkv, parts, q_len,
        D=d, BLOCK_P=block_p, num_warps=4 if block_p * d <= 4096 else 8,
    )  # fmt: skip
    return out


@_tree_attention_op.register_fake
def _(grouped, key, value, prefix, pattern, scale):
    b, hkv, rows, d = grouped.shape
    q = pattern.shape[0]
    return grouped.new_empty(b, q, hkv * (rows // q), d)
