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
    assert "--no-speculative decodes with the target alone; --tree not used" in proc.stderr  # RUN's chain:2
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
    argv = ["visualize", "--target", pair[0], "--video", video, "--prompt", PROMPT, "--frames", "4", "--out", str(png)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "kept 3/32 video tokens" in out and "Stage I" in out
    assert_png(png)
    assert err == ""  # transformers' loading bars are quiet by default...
    code, _, err = run([*argv, "--verbose"], capsys)
    assert code == 0 and "Loading weights" in err  # ...and back with --verbose


# ------------------------------------------------------------------------------------------ errors


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(line) == 1, err
    for needle in needles:
        assert needle in line[0], line[0]


@pytest.mark.parametrize("extra", [(), ("--json",)])
def test_a_reader_that_goes_away_ends_the_command_quietly(pair, video, extra, monkeypatch, capfd):
    # `specvlm generate ... | head -c 1`: a BrokenPipeError traceback once; the pipe here is a real one.
    read, write = os.pipe()
    os.close(read)
    with open(write, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        code = main(generate_args(pair, video, *extra))
        monkeypatch.undo()
    assert code == 1
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("extra", [(), ("--json",)])
def test_an_answer_an_ascii_stdout_cannot_hold_is_written_anyway(pair, video, extra, monkeypatch, capsys):
    # The tiny target's answer holds characters past ASCII; on an ASCII stdout (a legacy console, PYTHONIOENCODING)
    # that was a UnicodeEncodeError traceback.
    import io

    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    argv = generate_args(pair, video, *extra, "--max-new-tokens", "40")  # the last one counts
    monkeypatch.setattr(sys, "stdout", stdout)
    code = main(argv)
    monkeypatch.undo()
    stdout.flush()
    written = stdout.buffer.getvalue().decode("ascii")
    assert code == 0, capsys.readouterr().err
    if extra:
        assert not json.loads(written)["text"].isascii()  # kept whole, as \\u escapes
    else:
        assert "?" in written


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


def test_decoded_pixels_are_bounded_before_any_model_loads(pair, video, tmp_path, monkeypatch, capsys):
    def no_models(args, **kwargs):
        raise AssertionError("the models loaded before the video was refused")

    monkeypatch.setattr("specvlm.cli.load_pair", no_models)
    # 4 frames of 64x64 are 16,384 pixels
    code, out, err = run(generate_args(pair, video, "--max-video-pixels", "16383"), capsys)
    assert_user_error(code, err, f"--video {video}: 4 frames of 64x64 are 16,384 pixels",
                      "more than --max-video-pixels 16383", "--frames", "--fps")
    assert out == ""
    for bad in ("0", "-5"):
        code, _, err = run(generate_args(pair, video, "--max-video-pixels", bad), capsys)
        assert code == 2 and "--max-video-pixels" in err and "must be >= 1" in err and "Traceback" not in err
    from specvlm.cli import build_parser
    from specvlm.server import ServeSettings

    for command in ("generate", "bench", "visualize"):  # local runs: long videos, the case speculation is for
        args = build_parser().parse_args([command] + (["--out", "x"] if command in ("bench", "visualize") else []))
        assert args.max_video_pixels == 2**31
    # a server takes requests from anyone: its own, tighter bound, the same from the command line and in code
    assert build_parser().parse_args(["serve"]).max_video_pixels == ServeSettings(model_name="m").max_video_pixels == 2**26


def test_bench_skips_a_video_past_the_pixel_bound(pair, video, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(Path(video).read_bytes())
    out = tmp_path / "run"
    code, _, err = run(["bench", "--target", pair[0], "--draft", pair[1], "--videos", str(videos), "--prompt", PROMPT,
                        *RUN, "--warmup", "0", "--no-progress", "--max-video-pixels", "16383", "--out", str(out)],
                       capsys)  # fmt: skip
    assert code == 0, err
    assert "0 new records, 1 samples skipped" in err
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["reason"] for s in skipped] == ["video too large"]
    assert "16,384 pixels, more than the limit of 16,383" in skipped[0]["error"]
    assert json.loads((out / "run.json").read_text())["max_video_pixels"] == 16383


def test_frames_the_processor_refuses_are_named_before_loading(unloadable, tmp_path, capsys):
    # Qwen's processor takes frames up to 200:1; a 402x2 video was a transformers traceback once the
    # weights had loaded. The configs without weights: a refusal here comes before any load.
    wide = str(write_video(tmp_path / "wide.mp4", np.zeros((2, 2, 402, 3), np.uint8)))
    for argv in (["generate", "--target", unloadable[0], "--draft", unloadable[1], "--video", wide, *RUN],
                 ["visualize", "--target", unloadable[0], "--video", wide, "--out", str(tmp_path / "p.png")]):
        code, out, err = run(argv, capsys)
        assert_user_error(code, err, f"--video {wide}: frames of 402x2 pixels", "201:1", "qwen2_5_vl", "200:1")
        assert out == ""


def test_bench_skips_a_video_the_processor_refuses(pair, video, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "wide.mp4", np.zeros((2, 2, 402, 3), np.uint8))
    code, _, err = run(["bench", "--target", pair[0], "--draft", pair[1], "--videos", str(videos), "--prompt", PROMPT,
                        *RUN, "--warmup", "0", "--no-progress", "--out", str(tmp_path / "run")], capsys)  # fmt: skip
    assert code == 0, err
    skipped = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert [s["reason"] for s in skipped] == ["unreadable video"] and "201:1" in skipped[0]["error"]


@pytest.mark.parametrize("deleted", [("tokenizer.json",), ("tokenizer.json", "tokenizer_config.json")])
def test_a_checkpoint_without_its_tokenizer_is_named(tiny_pairs, video, tmp_path, deleted, capsys):
    import shutil

    target, draft = (str(p) for p in tiny_pairs("llava_onevision"))
    broken = tmp_path / "target"
    shutil.copytree(target, broken)
    for name in deleted:
        (broken / name).unlink()
    # once "target and draft tokenizers differ (2 vs 645 tokens)", or a transformers traceback
    for argv in (["generate", "--target", str(broken), "--draft", draft, "--video", video, *RUN],
                 ["generate", "--target", draft, "--draft", str(broken), "--video", video, *RUN],
                 ["visualize", "--target", str(broken), "--video", video, "--out", str(tmp_path / "p.png")]):
        code, out, err = run(argv, capsys)
        flag = "--draft" if argv[4] == str(broken) else "--target"
        assert_user_error(code, err, f"{flag} {broken}: the checkpoint has no tokenizer", "tokenizer.json",
                          "copy the tokenizer files")
        assert "differ" not in err and out == ""


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
                "_tree", "_prompt", "_stop"
            ):
                continue
            bad = ["abc", "1.5x"] if kind in (int, float) else ["abc", str(2**64)] if "seed" in action.dest else ["abc", "-1"]
            yield command, action.option_strings[0], bad


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
    (["--temperature", "1e-300"], "a positive one at least 1e-06"),  # it would divide the logits into infinities
    (["--top-p", "1e-46"], "in (0, 1] (at least 1e-06)"),  # it would underflow the sampler
    (["--top-p", "0"], "in (0, 1]"),
    (["--top-p", "1.5"], "in (0, 1]"),
    (["--top-k", "0"], ">= 1"),
    (["--prompt", ""], "must not be empty"),
    (["--prompt", "   "], "must not be empty"),
    (["--prompt", "bad \udcff byte"], "not UTF-8 text"),  # bytes that are no UTF-8: a tokenizer traceback
    (["--stop", ""], "must not be empty"),
    (["--seed", str(2**64)], "in [-2^63, 2^64 - 1]"),
    (["--prune-seed", str(-(2**63) - 1)], "in [-2^63, 2^64 - 1]"),
])  # fmt: skip
def test_sampling_values_and_empty_prompts_are_refused(args, words, capsys):
    code, _, err = run(["generate", *args], capsys)
    assert code == 2 and words in err and "Traceback" not in err


