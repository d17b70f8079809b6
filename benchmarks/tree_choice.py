"""The draft tree that pays for a pair, from its measured acceptance by depth and rank and measured
step costs (specvlm/engine/tree_search.py), checked on the pair.

    python benchmarks/tree_choice.py [--target DIR_OR_HUB_ID --draft DIR_OR_HUB_ID] [--videos A.mp4 ...]
                                     [--acceptance-from RUN/samples.jsonl --method pruned:specvlm@0.9]
                                     [--prompts "Describe the video." ...] [--device cuda --dtype bfloat16]
                                     [--clips 24] [--ratio 0.9] [--costs results/e2e.jsonl | measure]
                                     [--out results/tree_choice.json] [--summary results/tree_choice.md]
                                     [--trees-dir results/trees]

1. Acceptance: the pair (default: the bundled trained pair on held-out synthetic clips; or your own
   checkpoints on your own videos) decodes, greedy or sampled at ``--temperature`` (candidates are
   then the draft's draws), its draft pruned to ``--ratio``, with a probe tree (a main path ``--probe-depth`` deep, every node on it with ``--probe-width`` candidates),
   and the engine counts, at each depth, how often the target's token was the draft's rank-r
   candidate (``SpecStats.rank_acceptance``). Depths reached by fewer than ``--min-tries`` cycles
   are left out (the search builds no deeper). Or, with ``--acceptance-from samples.jsonl``, the
   counts a benchmark run on real data wrote (``specvlm bench``: ``rank_tries`` / ``rank_hits`` of
   ``--method``, pooled; only the candidates of the tree that run used), and no pair is loaded.
2. Costs: for each (pair, context, workspace) of the end-to-end records in ``--costs``
   (benchmarks/e2e.py at real sizes, the last engine in the file unless ``--engine``): a draft pass
   = the pruned SD run's drafting ms per cycle / its passes; verification of N nodes from every tree
   measured there (verify ms per cycle, its node count), and N = 1 from target-only's ms per token.
   Or ``--costs measure``: the pair itself timed on its inputs on ``--device`` (target-only, and the
   probe, default and chain:2 trees' verification; each shape warmed first), so that a user's pair
   on a user's GPU needs nothing else; the check then also reports each run's measured speedup.
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
from specvlm.engine.speculative import SpecStats, check_pair, speculative_decode
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
    tokens = passes = equal = draft_passes = timed_tokens = 0
    verify_s = drafting_s = decode_s = 0.0
    counts = []
    for i, ((full, draft_full), reference) in enumerate(zip(inputs, references)):
        generator = None if sampling.greedy else torch.Generator(device=target.device).manual_seed(seed + i)
        result = speculative_decode(target, draft, full, draft_full, max_new_tokens=len(reference), generator=generator,
                                    config=SpecConfig(tree=tree, prune=prune, drafter=drafter, sampling=sampling))  # fmt: skip
        s = result.stats
        draft_passes += s.draft_passes
        verify_s, drafting_s = verify_s + s.verify_s, drafting_s + s.drafting_s
        decode_s, timed_tokens = decode_s + s.decode_s, timed_tokens + max(s.new_tokens - 1, 1)
        tokens, passes, equal = tokens + s.cycle_tokens, passes + s.target_passes, equal + (result.token_ids == reference)
        counts.append({"rank_tries": s.rank_tries, "rank_hits": s.rank_hits})
    # pooled by depth and rank (a drafter that stops early leaves some clips with fewer depths)
    pooled = SpecStats()
    pooled.rank_tries, pooled.rank_hits = tries, hits = pool_counts(counts)
    rates = pooled.rank_acceptance
    return {"tau": tokens / passes, "cycles": passes, "draft_passes_per_cycle": draft_passes / passes,
            "ms_per_token": 1000 * decode_s / timed_tokens, "verify_ms_per_cycle": 1000 * verify_s / passes, "draft_ms_per_pass": 1000 * drafting_s / max(draft_passes, 1),
            "equal": equal if sampling.greedy else None, "clips": len(inputs), "rank_acceptance": rates,
            "rank_tries": tries, "rank_hits": hits}  # fmt: skip


def equal_text(run: dict, sampling: SamplingConfig) -> str:
    if sampling.greedy:
        return f"outputs equal to target-only {run['equal']}/{run['clips']}"
    return f"sampled at temperature {sampling.temperature:g} (exact in distribution, not token for token)"


def pool_counts(records) -> tuple[list[list[int]], list[list[int]]]:
    """Rank counts summed over records (each a dict with rank_tries and rank_hits, [d][r])."""
    tries: list[list[int]] = []
    hits: list[list[int]] = []
    for r in records:
        for d, (ts, hs) in enumerate(zip(r.get("rank_tries") or [], r.get("rank_hits") or [])):
            if d == len(tries):
                tries.append([])
                hits.append([])
            for k, (t, h) in enumerate(zip(ts, hs)):
                if k == len(tries[d]):
                    tries[d].append(0)
                    hits[d].append(0)
                tries[d][k] += t
                hits[d][k] += h
    return tries, hits


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
                "name": f"{pair.split(':')[0]}_{context}_{workspace}",
                "target_only_ms_per_token": base[-1]["ms_per_token"]}  # fmt: skip
        out.append((info, StepCosts(draft_pass, tuple(verify.items()))))
    return out


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
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
    parser.add_argument("--acceptance-from", type=Path, metavar="SAMPLES_JSONL",
                        help="take the acceptance from a benchmark run's records (specvlm bench's samples.jsonl: "
                        "rank_tries / rank_hits of --method) instead of measuring it; no pair is loaded, no check run")
    parser.add_argument("--method", default="pruned:specvlm@0.9", help="the records' method, with --acceptance-from")
    parser.add_argument("--min-tries", type=int, default=30,
                        help="a depth counts when at least this many cycles reached it")
    parser.add_argument("--costs", default="results/e2e.jsonl",
                        help="benchmarks/e2e.py records to take step costs from, or 'measure': time the pair itself on "
                        "its inputs, on --device (target-only, and verification of the probe, default and chain:2 trees)")
    parser.add_argument("--adaptive", type=float, default=0.3, help="the adaptive drafter's threshold in the check")
    parser.add_argument("--engine", help="the records of this engine digest (default: the last record's)")
    parser.add_argument("--out", type=Path, default=Path("tree_choice.json"))
    parser.add_argument("--summary", type=Path, help="also the markdown tables here")
    parser.add_argument("--trees-dir", type=Path, default=Path("trees"))
    args = parser.parse_args()
    counts = {"--clips": args.clips, "--probe-depth": args.probe_depth, "--probe-width": args.probe_width,
              "--max-new-tokens": args.max_new_tokens, "--min-tries": args.min_tries,
              "--num-frames": 1 if args.num_frames is None else args.num_frames}  # fmt: skip
    for flag, value in counts.items():
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if any(not prompt.strip() for prompt in args.prompts):
        parser.error("--prompts: a prompt must not be empty")
    if not 0.0 <= args.adaptive <= 1.0:
        parser.error(f"--adaptive is a confidence threshold in [0, 1], got {args.adaptive}")
    if not 0.0 <= args.temperature <= 10.0:
        parser.error(f"--temperature is in [0, 10], got {args.temperature}")
    if not 0.0 < args.ratio < 1.0:
        parser.error(f"--ratio is a fraction in (0, 1), got {args.ratio}")
    if args.costs == "measure":
        if args.acceptance_from is not None:
            parser.error("--costs measure times the pair; with --acceptance-from no pair is loaded: give e2e records")
    elif not Path(args.costs).is_file():
        parser.error(f"--costs {args.costs}: no such file (benchmarks/e2e.py --out writes one, or --costs measure)")
    if args.acceptance_from is not None and not args.acceptance_from.is_file():
        parser.error(f"--acceptance-from {args.acceptance_from}: no such file")
    if args.videos:
        missing = [v for v in args.videos if not Path(v).is_file()]
        if missing:
            parser.error(f"--videos: no such file {missing[0]}")
    if (args.target is None) != (args.draft is None):
        parser.error("--target and --draft go together (neither: the bundled pair)")
    return args


def trusted(tries: list[list[int]], hits: list[list[int]], min_tries: int) -> RankAcceptance | None:
    """Acceptance from rank counts, down to the first depth reached by fewer than ``min_tries``
    cycles (depths measured too rarely to trust are left out, and every depth below them: the
    search then gives them no chance and builds no deeper); None if not even the first."""
    rows = []
    for ts, hs in zip(tries, hits):
        if not ts or min(ts) < min_tries:
            break
        rows.append(tuple(h / t for h, t in zip(hs, ts)))
    return RankAcceptance(tuple(rows)) if rows else None


class PairRuns:
    """The pair and its inputs, loaded once: the probe measurement and the checks decode them."""

    def __init__(self, parser, args):
        if args.target is None:
            args.target, args.draft = map(str, default_pair())
        try:
            self.target = load_adapter(args.target, dtype=args.dtype, device=args.device)
            self.draft = load_adapter(args.draft, dtype=args.dtype, device=args.device)
            check_pair(self.target, self.draft)
        except (OSError, ValueError) as e:
            parser.error(f"--target {args.target} / --draft {args.draft}: {e}")
        target, draft = self.target, self.draft
        self.inputs = []
        if args.videos:  # the user's clips, each with each prompt
            for video in args.videos:
                for prompt in args.prompts:
                    features = target.build_inputs(video, prompt, num_frames=args.num_frames)
                    self.inputs.append((target.prepare(features), draft.prepare(features)))
        else:  # held-out synthetic clips (the bundled pair never trained on them)
            for i in range(args.clips):
                frames, _ = synthetic.make_clip(FIRST_SEED + i)
                features = target.build_inputs(load_video(frames), args.prompts[0])
                self.inputs.append((target.prepare(features), draft.prepare(features)))
        self.references = [decode_target(target, full, max_new_tokens=args.max_new_tokens).token_ids
                           for full, _ in self.inputs]  # fmt: skip
        self.prune = PruneConfig(ratio=args.ratio)
        self.sampling = SamplingConfig(temperature=args.temperature)
        self.seed = args.seed
        bundled = tuple(map(str, default_pair())) == (args.target, args.draft)
        self.name = "the bundled pair" if bundled else f"{args.target} / {args.draft}"
        self.target_name = args.target.rstrip("/")
        self.clips = f"{len(args.videos)} videos x {len(args.prompts)} prompts" if args.videos else f"{args.clips} held-out clips"

    def costs(self, probe: DraftTree) -> tuple[dict, StepCosts]:
        """The pair's own step costs on its inputs, on its device: target-only's ms per token (the
        verification of 1 node), the verification ms per cycle of the probe, default and chain:2
        trees, the draft's ms per pass. Each is run once on the first input before it is timed, so
        compilation and capture stay out of the figures."""
        target, first = self.target, self.inputs[0][0]
        decode_target(target, first, max_new_tokens=4)
        runs = [decode_target(target, full, max_new_tokens=len(ref)).stats for (full, _), ref in zip(self.inputs, self.references)]
        verify = {1: 1000 * sum(s.decode_s for s in runs) / sum(max(s.new_tokens - 1, 1) for s in runs)}
        passes = []
        for tree in (probe, DraftTree.default(), DraftTree.chain(2)):
            self.warm(tree)
            run = self.decode(tree)
            verify.setdefault(tree.num_nodes, run["verify_ms_per_cycle"])
            passes.append(run["draft_ms_per_pass"])
        context = round(sum(full.length for full, _ in self.inputs) / len(self.inputs))
        info = {"pair": self.name, "context": context, "workspace": "measured", "engine": "-",
                "name": f"{Path(self.target_name).name or 'target'}_{context}_measured",
                "target_only_ms_per_token": verify[1]}  # fmt: skip
        return info, StepCosts(sum(passes) / len(passes), tuple(verify.items()))

    def warm(self, tree: DraftTree, drafter: str = "model") -> None:
        """A short run on the first input, so that the timed runs meet no compilation or capture."""
        speculative_decode(self.target, self.draft, *self.inputs[0], max_new_tokens=4,
                           config=SpecConfig(tree=tree, prune=self.prune, drafter=drafter))  # fmt: skip

    def decode(self, tree: DraftTree, drafter: str = "model") -> dict:
        return decode_clips(self.target, self.draft, self.inputs, self.references, tree, self.prune, drafter,
                            self.sampling, self.seed)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = parse_args(parser)
    sets = None
    if args.costs != "measure":
        records = [json.loads(line) for line in Path(args.costs).read_text().splitlines() if line.strip()]
        engine = args.engine or (records[-1].get("engine") if records else None)
        records = [r for r in records if r.get("engine") == engine]
        sets = cost_sets(records, args.ratio)
        if not sets:
            parser.error(f"--costs {args.costs}: no greedy target-only and 'SD pruned {args.ratio}' records of one context "
                         f"(engine {engine})")

    pair = None
    if args.acceptance_from is not None:  # a benchmark run's counts
        runs = [json.loads(line) for line in args.acceptance_from.read_text().splitlines() if line.strip()]
        methods = sorted({str(r.get("method")) for r in runs})
        runs = [r for r in runs if r.get("method") == args.method and r.get("status", "ok") == "ok"]
        if not runs:
            parser.error(f"--acceptance-from {args.acceptance_from}: no successful records of --method {args.method} "
                         f"(methods there: {', '.join(methods) or 'none'})")
        tries, hits = pool_counts(runs)
        if not tries:
            parser.error(f"--acceptance-from {args.acceptance_from}: the records of {args.method} hold no rank counts "
                         "(rank_tries / rank_hits: a run of this version of specvlm bench writes them)")
        measured = {"records": len(runs), "cycles": tries[0][0] if tries else 0, "rank_tries": tries, "rank_hits": hits}
        source = (f"{len(runs)} records of {args.method} in {args.acceptance_from} (their tree's candidates only), "
                  f"{measured['cycles']} cycles")
    else:  # measured here, on the pair, with a probe tree
        pair = PairRuns(parser, args)
        probe = probe_tree(args.probe_depth, args.probe_width)
        if sets is None:
            sets = [pair.costs(probe)]
        measured = pair.decode(probe)
        tries, hits = measured["rank_tries"], measured["rank_hits"]
        source = (f"{pair.name}, {args.device} {args.dtype}, {pair.clips}, pruned {args.ratio}, probe tree "
                  f"{args.probe_depth} deep x {args.probe_width} candidates, {measured['cycles']} cycles, "
                  f"{equal_text(measured, pair.sampling)}")
    acceptance = trusted(tries, hits, args.min_tries)
    if acceptance is None:
        parser.error(f"fewer than {args.min_tries} cycles reached the first depth: more clips (or records)")
    width = max(len(row) for row in acceptance.p)
    lines = [f"# Draft trees chosen per pair (python benchmarks/tree_choice.py {shlex.join(sys.argv[1:])})\n",
             f"Acceptance by depth and rank: {source}; depths reached by at least {args.min_tries} cycles.\n",
             "| depth | " + " | ".join(f"rank {r}" for r in range(width)) + " |", "|---|" + "---|" * width]  # fmt: skip
    for d, row in enumerate(acceptance.p, 1):
        lines.append(f"| {d} ({tries[d - 1][0]} cycles) | " + " | ".join(f"{p:.3f}" for p in row) + " |")
    choices = choose(args, sets, acceptance, lines)
    write_schedules(args, choices, lines)
    checks = check(args, pair, sets, acceptance, choices, lines) if pair is not None else []
    text = "\n".join(lines)
    print(text)
    if args.summary:
        args.summary.write_text(text + "\n")
    args.out.write_text(json.dumps({"rank_acceptance": [list(r) for r in acceptance.p], "probe": measured,
                                    "choices": choices, "checks": checks}, indent=1) + "\n")  # fmt: skip


def choose(args, sets, acceptance: RankAcceptance, lines: list[str]) -> list[dict]:
    """The best tree for each cost set, written to a file, with the default tree and chains beside it."""
    choices = []
    for info, costs in sets:
        best = best_tree(acceptance, costs)
        name = info["name"]
        args.trees_dir.mkdir(parents=True, exist_ok=True)
        write_tree(best.tree, args.trees_dir / f"{name}.txt")
        rows = [("chosen", best), ("default", score(DraftTree.default(), acceptance, costs))]
        rows += [(f"chain:{k}", score(DraftTree.chain(k), acceptance, costs))
                 for k in range(1, len(acceptance.p) + 1) if k + 1 <= costs.max_nodes]  # fmt: skip
        base = info["target_only_ms_per_token"]
        lines += [f"\n## {info['pair']}, {info['context']} context, {info['workspace']} workspace (engine {info['engine']})\n",
                  f"Step costs measured {'on the pair itself' if args.costs == 'measure' else 'end to end'} "
                  f"({'--costs measure' if args.costs == 'measure' else 'results file ' + args.costs}): draft pass {costs.draft_pass_ms:.2f} ms, "
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
    return choices


def write_schedules(args, choices: list[dict], lines: list[str]) -> None:
    """Per pair (and workspace kind) with several contexts chosen for: a tree schedule
    (``--tree schedule:FILE``) switching between adjacent contexts' trees at their geometric mean."""
    groups: dict[tuple, list[dict]] = {}
    for c in choices:
        groups.setdefault((c["pair"], c["workspace"]), []).append(c)
    for (pair, workspace), group in groups.items():
        if len(group) < 2:
            continue
        group.sort(key=lambda c: c["context"])
        steps, last = [], None
        for i, c in enumerate(group):
            start = 0 if i == 0 else round((group[i - 1]["context"] * c["context"]) ** 0.5)
            if c["chosen"]["paths"] != last:
                steps.append((start, Path(c["tree_file"]).name, c["context"]))
                last = c["chosen"]["paths"]
        name = f"{group[0]['name'].split('_')[0]}_{workspace}_schedule.txt"
        text = "".join(f"{start} {tree}  # chosen at {context} tokens\n" for start, tree, context in steps)
        (args.trees_dir / name).write_text(f"# {pair}: prompt length -> tree (benchmarks/tree_choice.py)\n" + text)
        lines.append(f"\nTree schedule for {pair} ({workspace}): {args.trees_dir / name} (`--tree schedule:FILE`): "
                     + ", ".join(f"from {start} tokens {tree}" for start, tree, _ in steps) + ".")


