"""lmms-eval's ``--model specvlm`` with the real lmms-eval package, offline.

A local task (a task YAML over a JSON-lines dataset of the bundled sample clips, read by lmms-eval's
``--include_path`` with ``dataset_path: json``, no hub) is run by ``python -m lmms_eval`` twice with
the bundled pair: speculative and target-only. Both answer exactly what ``SpeculativeVLM.generate``
answers, token for token; the scores are identical; the per-sample log and the summary carry the
speed. The rest (arguments, generation kwargs, refusals) is checked in-process, without decoding.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is in the test extra: pip install -e '.[test]'")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.utils import simple_parse_args_string  # noqa: E402

from specvlm import SpeculativeVLM  # noqa: E402
from specvlm.assets import default_pair, sample_videos  # noqa: E402
from specvlm.eval.lmms_eval_model import ModelArgs, SpecVLM, generation_options, one_video  # noqa: E402
from specvlm.pruning import PruneConfig  # noqa: E402

TASK = "specvlm_shapes"
MAX_NEW_TOKENS = 64
STOP = ("\n\n",)  # lmms-eval's `until` when a task names none (its few-shot delimiter)
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: video
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0
"""


def _docs() -> list[dict]:
    """Per bundled clip: its description prompt and its first question, with the references."""
    records = json.loads((sample_videos()[0].path.parent / "samples.json").read_text())
    by_name = {r["video"]: r for r in records}
    docs = []
    for sample in sample_videos():
        for item in by_name[sample.path.name]["prompts"][:2]:
            docs.append({"video": str(sample.path), "question": item["prompt"], "answer": item["reference"]})
    return docs


