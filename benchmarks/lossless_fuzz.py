"""Random lossless cases: speculative output against target-only decoding, for as long as asked.

    python benchmarks/lossless_fuzz.py --seed 0 --seconds 600 --out results/lossless_fuzz.jsonl

Each case draws a family (tiny random checkpoints, float32 on CPU), a clip (2-12 frames of noise,
2, 4 or 8 of them sampled), a prompt, a tree (1-30 random paths closed under ranks and prefixes,
up to 7 deep), pruning (none, or any strategy at a ratio from 0 to 1), reindexing, a drafter
(model, adaptive at 0.3 or 0.6, overlap), the output length (1-40) and an independent draft or the
target as its own. Greedy output must equal target-only decoding. Where it does not, the target's
own generate gives the top-1 - top-2 logit margin at the first differing token: a tie (margin below
1e-4, where the tree pass and a one-token step, adding in different orders, may round apart) is
recorded as such; anything else is a failure, with every setting needed to replay it. One JSON line
per case that differed, and a summary line at the end; the process exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from specvlm.engine.config import SpecConfig
from specvlm.engine.decoding import decode_target
from specvlm.engine.speculative import speculative_decode
from specvlm.engine.tree import DraftTree
from specvlm.models import load_adapter
from specvlm.pruning import STRATEGIES, PruneConfig
from specvlm.testing.tiny import FAMILIES, build_tiny_pair
from specvlm.video import write_video

PROMPTS = ("Describe the video.", "What moves?", "Count the objects, then say where they go and why.")
TIE = 1e-4


def random_tree(rng: random.Random) -> DraftTree:
    paths, depth = set(), rng.randint(1, 7)
    for _ in range(rng.randint(1, 30)):
        path = tuple(rng.choice([0, 0, 1, 3, 6]) for _ in range(rng.randint(1, depth)))
        for k in range(1, len(path) + 1):
            paths.update(path[: k - 1] + (r,) for r in range(path[k - 1] + 1))
    return DraftTree(tuple(sorted(paths, key=lambda p: (len(p), p))))


def margin_at(target, features, out: list[int], reference: list[int]) -> tuple[int, float]:
    first = next((i for i, (a, b) in enumerate(zip(out, reference)) if a != b), min(len(out), len(reference)))
    with torch.no_grad():
        scores = target.model.generate(**features, max_new_tokens=first + 1, do_sample=False, output_scores=True,
                                       return_dict_in_generate=True).scores  # fmt: skip
    top = scores[first][0].float().topk(2).values
    return first, float(top[0] - top[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--out", type=Path, default=Path("lossless_fuzz.jsonl"))
    args = parser.parse_args()
    rng, root = random.Random(args.seed), Path(tempfile.mkdtemp(prefix="specvlm-fuzz-"))
    pairs: dict[str, tuple] = {}
    counts = {"cases": 0, "equal": 0, "ties": 0, "failures": 0}
    end = time.monotonic() + args.seconds
    with args.out.open("a", encoding="utf-8") as log:
        while time.monotonic() < end:
            family = rng.choice(FAMILIES)
            if family not in pairs:
                pair_seed = rng.randint(0, 3)
                t_dir, d_dir = build_tiny_pair(family, root / family, seed=pair_seed)
                pairs[family] = (load_adapter(str(t_dir), dtype="float32"), load_adapter(str(d_dir), dtype="float32"), pair_seed)
            target, draft, pair_seed = pairs[family]
            own = rng.random() < 0.2
            draft = target if own else draft
            case = counts["cases"]
            frames, num_frames = rng.randint(2, 12), rng.choice([2, 4, 8])
            clip = root / f"clip{case}.mp4"
            write_video(clip, np.random.default_rng(case).integers(0, 256, (frames, 64, 64, 3), dtype=np.uint8), fps=6)
            prompt = rng.choice(PROMPTS)
            features = target.build_inputs(clip, prompt, num_frames=num_frames)
            full = target.prepare(features)
            n = rng.randint(1, 40)
            reference = decode_target(target, full, max_new_tokens=n).token_ids
            tree = random_tree(rng)
            prune = None
            if rng.random() < 0.7:
                prune = PruneConfig(rng.choice(sorted(STRATEGIES)), ratio=rng.choice([0.0, 0.3, 0.5, 0.9, 0.99, 1.0]))
            config = SpecConfig(tree=tree, prune=prune, reindex=rng.random() < 0.5,
                                drafter=rng.choice(["model", "adaptive", "adaptive:0.6", "overlap"]))  # fmt: skip
            out = speculative_decode(target, draft, full, draft.prepare(features), config=config, max_new_tokens=n).token_ids
            counts["cases"] += 1
            clip.unlink()
            if out == reference:
                counts["equal"] += 1
                continue
            first, margin = margin_at(target, features, out, reference)
            kind = "tie" if margin < TIE else "failure"
            counts["ties" if kind == "tie" else "failures"] += 1
            record = {"kind": kind, "family": family, "pair_seed": pair_seed, "case": case, "clip_frames": frames,
                      "num_frames": num_frames, "prompt": prompt, "self_draft": own, "max_new_tokens": n,
                      "tree": [list(p) for p in tree.paths], "prune": None if prune is None else [prune.strategy, prune.ratio],
                      "reindex": config.reindex, "drafter": config.drafter, "first_difference": first, "margin": margin,
                      "output": out, "reference": reference}  # fmt: skip
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(f"{kind}: {family} case {case} at token {first}, margin {margin:.2e}", flush=True)
        summary = {"kind": "summary", "seed": args.seed, "seconds": args.seconds, "torch": torch.__version__, **counts}
        log.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    return 1 if counts["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