def check(args, pair: PairRuns, sets, acceptance: RankAcceptance, choices: list[dict], lines: list[str]) -> list[dict]:
    """Each chosen tree and the default one decoded on the pair, fixed and adaptive: measured tau
    against the prediction, and composed speedups at each cost set."""
    checks = []
    own = args.costs == "measure"  # the costs are this device's own: the runs' speedups are measured, not composed
    trees = {"default": DraftTree.default()}
    for c in choices:
        trees.setdefault(" ".join(map(str, c["chosen"]["paths"])), DraftTree(tuple(map(tuple, c["chosen"]["paths"]))))
    adaptive = f"adaptive:{args.adaptive:g}"
    sets_named = [(info["name"].replace("_", " "), info, costs) for info, costs in sets]
    lines += [f"\n## Check on {pair.name}, fixed against adaptive drafting\n",
              "Predicted tokens per cycle against the measured tau; the adaptive drafter stops a tree's deeper "
              f"levels when the draft's confidence in its main path drops below {args.adaptive:g} (fewer draft passes). "
              "Speedups: composed estimates, (draft passes per cycle x a draft pass + the verification of the tree) / "
              "tau against target-only's ms per token, with each cost set's measured step costs"
              + ("; measured speedup: these very runs' ms per token against target-only's on the same inputs.\n" if own else ".\n"),
              "| tree | drafter | nodes | depth | predicted | measured tau | draft passes / cycle | equal | "
              + " | ".join(name for name, *_ in sets_named) + " |" + (" measured speedup |" if own else ""),
              "|---|---|---|---|---|---|---|---|" + "---|" * (len(sets_named) + own)]  # fmt: skip
    for label, tree in trees.items():
        name = label if label == "default" else f"chosen ({tree.num_nodes} nodes)"
        predicted = acceptance.expected_tokens(tree)
        for drafter in ("model", adaptive):
            if own:
                pair.warm(tree, drafter)
            run = pair.decode(tree, drafter)
            estimates = {}
            for set_name, info, costs in sets_named:
                if tree.num_nodes <= costs.max_nodes:
                    ms = (run["draft_passes_per_cycle"] * costs.draft_pass_ms + costs.verify(tree.num_nodes)) / run["tau"]
                    estimates[set_name] = info["target_only_ms_per_token"] / ms
            lines.append(f"| {name} | {drafter} | {tree.num_nodes} | {tree.depth} | {f'{predicted:.2f}' if drafter == 'model' else '-'} | "
                         f"{run['tau']:.2f} | {run['draft_passes_per_cycle']:.2f} | {equal_cell(run)} | "
                         + " | ".join(f"{estimates[n]:.2f}x" if n in estimates else "-" for n, *_ in sets_named) + " |"
                         + (f" {sets[0][0]['target_only_ms_per_token'] / run['ms_per_token']:.2f}x |" if own else ""))  # fmt: skip
            checks.append({"tree": name, "drafter": drafter, "paths": [list(p) for p in tree.paths],
                           "predicted": predicted if drafter == "model" else None, "speedup_estimates": estimates, **run})  # fmt: skip
    return checks


if __name__ == "__main__":
    main()
