"""GPU checks: losslessness on the GPU, a device map over two GPUs, and target-only speed vs generate.

    python benchmarks/gpu_check.py [--out results.json] [--speed-shape llava-ov-7b] [--speed-frames 256]
                                   [--compiled-families qwen2_5_vl]

1. Lossless: every family's tiny pair on cuda, float32 and bfloat16; speculative output vs target-only
   output for chain/tree drafting with an independent draft (full, and pruned to 10% by the engine's
   own Stage I/II selection), a self and a pruned self draft, on the static steps (FlexAttention,
   CUDA graphs; compiled too for ``--compiled-families``, eager-compiled otherwise). Reports the
   match rate, and for a mismatch the first divergent token and the target's top-1 - top-2 logit
   margin there (16-bit multi-token and one-token forwards round differently: a near-tie can flip).
   Every drafting rule of ``--drafters`` (the overlapped one drafts on a second CUDA stream).
   With ``--rows-out``, each row is written as it is measured and a rerun measures only the rows
   missing there (carry the file to the next device session to finish a check cut short).
   Sampled: the first two tokens of many generations against the target-only joint (total variation).
2. Device map: with two or more GPUs, each tiny target split layer-wise over cuda:0 and cuda:1;
   target-only decoding must equal the model's own generate, speculative output must equal both.
3. Speed: a random-weight model of a real LM shape; decode_target vs generate, ms per new token.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from specvlm.bench.harness import JsonlLog
from specvlm.engine.config import SpecConfig
from specvlm.engine.decoding import decode_target
from specvlm.engine.sampling import SamplingConfig, probabilities
from specvlm.engine.speculative import speculative_decode
from specvlm.engine.tree import DraftTree
from specvlm.models import load_adapter
from specvlm.pruning import PruneConfig
from specvlm.testing.shapes import random_adapter
from specvlm.testing.tiny import FAMILIES, build_tiny_pair
from specvlm.video import load_video

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import engine_digest  # which engine source a row measured

PROMPT = "Describe the video."


def frames(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def margin_at(adapter, prepared, tokens: list[int], index: int) -> float:
    """Target's top-1 minus top-2 logit before generating tokens[index] (target-only path)."""
    cache = adapter.new_cache(prepared.length + index + 1)
    logits = adapter.prefill(prepared, cache)
    if index > 0:
        prefix = torch.tensor([tokens[:index]])
        positions = prepared.next_position + torch.arange(index)[None]
        logits = adapter.step(prefix, positions, cache)[:, -1]
    top = torch.topk(logits[0], 2).values
    return float(top[0] - top[1])


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# 8 x 8 children: 73 nodes, so the tiny targets' verification (2 query heads per KV head) and the
# draft's widest level run on the split-prefix tree attention, as the published targets' do
WIDE_TREE = DraftTree(tuple((i,) for i in range(8)) + tuple((i, j) for i in range(8) for j in range(8)))


TREES = {"chain3": DraftTree.chain(3), "default": DraftTree.default(), "wide73": WIDE_TREE}
DRAFTS = ("independent", "independent-specvlm-90", "self", "self-pruned-90")
DTYPES = ("float32", "bfloat16")


def _row_key(row: dict) -> tuple:
    """What a lossless row measured: a rerun skips the rows whose key is already written."""
    return tuple(row.get(k) for k in ("engine", "family", "compiled", "dtype", "seed", "tree", "draft", "drafter"))


