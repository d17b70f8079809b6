"""End to end at real sizes: target-only vs HF generate vs plain SD vs pruned SD, controlled acceptance.

    python benchmarks/e2e.py [--pairs qwen2.5-vl-32b:qwen2.5-vl-7b llava-ov-7b:llava-ov-0.5b]
                             [--contexts 65536 16384 4096] [--tau 3.8] [--bundled] [--ratios 0.9 0.95]
                             [--new-tokens 256] [--sampling] [--overlap] [--no-plain] [--workspace shared|fresh] [--no-compile]
                             [--out results/e2e.jsonl] [--summary results/e2e.md]

Random-weight models with the published language-model shapes (specvlm.testing.shapes), bf16, one
GPU, prompts of the given context laid out like a video chat (video tokens in whole 14x14 frames,
then a question). Random weights accept nothing, so acceptance is controlled by an oracle:
- every layer's output projections are zeroed in both models (``shapes.token_local``): all the
  work stays, but each token's logits depend on that token only, so the target's greedy
  continuation is known from one target-only run and bf16 rounding cannot make passes disagree;
- the draft runs all of its real passes; then the oracle writes the target's continuation into the
  proposal: at each depth the target's token is the draft's rank-r candidate with chance p[d][r]
  (low-discrepancy draws, the same for every context and tree), written into that node when the
  tree has it, every other candidate there made wrong. The target verifies as always; every run's
  output is checked against target-only decoding (``equal`` in the records).
Acceptance settings: a constant alpha on the top-1 candidate giving the expected tau on the default
tree (``--tau``), the bundled trained pair's measured per-depth acceptance (``--bundled``, from
``benchmarks/bundled_pair.py``, on the top-1 candidate), and an acceptance by depth and rank from a
file (``--acceptance``, from ``benchmarks/tree_choice.py``), under which side branches count.
Trees: ``--trees`` runs every method with each.

Per (pair, context, method): ms per new token, speedup over our target-only and over HF generate
(measured in the same run, ms per token from a long minus a one-token generate), tau, drafting and
verify ms per cycle (device clock), prefill and draft prefill, whole-request latency, warm-up paid
by the first call, and the ceiling tau / (1 + draft passes x draft floor / target floor) with floors
= (weights + KV at that context) / measured copy bandwidth. Records are appended to ``--out`` (JSON
lines) as they are measured; a rerun skips what is there. ``--summary`` writes the markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from specvlm.bench.harness import JsonlLog
from specvlm.engine.config import SpecConfig
from specvlm.engine.decoding import decode_target
from specvlm.engine.drafters import ModelDrafter, OverlapDrafter
from specvlm.engine.drafters.overlap import GuessPolicy
from specvlm.engine.sampling import SamplingConfig
from specvlm.engine.speculative import speculative_decode
from specvlm.engine.static import bucket_capacity
from specvlm.engine.tree import DraftTree, parse_tree, tree_for
from specvlm.engine.tree_search import RankAcceptance, best_tree
from specvlm.pruning import PruneConfig
from specvlm.testing import shapes

# the bundled pair's plain SD, default tree, 8 held-out clips (tau 4.08), measured by
# python benchmarks/bundled_pair.py --clips 8 --methods "plain SD" "specvlm 0.9" "specvlm 0.95"
BUNDLED_ACCEPTANCE = (0.972, 0.971, 0.746, 0.540, 0.556)


def alpha_for_tau(tau: float, depth: int) -> float:
    """The constant per-depth acceptance alpha with 1 + alpha + ... + alpha^depth = tau."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 1 + sum(mid**d for d in range(1, depth + 1)) < tau:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def planned(settings, trees, methods, choose):
    """Every (setting, tree, method) run, in order; an automatic tree (None) is chosen by
    ``choose(acceptance)`` when its turn comes, from what was measured before it."""
    for i, (label, acceptance) in enumerate(settings):
        for tree_name, tree in trees:
            if tree is None:
                tree = choose(acceptance)
                if tree is None:
                    print(f"  no tree measured before 'auto' at this context: {label} skipped", flush=True)
                    continue
            for name, prune, sampling in methods:
                suffix = "" if tree_name == "default" else f", tree {tree_name}"
                yield i, label, acceptance, tree_name, tree, name + suffix, prune, sampling


