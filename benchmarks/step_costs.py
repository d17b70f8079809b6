"""Per-step costs of the target and the draft at real model sizes, against the bandwidth floor.

    python benchmarks/step_costs.py [--pairs qwen2.5-vl-32b:qwen2.5-vl-7b llava-ov-7b:llava-ov-0.5b]
                                    [--contexts 4096 16384 25600] [--tau 3.8 --tau 2.9] [--out FILE]

Random-weight models with the real language-model shapes (specvlm.testing.shapes), bf16, one GPU.
The context is filled by a real (chunked) prefill of random embeddings. Measured, median of
repeated CUDA-event timings, each step on the same filled context:
- target: 1 token, a chain of 5 (4 drafted + root), the 26-node published tree;
- draft: 1 token at the full context and at the 90%-pruned context (10% of the video kept);
- both through the plain Hugging Face path (language model + head on a DynamicCache, cropped back
  after each step) and through this engine's adapter step on its preallocated cache;
- Hugging Face ``generate`` ms per new token at the same context (inputs_embeds, greedy).
The floor of a step is (weights read + KV cache read) / measured copy bandwidth, where copy
bandwidth counts bytes read + written of a large device-to-device copy.

Composed speedup (clearly composed, not measured end to end): one speculative cycle of the default
tree costs the draft's level passes (q = 1, 4, 8, 8, 3 tokens at the pruned context) plus one target
tree pass; it yields tau tokens. speedup = tau * generate_ms_per_token / cycle_ms.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from specvlm.engine.static import StaticStep, block_mask
from specvlm.engine.tree import DraftTree
from specvlm.testing import shapes
from specvlm.testing.shapes import random_adapter

TREE = DraftTree.default()
CHAIN = DraftTree.chain(4)
TEXT_TOKENS = 64  # question + header after the video
DEVICE = "cuda"
COMPILE = True


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed_ms(fn, reps: int = 12, warmup: int = 3) -> float:
    """Median wall time of fn in ms, the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def copy_bandwidth() -> float:
    return shapes.copy_bandwidth(DEVICE)


