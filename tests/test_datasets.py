"""Tests for specvlm.bench.datasets: tiny fixtures in each benchmark's published layout."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from specvlm.bench.datasets import (
    DATASETS,
    MLVU_MC_TASKS,
    MVBENCH_TASKS,
    DatasetError,
    MissingVideo,
    MissingVideoWarning,
    Sample,
    SampleList,
    load_samples,
)
from specvlm.video import write_video


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One real 4-frame 32x32 mp4, written once and copied wherever a video is needed."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=8.0)


def put(clip: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clip, dest)
    return dest


def dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


# --------------------------------------------------------------------------- VideoDetailCaption

VDC_Q = "Please provide a detailed description of the video, focusing on the main subjects, their actions, the background scenes."


def make_vdc(root: Path, clip: Path, names=("v_b", "v_a", "v_c")) -> Path:
    write_parquet(
        root / "data" / "test-00000-of-00001.parquet",
        {
            "video_name": list(names),
            "question": [VDC_Q] * len(names),
            "answer": [f"caption of {n}" for n in names],
        },
    )
    put(clip, root / "Test_Videos" / f"{names[0]}.mp4")
    put(clip, root / "Test_Videos" / f"{names[1]}.MP4")  # lmms-eval's .MP4 fallback
    put(clip, root / "Test_Videos" / f"{names[2]}.mkv")  # and .mkv
    return root


def test_videodetailcaption_loads_rows_in_order(tmp_path, clip):
    root = make_vdc(tmp_path / "VideoDetailCaption", clip)
    samples = load_samples("videodetailcaption", root)
    assert isinstance(samples, SampleList) and samples.skipped == ()
    assert [s.sample_id for s in samples] == ["v_b", "v_a", "v_c"]  # parquet row order
    assert all(isinstance(s, Sample) and s.dataset == "videodetailcaption" for s in samples)
    assert all(s.prompt == VDC_Q for s in samples)
    assert [s.reference for s in samples] == ["caption of v_b", "caption of v_a", "caption of v_c"]
    assert [s.video.name for s in samples] == ["v_b.mp4", "v_a.MP4", "v_c.mkv"]
    assert all(s.video.is_file() and s.video.is_absolute() for s in samples)
    assert samples[0].meta["video_name"] == "v_b"


def test_videodetailcaption_evaluation_subfolder_and_duplicate_ids(tmp_path, clip):
    root = tmp_path / "vdc"
    write_parquet(
        root / "data" / "test-00000-of-00001.parquet",
        {"video_name": ["x", "x"], "question": ["q1", "q2"], "answer": ["a1", "a2"]},
    )
    put(clip, root / "evaluation" / "Test_Videos" / "x.mp4")
    samples = load_samples("videodetailcaption", root)
    assert [s.sample_id for s in samples] == ["x", "x#2"]
    assert samples[1].prompt == "q2"
    assert samples[0].video == root / "evaluation" / "Test_Videos" / "x.mp4"


def test_videodetailcaption_errors(tmp_path, clip):
    root = tmp_path / "vdc"
    root.mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(root / "data" / "test-00000-of-00001.parquet"))):
        load_samples("videodetailcaption", root)

    shard = write_parquet(root / "data" / "test-00000-of-00001.parquet", {"video_name": ["a"], "answer": ["x"]})
    with pytest.raises(DatasetError, match=r"no column 'question'.*") as ei:
        load_samples("videodetailcaption", root)
    assert str(shard) in str(ei.value)

    write_parquet(shard, {"video_name": ["a"], "question": ["q"], "answer": ["x"]})
    with pytest.raises(DatasetError, match=r"sample 'a' not found: expected .*Test_Videos/a\.mp4"):
        load_samples("videodetailcaption", root)

    with pytest.raises(DatasetError, match="has no tasks"):
        load_samples("videodetailcaption", root, tasks=["x"])


# --------------------------------------------------------------------------- MVBench


def mv_entry(video, q, cands, ans, **extra):
    return {"video": video, "question": q, "candidates": cands, "answer": ans, **extra}


def make_mvbench_video_revision(root: Path, clip: Path) -> Path:
    """HF `video` revision: json/<task>.json + pre-cut clips in lmms-eval's folders."""
    dump(root / "json" / "action_sequence.json", [
        mv_entry("AS1_0.0_5.0.mp4", "What did the person do first?", ["Sat down.", "Opened the door."], "Opened the door."),
        mv_entry("AS2_1.0_4.0.mp4", "What happened next?", ["A", "B", "C"], "A"),
    ])
    dump(root / "json" / "moving_count.json", [
        mv_entry("video_10000.mp4", "How many cubes move?", ["0", "1", "2"], "2"),
    ])
    dump(root / "json" / "episodic_reasoning.json", [
        mv_entry("s01e01_seg.mp4", "Why is Ross upset?", ["x", "y", "z", "w"], "w"),
    ])
    put(clip, root / "star" / "Charades_segment" / "AS1_0.0_5.0.mp4")
    put(clip, root / "data0613" / "star" / "Charades_segment" / "AS2_1.0_4.0.mp4")  # lmms-eval fallback
    put(clip, root / "clevrer" / "video_validation" / "video_10000.mp4")
    put(clip, root / "tvqa" / "video_fps3_hq_segment" / "s01e01_seg.mp4")
    return root


