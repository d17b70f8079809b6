"""The draft tree that pays for a pair, from its measured acceptance by depth and rank and measured
step costs (specvlm/engine/tree_search.py), checked on the pair.

    python benchmarks/tree_choice.py [--target DIR_OR_HUB_ID --draft DIR_OR_HUB_ID] [--videos A.mp4 ...]
                                     [--prompts "Describe the video." ...] [--device cuda --dtype bfloat16]
                                     [--clips 24] [--ratio 0.9] [--costs results/e2e.jsonl]
                                     [--out results/tree_choice.json] [--summary results/tree_choice.md]
                                     [--trees-dir results/trees]

1. Acceptance: the pair (default: the bundled trained pair on held-out synthetic clips; or your own
   checkpoints on your own videos) decodes, greedy or sampled at ``--temperature`` (candidates are
   then the draft's draws), its draft pruned to ``--ratio``, with a probe tree (a main path ``--probe-depth`` deep, every node on it with ``--probe-width`` candidates),
   and the engine counts, at each depth, how often the target's token was the draft's rank-r
   candidate (``SpecStats.rank_acceptance``). Depths reached by fewer than ``--min-tries`` cycles
   are left out (the search builds no deeper).
2. Costs: for each (pair, context, workspace) of the end-to-end records in ``--costs``
   (benchmarks/e2e.py at real sizes, the last engine in the file unless ``--engine``): a draft pass
   = the pruned SD run's drafting ms per cycle / its passes; verification of N nodes from every tree
   measured there (verify ms per cycle, its node count), and N = 1 from target-only's ms per token.
3. For each cost set: the best tree (fewest expected ms per token), the default tree and chains
   scored the same way; ms per token and speedups are composed estimates from measured parts,
   labelled so. The chosen trees are written to ``--trees-dir`` (``--tree FILE``, ``e2e.py --trees``).
4. Check, fixed against adaptive: the pair decodes the inputs again with each chosen tree and the
   default tree, drafting every level and with the adaptive drafter (``--adaptive``: deeper levels
   left out when the draft's confidence drops); the measured tau stands beside the predicted tokens
   per cycle, every output equal to target-only's, and each run's tau and draft passes per cycle
   give composed speedup estimates at each cost set.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from specvlm import synthetic
from specvlm.assets import default_pair
from specvlm.engine.config import SpecConfig
from specvlm.engine.decoding import decode_target
from specvlm.engine.sampling import SamplingConfig
from specvlm.engine.speculative import check_pair, speculative_decode
from specvlm.engine.tree import DraftTree
from specvlm.engine.tree_search import RankAcceptance, StepCosts, best_tree, score, write_tree
from specvlm.models import load_adapter
from specvlm.pruning import PruneConfig
from specvlm.video import load_video

FIRST_SEED = 900_100  # held out, as benchmarks/bundled_pair.py


def probe_tree(depth: int, width: int) -> DraftTree:
    """A main path ``depth`` deep, each of its nodes with ``width`` candidates."""
    return DraftTree(tuple((0,) * d + (r,) for d in range(depth) for r in range(width)))


def decode_clips(target, draft, inputs, references, tree: DraftTree, prune, drafter: str = "model",
                 sampling: SamplingConfig = SamplingConfig(), seed: int = 0) -> dict:  # fmt: skip
    """Speculative decoding of every clip with ``tree``: pooled tau, draft passes per cycle, rank
    counts, and (greedy) how many outputs equal target-only's; sampled runs draw from one seeded
    generator per clip and are as long as the greedy references."""
    tokens = passes = equal = draft_passes = 0
    tries = hits = None
    for i, ((full, draft_full), reference) in enumerate(zip(inputs, references)):
        generator = None if sampling.greedy else torch.Generator(device=target.device).manual_seed(seed + i)
        result = speculative_decode(target, draft, full, draft_full, max_new_tokens=len(reference), generator=generator,
                                    config=SpecConfig(tree=tree, prune=prune, drafter=drafter, sampling=sampling))  # fmt: skip
        s = result.stats
        draft_passes += s.draft_passes
        tokens, passes, equal = tokens + s.cycle_tokens, passes + s.target_passes, equal + (result.token_ids == reference)
        if tries is None:
            tries, hits = s.rank_tries, s.rank_hits
        else:
            tries = [[a + b for a, b in zip(x, y)] for x, y in zip(tries, s.rank_tries)]
            hits = [[a + b for a, b in zip(x, y)] for x, y in zip(hits, s.rank_hits)]
    rates = [[h / t for h, t in zip(hs, ts) if t] for hs, ts in zip(hits, tries)]
    return {"tau": tokens / passes, "cycles": passes, "draft_passes_per_cycle": draft_passes / passes,
            "equal": equal if sampling.greedy else None, "clips": len(inputs), "rank_acceptance": rates,
            "rank_tries": tries, "rank_hits": hits}  # fmt: skip


def equal_text(run: dict, sampling: SamplingConfig) -> str:
    if sampling.greedy:
        return f"outputs equal to target-only {run['equal']}/{run['clips']}"
    return f"sampled at temperature {sampling.temperature:g} (exact in distribution, not token for token)"


def equal_cell(run: dict) -> str:
    return "-" if run["equal"] is None else f"{run['equal']}/{run['clips']}"


def cost_sets(records: list[dict], ratio: float) -> list[tuple[dict, StepCosts]]:
    """Step costs per (pair, context, workspace, engine) of greedy end-to-end records."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("sampling", 0.0) == 0.0 and not r["method"].count("overlap"):
            groups.setdefault((r["pair"], r["context"], r.get("workspace", "shared"), r.get("engine")), []).append(r)
    out = []
    for (pair, context, workspace, engine), rows in groups.items():
        base = [r for r in rows if r["method"] == "target-only"]
        pruned = [r for r in rows if r["method"].startswith(f"SD pruned {ratio}")]
        if not base or not pruned:
            continue
        verify = {1: base[-1]["ms_per_token"]}
        for r in pruned:
            verify.setdefault(r.get("tree_nodes", DraftTree.default().num_nodes), r["verify_ms_per_cycle"])
        main = next((r for r in pruned if r.get("tree", "default") == "default"), pruned[0])
        draft_pass = main["drafting_ms_per_cycle"] / main["draft_passes_per_cycle"]
        info = {"pair": pair, "context": context, "workspace": workspace, "engine": engine,
                "target_only_ms_per_token": base[-1]["ms_per_token"]}  # fmt: skip
        out.append((info, StepCosts(draft_pass, tuple(verify.items()))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="target checkpoint: a local dir or hub id (default: the bundled pair)")
    parser.add_argument("--draft", help="draft checkpoint of the same family (with --target)")
    parser.add_argument("--videos", nargs="+", help="video files to measure acceptance on (default: --clips "
                        "held-out synthetic clips)")
    parser.add_argument("--prompts", nargs="+", default=[synthetic.DESCRIBE_PROMPTS[0]],
                        help="prompts, each asked of each video")
    parser.add_argument("--num-frames", type=int, default=None, help="frames per video (default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="acceptance when sampling at this temperature (default 0: greedy); candidates are then draws")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (one generator per clip from it)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--probe-depth", type=int, default=8)
    parser.add_argument("--probe-width", type=int, default=4)
    parser.add_argument("--min-tries", type=int, default=30,
                        help="a depth counts when at least this many cycles reached it")
    parser.add_argument("--costs", type=Path, default=Path("results/e2e.jsonl"))
    parser.add_argument("--adaptive", type=float, default=0.3, help="the adaptive drafter's threshold in the check")
    parser.add_argument("--engine", help="the records of this engine digest (default: the last record's)")
    parser.add_argument("--out", type=Path, default=Path("tree_choice.json"))
    parser.add_argument("--summary", type=Path, help="also the markdown tables here")
    parser.add_argument("--trees-dir", type=Path, default=Path("trees"))
    args = parser.parse_args()
    if args.clips < 1 or args.probe_depth < 1 or args.probe_width < 1 or (args.num_frames is not None and args.num_frames < 1):
        parser.error("--clips, --probe-depth, --probe-width and --num-frames must be >= 1")
    if not 0.0 <= args.adaptive <= 1.0:
        parser.error(f"--adaptive is a confidence threshold in [0, 1], got {args.adaptive}")
    if not 0.0 <= args.temperature <= 10.0:
        parser.error(f"--temperature is in [0, 10], got {args.temperature}")
    if not 0.0 < args.ratio < 1.0:
        parser.error(f"--ratio is a fraction in (0, 1), got {args.ratio}")
    if not args.costs.is_file():
        parser.error(f"--costs {args.costs}: no such file (benchmarks/e2e.py --out writes one)")
    records = [json.loads(line) for line in args.costs.read_text().splitlines() if line.strip()]
    engine = args.engine or (records[-1].get("engine") if records else None)
    records = [r for r in records if r.get("engine") == engine]
    sets = cost_sets(records, args.ratio)
    if not sets:
        parser.error(f"--costs {args.costs}: no greedy target-only and 'SD pruned {args.ratio}' records of one context "
                     f"(engine {engine})")

    if args.videos:
        missing = [v for v in args.videos if not Path(v).is_file()]
        if missing:
            parser.error(f"--videos: no such file {missing[0]}")
    if (args.target is None) != (args.draft is None):
        parser.error("--target and --draft go together (neither: the bundled pair)")
    if args.target is None:
        args.target, args.draft = map(str, default_pair())
    try:
        target = load_adapter(args.target, dtype=args.dtype, device=args.device)
        draft = load_adapter(args.draft, dtype=args.dtype, device=args.device)
        check_pair(target, draft)
    except (OSError, ValueError) as e:
        parser.error(f"--target {args.target} / --draft {args.draft}: {e}")
    inputs = []
    if args.videos:  # the user's clips, each with each prompt
        for video in args.videos:
            for prompt in args.prompts:
                features = target.build_inputs(video, prompt, num_frames=args.num_frames)
                inputs.append((target.prepare(features), draft.prepare(features)))
    else:  # held-out synthetic clips (the bundled pair never trained on them)
        for i in range(args.clips):
            frames, _ = synthetic.make_clip(FIRST_SEED + i)
            features = target.build_inputs(load_video(frames), args.prompts[0])
            inputs.append((target.prepare(features), draft.prepare(features)))
    references = [decode_target(target, full, max_new_tokens=args.max_new_tokens).token_ids for full, _ in inputs]
    prune = PruneConfig(ratio=args.ratio)
    probe = probe_tree(args.probe_depth, args.probe_width)
    bundled = tuple(map(str, default_pair())) == (args.target, args.draft)
    pair_name = "the bundled pair" if bundled else f"{args.target} / {args.draft}"
    clips = f"{len(args.videos)} videos x {len(args.prompts)} prompts" if args.videos else f"{args.clips} held-out clips"
    sampling = SamplingConfig(temperature=args.temperature)
    measured = decode_clips(target, draft, inputs, references, probe, prune, sampling=sampling, seed=args.seed)
    # depths measured too rarely to trust are left out, and every depth below them: the search then
    # gives them no chance and builds no deeper
    rows = []
    for row, tries in zip(measured["rank_acceptance"], measured["rank_tries"]):
        if min(tries) < args.min_tries:
            break
        rows.append(tuple(row))
    if not rows:
        parser.error(f"fewer than {args.min_tries} cycles reached the first depth: more --clips")
    acceptance = RankAcceptance(tuple(rows))

    lines = [f"# Draft trees chosen per pair (python benchmarks/tree_choice.py {shlex.join(sys.argv[1:])})\n",
             f"Acceptance by depth and rank: {pair_name}, {args.device} {args.dtype}, {clips}, pruned "
             f"{args.ratio}, probe tree {args.probe_depth} deep x {args.probe_width} candidates, {measured['cycles']} "
             f"cycles, {equal_text(measured, sampling)}; depths reached by at least "
             f"{args.min_tries} cycles.\n",
             "| depth | " + " | ".join(f"rank {r}" for r in range(args.probe_width)) + " |",
             "|---|" + "---|" * args.probe_width]  # fmt: skip
    for d, row in enumerate(acceptance.p, 1):
        lines.append(f"| {d} ({measured['rank_tries'][d - 1][0]} cycles) | " + " | ".join(f"{p:.3f}" for p in row) + " |")
    choices = []
    for info, costs in sets:
        best = best_tree(acceptance, costs)
        name = f"{info['pair'].split(':')[0]}_{info['context']}_{info['workspace']}"
        args.trees_dir.mkdir(parents=True, exist_ok=True)
        write_tree(best.tree, args.trees_dir / f"{name}.txt")
        rows = [("chosen", best), ("default", score(DraftTree.default(), acceptance, costs))]
        rows += [(f"chain:{k}", score(DraftTree.chain(k), acceptance, costs))
                 for k in range(1, args.probe_depth + 1) if k + 1 <= costs.max_nodes]  # fmt: skip
        base = info["target_only_ms_per_token"]
        lines += [f"\n## {info['pair']}, {info['context']} context, {info['workspace']} workspace (engine {info['engine']})\n",
                  f"Step costs measured end to end (results file {args.costs}): draft pass {costs.draft_pass_ms:.2f} ms, "
                  "verification " + ", ".join(f"{n} nodes {ms:.2f} ms" for n, ms in costs.verify_ms)
                  + f" (1 node: target-only's {base:.2f} ms per token); between them linear. Written: "
                  f"{args.trees_dir / (name + '.txt')}.\n",
                  "| tree | nodes | depth | expected tokens / cycle | cycle ms | ms / token | speedup over target-only |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, c in rows:
            lines.append(f"| {label} | {c.tree.num_nodes} | {c.tree.depth} | {c.tokens_per_cycle:.2f} | {c.cycle_ms:.2f} | "
                         f"{c.ms_per_token:.2f} (estimate) | {base / c.ms_per_token:.2f}x (estimate) |")  # fmt: skip
        choices.append({**info, "tree_file": str(args.trees_dir / f"{name}.txt"), "costs": {
            "draft_pass_ms": costs.draft_pass_ms, "verify_ms": [list(p) for p in costs.verify_ms]},
            **{label: c.as_dict() for label, c in rows}})  # fmt: skip

    checks = []
    trees = {"default": DraftTree.default()}
    for c in choices:
        trees.setdefault(" ".join(map(str, c["chosen"]["paths"])), DraftTree(tuple(map(tuple, c["chosen"]["paths"]))))
    adaptive = f"adaptive:{args.adaptive:g}"
    sets_named = [(f"{info['pair'].split(':')[0]} {info['context']} {info['workspace']}", info, costs) for info, costs in sets]
    lines += [f"\n## Check on {pair_name}, fixed against adaptive drafting\n",
              "Predicted tokens per cycle against the measured tau; the adaptive drafter stops a tree's deeper "
              f"levels when the draft's confidence in its main path drops below {args.adaptive:g} (fewer draft passes). "
              "Speedups: composed estimates, (draft passes per cycle x a draft pass + the verification of the tree) / "
              "tau against target-only's ms per token, with each cost set's measured step costs.\n",
              "| tree | drafter | nodes | depth | predicted | measured tau | draft passes / cycle | equal | "
              + " | ".join(name for name, *_ in sets_named) + " |",
              "|---|---|---|---|---|---|---|---|" + "---|" * len(sets_named)]  # fmt: skip
    for label, tree in trees.items():
        name = label if label == "default" else f"chosen ({tree.num_nodes} nodes)"
        predicted = acceptance.expected_tokens(tree)
        for drafter in ("model", adaptive):
            run = decode_clips(target, draft, inputs, references, tree, prune, drafter, sampling, args.seed)
            estimates = {}
            for set_name, info, costs in sets_named:
                if tree.num_nodes <= costs.max_nodes:
                    ms = (run["draft_passes_per_cycle"] * costs.draft_pass_ms + costs.verify(tree.num_nodes)) / run["tau"]
                    estimates[set_name] = info["target_only_ms_per_token"] / ms
            lines.append(f"| {name} | {drafter} | {tree.num_nodes} | {tree.depth} | {f'{predicted:.2f}' if drafter == 'model' else '-'} | "
                         f"{run['tau']:.2f} | {run['draft_passes_per_cycle']:.2f} | {equal_cell(run)} | "
                         + " | ".join(f"{estimates[n]:.2f}x" if n in estimates else "-" for n, *_ in sets_named) + " |")  # fmt: skip
            checks.append({"tree": name, "drafter": drafter, "paths": [list(p) for p in tree.paths],
                           "predicted": predicted if drafter == "model" else None, "speedup_estimates": estimates, **run})  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.summary:
        args.summary.write_text(text + "\n")
    args.out.write_text(json.dumps({"rank_acceptance": [list(r) for r in acceptance.p], "probe": measured,
                                    "choices": choices, "checks": checks}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
