"""Summaries of a benchmark run: per-method numbers, a Markdown table and plots.

Input: the records of ``samples.jsonl`` (see ``specvlm.bench.harness``). Output, in the run's folder:

* ``summary.json``: ``{"settings", "samples", "skipped", "methods": [per-method summary]}``;
* ``summary.md``: the same as one Markdown table (also what the CLI prints);
* ``speedup_vs_ratio.png`` / ``tau_vs_ratio.png``: one line per pruning strategy over the prune
  ratios, plain SD as a dashed horizontal reference (speedup: the target's 1.0 dotted);
* ``per_sample.png``: the spread of per-sample speedups of every non-baseline method (box + points).

Per method: ``samples`` (records with status ok), ``failed`` and their ``errors``, ``tokens`` and
``decode_s`` (totals), ``prefill_s`` (total, target + draft), ``tokens_per_s`` (total tokens over
total decode time), ``tau`` (pooled: tokens after the prefill's over verification passes),
``speedup_mean`` (mean of per-sample baseline/method decode-time ratios), ``speedup_total`` (the
baseline's total decode time over the method's, on the samples both have), ``equal_rate`` (share
of samples whose token ids equal the baseline's) and the mean ``video_tokens`` /
``draft_video_tokens``. Plots are drawn with matplotlib's Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PLOTS = ("speedup_vs_ratio.png", "tau_vs_ratio.png", "per_sample.png")

_KIND_ORDER = {"target": 0, "sd": 1, "pruned": 2, "hf-assisted": 3}


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _method_order(records: Sequence[dict]) -> list[str]:
    first: dict[str, dict] = {}
    for r in records:
        first.setdefault(r["method"], r)
    return sorted(
        first,
        key=lambda m: (_KIND_ORDER.get(first[m].get("kind"), 9), first[m].get("strategy") or "",
                       first[m].get("ratio") or 0.0, m),
    )


def summarize(records: Sequence[dict], skipped: Sequence[dict] = (), settings: dict | None = None) -> dict:
    """Per-method summary of the records; see the module docstring."""
    baseline = {
        r["sample_id"]: r for r in records if r.get("method") == "target" and r.get("status") == "ok"
    }
    methods = []
    for name in _method_order(records):
        rows = [r for r in records if r.get("method") == name]
        ok = [r for r in rows if r.get("status") == "ok"]
        failed = [r for r in rows if r.get("status") != "ok"]
        first = rows[0]
        speedups = [_num(r.get("speedup")) for r in ok if _num(r.get("speedup")) is not None]
        paired = [
            (r, baseline[r["sample_id"]]) for r in ok
            if _num(r.get("decode_s")) and _num(baseline.get(r["sample_id"], {}).get("decode_s"))
        ]
        own = sum(r["decode_s"] for r, _ in paired)
        base = sum(b["decode_s"] for _, b in paired)
        decode = [_num(r.get("decode_s")) for r in ok if _num(r.get("decode_s")) is not None]
        tokens = sum(int(r.get("tokens") or 0) for r in ok)
        tokens_timed = sum(int(r.get("tokens") or 0) for r in ok if _num(r.get("decode_s")) is not None)
        prefill = [(_num(r.get("prefill_s")) or 0.0) + (_num(r.get("draft_prefill_s")) or 0.0)
                   for r in ok if _num(r.get("prefill_s")) is not None]
        passes = [r for r in ok if r.get("kind") in ("sd", "pruned") and r.get("target_passes")]
        equal = [bool(r["equal_to_target"]) for r in ok if r.get("equal_to_target") is not None]
        video = [r["video_tokens"] for r in ok if r.get("video_tokens") is not None]
        draft_video = [r["draft_video_tokens"] for r in ok if r.get("draft_video_tokens") is not None]
        methods.append(
            {
                "method": name,
                "kind": first.get("kind"),
                "strategy": first.get("strategy"),
                "ratio": first.get("ratio"),
                "samples": len(ok),
                "failed": len(failed),
                "errors": sorted({str(r.get("error")) for r in failed}),
                "tokens": tokens,
                "prefill_s": sum(prefill) if prefill else None,
                "decode_s": sum(decode) if decode else None,
                "decode_s_estimated": any(r.get("decode_s_estimated") for r in ok),
                "tokens_per_s": tokens_timed / sum(decode) if decode and sum(decode) > 0 else None,
                "tau": (
                    sum(r["tokens"] - 1 for r in passes) / sum(r["target_passes"] for r in passes)
                    if passes else None
                ),
                "speedup_mean": _mean(speedups),
                "speedup_total": base / own if paired and own > 0 else None,
                "equal_rate": _mean([float(e) for e in equal]),
                "video_tokens": _mean(video),
                "draft_video_tokens": _mean(draft_video),
            }
        )
    return {
        "settings": settings or {},
        "samples": len({r["sample_id"] for r in records}),
        "skipped": list(skipped),
        "methods": methods,
    }


def _fmt(value, spec: str, none: str = "–") -> str:
    return none if value is None else format(value, spec)


def markdown(summary: dict) -> str:
    """The summary as a Markdown table, with a short header naming the run."""
    s = summary.get("settings") or {}
    lines = []
    if s:
        frames = (f"{s['num_frames']} frames" if s.get("num_frames") else
                  f"{s['fps']} fps" if s.get("fps") else "all frames")
        lines.append(
            f"target `{s.get('target')}`, draft `{s.get('draft')}`; {frames}, "
            f"max {s.get('max_new_tokens')} new tokens, tree `{s.get('tree')}`, "
            f"drafter `{s.get('drafter', 'model')}`, greedy"
        )
    n_skipped = len(summary.get("skipped") or [])
    skipped = f", {n_skipped} skipped (see skipped.jsonl)" if n_skipped else ""
    lines.append(f"{summary.get('samples', 0)} samples{skipped}")
    lines.append("")
    lines.append(
        "| method | samples | tokens | prefill s | decode s | tokens/s | tau | draft video tokens "
        "| speedup (mean) | speedup (total) | equal to target | notes |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for m in summary["methods"]:
        notes = []
        if m["failed"]:
            errors = "; ".join(m["errors"])
            notes.append(f"failed {m['failed']}/{m['failed'] + m['samples']}: {errors}")
        if m.get("decode_s_estimated"):
            notes.append("decode s estimated: wall time minus both models' time to a first token")
        draft_video = ""
        if m.get("draft_video_tokens") is not None:
            draft_video = f"{m['draft_video_tokens']:.0f}"
            if m.get("video_tokens"):
                draft_video += f" / {m['video_tokens']:.0f}"
        equal = None if m["equal_rate"] is None else f"{100 * m['equal_rate']:.0f}%"
        cells = [
            m["method"],
            str(m["samples"]),
            str(m["tokens"]),
            _fmt(m["prefill_s"], ".3f"),
            _fmt(m["decode_s"], ".3f"),
            _fmt(m["tokens_per_s"], ".1f"),
            _fmt(m["tau"], ".2f"),
            draft_video or "–",
            _fmt(m["speedup_mean"], ".2f", "–") + ("x" if m["speedup_mean"] is not None else ""),
            _fmt(m["speedup_total"], ".2f", "–") + ("x" if m["speedup_total"] is not None else ""),
            equal or "–",
            " ".join(n.replace("|", "/") for n in notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ plots


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _by_ratio(summary: dict, key: str, path: Path, ylabel: str, title: str) -> Path:
    fig, ax = _figure()
    pruned = [m for m in summary["methods"] if m["kind"] == "pruned" and m.get(key) is not None]
    strategies = list(dict.fromkeys(m["strategy"] for m in pruned))
    for strategy in strategies:
        points = sorted((m["ratio"], m[key]) for m in pruned if m["strategy"] == strategy)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=strategy)
    sd = next((m for m in summary["methods"] if m["kind"] == "sd" and m.get(key) is not None), None)
    if sd is not None:
        ax.axhline(sd[key], color="black", linestyle="--", linewidth=1, label=f"plain SD ({sd[key]:.2f})")
    if key == "speedup_mean":
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="target only (1.00)")
    if not pruned and sd is None:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ratios = sorted({m["ratio"] for m in pruned})
    if ratios:
        ax.set_xticks(ratios)
        lo, hi = min(ratios), max(ratios)
        pad = 0.05 if hi == lo else 0.05 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("prune ratio (share of the draft's video tokens removed)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_speedup_vs_ratio(summary: dict, path: Path) -> Path:
    return _by_ratio(summary, "speedup_mean", path, "decoding speedup over the target alone (x)",
                     "speedup vs prune ratio")


def plot_tau_vs_ratio(summary: dict, path: Path) -> Path:
    return _by_ratio(summary, "tau", path, "tau (tokens per verification pass)", "tau vs prune ratio")


def plot_per_sample(records: Sequence[dict], path: Path) -> Path:
    """Box plot of per-sample speedups per method, every sample drawn as a point over it."""
    names = [m for m in _method_order(records) if m != "target"]
    data = [
        [r["speedup"] for r in records
         if r.get("method") == name and r.get("status") == "ok" and _num(r.get("speedup")) is not None]
        for name in names
    ]
    shown = [(n, d) for n, d in zip(names, data) if d]
    fig, ax = _figure(max(6.4, 1.3 * len(shown) + 2), 4.2)
    if shown:
        positions = list(range(1, len(shown) + 1))
        ax.boxplot([d for _, d in shown], positions=positions, widths=0.5, showfliers=False)
        for x, (_, d) in zip(positions, shown):
            offsets = [((i * 0.618034) % 1 - 0.5) * 0.3 for i in range(len(d))]  # deterministic jitter
            ax.scatter([x + o for o in offsets], d, s=12, alpha=0.6, zorder=3)
        ax.set_xticks(positions)
        ax.set_xticklabels([n for n, _ in shown], rotation=20, ha="right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no speedups recorded", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_ylabel("per-sample decoding speedup (x)")
    ax.set_title("speedup per sample")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_report(out_dir: str | Path, records: Sequence[dict], skipped: Sequence[dict] = (),
                 settings: dict | None = None) -> dict:
    """Write summary.json, summary.md and the three plots into ``out_dir``; return the summary."""
    out = Path(out_dir)
    summary = summarize(records, skipped, settings)
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / SUMMARY_MD).write_text(markdown(summary), encoding="utf-8")
    plot_speedup_vs_ratio(summary, out / PLOTS[0])
    plot_tau_vs_ratio(summary, out / PLOTS[1])
    plot_per_sample(records, out / PLOTS[2])
    return summary