def test_mvbench_video_revision(tmp_path, clip):
    root = make_mvbench_video_revision(tmp_path / "MVBench", clip)
    samples = load_samples("mvbench", root, tasks=["moving_count", "episodic_reasoning", "action_sequence"])
    # canonical (VideoChat2) task order, then json order
    assert [s.sample_id for s in samples] == [
        "action_sequence:0", "action_sequence:1", "moving_count:0", "episodic_reasoning:0",
    ]
    first = samples[0]
    assert first.prompt == (
        "Question:What did the person do first?\nOption:\n(A) Sat down.\n(B) Opened the door.\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert first.reference == "B"
    assert first.video == root / "star" / "Charades_segment" / "AS1_0.0_5.0.mp4"
    assert first.meta["task"] == "action_sequence"
    assert first.meta["candidates"] == ["Sat down.", "Opened the door."]
    assert first.meta["answer"] == "Opened the door."
    assert first.meta["layout"] == "video" and "bound" not in first.meta
    assert samples[1].video == root / "data0613" / "star" / "Charades_segment" / "AS2_1.0_4.0.mp4"
    assert [s.reference for s in samples] == ["B", "A", "C", "D"]
    assert all(s.video.is_file() for s in samples)


def test_mvbench_main_revision_raw_videos_and_frames(tmp_path, clip):
    root = tmp_path / "MVBench"
    dump(root / "json" / "action_sequence.json", [
        mv_entry("ABCD1.mp4", "q?", ["a", "b"], "a", start=1.5, end=7.0),
    ])
    dump(root / "json" / "episodic_reasoning.json", [
        mv_entry("castle_s01e01_seg02_clip_00", "why?", ["a", "b"], "b", start=0.0, end=3.0),
    ])
    put(clip, root / "video" / "star" / "Charades_v1_480" / "ABCD1.mp4")
    frames = root / "video" / "tvqa" / "frames_fps3_hq" / "castle_s01e01_seg02_clip_00"
    frames.mkdir(parents=True)
    (frames / "00001.jpg").write_bytes(b"\xff\xd8\xff")
    samples = load_samples("mvbench", root, tasks=["action_sequence", "episodic_reasoning"])
    a, e = samples
    assert a.video == root / "video" / "star" / "Charades_v1_480" / "ABCD1.mp4"
    assert a.meta["layout"] == "main" and a.meta["bound"] == (1.5, 7.0)
    assert a.meta["data_type"] == "video"
    assert e.video == frames and e.video.is_dir()
    assert e.meta["data_type"] == "frame" and e.meta["bound"] == (0.0, 3.0)


def test_mvbench_errors(tmp_path, clip):
    root = make_mvbench_video_revision(tmp_path / "MVBench", clip)
    # tasks=None needs every task's json; all missing ones are named
    with pytest.raises(DatasetError, match=r"annotation files missing: .*json/action_prediction\.json") as ei:
        load_samples("mvbench", root)
    assert str(root / "json" / "counterfactual_inference.json") in str(ei.value)
    assert "action_sequence.json" not in str(ei.value)

    with pytest.raises(DatasetError, match=r"unknown task\(s\) 'no_such_task'; known tasks: action_sequence"):
        load_samples("mvbench", root, tasks=["no_such_task"])
    with pytest.raises(DatasetError, match="tasks must be a list"):
        load_samples("mvbench", root, tasks="action_sequence")

    dump(root / "json" / "moving_count.json", [{"video": "v.mp4", "question": "q", "answer": "a"}])
    with pytest.raises(DatasetError, match=r"moving_count\.json entry 0 has no field 'candidates'"):
        load_samples("mvbench", root, tasks=["moving_count"])

    (root / "json" / "moving_count.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"cannot read JSON annotation file .*moving_count\.json"):
        load_samples("mvbench", root, tasks=["moving_count"])
    dump(root / "json" / "moving_count.json", {"video": "v.mp4"})
    with pytest.raises(DatasetError, match=r"moving_count\.json must hold a JSON list"):
        load_samples("mvbench", root, tasks=["moving_count"])

    (root / "tvqa" / "video_fps3_hq_segment" / "s01e01_seg.mp4").unlink()
    with pytest.raises(
        DatasetError,
        match=r"sample 'episodic_reasoning:0' not found: expected .*tvqa/video_fps3_hq_segment/s01e01_seg\.mp4"
        r" \(also tried: .*video/tvqa/frames_fps3_hq/s01e01_seg\.mp4",
    ):
        load_samples("mvbench", root, tasks=["episodic_reasoning"])

    shutil.rmtree(root / "json")
    with pytest.raises(DatasetError, match=r"annotation folder missing: .*MVBench/json"):
        load_samples("mvbench", root, tasks=["action_sequence"])


# --------------------------------------------------------------------------- MLVU


def make_mlvu(root: Path, clip: Path) -> Path:
    """HF MLVU/MVLU layout: MLVU/json/<n>_<task>.json + MLVU/video/<n>_<task>/."""
    base = root / "MLVU"
    for task, fname in zip(MLVU_MC_TASKS, [
        "1_plotQA.json", "2_needle.json", "3_ego.json", "4_count.json",
        "5_order.json", "6_anomaly_reco.json", "7_topic_reasoning.json",
    ]):
        stem = fname[:-5]
        dump(base / "json" / fname, [{
            "video": f"{task}_1.mp4", "duration": 300.5, "question": f"Q about {task}?",
            "candidates": ["red", "green", "blue", "white"], "answer": "blue", "question_type": task,
        }])
        # needle uses the plain folder name, the others the numbered one
        folder = "needle" if task == "needle" else stem
        put(clip, base / "video" / folder / f"{task}_1.mp4")
    dump(base / "json" / "9_summary.json", [{
        "video": "217.mp4", "duration": 480.0,
        "question": "Please summarize this video, including its main content.",
        "answer": "Waves, a boat, whales.", "question_type": "summary",
    }])
    put(clip, base / "video" / "9_summary" / "217.mp4")
    return root


def test_mlvu_multiple_choice_default(tmp_path, clip):
    root = make_mlvu(tmp_path / "mlvu", clip)
    samples = load_samples("mlvu", root)
    assert [s.sample_id for s in samples] == [f"{t}:0" for t in MLVU_MC_TASKS]
    plot = samples[0]
    assert plot.prompt == (
        "Question: Q about plotQA?\nOptions:\n(A) red\n(B) green\n(C) blue\n(D) white\n"
        "Only give the best option."
    )
    assert plot.reference == "C"
    assert plot.video == root / "MLVU" / "video" / "1_plotQA" / "plotQA_1.mp4"
    assert plot.meta["task"] == "plotQA" and plot.meta["duration"] == 300.5
    assert samples[1].video == root / "MLVU" / "video" / "needle" / "needle_1.mp4"
    assert all(s.video.is_file() for s in samples)


def test_mlvu_tasks_filter_and_open_ended(tmp_path, clip):
    root = make_mlvu(tmp_path / "mlvu", clip)
    samples = load_samples("mlvu", root / "MLVU", tasks=["summary", "1_plotQA"])  # alias + order
    assert [s.sample_id for s in samples] == ["plotQA:0", "summary:0"]
    summary = samples[1]
    assert summary.prompt == "Please summarize this video, including its main content."
    assert summary.reference == "Waves, a boat, whales."
    assert summary.meta["question_type"] == "summary"
    with pytest.raises(DatasetError, match=r"annotation file missing: .*json/8_sub_scene\.json"):
        load_samples("mlvu", root, tasks=["sub_scene"])
    with pytest.raises(DatasetError, match=r"unknown task\(s\) 'plot'"):
        load_samples("mlvu", root, tasks=["plot"])


# --------------------------------------------------------------------------- LongVideoBench


def lvb_entry(i, video_id, category, choice, group=600):
    return {
        "video_id": video_id, "question": f"In the scene, what happens {i}?",
        "question_wo_referring_query": f"what happens {i}?",
        "candidates": ["a cat", "a dog", "a bird", "a fish"], "correct_choice": choice,
        "position": [10], "topic_category": "NP-News-Programs", "question_category": category,
        "level": "L2-Relation", "id": f"{video_id}_{i}", "video_path": f"{video_id}.mp4",
        "subtitle_path": f"{video_id}_en.json", "duration_group": group,
        "starting_timestamp_for_subtitles": 0, "duration": 512.3, "view_count": 100,
    }


def make_lvb(root: Path, clip: Path) -> Path:
    dump(root / "lvb_val.json", [
        lvb_entry(0, "86CxyhFV9MI", "S2E", 1),
        lvb_entry(1, "86CxyhFV9MI", "T3O", 3, group=3600),
        lvb_entry(2, "zzz", "S2E", 0),
    ])
    put(clip, root / "videos" / "86CxyhFV9MI.mp4")
    put(clip, root / "videos" / "zzz.mp4")
    return root


def test_longvideobench(tmp_path, clip):
    root = make_lvb(tmp_path / "LongVideoBench", clip)
    samples = load_samples("longvideobench", root)
    assert [s.sample_id for s in samples] == ["86CxyhFV9MI_0", "86CxyhFV9MI_1", "zzz_2"]
    s0 = samples[0]
    assert s0.prompt == (
        "In the scene, what happens 0?\nA. a cat\nB. a dog\nC. a bird\nD. a fish\n"
        "Answer with the option's letter from the given choices directly.\n"
    )
    assert [s.reference for s in samples] == ["B", "D", "A"]
    assert s0.video == root / "videos" / "86CxyhFV9MI.mp4"
    assert s0.meta["duration_group"] == 600 and s0.meta["task"] == "S2E"
    assert s0.meta["subtitle_path"] == "86CxyhFV9MI_en.json" and s0.meta["answer"] == "a dog"

    only = load_samples("longvideobench", root, tasks=["T3O"])
    assert [s.sample_id for s in only] == ["86CxyhFV9MI_1"]
    with pytest.raises(DatasetError, match=r"question_category 'XYZ'; present: S2E, T3O"):
        load_samples("longvideobench", root, tasks=["XYZ"])


def test_longvideobench_errors(tmp_path, clip):
    root = tmp_path / "lvb"
    root.mkdir()
    with pytest.raises(DatasetError, match=r"annotation file missing: .*lvb/lvb_val\.json"):
        load_samples("longvideobench", root)
    bad = lvb_entry(0, "v", "S2E", 0)
    del bad["video_path"]
    dump(root / "lvb_val.json", [lvb_entry(1, "v", "S2E", 0), bad])
    with pytest.raises(DatasetError, match=r"lvb_val\.json entry 1 has no field 'video_path'"):
        load_samples("longvideobench", root)
    dump(root / "lvb_val.json", [lvb_entry(1, "v", "S2E", 0)])
    with pytest.raises(DatasetError, match=r"sample 'v_1' not found: expected .*lvb/videos/v\.mp4$"):
        load_samples("longvideobench", root)


# --------------------------------------------------------------------------- folder


def test_folder_reader(tmp_path, clip):
    root = tmp_path / "clips"
    put(clip, root / "b.mp4")
    put(clip, root / "a.MOV")
    write_video(root / "c.mkv", np.zeros((4, 32, 32, 3), np.uint8))
    (root / "notes.txt").write_text("not a video")
    (root / "sub").mkdir()
    put(clip, root / "sub" / "nested.mp4")  # not recursive
    samples = load_samples("folder", root, prompt="Describe this video in detail.")
    assert [s.sample_id for s in samples] == ["a.MOV", "b.mp4", "c.mkv"]
    assert all(s.prompt == "Describe this video in detail." for s in samples)
    assert all(s.reference is None and s.meta == {} and s.dataset == "folder" for s in samples)
    assert samples[2].video == root / "c.mkv"
    assert [s.sample_id for s in load_samples("folder", root, prompt="p", limit=2)] == ["a.MOV", "b.mp4"]


def test_folder_errors(tmp_path, clip):
    root = tmp_path / "clips"
    root.mkdir()
    with pytest.raises(DatasetError, match="a prompt is required"):
        load_samples("folder", root)
    with pytest.raises(DatasetError, match=r"no video files .* in .*clips"):
        load_samples("folder", root, prompt="p")
    put(clip, root / "a.mp4")
    with pytest.raises(DatasetError, match="has no tasks"):
        load_samples("folder", root, prompt="p", tasks=["x"])
    with pytest.raises(DatasetError, match="prompt must be a non-empty string"):
        load_samples("folder", root, prompt="  ")


# --------------------------------------------------------------------------- common behaviour


def test_limit_prompt_override_and_missing_policy(tmp_path, clip):
    root = make_lvb(tmp_path / "lvb", clip)
    (root / "videos" / "zzz.mp4").unlink()  # third sample's video is missing

    # limit stops before the missing video: nothing raised
    two = load_samples("longvideobench", root, limit=2)
    assert [s.sample_id for s in two] == ["86CxyhFV9MI_0", "86CxyhFV9MI_1"]
    assert load_samples("longvideobench", root, limit=0) == []
    with pytest.raises(DatasetError, match=r"sample 'zzz_2' not found: expected .*videos/zzz\.mp4"):
        load_samples("longvideobench", root, limit=3)

    with pytest.warns(MissingVideoWarning, match=r"skipped 1 sample\(s\) whose video is missing: zzz_2"):
        kept = load_samples("longvideobench", root, skip_missing=True)
    assert [s.sample_id for s in kept] == ["86CxyhFV9MI_0", "86CxyhFV9MI_1"]
    assert kept.skipped == (MissingVideo("zzz_2", root / "videos" / "zzz.mp4", (root / "videos" / "zzz.mp4",)),)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped -> no warning
        over = load_samples("longvideobench", root, prompt="Describe this video in detail.", limit=1)
    assert over[0].prompt == "Describe this video in detail."
    assert over[0].meta["benchmark_prompt"].startswith("In the scene, what happens 0?\nA. a cat")
    assert over[0].reference == "B"  # the reference is kept


def test_common_errors(tmp_path, clip):
    with pytest.raises(DatasetError, match=r"unknown dataset 'nope'; known datasets: videodetailcaption, mvbench, mlvu, longvideobench, folder"):
        load_samples("nope", tmp_path)
    missing = tmp_path / "does_not_exist"
    with pytest.raises(DatasetError, match=r"mvbench root folder does not exist: .*does_not_exist"):
        load_samples("mvbench", missing)
    a_file = put(clip, tmp_path / "x.mp4")
    with pytest.raises(DatasetError, match=r"root is not a folder: .*x\.mp4"):
        load_samples("longvideobench", a_file)
    for bad in (-1, 1.5, True):
        with pytest.raises(DatasetError, match="limit must be a non-negative int"):
            load_samples("longvideobench", tmp_path, limit=bad)
    assert issubclass(DatasetError, ValueError)
    assert DATASETS == ("videodetailcaption", "mvbench", "mlvu", "longvideobench", "folder")
    assert len(MVBENCH_TASKS) == 20 and len(set(MVBENCH_TASKS)) == 20


def test_sample_is_frozen(tmp_path, clip):
    root = tmp_path / "clips"
    put(clip, root / "a.mp4")
    s = load_samples("folder", root, prompt="p")[0]
    with pytest.raises(Exception):
        s.prompt = "other"  # type: ignore[misc]