@pytest.mark.parametrize("command, flag", [("serve", "--max-media-mb"), ("serve", "--max-body-mb"),
                                           ("serve", "--timeout"), ("generate", "--fps")])
def test_infinite_sizes_and_times_are_refused(command, flag, tmp_path, capsys):
    # --max-media-mb inf once made every request fail on int(inf); the missing folder ends a run that gets past
    code, _, err = run([command, flag, "inf", *(["--allowed-media-dir", str(tmp_path / "nope")] if command == "serve" else [])],
                       capsys)  # fmt: skip
    assert code == 2 and f"argument {flag}: must be a finite number > 0, got inf" in err and "Traceback" not in err


def test_top_p_or_top_k_without_a_temperature_is_refused(capsys):
    # greedy decoding ignored them: an answer that was not the sampling asked for, without a word
    missing = ["--target", "/no/such/target", "--draft", "/no/such/draft"]
    for args, words in [(["--top-p", "0.9"], "--top-p 0.9 shape sampling"),
                        (["--top-k", "5", "--top-p", "0.5"], "--top-p 0.5 and --top-k 5 shape sampling")]:
        code, _, err = run(["generate", *missing, *args], capsys)
        assert_user_error(code, err, words, "--temperature is 0", "--temperature > 0")
    code, _, err = run(["generate", *missing, "--top-p", "0.9", "--temperature", "0.7"], capsys)
    assert_user_error(code, err, "--target /no/such/target: no such folder")  # with a temperature: on to the models