def auto_tree(args, pair: str, context: int, workspace: str, acceptance: RankAcceptance) -> DraftTree | None:
    """The tree with the fewest expected ms per token (engine/tree_search.py) under ``acceptance``,
    from the step costs measured so far at this context by this engine (``--out``'s records:
    target-only and the sequential, greedy 'SD pruned' runs of each tree), as
    benchmarks/tree_choice.py chooses it."""
    from tree_choice import cost_sets  # the same folder: the same rule as the tree choice's

    engine = engine_digest()
    records = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()] if args.out.is_file() else []
    records = [r for r in records if (r["pair"], r["context"], r.get("workspace"), r.get("engine")) == (pair, context, workspace, engine)
               and r.get("tree") != "auto"]  # fmt: skip
    sets = cost_sets(records, args.ratios[0])
    if not sets:
        return None
    return best_tree(acceptance, sets[0][1], max_depth=min(len(acceptance.p), len(PRIMES) - 1)).tree


def tree_label(spec: str) -> str:
    """A tree's name in method names and records: the spec, or a tree (or schedule) file's stem."""
    path = Path(spec.removeprefix("schedule:"))
    return ("schedule " if spec.startswith("schedule:") else "") + path.stem if path.is_file() else spec


def load_acceptance(path: Path) -> RankAcceptance:
    """Acceptance by depth and rank from a JSON file: {"rank_acceptance": [[p_rank0, ...], ...]}
    (benchmarks/tree_choice.py writes it from a pair's measured runs)."""
    return RankAcceptance(tuple(map(tuple, json.loads(Path(path).read_text())["rank_acceptance"])))


PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)  # one draw sequence per depth (deeper trees: more primes)


def _weyl(offset: float, step: float):
    """frac(offset + k x step) for k = 0, 1, ...: equidistributed on [0, 1) for an irrational step."""
    k = 0
    while True:
        yield (offset + k * step) % 1.0
        k += 1