class Bench:
    """One model at one context: our cache and an equal DynamicCache, both holding ``context`` tokens."""

    def __init__(self, adapter, context: int):
        self.adapter = adapter
        self.context = context
        lm = adapter.language_model
        hidden = lm.config.hidden_size
        self.cache = adapter.new_cache(context + TREE.num_nodes + 8, static=True)
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        for start in range(0, context, 4096):
            n = min(4096, context - start)
            embeds = 0.02 * torch.randn(1, n, hidden, generator=gen, device=DEVICE, dtype=adapter.dtype)
            pos = adapter.position_tensor(torch.arange(start, start + n, device=DEVICE)[None])
            adapter.forward(embeds, pos, self.cache, logits_at=slice(-1, None))
            self.cache.commit(n)
        self.dynamic = DynamicCache(config=lm.config)
        for i, layer in enumerate(self.cache.layers):
            self.dynamic.update(layer.keys[:, :, :context].clone(), layer.values[:, :, :context].clone(), i)

    def ours(self, tree: DraftTree | None, q: int = 1) -> float:
        """Our step: q new tokens (a tree's nodes when given) on the preallocated cache."""
        adapter, cache = self.adapter, self.cache
        n = tree.num_nodes if tree else q
        tokens = torch.zeros(1, n, dtype=torch.long, device=DEVICE)
        depth = tree.node_depth if tree else torch.arange(n)
        positions = (self.context + depth)[None].to(DEVICE)
        mask = None
        if tree is not None:
            mask = block_mask(cache.length, tree.ancestor_mask, cache.length + n, adapter.dtype, DEVICE)
        elif q > 1:  # a draft level: q siblings, each seeing the prefix and itself
            mask = block_mask(cache.length, torch.eye(q, dtype=torch.bool), cache.length + q, adapter.dtype, DEVICE)

        def step():
            adapter.step(tokens, positions, cache, mask)  # written, not committed: cache stays

        return timed_ms(step)

    def graphed(self, pattern: torch.Tensor, prefix_back: int = 0) -> float:
        """Our static step for ``pattern`` (q x width), replayed as a CUDA graph on the GPU."""
        q, width = pattern.shape
        step = StaticStep(self.adapter, self.cache, q, width, compile=COMPILE)
        tokens = torch.zeros(1, q, dtype=torch.long, device=DEVICE)
        positions = torch.full((1, q), self.context, dtype=torch.long, device=DEVICE)
        prefix = self.cache.length - prefix_back
        pattern = pattern.to(DEVICE)
        return timed_ms(lambda: step(tokens, positions, prefix, pattern))

    def hf(self, tree: DraftTree | None) -> float:
        """Plain transformers: language model + head on a DynamicCache, cropped back after the step."""
        adapter, lm, head = self.adapter, self.adapter.language_model, self.adapter.model.lm_head
        n = tree.num_nodes if tree else 1
        embeds = adapter.embed(torch.zeros(1, n, dtype=torch.long, device=DEVICE))
        depth = tree.node_depth if tree else torch.arange(1)
        positions = adapter.position_tensor((self.context + depth)[None].to(DEVICE))
        mask = block_mask(self.context, tree.ancestor_mask, self.context + n, adapter.dtype, DEVICE) if tree else None

        def step():
            with torch.no_grad():
                out = lm(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                         past_key_values=self.dynamic, use_cache=True)
                head(out.last_hidden_state)
            self.dynamic.crop(-n)  # a negative count removes that many tokens

        return timed_ms(step)

    def generate_ms_per_token(self, new_tokens: int = 24) -> float:
        model = self.adapter.model
        hidden = self.adapter.language_model.config.hidden_size
        embeds = 0.02 * torch.randn(1, self.context, hidden, device=DEVICE, dtype=self.adapter.dtype)
        mask = torch.ones(1, self.context, dtype=torch.long, device=DEVICE)
        kw = dict(inputs_embeds=embeds, attention_mask=mask, do_sample=False, eos_token_id=None, pad_token_id=0)

        def run(n):
            with torch.no_grad():
                model.generate(**kw, max_new_tokens=n, min_new_tokens=n)

        one = timed_ms(lambda: run(1), reps=3, warmup=1)
        many = timed_ms(lambda: run(new_tokens), reps=3, warmup=1)
        return (many - one) / (new_tokens - 1)


weight_bytes, kv_bytes = shapes.weight_bytes, shapes.kv_bytes


def pruned_context(context: int) -> int:
    video = context - TEXT_TOKENS
    return round(0.1 * video) + TEXT_TOKENS