def lossless(root: Path, compiled_families: list[str], families: list[str], sink: Path | None,
             drafters=("model",), seeds: int = 3, trees=tuple(TREES), device: str = "cuda") -> list[dict]:  # fmt: skip
    """Every row is appended to ``sink`` (JSON lines) as soon as it is measured; the rows already
    there for the same engine source are not measured again (a rerun resumes: a device session
    cut short loses nothing). Returns the sink's earlier rows of this engine and the new ones."""
    engine = engine_digest()
    rows = []
    if sink is not None and sink.exists():  # a torn last line (a session cut off while writing it) is cut off
        rows = [r for r in JsonlLog(sink).records if r.get("engine") == engine]
    done = {_row_key(r) for r in rows}
    for family in families:
        compile = family in compiled_families
        todo = {(dtype, seed): [(t, d, r) for t, d, r in itertools.product(trees, DRAFTS, drafters)
                                if _row_key({"engine": engine, "family": family, "compiled": compile, "dtype": dtype,
                                             "seed": seed, "tree": t, "draft": d, "drafter": r}) not in done]
                for dtype in DTYPES for seed in range(seeds)}  # fmt: skip
        if not any(todo.values()):
            continue
        target_dir, draft_dir = build_tiny_pair(family, root / family)
        for dtype in DTYPES:
            if not any(todo[dtype, seed] for seed in range(seeds)):
                continue
            target = load_adapter(str(target_dir), dtype=getattr(torch, dtype), device=device)
            draft = load_adapter(str(draft_dir), dtype=getattr(torch, dtype), device=device)
            for seed in range(seeds):
                if not todo[dtype, seed]:
                    continue
                clip = load_video(frames(8, seed))
                features = target.build_inputs(clip, PROMPT)
                full = target.prepare(features)
                reference = decode_target(target, full, max_new_tokens=48, compile=compile).token_ids
                d_full = draft.prepare(features)
                drafts = {
                    "independent": (draft, d_full, None),
                    "independent-specvlm-90": (draft, d_full, PruneConfig(ratio=0.9)),
                    "self": (target, full, None),
                    "self-pruned-90": (target, target.drop_video_tokens(full, torch.arange(0, len(full.video), 10)), None),
                }
                assert tuple(drafts) == DRAFTS  # the names a rerun resumes by
                for tree_name, draft_name, drafter in todo[dtype, seed]:
                    tree, (d, d_inputs, prune) = TREES[tree_name], drafts[draft_name]
                    out = speculative_decode(
                        target,
                        d,
                        full,
                        d_inputs,
                        max_new_tokens=48,
                        compile=compile,
                        config=SpecConfig(tree=tree, prune=prune, drafter=drafter),
                    )  # fmt: skip
                    div = first_divergence(out.token_ids, reference)
                    rows.append(
                        {
                            "engine": engine,
                            "family": family,
                            "compiled": compile,
                            "dtype": dtype,
                            "seed": seed,
                            "tree": tree_name,
                            "draft": draft_name,
                            "drafter": drafter,
                            "overlapped_cycles": out.stats.overlapped_cycles,
                            "match": div is None,
                            "first_divergence": div,
                            "margin": None if div is None else margin_at(target, full, reference, div),
                            "tau": out.stats.tau,
                        }
                    )
                    if sink is not None:
                        with sink.open("a") as f:
                            f.write(json.dumps(rows[-1]) + "\n")
    return rows


def exact_first_two(adapter, prepared, sampling: SamplingConfig) -> dict:
    """The target-only joint distribution of the first two sampled tokens (top-k keeps it small)."""
    cache = adapter.new_cache(prepared.length + 2)
    p1 = probabilities(adapter.prefill(prepared, cache).float(), sampling)[0]  # prefill: the last position's (1, V)
    joint = {}
    for x1 in p1.nonzero().flatten().tolist():
        cache.rollback(prepared.length)
        logits = adapter.step(torch.tensor([[x1]], device="cuda"), torch.tensor([[prepared.next_position]], device="cuda"), cache)
        p2 = probabilities(logits[:, -1].float(), sampling)[0]
        for x2 in p2.nonzero().flatten().tolist():
            joint[(x1, x2)] = float(p1[x1] * p2[x2])
    return joint


