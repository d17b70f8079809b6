"""Tau and speedup of the bundled trained pair on held-out synthetic clips, per pruning strategy.

    python benchmarks/bundled_pair.py [--clips 6] [--device cpu|cuda] [--dtype float32] [--out FILE]
                                      [--methods "plain SD" "specvlm 0.9"]

For each held-out clip (seeds the training never used) and its description prompt: target-only
decoding (the baseline), plain speculative decoding (the draft sees every video token), and pruned
speculative decoding for every strategy at ratios 0.5 / 0.9 / 0.95 (kept tokens at their original
positions), plus the method's own strategy with re-indexed positions. Greedy; every run's output is
checked against target-only. Prints tau (tokens per target pass, pooled over clips), the acceptance
rate at each tree depth (pooled) and the speedup of the total decode time over target-only's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from specvlm import synthetic
from specvlm.assets import default_pair
from specvlm.engine.decoding import decode_target
from specvlm.engine.speculative import speculative_decode
from specvlm.engine.tree import DraftTree
from specvlm.models import load_adapter
from specvlm.pruning import STRATEGIES, PruneConfig
from specvlm.video import load_video

RATIOS = (0.5, 0.9, 0.95)
FIRST_SEED = 900_100  # held out: training draws seeds >= 1e6, samples use 900_000..


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--methods", nargs="+", metavar="NAME", help="only these rows (as printed)")
    args = parser.parse_args()
    target_dir, draft_dir = default_pair()
    target = load_adapter(str(target_dir), dtype=args.dtype, device=args.device)
    draft = load_adapter(str(draft_dir), dtype=args.dtype, device=args.device)
    tree = DraftTree.default()
    methods = [("plain SD", None, False)]
    methods += [(f"{s} {r}", PruneConfig(strategy=s, ratio=r), False) for s in STRATEGIES if s != "none" for r in RATIOS]
    methods += [(f"specvlm {r} reindexed", PruneConfig(ratio=r), True) for r in RATIOS]
    if args.methods:
        unknown = set(args.methods) - {name for name, _, _ in methods}
        if unknown:
            parser.error(f"unknown methods {sorted(unknown)}; known: {[name for name, _, _ in methods]}")
        methods = [m for m in methods if m[0] in args.methods]
    totals = {name: {"tokens": 0, "passes": 0, "decode_s": 0.0, "equal": 0, "reached": [0] * (tree.depth + 1)}
              for name, _, _ in methods}  # fmt: skip
    baseline_s = 0.0
    inputs = []
    for i in range(args.clips):
        frames, truth = synthetic.make_clip(FIRST_SEED + i)
        features = target.build_inputs(load_video(frames), synthetic.DESCRIBE_PROMPTS[0])
        inputs.append((target.prepare(features), draft.prepare(features)))
    for full, draft_full in inputs:  # warm-up, then the measured baseline
        decode_target(target, full, max_new_tokens=4)
    references = []
    for full, _ in inputs:
        result = decode_target(target, full, max_new_tokens=args.max_new_tokens)
        references.append(result.token_ids)
        baseline_s += result.stats.decode_s
    for name, prune, reindex in methods:
        row = totals[name]
        for (full, draft_full), reference in zip(inputs, references):
            result = speculative_decode(
                target, draft, full, draft_full, tree=tree, max_new_tokens=args.max_new_tokens,
                prune=prune, reindex=reindex,
            )
            row["tokens"] += result.stats.cycle_tokens
            row["passes"] += result.stats.target_passes
            row["decode_s"] += result.stats.decode_s
            row["equal"] += result.token_ids == reference
            row["reached"] = [a + b for a, b in zip(row["reached"], result.stats.reached_depth)]
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"bundled pair on {device}, {args.dtype}, {args.clips} held-out clips, description prompts, default tree")
    print(f"target-only decode: {baseline_s:.2f} s in total\n")
    print("| method | tau | acceptance by depth | speedup over target-only | equal to target-only |")
    print("|---|---|---|---|---|")
    for name, _, _ in methods:
        row = totals[name]
        tau = row["tokens"] / row["passes"] if row["passes"] else float("nan")
        reached = row["reached"]
        row["acceptance_by_depth"] = [reached[d] / reached[d - 1] if reached[d - 1] else float("nan")
                                      for d in range(1, len(reached))]  # fmt: skip
        rates = " ".join(f"{a:.3f}" for a in row["acceptance_by_depth"])
        print(f"| {name} | {tau:.2f} | {rates} | {baseline_s / row['decode_s']:.2f}x | {row['equal']}/{args.clips} |")
    if args.out:
        args.out.write_text(json.dumps({"baseline_s": baseline_s, "methods": totals}, indent=1))


if __name__ == "__main__":
    main()
