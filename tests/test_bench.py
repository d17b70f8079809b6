"""`specvlm bench`: the harness and its report through main(), on tiny checkpoints and real mp4 files;
plus the summary arithmetic and the JSONL repair on synthetic records."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from specvlm.bench.harness import HF_ASSISTED, Bench, BenchSettings, JsonlLog, Method, timing_error
from specvlm.bench.report import PLOTS, markdown, summarize
from specvlm.cli import main
from specvlm.video import write_video
from test_datasets import make_vdc  # the VideoDetailCaption layout of tests/test_datasets.py

FAMILY = "qwen2_5_vl"
PROMPT = "Describe the video."
# 4 frames of 64x64 -> 32 video tokens per sample; pruning ratio 0.9 keeps 3, 0.5 keeps 16.
RUN = ["--frames", "4", "--max-new-tokens", "8", "--tree", "chain:2", "--warmup", "0", "--no-progress"]
PNG = b"\x89PNG\r\n\x1a\n"



@pytest.fixture(scope="module")
def pair(tiny_pairs) -> tuple[str, str]:
    target, draft = tiny_pairs(FAMILY)
    return str(target), str(draft)


def clip(path: Path, seed: int, frames: int = 8) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(frames, 64, 64, 3), dtype=np.uint8)
    return write_video(path, pixels, fps=8.0)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def bench(capsys, *argv: str) -> tuple[str, str]:
    capsys.readouterr()
    code = main(["bench", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def test_bench_folder_writes_records_report_and_resumes(pair, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    clip(videos / "a.mp4", 0)
    clip(videos / "b.mp4", 1, frames=6)
    (videos / "broken.mp4").write_bytes(b"this is not a video" * 20)
    out = tmp_path / "run"
    argv = ["--target", pair[0], "--draft", pair[1], "--videos", str(videos), "--prompt", PROMPT, *RUN,
            "--hf-assisted", "--out", str(out)]
    stdout, _ = bench(capsys, *argv)

    records = lines(out / "samples.jsonl")
    methods = ["target", "sd", "pruned:specvlm@0.9", "hf-assisted"]
    assert [(r["sample_id"], r["method"]) for r in records] == [(s, m) for s in ("a.mp4", "b.mp4") for m in methods]
    for r in records:
        if r["method"] == "hf-assisted" and r["status"] == "failed":
            assert r["error"]  # the peer may fail on a family: then with its reason
            continue
        assert r["status"] == "ok" and r["equal_to_target"] is True, r
        assert 1 <= r["tokens"] <= 8 and r["decode_s"] > 0 and r["tokens_per_s"] > 0 and r["speedup"] > 0
        assert r["video_tokens"] == 32
        if r["method"] == "hf-assisted":
            assert r["decode_s"] == pytest.approx(r["total_s"] - r["first_token_s"])
    by = {(r["sample_id"], r["method"]): r for r in records}
    assert by["a.mp4", "target"]["speedup"] == 1.0 and by["a.mp4", "target"]["tau"] is None
    assert by["a.mp4", "sd"]["draft_video_tokens"] == 32 and by["a.mp4", "sd"]["tau"] >= 1
    sd = by["a.mp4", "sd"]  # acceptance by depth and rank: one try of each first-level rank per cycle
    assert sd["rank_tries"][0] == [sd["target_passes"]] * len(sd["rank_tries"][0])
    assert sum(sd["rank_hits"][0]) <= sd["target_passes"]
    pruned = by["b.mp4", "pruned:specvlm@0.9"]
    assert pruned["draft_video_tokens"] == 3 and pruned["strategy"] == "specvlm" and pruned["ratio"] == 0.9
    assert pruned["prefill_s"] > 0 and pruned["draft_prefill_s"] > 0

    skipped = lines(out / "skipped.jsonl")
    assert [s["sample_id"] for s in skipped] == ["broken.mp4"]
    assert skipped[0]["reason"] == "unreadable video" and "broken.mp4" in skipped[0]["error"]

    summary = json.loads((out / "summary.json").read_text())
    assert [m["method"] for m in summary["methods"]] == methods
    target_row = summary["methods"][0]
    assert target_row["samples"] == 2 and target_row["speedup_mean"] == 1.0 and target_row["equal_rate"] == 1.0
    table = (out / "summary.md").read_text()
    assert table in stdout  # the table is printed at the end
    assert "| method | samples | tokens |" in table and "speedup (mean)" in table and "equal to target" in table
    assert all(f"| {m} |" in table for m in methods) and "1 skipped" in table
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == PNG

    # Resume: nothing left to do, so nothing is added (and no model is loaded).
    before = (out / "samples.jsonl").read_bytes()
    stdout, err = bench(capsys, *argv)
    assert (out / "samples.jsonl").read_bytes() == before and "already" in err and table in stdout
    assert len(lines(out / "skipped.jsonl")) == 1  # the broken video is not retried

    # Drop the last three records and leave a torn half line: exactly those three are redone.
    kept = before.splitlines(keepends=True)[:-3]
    (out / "samples.jsonl").write_bytes(b"".join(kept) + b'{"sample_id": "b.mp4", "meth')
    bench(capsys, *argv)
    after = (out / "samples.jsonl").read_bytes()
    assert after.startswith(b"".join(kept))
    redone = lines(out / "samples.jsonl")[len(kept):]
    assert [(r["sample_id"], r["method"]) for r in redone] == [("b.mp4", m) for m in methods[1:]]
    assert all(r["equal_to_target"] for r in redone if r["status"] == "ok")

    # Other settings into the same folder are refused instead of mixed in.
    capsys.readouterr()
    assert main(["bench", *argv[:-2], "--max-new-tokens", "9", "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err


def test_bench_videodetailcaption_layout_and_failing_peer(pair, tmp_path, capsys, monkeypatch):
    source = clip(tmp_path / "clip.mp4", 2)
    root = make_vdc(tmp_path / "VideoDetailCaption", source)

    def unsupported(self, *args, **kwargs):
        raise NotImplementedError("assisted generation is not supported for this model (test)")

    from transformers import Qwen2_5_VLForConditionalGeneration

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "generate", unsupported)
    out = tmp_path / "vdc"
    stdout, _ = bench(
        capsys, "--target", pair[0], "--draft", pair[1], "--dataset", "videodetailcaption", "--data-root", str(root),
        "--limit", "2", "--methods", "target", "pruned", "--prune", "uniform", "--prune-ratios", "0.5",
        *RUN, "--hf-assisted", "--out", str(out),
    )
    records = lines(out / "samples.jsonl")
    assert [(r["sample_id"], r["method"]) for r in records] == [
        (s, m) for s in ("v_b", "v_a") for m in ("target", "pruned:uniform@0.5", "hf-assisted")
    ]
    assert all(r["dataset"] == "videodetailcaption" for r in records)
    for r in records:
        if r["method"] == "hf-assisted":
            assert r["status"] == "failed" and "NotImplementedError: assisted generation" in r["error"]
        else:
            assert r["status"] == "ok" and r["equal_to_target"] is True
    assert all(r["draft_video_tokens"] == 16 for r in records if r["method"].startswith("pruned"))
    row = next(ln for ln in stdout.splitlines() if ln.startswith("| hf-assisted |"))
    assert "failed 2/2" in row and "NotImplementedError" in row
    assert not (out / "skipped.jsonl").read_text().strip()
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == PNG


# ------------------------------------------------------------------------- no models: pure helpers


SETTINGS = BenchSettings(target="t", draft="d", num_frames=4, fps=None, max_frames=None, max_new_tokens=8,
                         tree="chain:2", reindex=False, stage1_mass=0.4, dtype="auto")  # fmt: skip
SAMPLE = SimpleNamespace(sample_id="a", dataset="folder", video="a.mp4")


class Features(dict):
    def to(self, device):
        return self


class SleepyModel:
    """A generate() that takes ``first`` seconds for one token alone, ``assisted`` with a draft."""

    def __init__(self, first: float, assisted: float = 0.0):
        self.first, self.assisted = first, assisted

    def generate(self, input_ids, max_new_tokens, assistant_model=None, **kwargs):
        time.sleep(self.assisted if assistant_model is not None else self.first)
        return torch.cat([input_ids, torch.ones(1, max_new_tokens, dtype=torch.long)], dim=1)


def fake_bench(tmp_path, target_model=None, draft_model=None) -> tuple[Bench, SimpleNamespace, dict]:
    """A Bench over a stand-in pair, with the baseline of SAMPLE recorded: 8 tokens in 0.3 s."""
    def side(model):
        return SimpleNamespace(model=model, device=torch.device("cpu"),
                               tokenizer=SimpleNamespace(decode=lambda ids, skip_special_tokens: "text"))

    bench = Bench([Method("target", "target")], SETTINGS, tmp_path)
    bench.pair = SimpleNamespace(target=side(target_model), draft=side(draft_model))
    baseline = {"sample_id": "a", "method": "target", "kind": "target", "status": "ok", "tokens": 8,
                "prefill_s": 0.005, "decode_s": 0.3, "tokens_per_s": 8 / 0.3, "speedup": 1.0, "token_ids": [1] * 8}
    bench.samples_log.append(baseline)
    video = SimpleNamespace(video=[0] * 32)
    prepared = SimpleNamespace(features=Features(input_ids=torch.zeros(1, 5, dtype=torch.long)), target_inputs=video,
                               draft_inputs=video, prepare_s=0.29, prompt_tokens=5)  # fmt: skip
    return bench, prepared, baseline


def test_hf_assisted_decode_time_is_timed_apart_from_vision_encoding_and_prefill(tmp_path):
    # 0.05 s to a first token for each model alone, 0.3 s for the assisted run: about 0.2 s decoding.
    bench, prepared, baseline = fake_bench(tmp_path, SleepyModel(0.05, assisted=0.3), SleepyModel(0.05))
    record = bench._run_method(SAMPLE, Method(HF_ASSISTED, HF_ASSISTED), prepared)
    assert record["status"] == "ok" and record["tokens"] == 8 and record["decode_s_estimated"]
    assert record["first_token_s"] >= 0.1 and record["total_s"] >= 0.3
    assert record["decode_s"] == pytest.approx(record["total_s"] - record["first_token_s"])
    # Taking the sample's own prepare time (0.29 s) off the wall time instead left about nothing, and
    # a speedup in the hundreds.
    assert record["decode_s"] > 0.15 and record["speedup"] < 2
    assert record["speedup"] == pytest.approx(0.3 / record["decode_s"])
    assert record["tokens_per_s"] == pytest.approx(8 / record["decode_s"])
    assert timing_error(record, baseline) is None


def test_figures_that_contradict_the_decode_time_make_a_failed_record(tmp_path, monkeypatch):
    bench, prepared, _ = fake_bench(tmp_path)
    stats = SimpleNamespace(as_dict=lambda: {"decode_s": 0.1, "tokens_per_s": 24231.0, "prefill_s": 0.01})
    monkeypatch.setattr(bench, "_decode", lambda method, prepared, n: ([1] * 8, stats, None))
    record = bench._run_method(SAMPLE, Method("sd", "sd"), prepared)
    assert record["status"] == "failed" and record["speedup"] is None and record["tokens_per_s"] is None
    assert record["error"].startswith("inconsistent timing: 2.423e+04 tokens/s, but 8 tokens in 0.1 s is 80 tokens/s")


def test_timing_error_checks_rates_and_speedups_against_decode_time():
    baseline = {"decode_s": 2.0}
    ok = {"kind": "sd", "tokens": 10, "decode_s": 1.0, "tokens_per_s": 10.0, "speedup": 2.0}
    assert timing_error(ok, baseline) is None
    assert "tokens/s" in timing_error({**ok, "tokens_per_s": 24231.0}, baseline)
    assert "is 2x" in timing_error({**ok, "speedup": 246.0}, baseline)
    assert "without a baseline" in timing_error(ok, None)
    assert "not a positive number" in timing_error({**ok, "decode_s": 0.0}, baseline)
    assert "longer than the whole run" in timing_error({**ok, "total_s": 0.5}, baseline)
    untimed = {"kind": HF_ASSISTED, "tokens": 10, "decode_s": None, "tokens_per_s": None, "speedup": None}
    assert timing_error(untimed, baseline) is None
    assert "without a decode time" in timing_error({**untimed, "speedup": 3.0}, baseline)


def record(sample: str, method: str, decode_s: float, tokens: int = 10, **extra) -> dict:
    kind = "target" if method == "target" else "sd" if method == "sd" else "pruned"
    return {"sample_id": sample, "method": method, "kind": kind, "status": "ok", "tokens": tokens,
            "decode_s": decode_s, "prefill_s": 0.1, **extra}


def test_summary_speedups_mean_of_ratios_and_ratio_of_totals():
    records = [
        record("a", "target", 2.0, speedup=1.0, equal_to_target=True),
        record("b", "target", 6.0, speedup=1.0, equal_to_target=True),
        record("a", "sd", 1.0, speedup=2.0, equal_to_target=True, target_passes=3),
        record("b", "sd", 6.0, speedup=1.0, equal_to_target=False, target_passes=6),
        {"sample_id": "a", "method": "hf-assisted", "kind": "hf-assisted", "status": "failed", "error": "boom"},
    ]
    rows = {m["method"]: m for m in summarize(records)["methods"]}
    sd = rows["sd"]
    assert sd["speedup_mean"] == pytest.approx(1.5) and sd["speedup_total"] == pytest.approx(8 / 7)
    assert sd["tau"] == pytest.approx(18 / 9) and sd["equal_rate"] == 0.5
    assert sd["tokens_per_s"] == pytest.approx(20 / 7)
    assert rows["hf-assisted"]["samples"] == 0 and rows["hf-assisted"]["errors"] == ["boom"]
    table = markdown(summarize(records))
    assert "| hf-assisted | 0 |" in table and "failed 1/1: boom" in table and "| 1.50x | 1.14x | 50% |" in table


def test_jsonl_log_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"', encoding="utf-8")
    log = JsonlLog(path)
    assert log.records == [{"a": 1}, {"a": 2}]
    log.append({"a": 4, "x": float("nan")})
    assert lines(path) == [{"a": 1}, {"a": 2}, {"a": 4, "x": None}]


def test_bench_rerun_with_another_prompt_is_refused_not_mixed(pair, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    clip(videos / "a.mp4", 0)
    clip(videos / "b.mp4", 1)
    out = tmp_path / "run"
    argv = ["--target", pair[0], "--draft", pair[1], "--videos", str(videos), *RUN, "--methods", "target",
            "--out", str(out)]
    bench(capsys, *argv, "--prompt", PROMPT)
    # An interrupted run: the second sample is not done yet.
    first = (out / "samples.jsonl").read_bytes().splitlines(keepends=True)[0]
    (out / "samples.jsonl").write_bytes(first)
    capsys.readouterr()
    assert main(["bench", *argv, "--prompt", "What moves?"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "--prompt" in err and "What moves?" in err
    assert (out / "samples.jsonl").read_bytes() == first


def test_bench_rerun_with_another_step_mode_is_refused_not_mixed(pair, tmp_path, capsys):
    """The attention implementation and compiling shape the timings as much as the prompt does."""
    videos = tmp_path / "videos"
    videos.mkdir()
    clip(videos / "a.mp4", 0)
    out = tmp_path / "run"
    argv = ["--target", pair[0], "--draft", pair[1], "--videos", str(videos), *RUN, "--methods", "target",
            "--out", str(out)]
    bench(capsys, *argv, "--prompt", PROMPT)
    stored = json.loads((out / "run.json").read_text())
    assert stored["attn"] == "sdpa" and stored["compile"] is True and stored["drafter"] == "model"
    for other, words in ((["--attn", "eager"], "'eager' now"), (["--no-compile"], "compile=True there"),
                         (["--drafter", "adaptive:0.3"], "drafter='model' there, 'adaptive:0.3' now")):
        capsys.readouterr()
        assert main(["bench", *argv, "--prompt", PROMPT, *other]) == 2
        assert "other settings" in (err := capsys.readouterr().err) and words in err, err


def test_bench_shards_resume_and_merge_into_one_summary(pair, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for seed in range(3):
        clip(videos / f"v{seed}.mp4", seed)
    argv = ["--target", pair[0], "--draft", pair[1], "--videos", str(videos), "--prompt", PROMPT, *RUN,
            "--methods", "target", "pruned"]
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    bench(capsys, *argv, "--out", str(whole))
    _, err = bench(capsys, *argv, "--out", str(sharded), "--shard", "1/2")
    assert "waiting for shards 0/2" in err and not (sharded / "summary.json").exists()
    assert main(["bench", "--merge", "--out", str(sharded)]) == 2  # not yet: shard 0 has not run
    stdout, _ = bench(capsys, *argv, "--out", str(sharded), "--shard", "0/2")  # the last shard merges
    assert "| target" in stdout and (sharded / "summary.md").exists() and (sharded / "speedup_vs_ratio.png").exists()
    one = lines(sharded / "shards" / "0-of-2" / "samples.jsonl")
    two = lines(sharded / "shards" / "1-of-2" / "samples.jsonl")
    assert {r["sample_id"] for r in one}.isdisjoint({r["sample_id"] for r in two})
    reference = {(r["sample_id"], r["method"]): r["token_ids"] for r in lines(whole / "samples.jsonl")}
    assert {(r["sample_id"], r["method"]): r["token_ids"] for r in one + two} == reference
    def untimed(path):  # what does not depend on timing
        summary = json.loads((path / "summary.json").read_text())
        return summary["samples"], [(m["method"], m["samples"], m["tokens"], m["tau"], m["equal_rate"])
                                    for m in summary["methods"]]

    assert untimed(sharded) == untimed(whole)
    _, err = bench(capsys, *argv, "--out", str(sharded), "--shard", "1/2")  # a rerun redoes nothing
    assert "already in" in err and len(lines(sharded / "shards" / "1-of-2" / "samples.jsonl")) == len(two)
    assert main(["bench", "--merge", "--out", str(sharded)]) == 0


def test_bench_runs_every_speculative_method_with_the_drafter_asked_for(pair, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    clip(videos / "a.mp4", 0)
    passes = {}
    for drafter in ("model", "adaptive:1.0"):  # adaptive at 1.0: one draft pass a cycle, never deeper
        out = tmp_path / drafter.replace(":", "-")
        bench(capsys, "--target", pair[0], "--draft", pair[1], "--videos", str(videos), "--prompt", PROMPT, *RUN,
              "--methods", "target", "sd", "--drafter", drafter, "--out", str(out))  # fmt: skip
        sd = next(r for r in lines(out / "samples.jsonl") if r["method"] == "sd")
        assert sd["status"] == "ok" and sd["equal_to_target"] is True
        passes[drafter] = (sd["draft_passes"], sd["target_passes"])
        assert f"drafter `{drafter}`" in (out / "summary.md").read_text()
    assert passes["adaptive:1.0"][0] == passes["adaptive:1.0"][1]
    assert passes["model"][0] > passes["model"][1]  # a chain of 2: two passes a cycle
