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
           "--contexts", "700", "--new-tokens", "48", "--ratios", "0.9", "--tau", "4.5", "--no-generate", "--overlap", "--out", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in records] == ["target-only", "SD pruned 0.9", "plain SD", "SD pruned 0.9, overlap",
                                              "plain SD, overlap"]
    assert all(r["equal"] for r in records)
    for r in records[3:]:  # the oracle's guesses are right with the last depth's acceptance: some cycles overlap
        assert r["guesses"] > 0 and 0 < r["overlapped_cycles"] < 1, r
    for r in records[1:]:
        # random drafts alone accept ~nothing (tau ~1); the oracle's main path makes tau ~4.5
        assert 3.0 < r["tau"] <= 6.0, r["tau"]
        assert r["draft_video_tokens"] < r["video_tokens"] or r["method"].startswith("plain SD")
    summary = tmp_path / "e2e.md"
    subprocess.run(cmd[:2] + ["--out", str(out), "--summary", str(summary)], check=True, env=env, capture_output=True)
    assert "SD pruned 0.9" in summary.read_text() and json.loads(summary.with_suffix(".json").read_text())[0]["equal"]
