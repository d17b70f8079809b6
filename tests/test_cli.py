"""The `specvlm` command through its real entry points (main() and `python -m specvlm.cli`), on tiny
offline checkpoints and real mp4 files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from specvlm.cli import main
from specvlm.video import write_video

FAMILY = "qwen2_5_vl"
PROMPT = "Describe the video."
# 4 frames of 64x64 -> 2 temporal patches of 4x4 = 32 video tokens; ratio 0.9 keeps 3.
RUN = ["--frames", "4", "--max-new-tokens", "10", "--tree", "chain:2"]
REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def pair(tiny_pairs) -> tuple[str, str]:
    target, draft = tiny_pairs(FAMILY)
    return str(target), str(draft)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    frames = np.random.default_rng(0).integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
    return str(write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, fps=8.0))


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def generate_args(pair, video, *extra: str) -> list[str]:
    return ["generate", "--target", pair[0], "--draft", pair[1], "--video", video, "--prompt", PROMPT, *RUN, *extra]


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.width > 100 and img.height > 100


def test_help_for_every_subcommand(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and all(c in out for c in ("generate", "bench", "visualize"))
    flags = {"generate": "--no-speculative", "bench": "--hf-assisted", "visualize": "--prune-ratio"}
    for command, flag in flags.items():
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0 and "--target" in out and flag in out
    code, _, err = run(["generate", "--frames", "4", "--fps", "2"], capsys)
    assert code == 2 and "not allowed with argument" in err  # argparse's own usage error


def test_generate_streams_the_targets_answer(pair, video, tmp_path, capsys):
    picture = tmp_path / "kept.png"
    code, out, err = run(generate_args(pair, video, "--picture", str(picture)), capsys)
    assert code == 0, err
    streamed = out[:-1]
    assert out.endswith("\n") and streamed
    stats_line = err.strip().splitlines()[-2]  # then the picture line
    assert "10 tokens" in stats_line and "tau" in stats_line and "tokens/s" in stats_line
    assert "draft video tokens 3/32 kept" in stats_line
    assert_png(picture)

    # The baseline through the real command line, in a fresh interpreter: same text, valid JSON.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "specvlm.cli", *generate_args(pair, video, "--no-speculative", "--json")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    baseline = json.loads(proc.stdout)
    assert baseline["text"] == streamed and baseline["speculative"] is False
    assert len(baseline["token_ids"]) == baseline["stats"]["new_tokens"] <= 10
    assert baseline["stats"]["decode_s"] > 0

    # Plain SD as JSON: the full speculative stats, and again the target's own tokens.
    code, out, err = run(generate_args(pair, video, "--prune", "none", "--json"), capsys)
    assert code == 0, err
    sd = json.loads(out)
    assert sd["token_ids"] == baseline["token_ids"] and sd["text"] == streamed and sd["prune"] is None
    stats = sd["stats"]
    assert stats["video_tokens"] == stats["draft_video_tokens"] == 32
    assert stats["tau"] >= 1 and stats["target_passes"] >= 1 and "acceptance_by_depth" in stats


def test_visualize_writes_the_picture(pair, video, tmp_path, capsys):
    png = tmp_path / "sub" / "selection.png"
    code, out, err = run(
        ["visualize", "--target", pair[0], "--video", video, "--prompt", PROMPT, "--frames", "4", "--out", str(png)],
        capsys,
    )
    assert code == 0, err
    assert "kept 3/32 video tokens" in out and "Stage I" in out
    assert_png(png)


# ------------------------------------------------------------------------------------------ errors


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(line) == 1, err
    for needle in needles:
        assert needle in line[0], line[0]


def test_error_unsupported_model_type(pair, video, tmp_path, capsys):
    from transformers import LlamaConfig

    llama = tmp_path / "llama"
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config.save_pretrained(llama)
    code, _, err = run(generate_args((str(llama), pair[1]), video), capsys)
    assert_user_error(code, err, "unsupported model type 'llama'", "qwen2_5_vl", "llava_onevision", "qwen3_vl")


def test_error_family_mismatch(pair, video, tmp_path, capsys):
    from transformers import Qwen3VLConfig

    qwen3 = tmp_path / "qwen3"
    Qwen3VLConfig().save_pretrained(qwen3)  # refused from the config, before any weight is read
    code, _, err = run(generate_args((pair[0], str(qwen3)), video), capsys)
    assert_user_error(code, err, "one family", "qwen2_5_vl", "qwen3_vl")


def test_error_missing_inputs(pair, video, tmp_path, capsys):
    code, _, err = run(generate_args(pair, str(tmp_path / "nope.mp4")), capsys)
    assert_user_error(code, err, "does not exist", "nope.mp4")
    code, _, err = run(["generate", "--target", pair[0], "--video", video, "--prompt", PROMPT], capsys)
    assert_user_error(code, err, "--draft required")
    code, _, err = run(
        ["bench", "--target", pair[0], "--draft", pair[1], "--dataset", "videodetailcaption",
         "--data-root", str(tmp_path / "VDC"), "--out", str(tmp_path / "out")],
        capsys,
    )
    assert_user_error(code, err, "videodetailcaption", str(tmp_path / "VDC"))
    with pytest.raises(FileNotFoundError):  # --debug: the exception itself
        main(generate_args(pair, str(tmp_path / "nope.mp4"), "--debug"))


def test_error_prompt_longer_than_the_context(pair, video, capsys):
    # The tiny checkpoints have a 4096-token context; ~85 prompt tokens + 5000 new ones overflow it.
    argv = generate_args(pair, video)
    argv[argv.index("--max-new-tokens") + 1] = "5000"
    code, out, err = run(argv, capsys)
    assert_user_error(code, err, "the prompt is", "32 of them video", "4096", "--frames", "--fps")
    assert out == ""  # nothing decoded


def test_error_out_of_memory_names_the_knobs(pair, video, monkeypatch, capsys):
    def oom(args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("specvlm.cli.load_pair", oom)
    code, _, err = run(generate_args(pair, video), capsys)
    knobs = ("--frames", "--fps", "bfloat16", "--device-map auto", "--draft-device")
    assert_user_error(code, err, "out of GPU memory", *knobs)


def _numeric_options():
    """(command, flag, bad values) for every option of every command that takes a number."""
    import argparse

    from specvlm.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, parser in sub.choices.items():
        for action in parser._actions:
            kind = action.type
            if kind is None or not action.option_strings or kind in (str,) or getattr(kind, "__name__", "") in (
                "_tree", "_prompt"
            ):
                continue
            yield command, action.option_strings[0], ["abc", "-1"] if kind not in (int, float) else ["abc", "1.5x"]


NUMERIC = list(_numeric_options())


def test_the_walk_covers_every_command():
    assert {c for c, _, _ in NUMERIC} == {"generate", "bench", "visualize", "serve"}
    flags = {f for _, f, _ in NUMERIC}
    assert {"--temperature", "--top-p", "--top-k", "--port", "--max-queue", "--timeout", "--frames"} <= flags


@pytest.mark.parametrize("command, flag, bad", NUMERIC, ids=[f"{c} {f}" for c, f, _ in NUMERIC])
def test_every_numeric_option_refuses_bad_values_in_one_line(command, flag, bad, capsys):
    for value in bad:
        code, _, err = run([command, flag, value], capsys)
        assert code == 2, (flag, value)
        assert "Traceback" not in err and flag in err and err.strip().splitlines()[-1].startswith("specvlm")


@pytest.mark.parametrize("args, words", [
    (["--temperature", "-1"], "must be in [0, 100]"),
    (["--top-p", "0"], "in (0, 1]"),
    (["--top-p", "1.5"], "in (0, 1]"),
    (["--top-k", "0"], ">= 1"),
    (["--prompt", ""], "must not be empty"),
    (["--prompt", "   "], "must not be empty"),
])  # fmt: skip
def test_sampling_values_and_empty_prompts_are_refused(args, words, capsys):
    code, _, err = run(["generate", *args], capsys)
    assert code == 2 and words in err and "Traceback" not in err


def test_serve_refuses_a_media_folder_that_is_not_one(tmp_path, capsys):
    code, _, err = run(["serve", "--allowed-media-dir", str(tmp_path / "nope")], capsys)
    assert code == 2 and "not a folder" in err and "Traceback" not in err
