"""Lossless under tensor parallelism: run under torchrun, one process per rank.

    torchrun --nproc-per-node 2 benchmarks/tp_check.py [--device cpu|cuda] [--out FILE]

Every family's tiny pair (float32): the target sharded over the ranks by transformers' own plan
(``tp_plan="auto"``: gloo on CPUs, NCCL on GPUs), the draft whole on every rank. Checks, greedy:
target-only decoding under tensor parallelism equals single-process target-only decoding (run on
rank 0 from an unsharded copy), and speculative decoding (chain and tree, plain and 90%-pruned
draft) equals both. Sampled (temperature 1, each rank's generator seeded differently on purpose):
every rank ends with rank 0's tokens, target-only and speculative. Rank 0 prints the table and
writes ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from specvlm.engine.config import SpecConfig
from specvlm.engine.decoding import decode_target
from specvlm.engine.distributed import is_main
from specvlm.engine.sampling import SamplingConfig
from specvlm.engine.speculative import speculative_decode
from specvlm.engine.tree import DraftTree
from specvlm.models import load_adapter
from specvlm.pruning import PruneConfig
from specvlm.testing.tiny import FAMILIES, build_tiny_pair
from specvlm.video import load_video

PROMPT = "Describe the video."
NEW = 24


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--root", type=Path, help="a folder shared by the ranks for the tiny checkpoints")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if "RANK" not in os.environ:
        parser.error("run under torchrun: torchrun --nproc-per-node N benchmarks/tp_check.py")
    root = args.root or Path(tempfile.gettempdir()) / "specvlm-tp-check"
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if args.device == "cuda" else "cpu"
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    single = {}
    if is_main():  # before the group exists: the checkpoints, and each unsharded model's own answer
        for family in args.families:
            target_dir, _ = build_tiny_pair(family, root / family)
            whole = load_adapter(str(target_dir), dtype="float32", device=str(local))
            prepared = whole.prepare(whole.build_inputs(load_video(frames), PROMPT))
            single[family] = decode_target(whole, prepared, max_new_tokens=NEW).token_ids
    dist.init_process_group("gloo" if args.device == "cpu" else "nccl")
    rows = []
    for family in args.families:
        target_dir, draft_dir = root / family / "target", root / family / "draft"
        target = load_adapter(str(target_dir), dtype="float32", tensor_parallel=dist.get_world_size())
        draft = load_adapter(str(draft_dir), dtype="float32", device=str(target.device))
        features = target.build_inputs(load_video(frames), PROMPT)
        full, d_full = target.prepare(features), draft.prepare(features)
        sharded = decode_target(target, full, max_new_tokens=NEW).token_ids
        row = {"family": family, "world_size": dist.get_world_size(), "tp_equals_single": sharded == single.get(family)}
        for tree_name, tree in (("chain3", DraftTree.chain(3)), ("default", DraftTree.default())):
            for prune_name, prune in (("plain", None), ("specvlm-90", PruneConfig(ratio=0.9))):
                out = speculative_decode(
                    target,
                    draft,
                    full,
                    d_full,
                    max_new_tokens=NEW,
                    config=SpecConfig(tree=tree, prune=prune),
                )
                row[f"sd_{tree_name}_{prune_name}"] = out.token_ids == sharded
        hot = SamplingConfig(temperature=1.0)
        seeded = torch.Generator(device=target.device).manual_seed(1000 + dist.get_rank())  # ranks disagree
        sampled = [decode_target(target, full, max_new_tokens=NEW, sampling=hot, generator=seeded).token_ids,
                   speculative_decode(
                       target,
                       draft,
                       full,
                       d_full,
                       max_new_tokens=NEW,
                       generator=seeded,
                       config=SpecConfig(tree=DraftTree.default(), sampling=hot),
                   ).token_ids]  # fmt: skip
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, sampled)
        row["sampled_ranks_agree"] = all(other == everyone[0] for other in everyone)
        rows.append(row)
        dist.barrier()
    if is_main():
        keys = [k for k in rows[0] if k not in ("family", "world_size")]
        print("| family | ranks | " + " | ".join(keys) + " |")
        print("|---|---|" + "---|" * len(keys))
        for r in rows:
            print(f"| {r['family']} | {r['world_size']} | " + " | ".join(str(r[k]) for k in keys) + " |")
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
