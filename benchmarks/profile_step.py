"""Profile one decode step of target-only decoding vs generate at a real LM shape (GPU).

    python benchmarks/profile_step.py [--shape llava-ov-7b] [--frames 256]
    python benchmarks/profile_step.py --static --shape llava-ov-7b --context 65536 --q 1 26

``--static``: the engine's compiled steps of q tokens (1: a one-token step, the default tree's 26:
verification, 8: a draft level) over a workspace filled to ``--context`` (its keys and values are
whatever the memory held: timing only). Prints each step's captured replay time (CUDA events) and
the kernels of the same step run uncaptured, grouped, with their share of the step; ``--out FILE``
appends each step's record as a JSON line. ``--max-autotune``: inductor times its Triton matmul
templates against cuBLAS for every matmul shape of the step and keeps the faster (a longer compile).
``--combo-kernels``: inductor launches independent pointwise kernels of a step as one (its horizontal
fusion: the rotary embeddings of q and k and the cache writes of k and v, say).

    python benchmarks/profile_step.py --static --shape llava-ov-7b --context 65536 --q 1 26 --out steps.jsonl
    python benchmarks/profile_step.py --static --shape llava-ov-0.5b --context 6656 --q 1 8 --out steps.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from specvlm.engine.decoding import decode_target
from specvlm.engine.static import Workspace, bucket_capacity
from specvlm.engine.tree import DraftTree
from specvlm.testing.shapes import random_adapter
from specvlm.video import load_video


def static_steps(args) -> None:
    import torch._inductor.config as inductor

    inductor.max_autotune_gemm = inductor.max_autotune_gemm or args.max_autotune
    inductor.combo_kernels = inductor.combo_kernels or args.combo_kernels
    adapter = random_adapter(args.shape)
    tree = DraftTree.default()
    patterns = {1: torch.ones(1, 1, dtype=torch.bool), tree.draft_width: tree.draft_patterns()[2],
                tree.num_nodes: tree.ancestor_mask}  # fmt: skip
    ws = Workspace(adapter, bucket_capacity(args.context + 512), static=True, compile=True)
    print(f"{args.shape}: {args.context} filled of {ws.cache.capacity}", flush=True)
    for q in args.q:
        pattern = patterns[q].cuda()
        tokens = torch.zeros(1, q, dtype=torch.long, device="cuda")
        positions = torch.arange(q, device="cuda")[None] + args.context
        ws.cache.length = args.context
        t0 = time.perf_counter()
        ws.step(tokens, positions, args.context, pattern)  # compiles and captures
        step = ws._steps[tuple(pattern.shape)]
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.reps):
            step.graph.replay()
        end.record()
        torch.cuda.synchronize()
        replay_ms = start.elapsed_time(end) / args.reps
        print(f"\n===== q={q}: captured replay {replay_ms:.3f} ms (compile+capture {time.perf_counter() - t0:.0f}s)")
        with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step._run()
            torch.cuda.synchronize()
        kernels = [e for e in prof.key_averages() if e.self_device_time_total > 0]
        total = sum(e.self_device_time_total for e in kernels) / 3
        print(f"uncaptured kernels: {total / 1000:.3f} ms per step, {sum(e.count for e in kernels) // 3} launches")
        top = sorted(kernels, key=lambda e: -e.self_device_time_total)
        for e in top[:28]:
            per = e.self_device_time_total / 3
            print(f"  {per / 1000:8.3f} ms {100 * per / total:5.1f}% x{e.count // 3:4d}  {e.key[:110]}")
        if args.out is not None:
            record = {"shape": args.shape, "context": args.context, "capacity": ws.cache.capacity, "q": q,
                      "replay_ms": replay_ms, "uncaptured_ms": total / 1000,
                      "launches": sum(e.count for e in kernels) // 3, "max_autotune": args.max_autotune,
                      "combo_kernels": args.combo_kernels,
                      "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                      "kernels": [{"name": e.key[:200], "ms": e.self_device_time_total / 3000, "count": e.count // 3}
                                  for e in top]}  # fmt: skip
            with args.out.open("a") as f:
                f.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llava-ov-7b")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--static", action="store_true", help="profile the engine's compiled steps instead")
    parser.add_argument("--context", type=int, default=65536)
    parser.add_argument("--q", type=int, nargs="+", default=[1, 26])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, help="with --static: each step's record appended as a JSON line")
    parser.add_argument("--combo-kernels", action="store_true", help="with --static: inductor's horizontal fusion")
    parser.add_argument("--max-autotune", action="store_true", help="with --static: inductor autotunes the matmuls")
    args = parser.parse_args()
    if args.static:
        static_steps(args)
        return
    adapter = random_adapter(args.shape)
    adapter.eos_token_ids = ()
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, 56, 56, 3), dtype=np.uint8)
    features = adapter.build_inputs(load_video(frames), "Describe the video.")
    prepared = adapter.prepare(features)
    gpu = features.to("cuda")
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    decode_target(adapter, prepared, max_new_tokens=4)
    with torch.no_grad():
        adapter.model.generate(**gpu, max_new_tokens=4, min_new_tokens=4, **kw)
    for name, fn in [
        ("ours", lambda: decode_target(adapter, prepared, max_new_tokens=args.tokens)),
        ("generate", lambda: adapter.model.generate(**gpu, max_new_tokens=args.tokens, min_new_tokens=args.tokens, **kw)),
    ]:
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
        torch.cuda.synchronize()
        print(f"\n===== {name}: {time.perf_counter() - t:.3f}s for {args.tokens} tokens (profiled)")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=10, max_name_column_width=60))


if __name__ == "__main__":
    main()
