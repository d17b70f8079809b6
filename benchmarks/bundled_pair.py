"""Tau and speedup of the bundled trained pair on held-out synthetic clips, per pruning strategy.

    python benchmarks/bundled_pair.py [--clips 6] [--device cpu|cuda] [--dtype float32] [--out FILE]
                                      [--methods "plain SD" "specvlm 0.9"]

For each held-out clip (seeds the training never used) and its description prompt: target-only
decoding (the baseline), plain speculative decoding (the draft sees every video token), and pruned
speculative decoding for every strategy at ratios 0.5 / 0.9 / 0.95 (kept tokens at their original
positions), the method's own strategy with re-indexed positions, and the adaptive drafter (drafting
stops when the draft's confidence in its main path drops below P) at 0.9. Greedy; every run's output
is checked against target-only. Prints tau (tokens per target pass, pooled over clips), the
acceptance rate at each tree depth (pooled), draft passes per cycle, the speedup of the total decode
time over target-only's, and, for the adaptive rows against fixed drafting, a composed estimate at a
real size: ms per token = (draft passes per cycle x a draft pass + one verification) / tau, with the
step costs of LLaVA-OV-7B / 0.5B at 64k measured end to end (results/e2e.md: a 0.5B pass 2.06 ms,
i.e. 10.30 ms for 5, a verification 11.67 ms, target-only 6.64 ms per token).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from specvlm import synthetic
from specvlm.assets import default_pair
from specvlm.engine.config import SpecConfig
from specvlm.engine.decoding import decode_target
from specvlm.engine.drafters import OverlapDrafter
from specvlm.engine.drafters.overlap import GuessPolicy
from specvlm.engine.speculative import speculative_decode
from specvlm.engine.tree import DraftTree
from specvlm.models import load_adapter
from specvlm.pruning import STRATEGIES, PruneConfig
from specvlm.video import load_video

RATIOS = (0.5, 0.9, 0.95)
ADAPTIVE = (0.1, 0.3, 0.5)
# LLaVA-OV-7B / 0.5B at 64k, SD pruned 0.9 (results/e2e.jsonl): draft ms per pass, verify ms, target-only ms/token
STEP_COSTS = (10.30 / 5, 11.67, 6.64)
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
    methods = [("plain SD", None, False, "model")]
    methods += [(f"{s} {r}", PruneConfig(strategy=s, ratio=r), False, "model") for s in STRATEGIES if s != "none" for r in RATIOS]
    methods += [(f"specvlm {r} reindexed", PruneConfig(ratio=r), True, "model") for r in RATIOS]
    methods += [(f"specvlm 0.9 adaptive {p}", PruneConfig(ratio=0.9), False, f"adaptive:{p}") for p in ADAPTIVE]
    # how often the overlapped drafter's guess of the verdict is right under this pair's own acceptance
    methods += [("specvlm 0.9 overlap, guessing every cycle", PruneConfig(ratio=0.9), False, "overlap")]
    if args.methods:
        unknown = set(args.methods) - {m[0] for m in methods}
        if unknown:
            parser.error(f"unknown methods {sorted(unknown)}; known: {[m[0] for m in methods]}")
        methods = [m for m in methods if m[0] in args.methods]
    totals = {name: {"tokens": 0, "passes": 0, "draft_passes": 0, "decode_s": 0.0, "equal": 0, "guesses": 0,
                     "right_guesses": 0, "reached": [0] * (tree.depth + 1)} for name, *_ in methods}  # fmt: skip
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
    for name, prune, reindex, drafter in methods:
        row = totals[name]
        if drafter == "overlap":
            drafter = OverlapDrafter(draft, policy=GuessPolicy(always=True))
        for (full, draft_full), reference in zip(inputs, references):
            result = speculative_decode(
                target,
                draft,
                full,
                draft_full,
                max_new_tokens=args.max_new_tokens,
                config=SpecConfig(tree=tree, prune=prune, reindex=reindex, drafter=drafter),
            )
            row["tokens"] += result.stats.cycle_tokens
            row["passes"] += result.stats.target_passes
            row["draft_passes"] += result.stats.draft_passes
            row["decode_s"] += result.stats.decode_s
            row["equal"] += result.token_ids == reference
            row["reached"] = [a + b for a, b in zip(row["reached"], result.stats.reached_depth)]
            if isinstance(drafter, OverlapDrafter):  # counted per request
                row["guesses"] += drafter.guesses
                row["right_guesses"] += drafter.hits
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"bundled pair on {device}, {args.dtype}, {args.clips} held-out clips, description prompts, default tree")
    print(f"target-only decode: {baseline_s:.2f} s in total\n")
    print("| method | tau | acceptance by depth | draft passes / cycle | speedup over target-only | "
          "composed 7B/0.5B 64k speedup | right guesses | equal to target-only |")
    print("|---|---|---|---|---|---|---|---|")
    pass_ms, verify_ms, target_ms = STEP_COSTS
    for name, *_ in methods:
        row = totals[name]
        tau = row["tokens"] / row["passes"] if row["passes"] else float("nan")
        reached = row["reached"]
        row["acceptance_by_depth"] = [reached[d] / reached[d - 1] if reached[d - 1] else float("nan")
                                      for d in range(1, len(reached))]  # fmt: skip
        row["draft_passes_per_cycle"] = per_cycle = row["draft_passes"] / row["passes"] if row["passes"] else float("nan")
        row["composed_speedup_7b_64k"] = target_ms * tau / (per_cycle * pass_ms + verify_ms)
        rates = " ".join(f"{a:.3f}" for a in row["acceptance_by_depth"])
        guessed = f"{row['right_guesses']}/{row['guesses']}" if row["guesses"] else "-"
        print(f"| {name} | {tau:.2f} | {rates} | {per_cycle:.2f} | {baseline_s / row['decode_s']:.2f}x | "
              f"{row['composed_speedup_7b_64k']:.2f}x (estimate) | {guessed} | {row['equal']}/{args.clips} |")
    if args.out:
        args.out.write_text(json.dumps({"baseline_s": baseline_s, "methods": totals}, indent=1))


if __name__ == "__main__":
    main()
