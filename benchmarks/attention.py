"""Attention of one static step at real sizes: the ways to run tree verification, measured side by side.

    python benchmarks/attention.py [--out results/attention.json] [--summary results/attention.md]
    python benchmarks/attention.py --sweep --out results/tree_kernel_sweep.jsonl   # the kernel's tilings
    python benchmarks/attention.py --resources --out results/tree_kernel_resources.jsonl  # no GPU: registers, spills
    python benchmarks/attention.py --flashinfer --out results/attention_flashinfer.jsonl  # FlashInfer's routes

A step writes q tokens after a filled prefix and attends over a static cache whose capacity may be
far larger than what it holds (a workspace kept from an earlier, longer prompt). Per layer shape of
the published models (all layers, each with its own KV, captured as one CUDA graph, so L2 behaves as
in a model step), per filled length and capacity, ms per step summed over the layers:
- ``engine``: what the engine runs (engine/static.py);
- ``tree kernel``: the split-prefix tree attention (engine/tree_attention.py), parts and merge each
  one Triton launch;
- ``tree kernel, eager merge``: the same parts merged by PyTorch ops (as before the merge kernel);
- ``flex folded decoding``: FlexAttention's decoding kernel, query heads folded into rows by hand
  (below 128 rows, which is all it takes);
- earlier runs (records kept in results/attention.jsonl): ``flex gqa BLOCK_M=N`` (heads unfolded,
  ``enable_gqa``), ``flex folded chunks`` (rows cut into chunks of the decoding kernel's size, each
  reading the whole KV), ``grouped matmul`` (scores for every slot of the capacity, masked, eager);
- ``sdpa prefix only`` (beside verification rows): SDPA's fused kernel on the exact filled slice
  without a mask, a lower bound for the "fused prefix + small tree block" route (it leaves out the
  tree block and the merge, and it cannot be captured for a changing length).
``--flashinfer`` times FlashInfer's (``flashinfer-python``) routes to the same verification beside the
tree kernel, on the same queries and keys (its ragged layout, a copy of the same values):
- ``flashinfer fa2, one masked call``: the ragged prefill kernel over prefix and tree block at once, a
  custom mask marking the whole prefix visible;
- ``flashinfer fa2|fa3 prefix + fa2 tree block, merged``: cascade attention as FlashInfer builds it,
  the prefix without a mask (split over its length by FlashInfer's scheduler), the tree block under
  its mask, merged by ``merge_state``.
FlashInfer plans each call on the host for the lengths it is given, so a captured graph of it holds
for one filled length only (the engine's kernel reads the length on the device); the timing is the
kernels' own, at that length.
Every output is checked against a float32 reference on the filled slice (``max_err``). KV bytes read
at the bandwidth floor are reported beside (``floor_ms``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import flex_attention

from specvlm.engine import tree_attention as ta
from specvlm.engine.static import StaticMask, _prepare_compiler, bucket_capacity
from specvlm.engine.tree import DraftTree
from specvlm.engine.tree_attention import tree_attention
from specvlm.testing import shapes

MODELS = {  # layers, query heads, KV heads, head dim
    "qwen2.5-vl-32b": (64, 40, 8, 128),
    "qwen2.5-vl-7b": (28, 28, 4, 128),
    "llava-ov-0.5b": (24, 14, 2, 64),
}
ROOM = 512  # new tokens + a tree, as a workspace adds to the prompt
KERNEL = hashlib.sha1(Path(ta.__file__).read_bytes()).hexdigest()[:10]  # the kernel source a sweep record timed
FLEX_MAX_ROWS = 128  # FlexAttention's decoding kernel takes fewer query rows than this


def patterns() -> dict[int, torch.Tensor]:
    tree = DraftTree.default()
    return {1: torch.ones(1, 1, dtype=torch.bool), tree.draft_width: tree.draft_patterns()[2],
            tree.num_nodes: tree.ancestor_mask}  # fmt: skip


def on_gpu(pattern: torch.Tensor) -> torch.Tensor:
    """A pattern in a buffer laid out as a step's (rows 16 bytes apart), as the engine runs it."""
    buffer = ta.pattern_buffer(*pattern.shape, "cuda")
    return buffer.copy_(pattern)


