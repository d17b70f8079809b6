"""The end-to-end benchmark's oracle on a CPU: output stays the target's, acceptance follows alpha."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_oracle_controls_acceptance_and_output_stays_the_targets(tmp_path):
    out = tmp_path / "e2e.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--device", "cpu", "--pairs", "test-target:test-draft",
           "--contexts", "700", "--new-tokens", "48", "--ratios", "0.9", "--tau", "4.5", "--no-generate", "--overlap", "--always-guess", "--out", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in records] == ["target-only", "SD pruned 0.9", "plain SD",
                                              "SD pruned 0.9, overlap (every cycle)", "plain SD, overlap (every cycle)"]
    assert all(r["equal"] for r in records)
    for r in records[3:]:  # the oracle's guesses are right with the last depth's acceptance: some cycles overlap
        assert r["guesses"] > 0 and 0 < r["overlapped_cycles"] < 1, r
        assert r["guess_policy"]["always"] and r["guess_policy"]["samples_guess"] > 0, r["guess_policy"]
    for r in records[1:]:
        # random drafts alone accept ~nothing (tau ~1); the oracle's main path makes tau ~4.5, its
        # low-discrepancy draws close to it even over a dozen cycles (the last one cut short)
        assert abs(r["tau"] - 4.5) < 0.4, r["tau"]
        assert r["draft_video_tokens"] < r["video_tokens"] or r["method"].startswith("plain SD")
    summary = tmp_path / "e2e.md"
    subprocess.run(cmd[:2] + ["--out", str(out), "--summary", str(summary)], check=True, env=env, capture_output=True)
    assert "SD pruned 0.9" in summary.read_text() and json.loads(summary.with_suffix(".json").read_text())[0]["equal"]


def test_e2e_runs_every_tree_at_an_acceptance_by_rank(tmp_path):
    """Side branches count: with rank-1 candidates accepted half the time, a tree holding them
    accepts more than a chain, and the oracle's draws give each tree its expected tau."""
    out = tmp_path / "e2e.jsonl"
    acceptance = tmp_path / "acc.json"
    acceptance.write_text(json.dumps({"rank_acceptance": [[0.45, 0.45]] * 3}))
    tree = tmp_path / "two.txt"
    tree.write_text("0\n1\n0 0\n0 1\n1 0\n1 1\n0 0 0\n0 0 1\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--device", "cpu", "--pairs", "test-target:test-draft",
           "--contexts", "700", "--new-tokens", "160", "--ratios", "0.9", "--no-generate", "--trees", "chain:3", str(tree), "auto",
           "--acceptance", str(acceptance), "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ranked = [r for r in records if r["acceptance"] == "by rank, acc"]
    assert [r["method"] for r in ranked] == ["SD pruned 0.9, tree chain:3", "plain SD, tree chain:3",
                                             "SD pruned 0.9, tree two", "plain SD, tree two",
                                             "SD pruned 0.9, tree auto", "plain SD, tree auto"]  # fmt: skip
    assert all(r["equal"] for r in records)
    # auto: the tree the search picks from the two trees' measured costs, for each acceptance setting
    auto = {r["acceptance"]: r for r in records if r.get("tree") == "auto"}
    assert set(auto) == {"tau 3.8", "by rank, acc"} and all(r["tree_nodes"] <= 9 for r in auto.values())
    assert set(map(tuple, auto["tau 3.8"]["tree_paths"])) <= {(0,) * d for d in range(1, 6)}  # top-1 only pays: a chain
    for r in ranked:
        assert abs(r["tau"] - r["expected_tau"]) < 0.15, r  # 0.45 / 0.9 a level: about 1.7 (chain) and 2.9 (two)
    assert ranked[2]["tau"] > ranked[0]["tau"] + 0.4
    assert ranked[2]["rank_acceptance"][0][1] > 0.25 and ranked[0]["rank_acceptance"][0] == [ranked[0]["rank_acceptance"][0][0]]
    bad = subprocess.run(cmd[:-2] + ["--trees", str(tmp_path / "missing.txt")], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--trees" in bad.stderr and "Traceback" not in bad.stderr


def test_e2e_runs_contexts_in_the_order_given(tmp_path):
    """--order as-given: a short prompt first, the workspaces grown by a longer one after it (a
    server that saw short videos first); records say 'grown', outputs stay the target's; with a
    tree schedule each context drafts with the tree for its length; --no-plain leaves plain SD out."""
    out = tmp_path / "e2e.jsonl"
    schedule = tmp_path / "schedule.txt"  # and a tree schedule: each context with the tree for its length
    schedule.write_text("0 chain:2\n500 chain:4\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--device", "cpu", "--pairs", "test-target:test-draft",
           "--contexts", "300", "700", "--order", "as-given", "--new-tokens", "16", "--ratios", "0.9", "--no-generate",
           "--trees", f"schedule:{schedule}", "--no-plain", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["context"] < 500 for r in records] == [True] * 2 + [False] * 2  # short first; --no-plain: no plain SD
    assert {r["workspace"] for r in records} == {"grown"} and all(r["equal"] for r in records)
    short, long = records[0]["target_capacity"], records[2]["target_capacity"]
    assert short < long  # the longer prompt grew the target's workspace
    assert [r.get("tree_depth") for r in records] == [None, 2, None, 4]
    assert records[1]["method"] == "SD pruned 0.9, tree schedule schedule"


def test_e2e_summary_has_a_section_per_pair_and_card(benchmark_script):
    """Records of one pair from two cards are two tables, each headed by its card: speedups measured
    on an H100 never sit in an H200's table."""
    e2e = benchmark_script("e2e")
    row = {"pair": "a:b", "torch": "2.11", "new_tokens": 256, "engine": "x", "workspace": "fresh", "context": 4096,
           "method": "target-only", "acceptance": "-", "ms_per_token": 5.0, "speedup": 1.0, "prefill_s": 0.1,
           "latency_s": 1.0, "equal": True}  # fmt: skip
    records = [{**row, "device": "NVIDIA H200"}, {**row, "device": "NVIDIA H100 80GB HBM3", "ms_per_token": 7.0},
               {**row, "device": "NVIDIA H200", "context": 16384}]  # fmt: skip
    text = e2e.summary(records)
    sections = text.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == [
        "a:b (bf16, NVIDIA H200, torch 2.11, 256 new tokens)", "a:b (bf16, NVIDIA H100 80GB HBM3, torch 2.11, 256 new tokens)"]
    assert sections[0].count("| target-only |") == 2 and "| 7.00 |" in sections[1] and "| 7.00 |" not in sections[0]


def test_e2e_knows_before_loading_which_pairs_fit_a_gpu(benchmark_script):
    """From the published shapes alone: 32B/7B at 64k does not fit an 80 GB H100 (it ran out of
    memory at load there) and fits an H200; 7B/0.5B fits an H100 even at 128k."""
    e2e = benchmark_script("e2e")
    h100, h200 = 79 * 2**30, 139 * 2**30
    big = e2e.pair_memory("qwen2.5-vl-32b", "qwen2.5-vl-7b", [65536, 16384], 256)
    assert h100 < big < h200
    assert e2e.pair_memory("llava-ov-7b", "llava-ov-0.5b", [131072], 256) < h100
    assert e2e.pair_memory("qwen2.5-vl-32b", "qwen2.5-vl-7b", [4096], 256) < big


def test_e2e_rerun_after_a_torn_last_line_redoes_that_record_only(tmp_path):
    out = tmp_path / "e2e.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--device", "cpu", "--pairs", "test-target:test-draft",
           "--contexts", "700", "--new-tokens", "8", "--ratios", "0.9", "--no-generate", "--no-compile", "--out", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    # A run killed while writing its last record: that record is half there.
    out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    after = out.read_text().splitlines(keepends=True)
    assert after[:2] == lines[:2] and len(after) == 3
    assert [json.loads(line)["method"] for line in after] == ["target-only", "SD pruned 0.9", "plain SD"]


def test_e2e_rerun_with_other_settings_measures_anew_and_keeps_the_history(tmp_path):
    out = tmp_path / "e2e.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--device", "cpu", "--pairs", "test-target:test-draft",
           "--contexts", "700", "--ratios", "0.9", "--no-generate", "--no-compile", "--out", str(out)]
    subprocess.run(cmd + ["--new-tokens", "8"], check=True, env=env, capture_output=True, timeout=300)
    first = out.read_text().splitlines(keepends=True)
    out.write_text("".join(first[:2]))  # cut short: plain SD is not measured yet
    # another length: nothing of the first run counts as done, and none of it is lost
    subprocess.run(cmd + ["--new-tokens", "12"], check=True, env=env, capture_output=True, timeout=300)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert out.read_text().startswith("".join(first[:2]))
    by_length = {n: [r["method"] for r in records if r["new_tokens"] == n] for n in (8, 12)}
    assert len(by_length[8]) == 2 and sorted(by_length[12]) == sorted(json.loads(line)["method"] for line in first)

def test_e2e_interrupted_says_so_and_keeps_its_records(tmp_path):
    import signal
    import time

    out = tmp_path / "e2e.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--device", "cpu", "--pairs", "test-target:test-draft",
           "--contexts", "900", "700", "500", "--new-tokens", "64", "--ratios", "0.9", "--no-generate", "--no-compile",
           "--out", str(out)]  # fmt: skip
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out.exists() and out.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    kept = out.read_text().splitlines()
    assert 1 <= len(kept) < 9 and all(json.loads(line)["pair"] == "test-target:test-draft" for line in kept)


