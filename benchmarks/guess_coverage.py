"""How often a guess of the verdict could be right with several guesses at once (a composed estimate).

    python benchmarks/guess_coverage.py [--acceptance results/tree_choice.json] [--tree default]
                                        [--draft-ms 6.8] [--verify-ms 7.6] [--target-ms 5.48] [--tau 3.75]
                                        [--out results/guess_coverage.json]

The overlapped drafter (engine/drafters/overlap.py) guesses one outcome of a verification: the main
path accepted to its leaf, then the draft's own top-1. An outcome is a sequence of draft ranks: the
target's token at depth d is the draft's rank-r_d candidate there, the path runs while the ranks name
a node of the tree, and the first rank off the tree is the bonus token. With the bundled trained
pair's acceptance by depth and rank (``benchmarks/tree_choice.py``'s probe: P(the target's token at
depth d is the draft's rank r), ranks 0-3, depths taken as independent), each outcome's probability
is the product of its ranks' probabilities. The table gives the K likeliest outcomes and the share of
cycles that one of them would match (a guess's coverage). Ranks past 3 were not measured and are
never guessed.

The two-GPU cycle beside it is a composed estimate, labelled so: the draft on a GPU of its own drafts
the next tree for each of the K outcomes while the target verifies (their rows batched into the
passes, as the draft's passes are bound by launches and not rows: assumed 1 + 0.05 (K - 1) times a
single tree's drafting), so a right guess costs max(verification, the guesses' drafting) and a wrong
one the verification and then the drafting: ms per cycle = h max(v, g) + (1 - h) (v + d).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from specvlm.engine.tree import parse_tree


def outcomes(paths: set[tuple[int, ...]], acceptance: list[list[float]]) -> list[tuple[float, tuple[int, ...]]]:
    """Every outcome of a verification with a nonzero probability, likeliest first: (probability,
    ranks), the last rank the bonus token's."""
    found = []

    def walk(prefix: tuple[int, ...], probability: float) -> None:
        if len(prefix) == len(acceptance):
            return
        for rank, p in enumerate(acceptance[len(prefix)]):
            ranks = prefix + (rank,)
            if p == 0:
                continue
            if ranks in paths:
                walk(ranks, probability * p)
            else:
                found.append((probability * p, ranks))

    walk((), 1.0)
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acceptance", type=Path, default=Path("results/tree_choice.json"),
                        help="a tree_choice.py output holding rank_acceptance")  # fmt: skip
    parser.add_argument("--tree", default="default")
    parser.add_argument("--draft-ms", type=float, default=6.8, help="drafting one tree, ms (sequential)")
    parser.add_argument("--verify-ms", type=float, default=7.6, help="one verification, ms")
    parser.add_argument("--target-ms", type=float, default=5.48, help="target-only ms per token")
    parser.add_argument("--tau", type=float, default=3.75, help="tokens per cycle")
    parser.add_argument("--row-cost", type=float, default=0.05, help="added drafting cost per extra guess")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    acceptance = json.loads(args.acceptance.read_text())["rank_acceptance"]
    tree = parse_tree(args.tree)
    if tree.depth + 1 > len(acceptance):
        raise SystemExit(f"the acceptance covers {len(acceptance)} depths; the tree's outcomes need {tree.depth + 1}")
    found = outcomes(set(tree.paths), acceptance)
    v, d = args.verify_ms, args.draft_ms
    sequential = v + d
    print(f"tree {args.tree}: {len(found)} outcomes, {sum(p for p, _ in found):.3f} of the mass guessable (ranks 0-3)")
    print("| guesses K | likeliest outcome added (ranks) | its probability | coverage | two-GPU ms/cycle (estimate) "
          "| over sequential | over target-only |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    rows, covered = [], 0.0
    for k, (p, ranks) in enumerate(found[:16], 1):
        covered += p
        g = d * (1 + args.row_cost * (k - 1))
        cycle = covered * max(v, g) + (1 - covered) * (v + d)
        row = {"k": k, "ranks": ranks, "probability": p, "coverage": covered, "cycle_ms": cycle,
               "over_sequential": sequential / cycle, "over_target": args.target_ms * args.tau / cycle}  # fmt: skip
        rows.append(row)
        print(f"| {k} | {ranks} | {p:.3f} | {covered:.3f} | {cycle:.2f} | {row['over_sequential']:.2f}x | "
              f"{row['over_target']:.2f}x |")  # fmt: skip
    print(f"sequential: {sequential:.2f} ms/cycle, {args.target_ms * args.tau / sequential:.2f}x over target-only")
    if args.out is not None:
        record = {"tree": args.tree, "acceptance": str(args.acceptance), "draft_ms": d, "verify_ms": v,
                  "target_ms": args.target_ms, "tau": args.tau, "row_cost": args.row_cost, "rows": rows}  # fmt: skip
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