def sampled(root: Path, families: list[str], compiled_families: list[str], drafters, runs: int) -> list[dict]:
    """Sampled output on the GPU's compiled, captured steps: the first two tokens of ``runs``
    generations (temperature 1, top-k 2, an independent draft, the default tree) against the
    target-only joint, as total variation; a rule letting draft tokens through unchecked lands far
    from it (the draft's own joint is reported beside)."""
    rows = []
    sampling = SamplingConfig(temperature=1.0, top_k=2)
    for family in families:
        target_dir, draft_dir = build_tiny_pair(family, root / family)
        target = load_adapter(str(target_dir), dtype=torch.float32, device="cuda")
        draft = load_adapter(str(draft_dir), dtype=torch.float32, device="cuda")
        features = target.build_inputs(load_video(frames(8, 11)), PROMPT)
        full, d_full = target.prepare(features), draft.prepare(features)
        exact = exact_first_two(target, full, sampling)
        draft_tv = tv(Counter({k: round(v * 1e6) for k, v in exact_first_two(draft, d_full, sampling).items()}), exact)
        for drafter in drafters:
            generator = torch.Generator(device="cuda").manual_seed(1)
            counts = Counter()
            t0 = time.perf_counter()
            for _ in range(runs):
                out = speculative_decode(target, draft, full, d_full, max_new_tokens=2, generator=generator,
                                         compile=family in compiled_families,
                                         config=SpecConfig(sampling=sampling, drafter=drafter))  # fmt: skip
                counts[tuple(out.token_ids)] += 1
            rows.append({"family": family, "drafter": drafter, "runs": runs, "tv": tv(counts, exact),
                         "draft_tv": draft_tv, "seconds": time.perf_counter() - t0})  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def tv(counts: Counter, exact: dict) -> float:
    n = sum(counts.values())
    return 0.5 * sum(abs(counts.get(k, 0) / n - exact.get(k, 0.0)) for k in set(counts) | set(exact))


def split_map(model, n_layers: int) -> dict[str, int]:
    """Vision, embeddings and the first half of the layers on GPU 0; the rest and the head on GPU 1."""
    device_map: dict[str, int] = {}
    for name, _ in model.model.named_children():
        if name != "language_model":
            device_map[f"model.{name}"] = 0
    for name, _ in model.model.named_parameters(recurse=False):
        device_map[f"model.{name}"] = 0
    for name, _ in model.model.language_model.named_children():
        if name != "layers":
            device_map[f"model.language_model.{name}"] = 1 if name == "norm" else 0
    for i in range(n_layers):
        device_map[f"model.language_model.layers.{i}"] = 0 if i < n_layers // 2 else 1
    device_map["lm_head"] = 1
    return device_map


def device_map_check(root: Path) -> list[dict]:
    rows = []
    for family in FAMILIES:
        target_dir, _ = build_tiny_pair(family, root / family)
        probe = load_adapter(str(target_dir), dtype=torch.float32)
        device_map = split_map(probe.model, probe.num_layers)
        target = load_adapter(str(target_dir), dtype=torch.float32, device_map=device_map)
        devices = sorted({str(p.device) for p in target.model.parameters()})
        features = target.build_inputs(load_video(frames(8, 5)), PROMPT)
        full = target.prepare(features)
        ours = decode_target(target, full, max_new_tokens=32).token_ids
        with torch.no_grad():
            out = target.model.generate(**features.to("cuda:0"), max_new_tokens=32, do_sample=False)
        reference = out[0, features["input_ids"].shape[1] :].tolist()
        spec = speculative_decode(
            target,
            target,
            full,
            full,
            max_new_tokens=32,
            config=SpecConfig(tree=DraftTree.default()),
        )
        rows.append(
            {
                "family": family,
                "devices": devices,
                "target_only_equals_generate": ours == reference,
                "speculative_equals_target_only": spec.token_ids == ours,
                "tau": spec.stats.tau,
            }
        )
    return rows