def test_lossless_fuzz_runs_cases_and_writes_its_summary(tmp_path):
    out = tmp_path / "fuzz.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "lossless_fuzz.py"), "--seed", "5", "--seconds", "1", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads(out.read_text().splitlines()[-1])
    assert done.returncode == 0 and summary["kind"] == "summary" and summary["failures"] == 0, done.stderr[-2000:]
    assert summary["cases"] >= 1 and summary["equal"] + summary["ties"] == summary["cases"]


def test_e2e_rerun_skips_finished_contexts_but_keeps_the_workspace_sizing(tmp_path):
    """A rerun measures nothing at a context whose records are all there, unless the contexts left
    need it run first: with one shared workspace the longest context sizes it, so it runs again
    (writing nothing) when a shorter one has records missing."""
    out = tmp_path / "e2e.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--device", "cpu", "--pairs", "test-target:test-draft",
           "--contexts", "300", "700", "--new-tokens", "4", "--ratios", "0.9", "--no-generate", "--no-compile",
           "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    first = out.read_text().splitlines()
    assert len(first) == 6
    rerun = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.stdout.count("skipped") == 2 and "truth run" not in rerun.stdout
    assert out.read_text().splitlines() == first
    out.write_text("\n".join(first[:-1]) + "\n")  # the shorter context's last record is gone
    rerun = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.stdout.count("truth run") == 2 and "skipped" not in rerun.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [json.dumps(r) for r in records[:5]] == [json.dumps(json.loads(line)) for line in first[:5]]
    redone = records[5]
    assert (redone["context"], redone["method"]) == (json.loads(first[5])["context"], json.loads(first[5])["method"])
    assert redone["target_capacity"] == json.loads(first[5])["target_capacity"]  # still sized by the longest


def test_bundled_pair_counts_the_overlapped_drafters_right_guesses(benchmark_script, tmp_path, monkeypatch, capsys):
    """The bundled pair's own acceptance, with the overlapped drafter guessing every cycle: how
    often the guess of the verdict is right (its output equals target-only's)."""
    out = tmp_path / "bp.json"
    monkeypatch.setattr(sys, "argv", ["bundled_pair.py", "--clips", "1", "--max-new-tokens", "12", "--methods",
                                      "specvlm 0.9 overlap, guessing every cycle", "--out", str(out)])  # fmt: skip
    benchmark_script("bundled_pair").main()
    row = json.loads(out.read_text())["methods"]["specvlm 0.9 overlap, guessing every cycle"]
    assert row["equal"] == 1 and row["guesses"] >= row["passes"] - 1 > 0 and 0 <= row["right_guesses"] <= row["guesses"]
    assert f"| {row['right_guesses']}/{row['guesses']} | 1/1 |" in capsys.readouterr().out