def test_serve_refuses_a_media_folder_that_is_not_one(tmp_path, capsys):
    code, _, err = run(["serve", "--allowed-media-dir", str(tmp_path / "nope")], capsys)
    assert code == 2 and "not a folder" in err and "Traceback" not in err


# ------------------------------------------------------- refused before loading, in a fresh process
# Each case runs `python -m specvlm.cli` and must end in one line on stderr naming the flag, exit code
# 2, no traceback. The checkpoints hold a config and no weights: loading them would fail with another
# message, so a refusal here is the check before loading.


@pytest.fixture(scope="module")
def unloadable(pair, tmp_path_factory) -> tuple[str, str]:
    """The tiny pair's configs without their weights: every check passes, any load fails."""
    root = tmp_path_factory.mktemp("configs")
    for role, source in zip(("target", "draft"), pair):
        (root / role).mkdir()
        (root / role / "config.json").write_bytes((Path(source) / "config.json").read_bytes())
    return str(root / "target"), str(root / "draft")


@pytest.fixture(scope="module")
def places(tmp_path_factory, video) -> dict[str, Path]:
    """A file, a folder, a folder nothing can be written in (also for root), a folder of videos."""
    root = tmp_path_factory.mktemp("places")
    (root / "file").write_text("not a folder")
    (root / "folder").mkdir()
    (root / "videos").mkdir()
    (root / "videos" / "clip.mp4").write_bytes(Path(video).read_bytes())
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        (locked / "probe").write_text("")  # root writes anyway: use a folder no one can write in
        (locked / "probe").unlink()
        locked = Path("/proc")
    except OSError:
        pass
    yield {"file": root / "file", "folder": root / "folder", "videos": root / "videos", "locked": locked}
    (root / "locked").chmod(0o700)


def cli(*argv: str, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **env,
                       PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "specvlm.cli", *argv], capture_output=True, text=True,
                          env=environment, timeout=300)  # fmt: skip


def assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("specvlm ") and ": error: " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


OUTPUTS = {
    "picture through a file": (["generate", "--picture", "{file}/kept.png"], "--picture", "is a file"),
    "picture is a folder": (["generate", "--picture", "{folder}"], "--picture", "a folder, not a file"),
    "picture unwritable": (["generate", "--picture", "{locked}/kept.png"], "--picture", "cannot write in"),
    "visualize out through a file": (["visualize", "--out", "{file}/sub/kept.png"], "--out", "is a file"),
    "visualize out unwritable": (["visualize", "--out", "{locked}/kept.png"], "--out", "cannot write in"),
    "bench out is a file": (["bench", "--out", "{file}"], "--out", "a file is there, not a folder"),
    "bench out unwritable": (["bench", "--out", "{locked}/run"], "--out", "cannot write in"),
}


def _output_argv(case, unloadable, places, video) -> list[str]:
    argv, _, _ = OUTPUTS[case]
    command, rest = argv[0], [a.format(**places) for a in argv[1:]]
    models = ["--target", unloadable[0]] + (["--draft", unloadable[1]] if command != "visualize" else [])
    inputs = ["--videos", str(places["videos"]), "--prompt", PROMPT] if command == "bench" else ["--video", video]
    return [command, *models, *inputs, *rest]


# Each command line in a fresh ``main`` of one process (each as its own process would cost a second
# of start-up apiece): its exit code and everything written to file descriptor 2 while it ran.
REFUSALS = """
import json, os, sys, tempfile, traceback
from specvlm.cli import main
results = {}
for name, argv in json.load(open(sys.argv[1])).items():
    with tempfile.TemporaryFile() as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            code = main(argv)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        results[name] = (code, err.read().decode(errors="replace"))
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def refusals(unloadable, places, video, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The outcome of every refusal case below, run in one process."""
    cases = {f"out:{case}": _output_argv(case, unloadable, places, video) for case in OUTPUTS}
    models = ["--target", unloadable[0], "--draft", unloadable[1]]
    cases |= {f"device:{case}": ["generate", *models, "--video", video, *DEVICES[case][0]] for case in DEVICES}
    cases |= {f"tree:{case}": ["generate", *models, "--video", video, "--tree", spec] for case, (spec, _) in TREES.items()}
    path = tmp_path_factory.mktemp("refusals") / "cases.json"
    path.write_text(json.dumps(cases))
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                       PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", REFUSALS, str(path)], capture_output=True, text=True,
                          env=environment, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: subprocess.CompletedProcess(cases[name], code, "", err) for name, (code, err) in results.items()}