_compiled_flex = torch.compile(flex_attention, dynamic=False)


def _flex(query, key, value, block_mask, scale):
    """FlexAttention's fused kernel (its decoding kernel below 128 rows)."""
    return _compiled_flex(query, key, value, block_mask=block_mask, scale=scale)


def reference(query, key, value, prefix: int, pattern, scale):
    q, width = pattern.shape
    end = prefix + width
    allowed = torch.zeros(q, end, dtype=torch.bool, device=query.device)
    allowed[:, :prefix] = True
    allowed[:, prefix:end] = pattern
    rep = query.shape[1] // key.shape[1]
    k = key[:, :, :end].float().repeat_interleave(rep, 1)
    v = value[:, :, :end].float().repeat_interleave(rep, 1)
    return torch.nn.functional.scaled_dot_product_attention(query.float(), k, v, attn_mask=allowed, scale=scale)


def time_graph(fn, reps: int = 10) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def run_model(name, contexts, qs, bandwidth, out: Path, methods_fresh) -> None:
    layers, hq, hkv, d = MODELS[name]
    scale = d**-0.5
    shared = bucket_capacity(max(contexts) + ROOM)
    caps = [("shared", shared)] + [("fresh", bucket_capacity(c + ROOM)) for c in methods_fresh]
    for q in qs:
        pattern = patterns()[q].cuda()
        width = pattern.shape[1]
        for kind, capacity in caps:
            storage = torch.randn(layers, 2, 1, hkv, capacity, d, dtype=torch.bfloat16, device="cuda")
            queries = torch.randn(layers, 1, hq, q, d, dtype=torch.bfloat16, device="cuda")
            mask = StaticMask(q, width, capacity, "cuda", group=hq // hkv)
            mask.pattern.copy_(pattern)
            outs = torch.empty_like(queries)
            rows = hq // hkv * q
            methods = {"engine": lambda l: mask.block_mask.attend(queries[l], storage[l, 0], storage[l, 1],
                                                                   scale)[0].transpose(1, 2)}  # fmt: skip
            if kind == "shared":
                methods["tree kernel"] = lambda l: tree_attention(queries[l], storage[l, 0], storage[l, 1],
                                                                  mask.prefix, mask.pattern, scale)  # fmt: skip
                config = ta.kernel_config(rows, hkv)
                methods["tree kernel, eager merge"] = lambda l: ta._merge(*ta.launch_parts(
                    queries[l].reshape(1, hkv, rows, d), storage[l, 0], storage[l, 1], mask.prefix, mask.pattern, scale,
                    config)).to(queries.dtype).view(1, hq, q, d)  # fmt: skip
                if rows < FLEX_MAX_ROWS:
                    methods["flex folded decoding"] = lambda l: _flex(
                        queries[l].reshape(1, hkv, rows, d), storage[l, 0], storage[l, 1], mask.block_mask, scale
                    ).view(1, hq, q, d)
            for context in contexts if kind == "shared" else [c for c in methods_fresh if bucket_capacity(c + ROOM) == capacity]:
                prefix = context
                mask.prefix.fill_(prefix)
                mask.update()
                ref = reference(queries[0], storage[0, 0], storage[0, 1], prefix, pattern, scale)
                kv = 2 * layers * hkv * (prefix + width) * d * 2
                sdpa_ms = None
                if kind == "shared" and rows >= FLEX_MAX_ROWS:
                    ks, vs = storage[:, 0, :, :, : prefix + width], storage[:, 1, :, :, : prefix + width]

                    def sdpa_all():
                        for l in range(layers):
                            outs[l] = torch.nn.functional.scaled_dot_product_attention(
                                queries[l], ks[l], vs[l], scale=scale, enable_gqa=True)

                    try:
                        sdpa_ms = time_graph(sdpa_all)
                    except Exception as e:  # noqa: BLE001 - record why the route is unavailable
                        sdpa_ms = f"failed: {type(e).__name__}: {str(e)[:120]}"
                for label, fn in methods.items():
                    t0 = time.perf_counter()
                    try:
                        err = float((fn(0).float() - ref).abs().max())
                        compile_s = time.perf_counter() - t0

                        def all_layers(fn=fn):
                            for l in range(layers):
                                outs[l] = fn(l)

                        ms = time_graph(all_layers)
                        fail = None
                    except Exception as e:  # noqa: BLE001
                        ms = err = compile_s = None
                        fail = f"{type(e).__name__}: {str(e)[:200]}"
                    record = {"model": name, "q": q, "workspace": kind, "capacity": capacity, "context": context,
                              "method": label, "ms": ms, "max_err": err, "floor_ms": 1000 * kv / bandwidth,
                              "sdpa_prefix_only_ms": sdpa_ms, "compile_s": compile_s, "error": fail}  # fmt: skip
                    with out.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)
            del storage, queries, outs
            torch.cuda.empty_cache()