def measure_model(name: str, contexts: list[int], bandwidth: float, role: str) -> list[dict]:
    adapter = random_adapter(name, device=DEVICE)
    rows = []
    for context in contexts:
        row: dict = {"model": name, "role": role, "context": context}
        if role == "target":
            bench = Bench(adapter, context)
            floor = lambda extra=0: 1000 * (weight_bytes(adapter) + kv_bytes(adapter, context + extra)) / bandwidth
            row["floor_ms"] = floor()
            row["ours_1"] = bench.ours(None)
            row["ours_chain5"] = bench.ours(CHAIN)
            row["ours_tree26"] = bench.ours(TREE)
            row["graph_1"] = bench.graphed(torch.ones(1, 1, dtype=torch.bool))
            row["graph_chain5"] = bench.graphed(CHAIN.ancestor_mask)
            row["graph_tree26"] = bench.graphed(TREE.ancestor_mask)
            row["hf_1"] = bench.hf(None)
            row["hf_chain5"] = bench.hf(CHAIN)
            row["hf_tree26"] = bench.hf(TREE)
            row["generate_ms"] = bench.generate_ms_per_token()
            del bench
        else:
            for label, ctx in (("full", context), ("pruned", pruned_context(context))):
                bench = Bench(adapter, ctx)
                row[f"floor_{label}_ms"] = 1000 * (weight_bytes(adapter) + kv_bytes(adapter, ctx)) / bandwidth
                row[f"ours_{label}_1"] = bench.ours(None)
                row[f"graph_{label}_1"] = bench.graphed(torch.ones(1, 1, dtype=torch.bool))
                row[f"hf_{label}_1"] = bench.hf(None)
                if label == "pruned":
                    levels = TREE.level_slices[:-1]  # the levels the draft runs: root, depth 1..4
                    row["ours_pruned_levels"] = [bench.ours(None, lv.stop - lv.start) for lv in levels]
                    row["graph_pruned_levels"] = [
                        bench.graphed(TREE.ancestor_mask[lv, : lv.stop], prefix_back=lv.start) for lv in levels
                    ]
                del bench
        gc.collect()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    del adapter
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["qwen2.5-vl-32b:qwen2.5-vl-7b", "llava-ov-7b:llava-ov-0.5b"])
    parser.add_argument("--contexts", nargs="+", type=int, default=[4096, 16384, 25600])
    parser.add_argument("--tau", nargs="+", type=float, default=[3.8])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke test of the script")
    parser.add_argument("--no-compile", action="store_true", help="static steps without torch.compile")
    args = parser.parse_args()
    global DEVICE, COMPILE
    DEVICE, COMPILE = args.device, not args.no_compile and args.device == "cuda"
    bandwidth = copy_bandwidth()
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    results = {"bandwidth": bandwidth, "pairs": []}
    lines = []
    for pair in args.pairs:
        target_name, draft_name = pair.split(":")
        targets = measure_model(target_name, args.contexts, bandwidth, "target")
        drafts = measure_model(draft_name, args.contexts, bandwidth, "draft")
        results["pairs"].append({"target": targets, "draft": drafts})
        lines.append(f"\n## {target_name} target, {draft_name} draft (bf16, ms per step; x = ratio to the floor)\n")
        lines.append("| context | step | floor | HF path | ours eager | ours graph | HF x | eager x | graph x |")
        lines.append("|---|---|---|---|---|---|---|---|---|")

        def row_line(ctx, label, f, hf, eager, graph):
            return (f"| {ctx} | {label} | {f:.2f} | {hf:.2f} | {eager:.2f} | {graph:.2f} | "
                    f"{hf / f:.2f} | {eager / f:.2f} | {graph / f:.2f} |")

        for t, d in zip(targets, drafts):
            for label, key in (("target 1 token", "1"), ("target chain 5", "chain5"), ("target tree 26", "tree26")):
                lines.append(row_line(t["context"], label, t["floor_ms"], t["hf_" + key], t["ours_" + key], t["graph_" + key]))
            for label in ("full", "pruned"):
                lines.append(row_line(t["context"], f"draft 1 token, {label} context", d[f"floor_{label}_ms"],
                                      d[f"hf_{label}_1"], d[f"ours_{label}_1"], d[f"graph_{label}_1"]))
            lines.append(f"| {t['context']} | HF generate, per token | | {t['generate_ms']:.2f} | | | | | |")
        lines.append("\nComposed from the measured step costs (not an end-to-end run): default tree, draft at the "
                     "90%-pruned context, one cycle = draft level passes + one target tree pass.\n")
        lines.append("| context | steps | cycle ms | " + " | ".join(f"speedup at tau {tau}" for tau in args.tau) + " |")
        lines.append("|---|---|---|" + "---|" * len(args.tau))
        for t, d in zip(targets, drafts):
            for kind in ("ours", "graph"):
                cycle = sum(d[f"{kind}_pruned_levels"]) + t[f"{kind}_tree26"]
                speedups = [tau * t["generate_ms"] / cycle for tau in args.tau]
                label = "eager" if kind == "ours" else "CUDA graphs"
                lines.append(f"| {t['context']} | {label} | {cycle:.2f} | " + " | ".join(f"{x:.2f}x" for x in speedups) + " |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
