"""Tensor parallelism under torchrun, on CPUs (gloo): the target sharded over 2 ranks by
transformers' own plan gives the single-process answer, speculative decoding gives it too, every
rank takes rank 0's decisions, and rank 0 alone prints and writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_cli import pair, video  # noqa: F401  (fixtures: the tiny pair and clip of the CLI tests)

from specvlm.cli import main

REPO = Path(__file__).resolve().parents[1]
FAMILY = "qwen2_5_vl"
RUN = ["--frames", "4", "--max-new-tokens", "10"]


def torchrun(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_tp_check_every_decision_agrees_and_output_is_lossless(tmp_path):
    out = tmp_path / "tp.json"
    done = torchrun(str(REPO / "benchmarks" / "tp_check.py"), "--root", str(tmp_path / "models"),
                    "--families", FAMILY, "llava_onevision", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and all(r["world_size"] == 2 for r in rows)
    assert all(value for r in rows for key, value in r.items() if key not in ("family", "world_size")), rows


def test_generate_under_torchrun_prints_once_and_equals_one_process(pair, video, capsys):
    argv = ["generate", "--target", pair[0], "--draft", pair[1], "--video", video, *RUN, "--json"]
    assert main(argv) == 0
    single = json.loads(capsys.readouterr().out)
    done = torchrun("-m", "specvlm.cli", *argv, "--tp", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["token_ids"] == single["token_ids"]


def test_bench_under_torchrun_writes_one_set_of_records(pair, video, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    os.link(video, videos / "a.mp4")
    argv = ["bench", "--target", pair[0], "--draft", pair[1], "--videos", str(videos), "--prompt", "Describe.",
            *RUN, "--tree", "chain:2", "--warmup", "0", "--no-progress", "--methods", "target", "sd"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    done = torchrun("-m", "specvlm.cli", *argv, "--tp", "2", "--out", str(tmp_path / "tp"))
    assert done.returncode == 0, done.stderr[-3000:]

    def tokens(run):
        return {(r["sample_id"], r["method"]): r["token_ids"]
                for r in map(json.loads, (tmp_path / run / "samples.jsonl").read_text().splitlines())}

    assert tokens("tp") == tokens("one") and len(tokens("tp")) == 2  # rank 1 wrote nothing more
    assert done.stdout.count("| target") == 1  # one summary, from rank 0


def test_tensor_parallel_errors_are_one_line(pair, video, capsys, monkeypatch):
    base = ["generate", "--target", pair[0], "--draft", pair[1], "--video", video, *RUN]
    assert main([*base, "--tp", "2"]) == 2
    assert "runs under `torchrun --nproc-per-node 2`" in capsys.readouterr().err
    assert main([*base, "--tp", "2", "--device-map", "auto"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main([*base, "--tp", "3"]) == 2
    err = capsys.readouterr().err
    assert "heads divisible by 3" in err and "Traceback" not in err
