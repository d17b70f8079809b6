"""The synthetic shapes task and the script that trains a target/draft pair on it (CPU smoke run)."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from specvlm import synthetic
from specvlm.synthetic import COLOURS, PLACES, describe, make_clip, make_example, place_centre, questions

SEEDS = range(60)
_CELL_OF_PLACE = {name: cell for cell, (name, _) in PLACES.items()}


_PALETTE = np.asarray(list(COLOURS.values()), dtype=float)  # (7, 3)


def _colour_names(pixels: np.ndarray) -> list[str]:
    """Nearest palette colour of each (..., 3) pixel, flattened."""
    dist = ((pixels.reshape(-1, 1, 3).astype(float) - _PALETTE) ** 2).sum(-1)
    return [list(COLOURS)[i] for i in dist.argmin(1)]


def _colour_name(rgb: np.ndarray) -> str:
    return _colour_names(rgb)[0]


def _pixel(frames: np.ndarray, t: int, cell: tuple[int, int]) -> np.ndarray:
    x, y = place_centre(cell, frames.shape[2])
    return frames[t, y, x]


def test_clip_and_texts_are_deterministic():
    for seed in (0, 7, 123456):
        f1, t1 = make_clip(seed)
        f2, t2 = make_clip(seed)
        assert f1.dtype == np.uint8 and f1.shape == (16, 64, 64, 3)
        assert np.array_equal(f1, f2) and t1 == t2
        assert describe(t1) == describe(t2) and questions(t1) == questions(t2)
        e1, e2 = make_example(seed), make_example(seed)
        assert (e1.prompt, e1.answer, e1.qtype) == (e2.prompt, e2.answer, e2.qtype)
        assert np.array_equal(e1.frames, e2.frames)
    assert not np.array_equal(make_clip(0)[0], make_clip(1)[0])


def test_clip_options_and_errors():
    frames, truth = make_clip(3, num_frames=8, size=48)
    assert frames.shape == (8, 48, 48, 3) and truth.num_frames == 8
    with pytest.raises(ValueError):
        make_clip(0, num_frames=2)
    with pytest.raises(ValueError):
        make_example(0, task="chat")
    assert make_example(0, task="describe").answer == describe(make_clip(0)[1])
    assert make_example(0, task="question").task == "question"


def test_answers_depend_on_the_video():
    answers: dict[str, set[str]] = {}
    for seed in SEEDS:
        for q, a in questions(make_clip(seed)[1]):
            answers.setdefault(q, set()).add(a)
    # The same question gets different answers for different clips.
    assert answers["How many shapes are there?"] == {"one", "two", "three"}
    assert len(answers["What colour is the square?"]) >= 5  # colours and "there is no square"
    assert {"to the left", "to the right", "up", "down", "it does not move"} <= answers["Which way does the circle move?"]
    assert {"yes", "no"} <= answers["Is there a red shape?"]
    # Two clips with different truths answer some shared question differently.
    _, t0 = make_clip(0)
    _, t1 = make_clip(1)
    assert t0 != t1
    q0, q1 = dict(questions(t0)), dict(questions(t1))
    assert any(q0[q] != q1[q] for q in q0.keys() & q1.keys())


def test_frames_show_what_the_description_says():
    """Parse every shape sentence and check the pixel colours at the named places."""
    checked = 0
    for seed in SEEDS:
        frames, truth = make_clip(seed)
        last = truth.num_frames - 1
        text = describe(truth)
        n = len(truth.shapes)
        assert text.startswith(f"The video shows {['one', 'two', 'three'][n - 1]} shape")
        for sentence in re.findall(r"(?:Later, an? |An? )[^.]*\.", text):
            m = re.match(r"(?:Later, )?an? (\w+) (circle|square|triangle) (.*)\.", sentence, re.IGNORECASE)
            assert m, sentence
            colour, kind, rest = m.groups()
            shape = truth.shape(kind)
            assert shape is not None and shape.colour == colour
            if (mv := re.match(r"moves from (.+) to (.+?)(?: and turns (\w+))?$", rest)):
                start, end, turns = _CELL_OF_PLACE[mv[1]], _CELL_OF_PLACE[mv[2]], mv[3]
            elif (ap := re.match(r"appears (?:in|on|at) (.+?)(?: and moves to (.+))?$", rest)):
                start = _CELL_OF_PLACE[ap[1]]
                end, turns = _CELL_OF_PLACE[ap[2]] if ap[2] else start, None
            else:
                st = re.match(r"stays (?:in|on|at) (.+?)(?: and turns (\w+))?$", rest)
                assert st, sentence
                start = end = _CELL_OF_PLACE[st[1]]
                turns = st[2]
            assert _colour_name(_pixel(frames, shape.appear, start)) == colour
            assert _colour_name(_pixel(frames, last, end)) == (turns or colour)
            if shape.appear > 0:  # not there before it appears: the place shows the dark background
                assert _pixel(frames, 0, start).astype(int).sum() < 150
            checked += 1
        assert checked and len(re.findall(r"\.", text)) == n + 1
    assert checked >= len(SEEDS)


def test_questions_match_the_frames():
    for seed in SEEDS:
        frames, truth = make_clip(seed)
        qa = dict(questions(truth))
        for shape in truth.shapes:
            key = f"What colour is the {shape.kind}?"
            if key in qa:
                assert _colour_name(_pixel(frames, truth.num_frames - 1, shape.end)) == qa[key]
            if shape.new_colour is not None:
                assert qa[f"What colour does the {shape.kind} turn?"] == shape.new_colour
        for kind in synthetic.KINDS:
            if truth.shape(kind) is None:
                assert qa[f"What colour is the {kind}?"] == f"there is no {kind}"


def test_corpus_covers_the_task_vocabulary():
    words = synthetic.task_words()
    used: set[str] = set()
    for seed in range(2000, 2600):
        e = make_example(seed)
        used |= set(re.findall(r"[a-z]+", (e.prompt + " " + e.answer + " " + describe(e.truth)).lower()))
    assert used <= words, used - words
    for name in list(COLOURS) + list(synthetic.KINDS) + ["centre", "corner", "colour", "later", "none", "three"]:
        assert name in words


# --------------------------------------------------------------------------------------------
# training script
# --------------------------------------------------------------------------------------------



def test_tokenizer_round_trips_the_task_text():
    from specvlm.training.train_pair import build_tokenizer

    tokenizer = build_tokenizer()
    assert 900 <= len(tokenizer) <= 2048
    for seed in range(20):
        e = make_example(seed, task="describe")
        ids = tokenizer.encode(e.answer, add_special_tokens=False)
        assert tokenizer.decode(ids) == e.answer
        assert len(ids) <= len(e.answer.split()) + 12  # task words are whole tokens, not bytes


def test_default_sizes_fit_the_budget():
    from transformers import LlavaOnevisionForConditionalGeneration

    from specvlm.training import train_pair as tp

    tokenizer = tp.build_tokenizer()
    counts = {}
    for role, size in tp.SIZES["default"].items():
        with torch.device("meta"):
            model = LlavaOnevisionForConditionalGeneration._from_config(tp.build_model_config(size, tokenizer))
        counts[role] = tp.parameter_counts(model)
    assert 8e6 <= counts["target"]["language_model"] <= 20e6
    assert 0.5e6 <= counts["draft"]["language_model"] <= 3e6
    assert (counts["target"]["total"] + counts["draft"]["total"]) * 2 < 36e6  # bf16 bytes, well under 40 MB


def test_cell_labels_mark_the_cells_that_show_each_colour():
    from specvlm.training.train_pair import CELL_CLASSES, cell_labels

    for seed in range(20):
        frames, truth = make_clip(seed)
        labels = cell_labels(truth, 4).reshape(16, 4, 4, len(CELL_CLASSES))
        assert labels[..., : len(COLOURS)].sum() > 0
        for t, r, c in zip(*np.nonzero(labels[..., : len(COLOURS)].any(-1))):
            cell = frames[t, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16].reshape(-1, 3)
            shown = set(_colour_names(cell[cell.astype(int).sum(1) > 200]))  # without the dark background
            assert {CELL_CLASSES[k] for k in np.nonzero(labels[t, r, c, : len(COLOURS)])[0]} <= shown
        kinds = {CELL_CLASSES[k] for k in np.nonzero(labels[..., len(COLOURS) :].any((0, 1, 2)))[0] + len(COLOURS)}
        assert kinds <= {s.kind for s in truth.shapes}


def test_batch_stream_is_the_same_for_any_number_of_workers():
    from specvlm.training import train_pair as tp

    cfg = tp.parse_args(["--out", "unused", "--device", "cpu", "--tiny"])
    encoder = tp.Encoder(tp.build_processor(tp.build_tokenizer()), cfg.video_tokens, cfg.grid)
    streams = [
        tp.batch_stream(encoder, dataclasses.replace(cfg, workers=w), 1_000_000, 3, torch.device("cpu"))
        for w in (0, 2)
    ]
    for _ in range(4):
        a, b = (next(s) for s in streams)
        assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in vars(a))
    assert a.input_ids.shape[0] == 3 and a.cell_labels.shape[1] == cfg.video_tokens - 1


def test_keep_mask_and_pruned_forward():
    from specvlm.training import train_pair as tp

    cfg = tp.parse_args(["--out", "unused", "--device", "cpu", "--tiny"])
    tokenizer = tp.build_tokenizer()
    processor = tp.build_processor(tokenizer)
    encoder = tp.Encoder(processor, cfg.video_tokens, cfg.grid)
    batch = encoder.collate([tp.example(s, cfg) for s in range(3)])
    video = batch.input_ids == encoder.video_id
    assert int(video[0].sum()) == cfg.video_tokens == 16 * cfg.num_frames + 1
    keep = tp.keep_mask(video, 0.25, torch.Generator().manual_seed(0))
    assert (keep | video).all() and keep[~video].all()  # text always kept
    assert (keep & video).sum(1).tolist() == [16 + 1] * 3  # 25% of 64 grid tokens + newline
    model = tp.build_model(tp.build_model_config(cfg.sizes["target"], tokenizer), 0).eval()
    with torch.no_grad():
        full, tokens = tp.answer_logits(model, batch)
        kept_all, tokens2 = tp.answer_logits(model, batch, torch.ones_like(video))
        pruned, tokens3 = tp.answer_logits(model, batch, keep)
    assert torch.equal(tokens, tokens2) and torch.equal(tokens, tokens3)
    torch.testing.assert_close(kept_all, full, rtol=1e-4, atol=1e-4)
    assert pruned.shape == full.shape and not torch.allclose(pruned, full)


def test_training_smoke_run_writes_loadable_checkpoints(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from specvlm.models import load_adapter
    from specvlm.training import train_pair as tp

    out = tmp_path / "pair"
    assert tp.main(["--out", str(out), "--device", "cpu", "--tiny", "--steps", "3"]) == 0

    report = json.loads((out / "train_config.json").read_text())
    assert report["settings"]["steps"] == 3 and report["settings"]["tiny"] is True
    assert report["target_training"]["steps_done"] == 3 and report["draft_training"]["steps_done"] == 3
    for key in ("question", "describe"):
        assert 0.0 <= report["target_eval"][key]["exact"] <= 1.0
        assert 0.0 <= report["draft_eval"][key]["agree"] <= 1.0
    assert report["speculation"]["lossless_runs"] == "2/2"
    assert report["checkpoint_bytes"]["total"] < 40e6
    samples = json.loads((out / "samples" / "samples.json").read_text())
    assert (out / "samples" / samples[0]["video"]).stat().st_size > 0 and samples[0]["prompts"]

    frames = make_clip(5, num_frames=4)[0]
    for role in ("target", "draft"):
        model = AutoModelForImageTextToText.from_pretrained(out / role)
        processor = AutoProcessor.from_pretrained(out / role)
        assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
        assert model.dtype == torch.bfloat16
        assert set(model.generation_config.eos_token_id) == set(
            processor.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
        )
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], videos=[frames], return_tensors="pt")
        assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 16 * 4 + 1
        with torch.no_grad():
            logits = model.float()(**inputs).logits
        assert logits.shape[-1] == len(processor.tokenizer) and torch.isfinite(logits).all()

    # Training prompts are token for token what the engine builds at inference.
    adapter = load_adapter(str(out / "target"), dtype="float32")
    encoder = tp.Encoder(adapter.processor, 16 * 4 + 1, 4)
    for prompt in ("Describe the video.", "What colour is the square?"):
        features = adapter.build_inputs(frames, prompt)
        assert features["input_ids"][0].tolist() == encoder.prompt_ids(prompt)