def sweep(contexts, bandwidth, out: Path, few_rows: bool = False, grid_override=None, label: str | None = None) -> None:
    """The split-prefix kernel's tilings on the verification (and draft-level) shapes, all layers
    captured as one graph; the engine's ``kernel_config`` is chosen from these records. ``few_rows``:
    one-token steps and draft levels instead, over the parallelism (programs per SM) and KV tile.
    ``grid``: the tilings (block_m or None for the engine's, block_n, warps, stages, per_sm[, fuse_tail]) instead
    of the full product; ``label``: written in each record (which kernel source ran, say)."""

    tree = DraftTree.default()
    if few_rows:
        cases = [("qwen2.5-vl-7b", 1), ("llava-ov-0.5b", 1), ("qwen2.5-vl-32b", 1), ("qwen2.5-vl-7b", tree.draft_width)]
        grid = [(None, bn, 4, stages, per_sm) for bn, stages, per_sm in itertools.product((32, 64), (2, 3), (1, 2, 4, 8))]
    else:
        cases = [("qwen2.5-vl-7b", tree.num_nodes), ("qwen2.5-vl-32b", tree.num_nodes),
                 ("llava-ov-0.5b", tree.draft_width), ("qwen2.5-vl-7b", 1)]  # fmt: skip
        grid = list(itertools.product((32, 64, 128), (32, 64, 128), (4, 8), (2, 3, 4), (1, 2, 4)))
    grid = grid if grid_override is None else grid_override
    capacity = bucket_capacity(max(contexts) + ROOM)
    for name, q in cases:
        layers, hq, hkv, d = MODELS[name]
        pattern = on_gpu(patterns()[q])
        storage = torch.randn(layers, 2, 1, hkv, capacity, d, dtype=torch.bfloat16, device="cuda")
        queries = torch.randn(layers, 1, hkv, hq // hkv * q, d, dtype=torch.bfloat16, device="cuda")
        outs = torch.empty_like(queries)
        prefix = torch.zeros((), dtype=torch.int64, device="cuda")
        for context in contexts:
            prefix.fill_(context)
            kv = 2 * layers * hkv * (context + pattern.shape[1]) * d * 2
            ref = reference(queries[0].view(1, hq, q, d), storage[0, 0], storage[0, 1], context, pattern, d**-0.5)
            best = None
            for bm, *tiling in grid:
                config = ta.KernelConfig(bm or ta.kernel_config(hq // hkv * q, hkv).block_m, *tiling)
                try:
                    err = float((ta.launch(queries[0], storage[0, 0], storage[0, 1], prefix, pattern, d**-0.5, config)
                                 .view(1, hq, q, d).float() - ref).abs().max())  # fmt: skip

                    def all_layers(config=config):
                        for l in range(layers):
                            outs[l] = ta.launch(queries[l], storage[l, 0], storage[l, 1], prefix, pattern, d**-0.5, config)

                    ms, fail = time_graph(all_layers), None
                except Exception as e:  # noqa: BLE001 - a tiling the compiler refuses (shared memory, say)
                    ms = err = None
                    fail = f"{type(e).__name__}: {str(e)[:160]}"
                record = {"sweep": True, "model": name, "q": q, "rows": hq // hkv * q, "context": context,
                          "capacity": capacity, "config": config.__dict__, "fused_tail": ta.fused_tail(hq // hkv * q, config),
                          "ms": ms, "max_err": err,
                          "floor_ms": 1000 * kv / bandwidth, "error": fail, "label": label, "kernel": KERNEL,
                          "device": torch.cuda.get_device_name(0)}  # fmt: skip
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if ms is not None and (best is None or ms < best["ms"]):
                    best = record
            print("best", json.dumps(best), flush=True)
        del storage, queries, outs
        torch.cuda.empty_cache()


def flashinfer_routes(models, contexts, bandwidth, out: Path) -> None:
    """FlashInfer's ways to run the default tree's verification against the engine's tree kernel (see
    the module docstring); each route's first call includes its JIT build (``compile_s``)."""
    import flashinfer

    tree = DraftTree.default()
    q, pattern = tree.num_nodes, patterns()[tree.num_nodes].cuda()
    capacity = max(contexts) + ROOM  # the tree kernel's cost follows the filled length; room for the copy
    for name in models:
        layers, hq, hkv, d = MODELS[name]
        scale, rows = d**-0.5, hq // hkv * q
        storage = torch.randn(layers, 2, 1, hkv, capacity, d, dtype=torch.bfloat16, device="cuda")
        queries = torch.randn(layers, 1, hq, q, d, dtype=torch.bfloat16, device="cuda")
        ragged = storage[:, :, 0].transpose(2, 3).contiguous()  # (layers, 2, capacity, hkv, d): FlashInfer's NHD
        fi_q = queries[:, 0].transpose(1, 2).contiguous()  # (layers, q, hq, d)
        outs = torch.empty_like(fi_q)
        prefix_t = torch.zeros((), dtype=torch.int64, device="cuda")
        on_device = on_gpu(pattern)
        for context in contexts:
            prefix_t.fill_(context)
            ref = reference(queries[0], storage[0, 0], storage[0, 1], context, pattern, scale)
            kv = 2 * layers * hkv * (context + q) * d * 2

            def wrapper(kv_len, backend, mask=None):
                indptr = lambda n: torch.tensor([0, n], dtype=torch.int32, device="cuda")  # noqa: E731
                w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(
                    torch.empty(256 << 20, dtype=torch.uint8, device="cuda"), "NHD", use_cuda_graph=True,
                    qo_indptr_buf=indptr(q), kv_indptr_buf=indptr(kv_len),
                    custom_mask_buf=None if mask is None else torch.empty((mask.numel() + 7) // 8, dtype=torch.uint8, device="cuda"),
                    mask_indptr_buf=None if mask is None else indptr((mask.numel() + 7) // 8), backend=backend)  # fmt: skip
                w.plan(indptr(q), indptr(kv_len), hq, hkv, d, custom_mask=None if mask is None else mask.flatten(),
                       sm_scale=scale, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)  # fmt: skip
                return w

            def whole(backend):
                mask = torch.ones(q, context + q, dtype=torch.bool, device="cuda")
                mask[:, context:] = pattern
                w = wrapper(context + q, backend, mask)
                return lambda l: w.run(fi_q[l], ragged[l, 0, : context + q], ragged[l, 1, : context + q])

            def cascade(backend):
                prefix_w, block_w = wrapper(context, backend), wrapper(q, "fa2", pattern)

                def run(l):
                    o_a, s_a = prefix_w.run(fi_q[l], ragged[l, 0, :context], ragged[l, 1, :context], return_lse=True)
                    o_b, s_b = block_w.run(fi_q[l], ragged[l, 0, context : context + q], ragged[l, 1, context : context + q],
                                           return_lse=True)  # fmt: skip
                    return flashinfer.merge_state(o_a, s_a, o_b, s_b)[0]

                return run

            engine = lambda l: tree_attention(queries[l], storage[l, 0], storage[l, 1], prefix_t, on_device,  # noqa: E731
                                              scale).transpose(1, 2)[0]  # fmt: skip
            routes = {"tree kernel": lambda: engine, "flashinfer fa2, one masked call": lambda: whole("fa2"),
                      "flashinfer fa2 prefix + fa2 tree block, merged": lambda: cascade("fa2"),
                      "flashinfer fa3 prefix + fa2 tree block, merged": lambda: cascade("fa3")}  # fmt: skip
            for label, build in routes.items():
                t0 = time.perf_counter()
                try:
                    fn = build()
                    got = fn(0)
                    torch.cuda.synchronize()
                    compile_s = time.perf_counter() - t0
                    err = float((got.transpose(0, 1)[None].float() - ref).abs().max())

                    def all_layers(fn=fn):
                        for l in range(layers):
                            outs[l] = fn(l)

                    ms, fail = time_graph(all_layers), None
                except Exception as e:  # noqa: BLE001 - record why a route is unavailable
                    ms = err = compile_s = None
                    fail = f"{type(e).__name__}: {str(e)[:300]}"
                record = {"model": name, "q": q, "rows": rows, "workspace": "shared", "capacity": capacity,
                          "context": context, "method": label, "ms": ms, "max_err": err,
                          "floor_ms": 1000 * kv / bandwidth, "compile_s": compile_s, "error": fail,
                          "flashinfer": flashinfer.__version__, "device": torch.cuda.get_device_name(0)}  # fmt: skip
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)
        del storage, queries, ragged, fi_q, outs
        torch.cuda.empty_cache()


def summary(records) -> str:
    lines = ["| run | model | q | workspace (capacity) | context | method | ms/step (all layers) | KV floor ms | max err | sdpa prefix only ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        ms = "failed" if r["ms"] is None else f"{r['ms']:.3f}"
        sd = r.get("sdpa_prefix_only_ms")
        sd = "-" if sd is None or r["method"] not in ("engine", "flex gqa BLOCK_M=64", "flex folded decoding (engine below 128 rows)", "tree kernel") else (f"{sd:.3f}" if isinstance(sd, float) else sd)
        err = "-" if r["max_err"] is None else f"{r['max_err']:.1e}"
        lines.append(f"| {str(r.get('run', '-')).split(':')[0]} | {r['model']} | {r['q']} | {r['workspace']} ({r['capacity']}) | {r['context']} | {r['method']} | "
                     f"{ms} | {r['floor_ms']:.3f} | {err} | {sd} |")
    return "\n".join(lines)


def resources(grid, out: Path | None) -> list[dict]:
    """Registers, spilled stores and shared memory of the tree kernel compiled for sm_90 (no GPU
    needed: Triton's compiler and cuobjdump), per step shape and tiling, with the pattern's rows 16
    bytes apart (the engine's step buffers) and packed (a bare (q, width) tensor)."""
    import re
    import subprocess
    import tempfile

    import triton

    from specvlm.testing.kernels import compile_parts

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    tree = DraftTree.default()
    cases = [("qwen2.5-vl-7b", tree.num_nodes), ("qwen2.5-vl-32b", tree.num_nodes), ("llava-ov-0.5b", tree.draft_width),
             ("qwen2.5-vl-7b", 1)]  # fmt: skip
    records = []
    for (name, q), tiling, padded in itertools.product(cases, grid or [None], (True, False)):
        _, hq, hkv, d = MODELS[name]
        rows = hq // hkv * q
        config = ta.kernel_config(rows, hkv)  # the engine's, or a given tiling (block_m None: the engine's)
        if tiling is not None:
            config = ta.KernelConfig(tiling[0] or config.block_m, *tiling[1:])
        block_m, tail_m = ta.row_tiles(rows, config.block_m)
        bn, warps, stages = config.block_n, config.num_warps, config.num_stages
        compiled = compile_parts(rows, config, "bf16", d, pattern_aligned=padded)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            usage = subprocess.run([tools / "cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
            sass = subprocess.run([tools / "cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
        record = {"resources": True, "model": name, "q": q, "rows": rows, "triton": triton.__version__, "kernel": KERNEL,
                  "config": {"block_m": block_m, "tail_m": tail_m, "block_n": bn, "num_warps": warps, "num_stages": stages,
                             "fused_tail": ta.fused_tail(rows, config)},
                  "pattern_rows_16_bytes_apart": padded, "registers": int(re.search(r"REG:(\d+)", usage).group(1)),
                  "spilled_stores": sass.count("STL"), "shared_bytes": compiled.metadata.shared}  # fmt: skip
        print(json.dumps(record), flush=True)
        records.append(record)
        if out is not None:
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
    return records


def _tiling(text: str) -> tuple:
    values = [int(v) for v in text.split(",")]
    if len(values) not in (5, 6) or any(v < 0 for v in values) or 0 in values[1:5] or values[5:] not in ([], [0], [1]):
        raise argparse.ArgumentTypeError(f"a tiling is BLOCK_M,BLOCK_N,WARPS,STAGES,PER_SM[,FUSE_TAIL 0|1], got {text!r}")
    return (values[0] or None, *values[1:5], *(bool(v) for v in values[5:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--contexts", nargs="+", type=int, default=[4096, 16384, 65536, 131072])
    parser.add_argument("--fresh", nargs="*", type=int, default=[4096], help="contexts also measured in a workspace of their own size")
    parser.add_argument("--out", type=Path, default=Path("attention.jsonl"))
    parser.add_argument("--summary", type=Path)
    parser.add_argument("--sweep", action="store_true", help="time the tree kernel's tilings instead")
    parser.add_argument("--few-rows", action="store_true", help="with --sweep: one-token steps and draft levels")
    parser.add_argument("--grid", nargs="+", type=_tiling, help="with --sweep: only these tilings, each "
                        "BLOCK_M,BLOCK_N,WARPS,STAGES,PER_SM (BLOCK_M 0: the engine's)")
    parser.add_argument("--label", help="with --sweep: a label written in every record")
    parser.add_argument("--flashinfer", action="store_true", help="time FlashInfer's cascade routes to the "
                        "default tree's verification beside the tree kernel (needs flashinfer-python)")
    parser.add_argument("--resources", action="store_true", help="no GPU needed: the kernel compiled for sm_90 "
                        "at each --grid tiling (default: the engine's), its registers, spills and shared memory")
    args = parser.parse_args()
    if args.resources:
        resources(args.grid, args.out)
        return
    if args.summary:
        records = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
        args.summary.write_text(summary(records) + "\n")
        print(summary(records))
        return
    bandwidth = shapes.copy_bandwidth("cuda")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    if args.flashinfer:
        flashinfer_routes([m for m in args.models if m != "llava-ov-0.5b"], args.contexts, bandwidth, args.out)
        return
    if args.sweep:
        sweep(args.contexts, bandwidth, args.out, args.few_rows, args.grid, args.label)
        return
    _prepare_compiler()
    tree = DraftTree.default()
    # targets: a one-token step and the default tree's verification; the small draft: its level pass
    steps = {"qwen2.5-vl-32b": [tree.num_nodes, 1], "qwen2.5-vl-7b": [tree.num_nodes, 1], "llava-ov-0.5b": [tree.draft_width, 1]}
    for name in args.models:
        run_model(name, args.contexts, steps[name], bandwidth, args.out, args.fresh)


if __name__ == "__main__":
    main()