class Oracle:
    """Rewrites each proposal with the target's known continuation (see the module doc): at each
    depth the target's token is the draft's rank-r candidate with the acceptance's chance p[d][r]
    (drawn whatever the tree holds), written into that node when the tree has it; every other
    candidate there is made wrong. A tree without the drawn candidate stops the accepted path."""

    def __init__(self, truth: list[int], acceptance: RankAcceptance, tree: DraftTree, vocab: int, device, seed: int = 0):
        self.truth = torch.tensor(truth, device=device)
        self.acceptance = acceptance
        if tree.depth >= len(PRIMES):
            raise ValueError(f"the oracle draws for trees up to {len(PRIMES) - 1} deep, not {tree.depth}")
        self.kids = tree.host_children
        self.depth = tree.depth
        self.node_depth = tree.on(device).node_depth
        self.vocab = vocab
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """The same acceptance draws again (for a warm rerun); guesses draw from their own stream, so
        overlapped and sequential runs see the same accepted lengths.

        Draws are low-discrepancy, not i.i.d.: depth d's k-th draw is frac(offset_d + k x sqrt(p_d))
        (p_d the d-th prime), counted per depth, so over the ~70 cycles of a run each depth accepts
        within a draw or two of its chance and the run's tau lands on the expected one (i.i.d.
        draws scatter it by about +-0.25), the same for every context and tree."""
        offsets = np.random.default_rng(self.seed).random(len(PRIMES))
        self.draws = [_weyl(o, math.sqrt(q)) for o, q in zip(offsets, PRIMES)]
        self.guess_draws = _weyl(offsets[-1], math.sqrt(PRIMES[-1] + 2.0))

    def draw(self) -> list[int]:
        """The ranks of the target's tokens down the accepted path (a draw past the tree's depth is
        not made: the same draws for every tree of one depth)."""
        ranks = []
        for d in range(1, self.depth + 1):
            u, total, rank = next(self.draws[d - 1]), 0.0, None
            for r, p in enumerate(self.acceptance.p[d - 1] if d <= len(self.acceptance.p) else ()):
                total += p
                if u < total:
                    rank = r
                    break
            if rank is None:
                break
            ranks.append(rank)
        return ranks

    def __call__(self, tokens: torch.Tensor, emitted: int) -> None:
        self.emitted = emitted
        node, path, rivals = 0, [], []  # the root is truth[emitted - 1]
        for rank in self.draw() + [None]:
            kids = self.kids[node]
            rivals += kids  # no candidate of a node on the path may be right but the drawn one
            if rank is None or rank >= len(kids):
                break
            node = kids[rank]
            path.append(node)
        # a few launches per cycle, nothing waits: the device holds the truth, the host only indices,
        # sent without waiting for the device (a pageable copy with non_blocking is staged and
        # returns; a blocking one would wait for the drafting queued before it, a wait the engine's
        # loop does not have: it waits once per cycle, for the verdict)
        if rivals:
            index = torch.tensor(rivals).to(tokens.device, non_blocking=True)
            right, at = self.truth[emitted - 1 + self.node_depth[index]], tokens[index]
            tokens[index] = torch.where(at == right, (right + 1) % self.vocab, at)
        if path:
            index = torch.tensor(path).to(tokens.device, non_blocking=True)
            tokens[index] = self.truth[emitted - 1 + self.node_depth[index]]

    def guess(self, token: torch.Tensor, depth: int) -> None:
        """The overlapped drafter's guess of the token after a fully accepted main path: right with
        the last depth's top-1 acceptance (as a draft's top-1 after the leaf would be), else wrong."""
        right = self.truth[self.emitted + depth]
        token.copy_((right if next(self.guess_draws) < self.acceptance.at(len(self.acceptance.p), 0)
                     else (right + 1) % self.vocab).view(1))  # fmt: skip


def host_timed(drafter) -> dict:
    """Host seconds spent in the drafter's propose / during_verify / accept (time the host is busy
    queueing work, or waiting for the device inside them), summed per method into the dict returned."""
    spent = {}
    for method in ("propose", "during_verify", "accept"):
        inner = getattr(drafter, method)

        def timed(*a, _inner=inner, _name=method, **k):
            t0 = time.perf_counter()
            try:
                return _inner(*a, **k)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t0

        setattr(drafter, method, timed)
    return spent


def policy_record(drafter) -> dict | None:
    """What the overlapped drafter's guess policy measured (ms a cycle, guessing or not; kept across
    the method's warm-up and measured runs, as a server keeps it across requests)."""
    policy = getattr(drafter, "policy", None)
    if policy is None:
        return None
    ms = {k: None if v is None else 1000 * v for k, v in policy.mean.items()}
    return {"always": policy.always, "guess_ms": ms[True], "plain_ms": ms[False],
            "samples_guess": policy.samples[True], "samples_plain": policy.samples[False]}  # fmt: skip


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def empty_cache() -> None:
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def pair_memory(target_name: str, draft_name: str, contexts: list[int], new_tokens: int) -> int:
    """Bytes a pair needs on its GPU before it is built: both models and workspaces for the longest
    prompt (the draft's full one, for plain SD), and 2 GiB for steps, logits and graphs."""
    capacity = bucket_capacity(max(contexts) + new_tokens + 1024)
    return shapes.memory_bytes(target_name, capacity) + shapes.memory_bytes(draft_name, capacity) + 2 * 2**30


def ms_per_token(stats) -> float:
    return 1000 * stats.decode_s / max(stats.new_tokens - 1, 1)