TREES = {
    "schedule missing": ("schedule:/nonexistent/schedule.txt", "no such file"),
    "tree file missing": ("/nonexistent/tree.txt", "not 'default', 'chain:K'"),
    "chain not a number": ("chain:x", "expected chain:K"),
}


def test_a_tree_error_quoting_a_deep_path_is_cut_short(tmp_path, capsys):
    tree = tmp_path / "deep.txt"
    tree.write_text(",".join(["0"] * 2000))  # no parent paths: the message quoted 2000 ranks twice (12 kB)
    code, _, err = run(["generate", "--tree", str(tree)], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "argument --tree: tree path [0, 0" in last and last.endswith(" ...") and len(last) < 400


@pytest.mark.parametrize("case", TREES)
def test_tree_specs_are_checked_before_loading(case, refusals):
    done = refusals[f"tree:{case}"]  # argparse's own refusal: the usage, then one error line
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert last.startswith("specvlm ") and "--tree" in last and TREES[case][1] in last, last


@pytest.mark.parametrize("case", OUTPUTS)
def test_output_paths_are_checked_before_loading(case, refusals):
    _, flag, words = OUTPUTS[case]
    assert_refused(refusals[f"out:{case}"], flag, words)


def _devices() -> dict[str, tuple[list[str], str]]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cases = {
        "cuda:N past the count": (["--device", f"cuda:{count}"], f"--device cuda:{count}"),
        "not a device": (["--device", "gpu0"], "--device gpu0: not a device"),
        "draft device": (["--draft-device", "cuda:x"], "--draft-device cuda:x: not a device"),
        "device map": (["--device-map", '{"": "nowhere"}'], "--device-map nowhere: not a device"),
    }
    if count == 0:
        cases["cuda without a GPU"] = (["--device", "cuda"], "--device cuda: torch sees no CUDA GPU")
    if not torch.backends.mps.is_available():
        cases["mps absent"] = (["--device", "mps"], "--device mps: torch has no mps device")
    return cases


DEVICES = _devices()


@pytest.mark.parametrize("case", DEVICES)
def test_devices_are_checked_against_what_torch_sees(case, refusals):
    assert_refused(refusals[f"device:{case}"], DEVICES[case][1])


def test_a_gpu_index_past_the_count_names_the_gpus(monkeypatch):
    from specvlm.cli import CLIError, check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("--device", "cuda:1")
    with pytest.raises(CLIError, match=r"--device cuda:2: torch sees 2 GPU\(s\) here, cuda:0 to cuda:1"):
        check_device("--device", "cuda:2")


def test_checkpoint_names_say_what_is_missing(unloadable, places, tmp_path, video):
    draft = ["--draft", unloadable[1], "--video", video]
    assert_refused(cli("generate", "--target", "/no/such/dir", *draft), "--target /no/such/dir: no such folder")
    line = assert_refused(cli("generate", "--target", str(places["folder"]), *draft), "--target", "no config.json")
    assert "model_type" not in line
    # A hub id: looked up in the local cache only (HF_HUB_OFFLINE in cli(); an empty cache here).
    line = assert_refused(cli("generate", "--target", "no-org/no-such-model", *draft, HF_HOME=str(tmp_path)),
                          "--target no-org/no-such-model", "nor a hub id in the local Hugging Face cache")  # fmt: skip
    assert "Repo id" not in line


def test_urls_where_paths_are_meant_are_named_as_urls(unloadable, video, capsys):
    # were "no such folder" and "video path does not exist"
    hub = "https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/tree/main"
    code, _, err = run(["generate", "--target", hub, "--draft", unloadable[1], "--video", video], capsys)
    assert_user_error(code, err, f"--target {hub}: a URL; give a hub id", "--target Qwen/Qwen2.5-VL-7B-Instruct")
    for command in ("generate", "visualize"):
        argv = [command, "--target", unloadable[0], "--video", "https://example.com/clip.mp4", "--out", "p.png"]
        argv = argv[:3] + ["--draft", unloadable[1]] + argv[3:-2] if command == "generate" else argv
        code, _, err = run(argv, capsys)
        assert_user_error(code, err, "--video https://example.com/clip.mp4: a URL", "download it first")


def test_bench_refuses_a_data_root_beside_videos(unloadable, places, tmp_path, capsys):
    # --data-root was ignored: the run went over --videos whichever folder was meant
    code, _, err = run(["bench", "--target", unloadable[0], "--draft", unloadable[1], "--videos", str(places["videos"]),
                        "--prompt", PROMPT, "--data-root", str(places["folder"]), "--out", str(tmp_path / "run")],
                       capsys)  # fmt: skip
    assert_user_error(code, err, "--data-root goes with --dataset", f"--videos {places['videos']}")
    assert not (tmp_path / "run").exists()


def test_an_unknown_attention_is_refused_before_loading(unloadable, video, capsys):
    code, _, err = run(["generate", "--target", unloadable[0], "--draft", unloadable[1], "--video", video,
                        "--attn", "bogus"], capsys)  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert "--attn bogus: not an attention implementation: one of eager, " in err and "sdpa" in err


def test_a_truncated_weights_file_is_one_line(pair, video, tmp_path):
    import shutil

    damaged = tmp_path / "target"
    shutil.copytree(pair[0], damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_refused(cli("generate", "--target", str(damaged), "--draft", pair[1], "--video", video, *RUN),
                   "cannot load the models: a damaged .safetensors file")  # fmt: skip


def test_family_mismatch_names_the_model_type(unloadable, tmp_path, video):
    from transformers import Qwen2VLConfig, Qwen3VLConfig

    Qwen2VLConfig().save_pretrained(tmp_path / "qwen2_vl")
    Qwen3VLConfig().save_pretrained(tmp_path / "qwen3_vl")
    models = ["--target", str(tmp_path / "qwen2_vl"), "--draft", str(tmp_path / "qwen3_vl")]
    line = assert_refused(cli("generate", *models, "--video", video),
                          "one family", "is qwen2_vl (of the qwen2_5_vl family)", "is qwen3_vl")  # fmt: skip
    assert "qwen2_5_vl, --draft" not in line


def test_errors_name_flags_not_the_python_api(unloadable, places, tmp_path):
    models = ["--target", unloadable[0], "--draft", unloadable[1]]
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32)).save(frames / f"{i}.png")
    line = assert_refused(cli("generate", *models, "--video", str(frames), "--fps", "2"), "--fps", "--frames")
    assert "num_frames" not in line and "=..." not in line
    line = assert_refused(cli("bench", *models, "--dataset", "folder", "--data-root", str(places["videos"]),
                              "--out", str(tmp_path / "a")), "--dataset folder needs --prompt")  # fmt: skip
    assert "load_samples" not in line
    line = assert_refused(cli("bench", *models, "--dataset", "videodetailcaption", "--data-root", str(places["folder"]),
                              "--tasks", "x", "--out", str(tmp_path / "b")), "--tasks")  # fmt: skip
    assert "tasks=" not in line