def speed(shape: str, n_frames: int, new_tokens: int) -> dict:
    adapter = random_adapter(shape, dtype=torch.bfloat16, device="cuda")
    adapter.eos_token_ids = ()  # time a fixed number of tokens
    model = adapter.model
    features = adapter.build_inputs(load_video(frames(n_frames, 1, size=56)), PROMPT)
    prepared = adapter.prepare(features)
    gpu_features = features.to("cuda")

    def timed(fn):
        torch.cuda.synchronize()
        t = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t, result

    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        model.generate(**gpu_features, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        decode_target(adapter, prepared, max_new_tokens=4)
        t_prefill, _ = timed(lambda: model.generate(**gpu_features, max_new_tokens=1, **kwargs))
        t_gen, out = timed(lambda: model.generate(**gpu_features, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs))
    ours = decode_target(adapter, prepared, max_new_tokens=new_tokens)
    generated = out[0, features["input_ids"].shape[1] :].tolist()
    return {
        "shape": shape,
        "context_tokens": prepared.length,
        "new_tokens": new_tokens,
        "generate_ms_per_token": 1000 * (t_gen - t_prefill) / (new_tokens - 1),
        "ours_ms_per_token": 1000 * ours.stats.decode_s / (new_tokens - 1),
        "ours_prefill_s": ours.stats.prefill_s,
        "generate_prefill_s": t_prefill,
        "same_tokens": ours.token_ids == generated,
        "first_divergence": first_divergence(ours.token_ids, generated),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--speed-shape", default="llava-ov-7b")
    parser.add_argument("--speed-frames", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--skip", nargs="*", default=[], choices=["lossless", "sampled", "device_map", "speed"])
    parser.add_argument("--compiled-families", nargs="*", default=["qwen2_5_vl"], choices=list(FAMILIES),
                        help="families whose lossless runs use compiled steps (compiling costs ~10 s per shape)")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--rows-out", type=Path, default=None,
                        help="lossless rows as JSON lines, written as measured; rows already there are not run again")
    parser.add_argument("--trees", nargs="+", default=list(TREES), choices=list(TREES), help="draft trees checked")
    parser.add_argument("--device", default="cuda", help="the lossless rows' device (cpu: a smoke test of this script)")
    parser.add_argument("--drafters", nargs="+", default=["model", "overlap"], help="drafting rules checked")
    parser.add_argument("--seeds", type=int, default=3, help="inputs per family and dtype")
    parser.add_argument("--sampled-runs", type=int, default=600, help="generations per drafter in the sampled check")
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    print(f"torch {torch.__version__}, {gpus} x {torch.cuda.get_device_name(0) if gpus else 'no GPU'}")
    import transformers

    print(f"transformers {transformers.__version__}")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "lossless" not in args.skip:
            rows = lossless(root, args.compiled_families, args.families, args.rows_out, args.drafters, args.seeds,
                            args.trees, args.device)  # fmt: skip
            results["lossless"] = rows
            print(f"\n## Lossless on {args.device} (48 new tokens, {args.seeds} inputs per family)")
            print("| family | compiled | dtype | drafter | match rate | mismatches: (first divergence, target margin) |")
            print("|---|---|---|---|---|---|")
            for family, dtype, drafter in itertools.product(args.families, DTYPES, args.drafters):
                sel = [r for r in rows if (r["family"], r["dtype"], r["drafter"]) == (family, dtype, drafter)]
                if not sel:
                    continue
                bad = [(r["first_divergence"], round(r["margin"], 4)) for r in sel if not r["match"]]
                print(f"| {family} | {sel[0]['compiled']} | {dtype} | {drafter} | {sum(r['match'] for r in sel)}/{len(sel)} | {bad or '-'} |")
        if "sampled" not in args.skip:
            results["sampled"] = sampled(root, args.families, args.compiled_families, args.drafters, args.sampled_runs)
            print("\n## Sampled on the GPU: first two tokens vs the target-only joint (total variation)")
            print("| family | drafter | runs | TV | the draft's own joint's TV |")
            print("|---|---|---|---|---|")
            for r in results["sampled"]:
                print(f"| {r['family']} | {r['drafter']} | {r['runs']} | {r['tv']:.3f} | {r['draft_tv']:.3f} |")
        if "device_map" not in args.skip and torch.cuda.device_count() >= 2:
            rows = device_map_check(root)
            results["device_map"] = rows
            print("\n## Device map over two GPUs (float32)")
            print("| family | devices | target-only == generate | speculative == target-only | tau (self draft) |")
            print("|---|---|---|---|---|")
            for r in rows:
                print(
                    f"| {r['family']} | {','.join(r['devices'])} | {r['target_only_equals_generate']} | "
                    f"{r['speculative_equals_target_only']} | {r['tau']:.2f} |"
                )
    if "speed" not in args.skip:
        r = speed(args.speed_shape, args.speed_frames, args.new_tokens)
        results["speed"] = r
        print(f"\n## Target-only decoding vs generate ({r['shape']} LM shape, bf16, {r['context_tokens']} context tokens)")
        print("| path | ms / new token | prefill s |")
        print("|---|---|---|")
        print(f"| transformers generate | {r['generate_ms_per_token']:.2f} | {r['generate_prefill_s']:.3f} |")
        print(f"| specvlm decode_target | {r['ours_ms_per_token']:.2f} | {r['ours_prefill_s']:.3f} |")
        print(f"same tokens: {r['same_tokens']} (first divergence: {r['first_divergence']})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
