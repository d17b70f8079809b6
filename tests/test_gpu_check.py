"""benchmarks/gpu_check.py's lossless rows, run on the CPU: a rerun resumes from the rows written."""

from __future__ import annotations

import json


def test_lossless_rows_resume_from_what_was_written(tmp_path, benchmark_script):
    check = benchmark_script("gpu_check")
    sink = tmp_path / "rows.jsonl"
    args = {"compiled_families": [], "families": ["llava_onevision"], "sink": sink, "drafters": ("model",),
            "seeds": 1, "trees": ("chain3",), "device": "cpu"}
    rows = check.lossless(tmp_path / "a", **args)
    keys = [check._row_key(r) for r in rows]
    assert len(rows) == len(set(keys)) == 2 * len(check.DRAFTS)  # float32 and bfloat16, every draft
    assert all(r["match"] for r in rows)
    # a session cut short while writing a row: the last rows were never written, the first of them
    # half; the rerun cuts the torn line off and measures those rows only
    lines = sink.read_text().splitlines()
    sink.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][: len(lines[-3]) // 2])
    again = check.lossless(tmp_path / "b", **args)
    assert [check._row_key(r) for r in again] == keys
    assert [json.loads(line) for line in sink.read_text().splitlines()][:-3] == rows[:-3]
    # nothing left to run: nothing is built or loaded
    assert check.lossless(tmp_path / "c", **args) == again and not (tmp_path / "c").exists()
    # rows another engine source measured count for nothing: all are measured again
    sink.write_text("".join(json.dumps({**r, "engine": "0123456789"}) + "\n" for r in again))
    assert [check._row_key(r) for r in check.lossless(tmp_path / "d", **args)] == keys
    assert len(sink.read_text().splitlines()) == 2 * len(keys)