@pytest.fixture(scope="module")
def local_task(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lmms_task")
    data = folder / "test.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in _docs()))
    yaml = TASK_YAML.format(task=TASK, data=data, max_new_tokens=MAX_NEW_TOKENS)
    (folder / f"{TASK}.yaml").write_text(yaml)
    return folder


def _lmms_eval(task_dir: Path, out: Path, model_args: str) -> dict:
    """``python -m lmms_eval --model specvlm ...`` on the local task: its stdout, results and samples."""
    plugins = importlib.metadata.entry_points(group="lmms_eval.models")
    assert "specvlm" in {ep.name for ep in plugins}, (
        "specvlm's lmms_eval.models entry point is not installed: pip install -e ."
    )
    env = {
        **os.environ,
        "HF_HOME": str(out / "hf"),  # the datasets cache of the local JSON
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # as conftest: same kernels as this process, no fighting over 2 cores
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "specvlm", "--model_args", model_args,
        "--tasks", TASK, "--include_path", str(task_dir), "--log_samples", "--output_path", str(out / "logs"),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=out, capture_output=True, text=True, timeout=300)
    results = glob.glob(str(out / "logs" / "**" / "*_results.json"), recursive=True)
    samples = glob.glob(str(out / "logs" / "**" / f"*_samples_{TASK}.jsonl"), recursive=True)
    # lmms-eval exits 0 after logging an evaluation error: the written logs tell whether it ran
    assert done.returncode == 0 and len(results) == 1 and len(samples) == 1, done.stdout[-4000:] + done.stderr[-4000:]
    lines = Path(samples[0]).read_text().splitlines()
    return {
        "stdout": done.stdout,
        "results": json.loads(Path(results[0]).read_text()),
        "samples": sorted((json.loads(line) for line in lines), key=lambda s: s["doc_id"]),
    }


@pytest.fixture(scope="module")
def runs(local_task, tmp_path_factory) -> dict:
    """The command pair of the README: speculative, then the target alone."""
    common = "dtype=float32,prune=specvlm,prune_ratio=0.9,tree=default,num_frames=32"
    return {
        mode: _lmms_eval(local_task, tmp_path_factory.mktemp(mode), f"{common},speculative={flag}")
        for mode, flag in (("speculative", "true"), ("target", "false"))
    }


@pytest.fixture(scope="module")
def api_answers() -> dict:
    """What the Python API answers to the same docs, both ways."""
    target, draft = default_pair()
    pair = SpeculativeVLM.from_pretrained(str(target), str(draft), dtype="float32", prune=PruneConfig("specvlm", 0.9))
    kwargs = {"num_frames": 32, "max_new_tokens": MAX_NEW_TOKENS, "stop_strings": STOP}
    return {
        mode: [pair.generate(d["video"], d["question"], speculative=mode == "speculative", **kwargs) for d in _docs()]
        for mode in ("speculative", "target")
    }


def test_lmms_eval_answers_are_the_api_answers_token_for_token(runs, api_answers):
    fast, base = api_answers["speculative"], api_answers["target"]
    for doc_id, (f, b) in enumerate(zip(fast, base)):
        assert f.token_ids == b.token_ids, f"doc {doc_id}: speculative decoding departed from the target"
    for mode, answers in api_answers.items():
        samples = runs[mode]["samples"]
        assert [s["doc_id"] for s in samples] == list(range(len(answers)))
        for sample, answer in zip(samples, answers):
            assert sample["filtered_resps"] == answer.text, f"{mode}, doc {sample['doc_id']}"
            assert sample["token_counts"][0]["output_tokens"] == len(answer.token_ids)
            assert sample["token_counts"][0]["input_tokens"] == answer.prompt_tokens


def test_scores_are_identical_with_and_without_speculation(runs):
    spec, base = (runs[m]["results"]["results"][TASK]["exact_match,none"] for m in ("speculative", "target"))
    assert spec == base
    assert spec >= 0.5  # the bundled pair answers most of its own task
    for mode in runs:
        table = runs[mode]["stdout"]
        assert table.index("exact_match") < table.index("Throughput Summary"), "speed sits under the scores"


def test_the_logs_carry_the_speed(runs):
    for sample in runs["speculative"]["samples"]:
        speed = sample["token_counts"][0]
        assert speed["speculative"] is True
        assert speed["tau"] >= 1.0 and speed["target_passes"] >= 1
        assert speed["tokens_per_s"] is None or speed["tokens_per_s"] > 0
        assert speed["decode_s"] >= 0 and speed["prefill_s"] > 0
        assert 0 < speed["draft_video_tokens"] < speed["video_tokens"] / 5  # 90% pruned
    for sample in runs["target"]["samples"]:
        speed = sample["token_counts"][0]
        assert speed["speculative"] is False
        assert speed["tau"] is None and speed["draft_video_tokens"] is None
        assert speed["video_tokens"] == runs["speculative"]["samples"][0]["token_counts"][0]["video_tokens"]

    spec, base = runs["speculative"]["results"]["throughput"], runs["target"]["results"]["throughput"]
    assert spec["total_gen_tokens"] == base["total_gen_tokens"]  # the same answers
    assert spec["avg_tau"] > 2.0 and "avg_tau" not in base
    assert spec["avg_draft_video_tokens"] < spec["avg_video_tokens"]
    for throughput in (spec, base):
        assert throughput["avg_speed"] > 0 and throughput["avg_latency"] > 0
    assert "specvlm speculative: 6 requests" in runs["speculative"]["stdout"]
    assert "specvlm target only: 6 requests" in runs["target"]["stdout"]


# ------------------------------------------------------------------------------- in-process checks


def test_model_args_take_the_cli_names_through_lmms_eval_parser():
    given = simple_parse_args_string(
        "target=T,draft=D,prune=specvlm,prune_ratio=0.9,tree=default,num_frames=32,dtype=bfloat16,"
        "device=cuda:0,speculative=true,drafter=overlap"
    )
    args = ModelArgs.parse(given)
    assert (args.target, args.draft, args.dtype, args.device) == ("T", "D", "bfloat16", "cuda:0")
    assert (args.tree, args.speculative, args.frames()["num_frames"]) == ("default", True, 32)
    assert args.prune_config() == PruneConfig("specvlm", ratio=0.9) and args.drafter == "overlap"

    plain = ModelArgs.parse(simple_parse_args_string("prune=none,speculative=false,fps=2,compile=false"))
    assert plain.prune_config() is None and plain.speculative is False and plain.compile is False
    assert plain.frames() == {"num_frames": None, "fps": 2.0, "max_frames": None}
    assert ModelArgs.parse({}).frames()["num_frames"] == 32  # the CLI's default


@pytest.mark.parametrize("text, words", [
    ("prune_ration=0.9", "unknown prune_ration"),
    ("target=T", "both target= and draft="),
    ("prune_ratio=1.5", "prune_ratio: expected a number in [0, 1]"),
    ("prune=topk", "prune: expected one of"),
    ("num_frames=2.5", "num_frames: expected an integer"),
    ("speculative=maybe", "speculative: expected true or false"),
    ("tree=chain:0", "tree:"),
    ("drafter=eager", "drafter: unknown drafter"),
    ("num_frames=8,fps=1", "not both"),
])  # fmt: skip
def test_bad_model_args_are_refused_in_one_line(text, words):
    with pytest.raises(ValueError, match="^--model_args") as caught:
        ModelArgs.parse(simple_parse_args_string(text))
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_generation_kwargs_map_onto_generate():
    greedy = generation_options({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                                 "do_sample": False, "until": ["\n\n"]}, 256)  # fmt: skip
    assert greedy == {"max_new_tokens": 16, "stop_strings": ("\n\n",), "temperature": 0.0}
    assert generation_options({"until": "Q:"}, 256) == {"max_new_tokens": 256, "stop_strings": ("Q:",),
                                                        "temperature": 0.0}  # fmt: skip
    sampled = generation_options({"do_sample": True, "top_p": 0.9, "top_k": 20}, 8)
    assert sampled == {"max_new_tokens": 8, "stop_strings": (), "temperature": 1.0, "top_p": 0.9, "top_k": 20}
    assert generation_options({"temperature": 0.7}, 8)["temperature"] == 0.7
    with pytest.raises(NotImplementedError, match="beam search"):
        generation_options({"num_beams": 4}, 8)


def _request(doc_to_visual, task="t", doc_id=0) -> Instance:
    arguments = ("What is shown?", {"max_new_tokens": 4}, doc_to_visual, doc_id, task, "test")
    return Instance("generate_until", arguments, idx=0, metadata={"task": task, "doc_id": doc_id, "repeats": 1})


def test_what_it_cannot_serve_is_refused_in_one_line():
    from PIL import Image

    model = SpecVLM(dtype="float32")  # the bundled pair
    image = Image.new("RGB", (32, 32))
    clip = str(sample_videos()[0].path)
    model.task_dict = {"t": {"test": [{"image": image, "video": clip}]}}
    cases = [
        (lambda doc: [doc["image"]], "holds a PIL.Image.Image"),
        (lambda doc: ["frame.jpg"], "holds an image file (frame.jpg)"),
        (lambda doc: [doc["video"], doc["video"]], "holds 2 visuals"),
    ]
    model._answer = lambda *args: pytest.fail("a request was decoded before the refusal")
    for doc_to_visual, words in cases:
        servable = _request(lambda doc: [doc["video"]])
        with pytest.raises(NotImplementedError, match="at most one video per request") as caught:
            model.generate_until([servable, _request(doc_to_visual)])
        assert words in str(caught.value) and "task t (test), doc 0" in str(caught.value)
        assert "\n" not in str(caught.value)
    assert one_video([], "a text-only request") is None  # answered without a video
    for method in (model.loglikelihood, model.generate_until_multi_round):
        with pytest.raises(NotImplementedError, match="specvlm answers") as caught:
            method([])
        assert "\n" not in str(caught.value)