def generate_ms_per_token(adapter, prepared, n: int) -> float:
    """HF generate's ms per new token on the same prompt (inputs_embeds, greedy): (n - 1 tokens)."""
    model = adapter.model
    kw = dict(inputs_embeds=prepared.inputs_embeds, attention_mask=torch.ones_like(prepared.input_ids),
              do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip

    def run(k: int) -> float:
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(**kw, max_new_tokens=k, min_new_tokens=k)
        sync()
        return time.perf_counter() - t

    run(2)  # warm-up
    one, many = run(1), run(n)
    return 1000 * (many - one) / (n - 1)


def kept_capacity(adapter, role: str) -> int | None:
    """The capacity of the workspace kept for (adapter, role), as the next call will find it."""
    sizes = [ws.cache.capacity for (r, *_), ws in adapter.workspaces.items() if r == role]
    return max(sizes) if sizes else None


def key_of(pair, context, method, acceptance, workspace) -> tuple:
    return (pair, context, method, acceptance, workspace)


def done_keys(path: Path, measured_as: dict) -> set:
    """The keys of the records in ``path`` whose fields match ``measured_as`` (what a rerun skips)."""
    if not path.exists():
        return set()
    keys = set()
    for r in JsonlLog(path).records:  # a torn last line (a run killed while writing it) is cut off
        if all(r.get(k) == v for k, v in measured_as.items()):
            keys.add(key_of(r["pair"], r["context"], r["method"], r["acceptance"], r.get("workspace", "shared")))
    return keys


def run_pair(args, target_name: str, draft_name: str, bandwidth: float, done: set) -> None:
    pair = f"{target_name}:{draft_name}"
    # "auto": the tree chosen from this context's costs measured so far and each setting's acceptance
    # schedule:FILE: each context with the schedule's tree for its length
    trees = [("auto", None) if spec == "auto" else (tree_label(spec), parse_tree(spec)) for spec in args.trees]
    depth = max(tree.depth for _, tree in trees if tree is not None)
    greedy, sampled = SamplingConfig(), SamplingConfig(temperature=0.7)
    # tau: the constant alpha that gives it on the default tree, at every depth of every tree
    settings = [(f"tau {args.tau}", RankAcceptance.main_path([alpha_for_tau(args.tau, DraftTree.default().depth)] * depth))]
    if args.bundled:
        settings.append(("bundled pair", RankAcceptance.main_path(BUNDLED_ACCEPTANCE)))
    if args.acceptance:
        settings.append((f"by rank, {args.acceptance.stem}", load_acceptance(args.acceptance)))
    if any(tree is None for _, tree in trees):  # an automatic tree may go as deep as an acceptance does
        depth = max([depth] + [min(len(a.p), len(PRIMES) - 1) for _, a in settings])
    # pruned first: a run cut off by its time limit keeps the method's own figure
    methods = [(f"SD pruned {r}", PruneConfig("specvlm", ratio=r), greedy) for r in args.ratios]
    methods += [("plain SD", None, greedy)] if args.plain else []
    if args.overlap:  # drafting while verifying, side by side with sequential drafting
        tag = ", overlap" + ("" if args.side_priority == "high" else f" ({args.side_priority} priority)")
        tag += " (every cycle)" if args.always_guess else ""
        methods += [(name + tag, prune, sampling) for name, prune, sampling in methods]
    if args.sampling:  # the cycle's cost under sampling: the first ratio and plain, first acceptance setting
        firsts = [methods[0]] + ([methods[len(args.ratios)]] if args.plain else [])
        methods += [(f"{name}, T=0.7", prune, sampled) for name, prune, _ in firsts]
    if DEVICE == "cuda":  # a pair that cannot fit is said so before it is built, and the next pair runs
        need, free = pair_memory(target_name, draft_name, args.contexts, args.new_tokens), torch.cuda.mem_get_info()[0]
        if need > free:
            print(f"[{pair}] skipped: it needs about {need / 2**30:.0f} GiB at {max(args.contexts)} tokens (weights "
                  f"and workspaces), {device_name()} has {free / 2**30:.0f} GiB free; a larger GPU, or shorter "
                  f"--contexts", file=sys.stderr, flush=True)  # fmt: skip
            return
    target = shapes.random_adapter(target_name, device=DEVICE)
    draft = shapes.random_adapter(draft_name, device=DEVICE)
    for adapter in (target, draft):
        shapes.token_local(adapter)
        adapter.eos_token_ids = ()
    t_weights, d_weights = shapes.weight_bytes(target), shapes.weight_bytes(draft)
    compile = not args.no_compile
    # one context alone has workspaces of its own size, whatever --workspace says
    workspace = args.workspace if len(set(args.contexts)) > 1 else "fresh"
    if workspace == "shared" and args.order == "as-given":
        workspace = "grown"  # each longer prompt grows the workspaces the shorter ones left
    # shared: largest first, so one workspace (sized by the longest prompt) serves every context, as in
    # a server; grown: in the order given, as a server that saw short prompts first; fresh: each
    # context in workspaces of its own size (new steps compiled and captured)
    order = sorted(args.contexts, reverse=True) if args.order == "longest-first" else args.contexts

    def finished(context: int) -> bool:  # every record this run would write at this context is in --out
        length = shapes.synthetic_layout(context)[2]  # the prompt's length alone: no embeddings built
        keys = [key_of(pair, length, "target-only", "-", workspace)]
        keys += [key_of(pair, length, name, label, workspace) for i, label, _, _, _, name, _, sampling
                 in planned(settings, trees, methods, lambda _: DraftTree.chain(1)) if not (i and not sampling.greedy)]
        return all(k in done for k in keys)

    # a rerun skips a context whose records are all there, unless a context still to measure needs it
    # run first: shared, the longest sizes every workspace; grown, each one grows them in its turn
    left = [c for c in order if not finished(c)]
    for at, context in enumerate(order):
        if context not in left and (workspace == "fresh" or not left
                                    or (workspace == "shared" and context != order[0])
                                    or (workspace == "grown" and all(order.index(c) < at for c in left))):  # fmt: skip
            print(f"[{pair} @ {context}] every record is in {args.out}: skipped", flush=True)
            continue
        if args.workspace == "fresh":
            for adapter in (target, draft):
                adapter.workspaces.clear()
            empty_cache()
        full = shapes.synthetic_inputs(target, context)
        d_full = shapes.synthetic_inputs(draft, context)
        n = args.new_tokens
        t0 = time.perf_counter()
        truth = decode_target(target, full, max_new_tokens=n + depth + 2, compile=compile)
        warm_target = truth.stats.warmup_s
        print(f"[{pair} @ {context}] truth run {time.perf_counter() - t0:.1f}s (warm-up {warm_target:.1f}s)", flush=True)
        baseline = decode_target(target, full, max_new_tokens=n, compile=compile)
        reference = baseline.token_ids
        if reference != truth.token_ids[:n]:
            print(f"  target-only runs disagree with each other at {context}: bf16 nondeterminism", flush=True)
        base_ms = ms_per_token(baseline.stats)
        gen_ms = None
        if args.generate and context <= args.generate_max_context:
            try:
                gen_ms = generate_ms_per_token(target, full, args.generate_tokens)
            except torch.OutOfMemoryError:
                print("  HF generate ran out of memory at this context", flush=True)
            empty_cache()
        t_floor = 1000 * (t_weights + shapes.kv_bytes(target, context)) / bandwidth
        common = {"pair": pair, "target": target_name, "draft": draft_name, "context": full.length,
                  "workspace": workspace, "target_capacity": kept_capacity(target, "target"),
                  "device": device_name(), "torch": torch.__version__, "compile": compile,
                  "new_tokens": n, "target_floor_ms": t_floor, "engine": engine_digest()}  # fmt: skip
        record = {**common, "method": "target-only", "acceptance": "-", "sampling": 0.0, "ms_per_token": base_ms,
                  "generate_ms_per_token": gen_ms, "speedup": 1.0,
                  "speedup_vs_generate": gen_ms / base_ms if gen_ms else None,
                  "prefill_s": baseline.stats.prefill_s, "latency_s": baseline.stats.prefill_s + baseline.stats.decode_s,
                  "warmup_s": warm_target, "step_vs_floor": base_ms / t_floor, "equal": True}  # fmt: skip
        emit(args, record, done)
        choose = lambda acceptance, _context=full.length: auto_tree(args, pair, _context, workspace, acceptance)
        here = [(n, t if t is None else tree_for(t, full.length)) for n, t in trees]
        for i, label, acceptance, tree_name, tree, name, prune, sampling in planned(settings, here, methods, choose):
            if (i and not sampling.greedy) or key_of(pair, full.length, name, label, workspace) in done:
                continue
            oracle = Oracle(truth.token_ids, acceptance, tree, target.vocab_size, target.device)
            drafter = OverlapDrafter(draft, on_guess=oracle.guess, priority=args.side_priority,
                                     policy=GuessPolicy(always=args.always_guess)) \
                if ", overlap" in name else ModelDrafter(draft)  # fmt: skip
            host = host_timed(drafter)
            run = lambda: speculative_decode(
                target,
                draft,
                full,
                d_full,
                max_new_tokens=n,
                generator=torch.Generator(device=DEVICE).manual_seed(0),
                on_proposal=oracle,
                compile=compile,
                config=SpecConfig(tree=tree, prune=prune, sampling=sampling, drafter=drafter),
            )
            result = first = run()
            if first.stats.warmup_s > 0:  # it compiled or captured a step: measure again, warm
                oracle.reset()
                host.clear()
                result = run()
            s = result.stats
            cycles = s.target_passes
            d_context = full.length - s.video_tokens + s.draft_video_tokens
            d_floor = 1000 * (d_weights + shapes.kv_bytes(draft, d_context)) / bandwidth
            passes = s.draft_passes / cycles
            ms = ms_per_token(s)
            equal = result.token_ids == reference and first.token_ids == reference
            record = {**common, "method": name, "acceptance": label, "sampling": sampling.temperature,
                      "tree": tree_name, "tree_nodes": tree.num_nodes, "tree_depth": tree.depth,
                      "tree_paths": [list(p) for p in tree.paths],
                      "acceptance_by_rank": acceptance.p, "expected_tau": acceptance.expected_tokens(tree),
                      "tau": s.tau, "acceptance_by_depth": s.acceptance_by_depth,
                      "rank_acceptance": s.rank_acceptance, "ms_per_token": ms,
                      "speedup": base_ms / ms, "speedup_vs_generate": gen_ms / ms if gen_ms else None,
                      "drafting_ms_per_cycle": 1000 * s.drafting_s / cycles,
                      "verify_ms_per_cycle": 1000 * s.verify_s / cycles,
                      "host_ms_per_cycle": 1000 * (s.decode_s - s.drafting_s - s.verify_s) / cycles,
                      "draft_passes_per_cycle": passes, "draft_video_tokens": s.draft_video_tokens,
                      "video_tokens": s.video_tokens, "draft_context": d_context, "draft_floor_ms": d_floor,
                      "ceiling": s.tau / (1 + passes * d_floor / t_floor),
                      "prefill_s": s.prefill_s, "draft_prefill_s": s.draft_prefill_s,
                      "latency_s": s.prefill_s + s.draft_prefill_s + s.decode_s,
                      "cycle_ms": 1000 * s.decode_s / cycles, "warmup_s": first.stats.warmup_s,
                      "draft_capacity": kept_capacity(draft, "draft"),
                      "overlapped_cycles": s.overlapped_cycles / cycles,
                      "host_ms_per_cycle_in": {k: 1000 * v / cycles for k, v in host.items()},
                      "timeline": drafter.timeline()[:: max(1, cycles // 12)] if hasattr(drafter, "timeline") and DEVICE == "cuda" else None,
                      "guesses": getattr(drafter, "guesses", None), "right_guesses": getattr(drafter, "hits", None),
                      "guess_policy": policy_record(drafter),
                      "side_ms_per_guess": 1000 * drafter.busy_s() / drafter.guesses
                      if getattr(drafter, "guesses", 0) and DEVICE == "cuda" else None,
                      "equal": equal if sampling.greedy else None}  # fmt: skip
            emit(args, record, done)
        del full, d_full
        empty_cache()


def engine_digest(root: Path = Path(__file__).resolve().parent.parent) -> str:
    """A short hash of the engine's source (specvlm/engine, the models' adapters, the attention entry,
    cache, layout): which code a record measured."""
    import hashlib

    package = root / "specvlm"
    files = sorted(package.joinpath("engine").rglob("*.py")) + sorted(package.joinpath("models").glob("*.py"))
    files += [package / name for name in ("attention.py", "cache.py", "layout.py")]
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:10]


def device_name() -> str:
    return torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"


def emit(args, record: dict, done: set) -> None:
    key = key_of(record["pair"], record["context"], record["method"], record["acceptance"], record["workspace"])
    if key in done:
        return
    done.add(key)
    with args.out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    if record["method"] != "target-only":
        extra = (f" tau {record['tau']:.2f} ceiling {record['ceiling']:.2f}x draft {record['drafting_ms_per_cycle']:.1f}"
                 f" verify {record['verify_ms_per_cycle']:.1f} host {record['host_ms_per_cycle']:.1f} ms/cycle")
    else:
        extra = f" generate {record['generate_ms_per_token']} ms/token, step {record['step_vs_floor']:.2f}x floor"
    print(f"  {record['method']:<22} {record['acceptance']:<13} {record['ms_per_token']:6.2f} ms/token "
          f"{record['speedup']:.2f}x equal={record['equal']}{extra}", flush=True)  # fmt: skip


def fmt(x, spec=".2f", suffix="") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{spec}}{suffix}"


def summary(records: list[dict]) -> str:
    lines = []
    for pair, device in dict.fromkeys((r["pair"], r["device"]) for r in records):  # a section per pair and card
        rows = [r for r in records if r["pair"] == pair and r["device"] == device]
        lines.append(f"\n## {pair} (bf16, {rows[0]['device']}, torch {rows[0]['torch']}, {rows[0]['new_tokens']} new tokens)\n")
        lines.append("| engine | workspace | context | method | acceptance | tau | ms/token | speedup | vs generate | ceiling | "
                     "draft ms/cycle | verify ms/cycle | cycle ms | overlapped | prefill s | draft prefill s | latency s | equal |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        order = {"fresh": 0, "shared": 1, "grown": 2}
        newest = {r.get("engine", ""): -i for i, r in enumerate(rows)}  # records are appended: the last run's engine first
        for r in sorted(rows, key=lambda r: (newest[r.get("engine", "")], order.get(r.get("workspace"), 2), r["context"],
                                             r["acceptance"] != "-", r["acceptance"])):  # fmt: skip
            ws = r.get("workspace", "shared")
            ws += f" ({r['target_capacity']})" if r.get("target_capacity") else ""
            gen = r.get("generate_ms_per_token")
            method = r["method"] + (f" (generate {gen:.2f} ms/token)" if gen else "")
            lines.append(
                f"| {r.get('engine', '-')} | {ws} | {r['context']} | {method} | {r['acceptance']} | {fmt(r.get('tau'))} | {r['ms_per_token']:.2f} | "
                f"{r['speedup']:.2f}x | {fmt(r.get('speedup_vs_generate'), suffix='x')} | "
                f"{fmt(r.get('ceiling'), suffix='x')} | {fmt(r.get('drafting_ms_per_cycle'))} | "
                f"{fmt(r.get('verify_ms_per_cycle'))} | {fmt(r.get('cycle_ms'))} | {fmt(r.get('overlapped_cycles'))} | {r['prefill_s']:.2f} | {fmt(r.get('draft_prefill_s'))} | "
                f"{r['latency_s']:.2f} | {'-' if r['equal'] is None else 'yes' if r['equal'] else 'NO'} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["qwen2.5-vl-32b:qwen2.5-vl-7b", "llava-ov-7b:llava-ov-0.5b"])
    parser.add_argument("--contexts", nargs="+", type=int, default=[65536, 16384, 4096])
    parser.add_argument("--tau", type=float, default=3.8)
    parser.add_argument("--bundled", action="store_true", help="also at the bundled pair's per-depth acceptance")
    parser.add_argument("--acceptance", type=Path, help="also at this acceptance by depth and rank (a JSON file "
                        "with rank_acceptance, as benchmarks/tree_choice.py writes)")
    parser.add_argument("--trees", nargs="+", default=["default"], help="draft trees, each run with every method "
                        "(default, chain:K, a tree file, schedule:FILE (the tree for each context's length), or auto: the tree chosen from the costs of the trees before "
                        "it, at this context, and each acceptance setting)")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.9, 0.95])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--sampling", action="store_true", help="also plain SD (unless --no-plain) and the first ratio at temperature 0.7")
    parser.add_argument("--workspace", choices=["shared", "fresh"], default="shared",
                        help="shared: one workspace for every context, sized by the longest (a server's case); "
                        "fresh: each context in workspaces of its own size")
    parser.add_argument("--order", choices=["longest-first", "as-given"], default="longest-first",
                        help="the contexts' order with a shared workspace: longest first (one workspace sized by the "
                        "longest serves all), or as given (a shorter prompt first, the workspace grown by a longer one "
                        "later: workspace 'grown' in the records)")
    parser.add_argument("--no-plain", dest="plain", action="store_false",
                        help="skip plain SD (every video token shown to the draft): pruned SD and target-only only")
    parser.add_argument("--overlap", action="store_true", help="also every method drafting while the target verifies")
    parser.add_argument("--always-guess", action="store_true",
                        help="the overlapped drafter guesses every cycle (default: by its measured cycle costs)")
    parser.add_argument("--side-priority", choices=["high", "normal"], default="high",
                        help="the overlapped drafter's stream priority")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-generate", dest="generate", action="store_false", help="skip HF generate")
    parser.add_argument("--generate-tokens", type=int, default=32)
    parser.add_argument("--generate-max-context", type=int, default=1 << 30)
    parser.add_argument("--out", type=Path, default=Path("e2e.jsonl"))
    parser.add_argument("--summary", type=Path, help="write the markdown table of --out here (and the records as a "
                        "JSON list beside it, same name, .json) and stop")
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke test (shapes test-target:test-draft)")
    args = parser.parse_args()
    if args.trees[0] == "auto":
        parser.error("--trees: 'auto' is chosen from the trees measured before it; put at least one first")
    for spec in args.trees:
        if spec == "auto":
            continue
        try:
            tree = parse_tree(spec)
        except (ValueError, OSError) as e:
            parser.error(f"--trees: {e}")
        if tree.depth >= len(PRIMES):
            parser.error(f"--trees: {spec} is {tree.depth} deep; the oracle draws for trees up to {len(PRIMES) - 1} deep")
    if args.acceptance:
        try:
            load_acceptance(args.acceptance)
        except (ValueError, OSError, KeyError, TypeError) as e:
            parser.error(f"--acceptance {args.acceptance}: {e}")
    global DEVICE
    DEVICE = args.device
    if args.summary:
        records = JsonlLog(args.out, write=False).records
        args.summary.write_text(summary(records) + "\n")
        args.summary.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
        print(summary(records))
        return
    if DEVICE == "cuda" and not torch.cuda.is_available():
        parser.error("this benchmark needs a GPU (random models of real sizes); --device cpu for a smoke test")
    bandwidth = shapes.copy_bandwidth(DEVICE)
    print(f"{device_name()}, torch {torch.__version__}, copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    # a rerun resumes the records measured as this run measures; records of other settings (another
    # engine, card, length or compile setting) stay in --out as history and are measured anew
    done = done_keys(args.out, {"new_tokens": args.new_tokens, "compile": not args.no_compile,
                                "device": device_name(), "engine": engine_digest()})  # fmt: skip
    for pair in args.pairs:
        target_name, draft_name = pair.split(":")
        run_pair(args, target_name, draft_name, bandwidth, done)
        empty_cache()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # every record measured so far is in --out; the same command resumes
        print("interrupted: the records measured so far are kept; run the same command to resume", file=sys.stderr)
        sys.exit(130)