def test_frames_past_the_clip_are_noted_and_nothing_else_is_said(pair, video, tmp_path):
    png = tmp_path / "kept.png"
    proc = cli("visualize", "--target", pair[0], "--video", video, "--prompt", PROMPT, "--frames", "20",
               "--out", str(png))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # No loading bars, no deprecation warnings: the notice alone.
    assert proc.stderr.splitlines() == [f"specvlm visualize: note: --frames 20, but {video} has 8 frames: using all 8"]
    assert_png(png)


def test_library_messages_are_put_in_flag_terms():
    from specvlm.cli import _in_flag_terms

    message = "folder: a prompt is required (load_samples('folder', root, prompt=...)): no annotations"
    assert _in_flag_terms(message) == "folder: a prompt is required (--prompt): no annotations"
    message = "max_frames must be an integer >= 1, got max_frames=0"
    assert _in_flag_terms(message) == "--max-frames must be an integer >= 1, got --max-frames 0"
    for untouched in ("clip_fps=3 at 8 fps", "/data/num_frames.mp4", "num_frames_test.mp4", "a/fps=2/b"):
        assert _in_flag_terms(untouched) == untouched


def test_no_speculative_names_only_the_speculation_flags_given():
    from specvlm.cli import build_parser, speculation_flags_given

    parser = build_parser()

    def unread(*extra):
        return speculation_flags_given(parser.parse_args(["generate", "--no-speculative", *extra]))

    assert unread() == []  # every default, as argparse typed it, reads as not given
    assert unread("--prune-ratio", "0.5", "--reindex", "--drafter", "overlap") == ["--reindex", "--drafter", "--prune-ratio"]
