"""Profile one decode step of target-only decoding vs generate at a real LM shape (GPU).

    python benchmarks/profile_step.py [--shape llava-ov-7b] [--frames 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from specvlm.engine.decoding import decode_target
from specvlm.testing.shapes import random_adapter
from specvlm.video import load_video


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llava-ov-7b")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
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
