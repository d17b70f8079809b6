"""Where a decoding cycle's time goes, on the device's own timeline (GPU).

    python benchmarks/cycle_trace.py [--pair llava-ov-7b:llava-ov-0.5b] [--context 65536] [--ratio 0.9]
                                     [--tokens 64] [--out DIR]

Builds the pair as benchmarks/e2e.py does (random weights of the published shapes, the tau oracle,
the default tree), runs target-only decoding and pruned speculative decoding once warm, then once
more each under torch.profiler (CPU and CUDA). The engine's phases are marked on the host (the
drafter's propose and accept, the oracle, the target's verification and decision, reading the
verdict, the rollback, every step by its row count); each GPU kernel is charged to the phase that
launched it, and each stretch with no kernel running on the GPU to the phase the host was in.

Prints, per cycle (per token for target-only): each phase's host time, the GPU time of the kernels
it launched and the GPU idle time spent while the host was in it; writes the Chrome traces
(``*.trace.json.gz``, open in Perfetto) and the table (``cycle_trace.json``) to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (the pair, the prompt and the oracle, exactly as the end-to-end benchmark builds them)

from specvlm.engine import speculative, static  # noqa: E402
from specvlm.engine.config import SpecConfig  # noqa: E402
from specvlm.engine.decoding import decode_target  # noqa: E402
from specvlm.engine.drafters import ModelDrafter  # noqa: E402
from specvlm.engine.tree import DraftTree  # noqa: E402
from specvlm.engine.tree_search import RankAcceptance  # noqa: E402
from specvlm.pruning import PruneConfig  # noqa: E402
from specvlm.testing import shapes  # noqa: E402

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


def marked(name: str, fn):
    def wrapper(*a, **k):
        with record_function(name):
            return fn(*a, **k)

    return wrapper


@contextmanager
def phases():
    """Host-side marks on the engine's phases, removed afterwards."""
    saved = [(speculative, n, getattr(speculative, n)) for n in ("decide", "roll_back", "read_verdict")]
    saved.append((static.Workspace, "step", static.Workspace.step))
    for module, name, fn in saved[:3]:
        setattr(module, name, marked(name, fn))
    step = saved[3][2]

    def marked_step(self, tokens, positions, prefix, pattern):
        with record_function(f"step q={pattern.shape[0]}"):
            return step(self, tokens, positions, prefix, pattern)

    static.Workspace.step = marked_step
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def analyse(trace: dict, units: int, start_mark: str | None) -> dict:
    """Per phase: host ms, GPU kernel ms it launched, GPU idle ms while the host was in it; per unit."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    marks = sorted((e for e in events if e.get("cat") == "user_annotation"), key=lambda e: e["ts"])
    if start_mark is not None:  # the decoding loop only: from the first occurrence of start_mark
        first = min(e["ts"] for e in marks if e["name"] == start_mark)
        events = [e for e in events if e["ts"] >= first]
        marks = [e for e in marks if e["ts"] >= first]
    runtime = [e for e in events if e.get("cat") == "cuda_runtime"]
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS), key=lambda e: e["ts"])

    def phase_at(ts: float) -> str:
        """The innermost mark open at host time ts ('loop' outside every mark)."""
        name, end = "loop", None
        for m in marks:
            if m["ts"] > ts:
                break
            if m["ts"] + m["dur"] >= ts and (end is None or m["ts"] + m["dur"] <= end):
                name, end = m["name"], m["ts"] + m["dur"]
        return name

    launcher = {e["args"].get("correlation"): phase_at(e["ts"]) for e in runtime if "correlation" in e.get("args", {})}
    rows = defaultdict(lambda: {"host_ms": 0.0, "gpu_ms": 0.0, "idle_ms": 0.0, "kernels": 0})
    for m in marks:
        rows[m["name"]]["host_ms"] += m["dur"] / 1000
    for k in gpu:
        row = rows[launcher.get(k["args"].get("correlation"), "unattributed")]
        row["gpu_ms"] += k["dur"] / 1000
        row["kernels"] += 1
    busy_until, gaps = gpu[0]["ts"], []
    for k in gpu:
        if k["ts"] > busy_until:
            gaps.append((busy_until, k["ts"]))
        busy_until = max(busy_until, k["ts"] + k["dur"])
    for a, b in gaps:
        rows[phase_at((a + b) / 2)]["idle_ms"] += (b - a) / 1000
    span = (busy_until - gpu[0]["ts"]) / 1000
    table = {name: {k: (v / units if k != "kernels" else v // units) for k, v in row.items()} for name, row in rows.items()}
    return {"units": units, "span_ms_per_unit": span / units,
            "idle_ms_per_unit": sum(b - a for a, b in gaps) / 1000 / units, "phases": table}


def show(title: str, result: dict) -> None:
    print(f"\n== {title}: {result['units']} units, {result['span_ms_per_unit']:.3f} ms each on the GPU's timeline, "
          f"of which idle {result['idle_ms_per_unit']:.3f} ms")  # fmt: skip
    print(f"  {'phase':<22}{'host ms':>10}{'GPU ms':>10}{'kernels':>9}{'GPU idle ms':>13}")
    for name, row in sorted(result["phases"].items(), key=lambda kv: -kv[1]["gpu_ms"] - kv[1]["idle_ms"]):
        print(f"  {name:<22}{row['host_ms']:>10.3f}{row['gpu_ms']:>10.3f}{row['kernels']:>9d}{row['idle_ms']:>13.3f}")


def traced(fn, path: Path) -> dict:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    raw = path.with_suffix("")  # name.trace.json
    prof.export_chrome_trace(str(raw))
    trace = json.loads(raw.read_text())
    with gzip.open(path, "wt") as f:
        json.dump(trace, f)
    raw.unlink()
    return out, trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="llava-ov-7b:llava-ov-0.5b")
    parser.add_argument("--context", type=int, default=65536)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--tau", type=float, default=3.8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("cycle_trace"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a GPU")
    e2e.DEVICE = "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    target_name, draft_name = args.pair.split(":")
    target, draft = shapes.random_adapter(target_name), shapes.random_adapter(draft_name)
    for adapter in (target, draft):
        shapes.token_local(adapter)
        adapter.eos_token_ids = ()
    full, d_full = shapes.synthetic_inputs(target, args.context), shapes.synthetic_inputs(draft, args.context)
    tree = DraftTree.default()
    n = args.tokens
    truth = decode_target(target, full, max_new_tokens=n + tree.depth + 2)
    acceptance = RankAcceptance.main_path([e2e.alpha_for_tau(args.tau, tree.depth)] * tree.depth)
    oracle = e2e.Oracle(truth.token_ids, acceptance, tree, target.vocab_size, target.device)
    oracle.__call__ = marked("oracle", oracle.__call__)
    drafter = ModelDrafter(draft)
    drafter.propose = marked("propose", drafter.propose)
    drafter.accept = marked("accept", drafter.accept)
    config = SpecConfig(tree=tree, prune=PruneConfig("specvlm", ratio=args.ratio), drafter=drafter)

    def spec():
        oracle.reset()
        return speculative.speculative_decode(target, draft, full, d_full, max_new_tokens=n,
                                              on_proposal=lambda t, e: oracle.__call__(t, e), config=config)  # fmt: skip

    def target_only():
        with record_function("token"):
            return decode_target(target, full, max_new_tokens=n)

    for _ in range(2):  # compile, capture, then warm
        spec()
        target_only()
    torch.cuda.synchronize()
    results = {"pair": args.pair, "context": full.length, "ratio": args.ratio, "tokens": n,
               "device": torch.cuda.get_device_name(0), "torch": torch.__version__}  # fmt: skip
    with phases():
        t0 = time.perf_counter()
        base, trace = traced(target_only, args.out / "target_only.trace.json.gz")
        results["target_only"] = analyse(trace, n - 1, "step q=1")
        results["target_only"]["wall_ms_per_token"] = 1000 * base.stats.decode_s / n
        out, trace = traced(spec, args.out / "speculative.trace.json.gz")
        cycles = out.stats.target_passes
        results["speculative"] = analyse(trace, cycles, "propose")
        results["speculative"].update(wall_ms_per_cycle=1000 * out.stats.decode_s / cycles, tau=out.stats.tau,
                                      equal=out.token_ids == base.token_ids)  # fmt: skip
        print(f"profiled in {time.perf_counter() - t0:.0f}s")
    show(f"{args.pair} @ {full.length}: target-only, per token", results["target_only"])
    show(f"{args.pair} @ {full.length}: SD pruned {args.ratio}, per cycle (tau {out.stats.tau:.2f}, "
         f"equal to target-only: {results['speculative']['equal']})", results["speculative"])  # fmt: skip
    (args.out / "cycle_trace.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
