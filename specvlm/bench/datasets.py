"""Read benchmark samples from local folders in each benchmark's published layout.

Nothing is downloaded. :func:`load_samples` turns a local copy of a benchmark
into a list of :class:`Sample` (video path + prompt + reference + meta), in a
deterministic order, with stable ids (``Sample.sample_id``) that a run can use
to resume.

    >>> samples = load_samples("mvbench", "/data/MVBench", tasks=["action_sequence"],
    ...                        prompt="Describe this video in detail.", limit=20)

API
===

``load_samples(name, root, *, limit=None, prompt=None, tasks=None, skip_missing=False)``

* ``name``: one of :data:`DATASETS`.
* ``root``: the benchmark's local folder (layouts below).
* ``prompt``: replaces every sample's prompt (the speed benchmarks use one
  open-ended description prompt, e.g. ``"Describe this video in detail."``);
  the benchmark's own prompt is then kept in ``meta["benchmark_prompt"]``.
  Required for ``folder``.
* ``tasks``: keep only these tasks (MVBench / MLVU task names, LongVideoBench
  ``question_category`` values); refused for datasets without tasks.
* ``limit``: the first ``limit`` samples in the order described below.
* ``skip_missing``: see "Missing videos".

Order (what ``limit`` takes the first N of): VideoDetailCaption: parquet row
order (shards sorted by file name); MVBench: tasks in :data:`MVBENCH_TASKS`
order (the VideoChat2 ``mvbench.ipynb`` order), then json entry order; MLVU:
tasks in :data:`MLVU_TASKS` order (the json files' numeric prefixes), then
json entry order; LongVideoBench: ``lvb_val.json`` order; folder: file names
sorted. ``tasks=`` filters but never reorders.

Sample ids: VideoDetailCaption ``video_name``; MVBench ``"<task>:<index in the
task json>"``; MLVU ``"<task>:<index in the task json>"``; LongVideoBench the
entry's ``id``; folder the file name. If an id would repeat, later occurrences
get ``"#2"``, ``"#3"``... appended (in file order, so still stable).

References: the caption for VideoDetailCaption; for multiple-choice
benchmarks the letter of the correct option (``"A"``, ``"B"``...), with the
option texts in ``meta["candidates"]`` and the answer text in
``meta["answer"]``; the answer text for MLVU's open-ended tasks; ``None``
where the layout has none (folder, LongVideoBench test file without answers).

Errors
======

Every problem raises :class:`DatasetError` (a ``ValueError``) whose message
names the offending path / field / sample: an unknown dataset name (lists the
known ones), a missing or non-folder root, a missing annotation file (all
missing ones are listed), an unreadable annotation file, a missing required
column / field (names it and the file, plus the entry index for json), an
unknown task, a bad argument, and a missing video (names the sample and the
expected path, plus any alternative paths that were tried).

Missing videos
--------------
Annotations are read and validated in full, then videos are looked up lazily,
in order, until ``limit`` samples are found; videos after that point are not
looked at (so ``limit=5`` works on a partially downloaded benchmark).

* ``skip_missing=False`` (default): the first missing video raises
  :class:`DatasetError`.
* ``skip_missing=True``: samples whose video is missing are skipped; each is
  recorded as a :class:`MissingVideo` in the returned list's ``skipped``
  attribute and one :class:`MissingVideoWarning` summarises them. With
  ``limit=N`` the result holds the first N samples *whose video exists*.

The return value is always a :class:`SampleList`, a plain ``list`` of
:class:`Sample` with the extra ``skipped`` tuple (empty unless samples were
skipped).

Layouts read
============

``videodetailcaption`` -- lmms-lab/VideoDetailCaption (499 videos) ::

    root/
    +-- data/
    |   +-- test-00000-of-00001.parquet   columns video_name, question, answer
    +-- Test_Videos/                      videos.zip extracted here
        +-- <video_name>.mp4              (.MP4 / .mkv also accepted)

  Every ``data/test-*.parquet`` shard is read (needs ``pyarrow``; columns
  ``video_name`` and ``question`` are required, ``answer`` optional). Videos
  are looked up as ``Test_Videos/<video_name>`` + ``.mp4``, ``.MP4``,
  ``.mkv`` (lmms-eval's order), then the same under
  ``evaluation/Test_Videos/`` (where lmms-eval's video_detail_description
  task keeps them). Prompt: the row's ``question`` (lmms-eval uses empty
  pre/post prompts). Reference: ``answer``.
  Sources: the Hugging Face repo lmms-lab/VideoDetailCaption (files
  ``data/test-00000-of-00001.parquet`` and ``videos.zip``, features
  ``video_name``/``question``/``answer``); lmms-eval
  ``lmms_eval/tasks/video_detail_description/{utils.py,*.yaml}`` (task
  ``video_dc499``, split ``test``, ``Test_Videos/<video_name>.mp4``);
  zju-jiyicheng/SpecVLM ``utils/utils.py`` (the paper's loader:
  ``<data_path>/Test_Videos/<video_name>.mp4``, split ``test``).

``mvbench`` -- OpenGVLab/MVBench, 20 tasks ::

    root/                                 either revision of the HF repo
    +-- json/<task>.json                  [{video, question, candidates, answer,
    |                                       (start, end)}, ...]
    |
    |   revision "video" (pre-cut clips; what lmms-eval downloads):
    +-- star/Charades_segment/<video>          action_sequence, action_prediction,
    |                                          object_interaction
    +-- sta/sta_video_segment/<video>          action_localization
    +-- tvqa/video_fps3_hq_segment/<video>     episodic_reasoning
    +-- ssv2_video_mp4/<video>                 action_antonym
    +-- nturgbd_convert/<video>                fine_grained_pose
    +-- clevrer/video_validation/<video>       object_existence, moving_direction,
    |                                          moving_count, moving_attribute,
    |                                          counterfactual_inference
    +-- perception/videos/<video>              object_shuffle, action_count,
    |                                          state_change, character_order
    +-- Moments_in_Time_Raw/videos/<video>     fine_grained_action
    +-- FunQA_test/test/<video>                unexpected_action
    +-- scene_qa/video/<video>                 scene_transition
    +-- vlnqa/<video>                          egocentric_navigation
    |
    |   revision "main" (raw sources, zips extracted inside video/):
    +-- video/star/Charades_v1_480/<video>     (cut with start/end)
        video/sta/sta_video/<video>            (cut with start/end)
        video/tvqa/frames_fps3_hq/<video>/     a FOLDER of frames (start/end, 3 fps)
        video/ssv2_video/<video>
        video/nturgbd/<video>  (or video/nturgbd_convert/)
        video/clevrer/..., video/perception/..., ... as in the "video" revision

  For each sample the candidates are tried in this order and the first that
  exists wins: ``root/<video-revision folder>/<video>``,
  ``root/data0613/<same>/<video>`` (lmms-eval's fallback for late-added
  files), ``root/video/<main folder>/<video>``,
  ``root/video/data0613/<main folder>/<video>``. ``meta["layout"]`` says
  which revision matched (``"video"`` or ``"main"``); for the main revision's
  start/end tasks ``meta["bound"] = (start, end)`` (seconds) says which part of
  the raw video the question is about, and ``meta["data_type"]`` is
  ``"frame"`` for the episodic_reasoning frame folders (else ``"video"``).
  Prompt (lmms-eval ``mvbench_doc_to_text``)::

      "Question:" + question + "\\nOption:\\n" + "(A) c0\\n(B) c1\\n..." + post_prompt

  with ``post_prompt = "Answer with the option's letter from the given choices
  directly."``. Reference: the letter of ``answer`` among ``candidates``.
  ``tasks=``: names from :data:`MVBENCH_TASKS`; with ``tasks=None`` every
  task's json must exist.
  Sources: the HF repo OpenGVLab/MVBench (README ``configs`` ->
  ``json/<task>.json``; file trees of the ``main`` revision: ``json/``,
  ``video/``; and of the ``video`` revision: the folders above plus ``json/``);
  lmms-eval ``lmms_eval/tasks/mvbench/utils.py`` (``DATA_LIST``: task ->
  video-revision folder, ``doc_to_text``, the ``data0613`` fallback) and the
  task yamls (``post_prompt``); the VideoChat2 ``mvbench.ipynb`` ``data_list``
  (task -> (json, main-revision folder, video/frame, has start/end)).

``mlvu`` -- MLVU dev set (HF MLVU/MVLU) ::

    root/                    (or root/MLVU/ with the same contents)
    +-- json/
    |   +-- 1_plotQA.json          [{video, duration, question, candidates,
    |   +-- 2_needle.json            answer, question_type}, ...]
    |   +-- 3_ego.json
    |   +-- 4_count.json
    |   +-- 5_order.json
    |   +-- 6_anomaly_reco.json
    |   +-- 7_topic_reasoning.json
    |   +-- 8_sub_scene.json       open-ended: [{video, duration, question,
    |   +-- 9_summary.json           answer, question_type, ...}, ...]
    +-- video/
        +-- 1_plotQA/<video>       (or video/plotQA/<video>)
        +-- ...                    one folder per json, same stem
        +-- 8_sub_scene/<video>    (or video/sub_scene/, video/subPlot/)

  Tasks: :data:`MLVU_TASKS` (``plotQA``, ``needle``, ``ego``, ``count``,
  ``order``, ``anomaly_reco``, ``topic_reasoning``, ``sub_scene``,
  ``summary``; the json stems like ``"1_plotQA"`` are accepted too). Default
  (``tasks=None``): the seven multiple-choice tasks (MLVU's M-Avg, what
  lmms-eval's ``mlvu_dev`` scores); the two open-ended ones only on request.
  Prompt for multiple-choice tasks (MLVU's own ``choice_bench.py`` template)::

      "Question: " + question + "\\nOptions:\\n(A) c0\\n(B) c1\\n...\\nOnly give the best option."

  and the bare ``question`` for the open-ended tasks. Reference: the option
  letter (multiple choice) or the answer text (open-ended).
  Sources: JUNJIE99/MLVU README (annotations + HF MLVU/MVLU for videos);
  FlagOpen/FlagEmbedding ``MLVU/data/*.json`` (file names and entry fields)
  and ``MLVU/evaluation/**/choice_bench.py`` / ``open_bench.py`` (task table,
  prompt template, per-task video folders); lmms-eval
  ``lmms_eval/tasks/mlvu`` (its ``mlvu_dev`` reads a repackaged parquet,
  sy1998/MLVU_dev, which this reader does not read).

``longvideobench`` -- longvideobench/LongVideoBench (validation) ::

    root/
    +-- lvb_val.json       [{id, video_id, video_path, question, candidates,
    |                        correct_choice, duration, duration_group,
    |                        question_category, topic_category, level,
    |                        position, question_wo_referring_query,
    |                        subtitle_path, starting_timestamp_for_subtitles,
    |                        view_count}, ...]
    +-- videos/<video_path>          (videos.tar.part.* concatenated, extracted)
    +-- subtitles/<subtitle_path>    (not read here; path kept in meta)

  Required fields: ``id``, ``video_path``, ``question``, ``candidates``;
  ``correct_choice`` (an int) gives the reference letter when present; every
  other field is copied into ``meta`` (``meta["task"]`` = ``question_category``,
  which is what ``tasks=`` filters on). Prompt (lmms-eval
  ``longvideobench_doc_to_text``, default kwargs)::

      question + "\\nA. c0\\nB. c1\\n..." + "\\n" +
      "Answer with the option's letter from the given choices directly.\\n"

  Sources: longvideobench/LongVideoBench README (download/extract steps,
  ``LongVideoBenchDataset(path, "lvb_val.json")``) and its
  ``longvideobench_dataset.py`` (``videos/``/``subtitles/`` joins, field
  names); lmms-eval ``lmms_eval/tasks/longvideobench/{utils.py,
  longvideobench_val_v.yaml}`` (prompt, letter = ``chr(65 + correct_choice)``).

``folder`` -- any folder of videos ::

    root/
    +-- a.mp4   b.webm   c.mkv   d.avi   e.mov    (extension case-insensitive;
                                                   not recursive)

  Files sorted by name; ``sample_id`` is the file name; every sample gets the
  ``prompt`` argument (required); no reference.

Not confirmed (no primary source readable offline): whether MVBench's main
revision keeps ``data0613/`` and ``nturgbd_convert/`` under ``video/`` (both are
only tried as fallbacks); whether VideoDetailCaption's ``videos.zip`` unpacks
to ``Test_Videos/`` or ``evaluation/Test_Videos/`` (both are tried); which MLVU
video folder naming the HF repo uses (numbered and plain names are tried).
"""

from __future__ import annotations

import json
import os
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "DATASETS",
    "VIDEO_EXTENSIONS",
    "MVBENCH_TASKS",
    "MLVU_TASKS",
    "MLVU_MC_TASKS",
    "Sample",
    "SampleList",
    "MissingVideo",
    "MissingVideoWarning",
    "DatasetError",
    "load_samples",
]

DATASETS: tuple[str, ...] = ("videodetailcaption", "mvbench", "mlvu", "longvideobench", "folder")

#: Extensions the ``folder`` reader picks up (compared case-insensitively).
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".mkv", ".avi", ".mov")


@dataclass(frozen=True)
class Sample:
    """One benchmark sample."""

    dataset: str  # "videodetailcaption", "mvbench", "mlvu", "longvideobench", "folder"
    sample_id: str  # stable unique id within the dataset (used to resume runs)
    video: Path  # a video file or a folder of frames
    prompt: str  # the text prompt given to the model
    reference: str | None = None  # ground-truth answer/caption if the layout has one
    meta: dict = field(default_factory=dict)  # task name, duration, etc.


class DatasetError(ValueError):
    """A benchmark folder cannot be read; the message names the path / field."""


@dataclass(frozen=True)
class MissingVideo:
    """A sample skipped by ``skip_missing=True``."""

    sample_id: str
    expected: Path  # the primary expected location
    tried: tuple[Path, ...]  # every location that was looked at (expected first)


class MissingVideoWarning(UserWarning):
    """Issued once by ``load_samples(..., skip_missing=True)`` when samples were skipped."""


class SampleList(list):
    """``list`` of :class:`Sample` plus ``skipped``: the :class:`MissingVideo` records."""

    def __init__(self, samples: Iterable[Sample] = (), skipped: Iterable[MissingVideo] = ()):
        super().__init__(samples)
        self.skipped: tuple[MissingVideo, ...] = tuple(skipped)


# --------------------------------------------------------------------------- tables

# task -> (folder in the HF "video" revision (lmms-eval DATA_LIST),
#          folders under video/ in the HF "main" revision (VideoChat2 data_list),
#          main-revision data type, main-revision json has start/end)
_MVBENCH: dict[str, tuple[str, tuple[str, ...], str, bool]] = {
    "action_sequence": ("star/Charades_segment", ("star/Charades_v1_480",), "video", True),
    "action_prediction": ("star/Charades_segment", ("star/Charades_v1_480",), "video", True),
    "action_antonym": ("ssv2_video_mp4", ("ssv2_video",), "video", False),
    "fine_grained_action": ("Moments_in_Time_Raw/videos", ("Moments_in_Time_Raw/videos",), "video", False),
    "unexpected_action": ("FunQA_test/test", ("FunQA_test/test",), "video", False),
    "object_existence": ("clevrer/video_validation", ("clevrer/video_validation",), "video", False),
    "object_interaction": ("star/Charades_segment", ("star/Charades_v1_480",), "video", True),
    "object_shuffle": ("perception/videos", ("perception/videos",), "video", False),
    "moving_direction": ("clevrer/video_validation", ("clevrer/video_validation",), "video", False),
    "action_localization": ("sta/sta_video_segment", ("sta/sta_video",), "video", True),
    "scene_transition": ("scene_qa/video", ("scene_qa/video",), "video", False),
    "action_count": ("perception/videos", ("perception/videos",), "video", False),
    "moving_count": ("clevrer/video_validation", ("clevrer/video_validation",), "video", False),
    "moving_attribute": ("clevrer/video_validation", ("clevrer/video_validation",), "video", False),
    "state_change": ("perception/videos", ("perception/videos",), "video", False),
    "fine_grained_pose": ("nturgbd_convert", ("nturgbd", "nturgbd_convert"), "video", False),
    "character_order": ("perception/videos", ("perception/videos",), "video", False),
    "egocentric_navigation": ("vlnqa", ("vlnqa",), "video", False),
    "episodic_reasoning": ("tvqa/video_fps3_hq_segment", ("tvqa/frames_fps3_hq",), "frame", True),
    "counterfactual_inference": ("clevrer/video_validation", ("clevrer/video_validation",), "video", False),
}
MVBENCH_TASKS: tuple[str, ...] = tuple(_MVBENCH)
_MVBENCH_POST_PROMPT = "Answer with the option's letter from the given choices directly."

# task -> (json file, video folder names under video/ (first is the primary), multiple choice)
_MLVU: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "plotQA": ("1_plotQA.json", ("1_plotQA", "plotQA"), True),
    "needle": ("2_needle.json", ("2_needle", "needle"), True),
    "ego": ("3_ego.json", ("3_ego", "ego"), True),
    "count": ("4_count.json", ("4_count", "count"), True),
    "order": ("5_order.json", ("5_order", "order"), True),
    "anomaly_reco": ("6_anomaly_reco.json", ("6_anomaly_reco", "anomaly_reco"), True),
    "topic_reasoning": ("7_topic_reasoning.json", ("7_topic_reasoning", "topic_reasoning"), True),
    "sub_scene": ("8_sub_scene.json", ("8_sub_scene", "sub_scene", "subPlot"), False),
    "summary": ("9_summary.json", ("9_summary", "summary"), False),
}
MLVU_TASKS: tuple[str, ...] = tuple(_MLVU)
MLVU_MC_TASKS: tuple[str, ...] = tuple(t for t, v in _MLVU.items() if v[2])
_MLVU_ALIASES = {Path(v[0]).stem: t for t, v in _MLVU.items()}

_LVB_POST_PROMPT = "Answer with the option's letter from the given choices directly.\n"
_VDC_EXTENSIONS = (".mp4", ".MP4", ".mkv")  # lmms-eval's lookup order
_LETTERS = string.ascii_uppercase


# --------------------------------------------------------------------------- internals


@dataclass
class _Entry:
    """A sample before its video was looked up."""

    sample_id: str
    prompt: str
    reference: str | None
    meta: dict
    # (path, "file" | "dir", meta added when this location matches); first = expected
    locations: list[tuple[Path, str, dict]]


def _abspath(p: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(p))))


def _check_root(name: str, root: Any) -> Path:
    if not isinstance(root, (str, os.PathLike)) or os.fspath(root) == "":
        raise DatasetError(f"{name}: root must be a folder path, got {root!r}")
    path = _abspath(root)
    if not path.exists():
        raise DatasetError(f"{name} root folder does not exist: {path}")
    if not path.is_dir():
        raise DatasetError(f"{name} root is not a folder: {path}")
    return path


def _require_files(name: str, paths: Sequence[Path], what: str = "annotation file") -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        listed = ", ".join(str(p) for p in missing)
        noun = what if len(missing) == 1 else what + "s"
        raise DatasetError(f"{name}: {noun} missing: {listed}")


def _load_json_list(name: str, path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{name}: cannot read JSON annotation file {path}: {e}") from None
    if not isinstance(data, list):
        raise DatasetError(
            f"{name}: annotation file {path} must hold a JSON list of entries, "
            f"got {type(data).__name__}"
        )
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DatasetError(
                f"{name}: annotation file {path} entry {i} is {type(entry).__name__}, not an object"
            )
    return data


def _get(name: str, entry: dict, key: str, path: Path, index: int, kind: str = "str") -> Any:
    """A required field of a json entry, type-checked; errors name field, file and entry."""
    if key not in entry or entry[key] is None:
        raise DatasetError(f"{name}: {path} entry {index} has no field {key!r}")
    value = entry[key]
    if kind == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DatasetError(
                f"{name}: {path} entry {index} field {key!r} must be a string, got {value!r}"
            )
        value = str(value)
        if not value:
            raise DatasetError(f"{name}: {path} entry {index} field {key!r} is empty")
    elif kind == "options":
        if not isinstance(value, list) or not value or len(value) > len(_LETTERS):
            raise DatasetError(
                f"{name}: {path} entry {index} field {key!r} must be a non-empty list of "
                f"at most {len(_LETTERS)} options, got {value!r}"
            )
        value = [str(v) for v in value]
    return value


def _answer_letter(candidates: Sequence[str], answer: Any) -> str | None:
    text = str(answer)
    for i, c in enumerate(candidates):
        if c == text:
            return _LETTERS[i]
    stripped = [c.strip() for c in candidates]
    if text.strip() in stripped:
        return _LETTERS[stripped.index(text.strip())]
    return None


def _unique_ids(entries: list[_Entry]) -> None:
    seen: dict[str, int] = {}
    taken = {e.sample_id for e in entries}
    for e in entries:
        base = e.sample_id
        if base not in seen:
            seen[base] = 1
            continue
        n = seen[base]
        while True:
            n += 1
            candidate = f"{base}#{n}"
            if candidate not in taken:
                break
        seen[base] = n
        taken.add(candidate)
        e.sample_id = candidate


def _select_tasks(name: str, tasks: Any, known: Sequence[str], aliases: dict[str, str] | None = None) -> list[str]:
    if isinstance(tasks, str) or not isinstance(tasks, (list, tuple)):
        raise DatasetError(f"{name}: tasks must be a list of task names, got {tasks!r}")
    aliases = aliases or {}
    wanted: set[str] = set()
    unknown = []
    for t in tasks:
        key = aliases.get(t, t) if isinstance(t, str) else t
        if key in known:
            wanted.add(key)
        else:
            unknown.append(t)
    if unknown:
        raise DatasetError(
            f"{name}: unknown task(s) {', '.join(repr(t) for t in unknown)}; "
            f"known tasks: {', '.join(known)}"
        )
    if not wanted:
        raise DatasetError(f"{name}: tasks is empty; known tasks: {', '.join(known)}")
    return [t for t in known if t in wanted]  # canonical order


def _mc_options(candidates: Sequence[str], fmt: str) -> str:
    return "".join(fmt.format(letter=_LETTERS[i], text=c) for i, c in enumerate(candidates))


# --------------------------------------------------------------------------- readers


def _read_videodetailcaption(root: Path, tasks: Any) -> list[_Entry]:
    name = "videodetailcaption"
    if tasks is not None:
        raise DatasetError(f"{name} has no tasks; tasks= is not supported (got {tasks!r})")
    data_dir = root / "data"
    shards = sorted(data_dir.glob("test-*.parquet")) if data_dir.is_dir() else []
    if not shards:
        raise DatasetError(
            f"{name}: annotation file missing: no {data_dir / 'test-*.parquet'} "
            f"(expected {data_dir / 'test-00000-of-00001.parquet'})"
        )
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise DatasetError(
            f"{name}: reading {shards[0]} needs pyarrow (pip install pyarrow)"
        ) from None

    video_dirs = [root / "Test_Videos", root / "evaluation" / "Test_Videos"]
    entries: list[_Entry] = []
    for shard in shards:
        try:
            table = pq.read_table(shard)
        except Exception as e:  # pyarrow raises several types
            raise DatasetError(f"{name}: cannot read parquet file {shard}: {e}") from None
        columns = table.column_names
        for col in ("video_name", "question"):
            if col not in columns:
                raise DatasetError(
                    f"{name}: parquet file {shard} has no column {col!r} "
                    f"(columns: {', '.join(columns)})"
                )
        keep = [c for c in ("video_name", "question", "answer") if c in columns]
        for i, row in enumerate(table.select(keep).to_pylist()):
            for col in ("video_name", "question"):
                if row.get(col) is None or str(row[col]) == "":
                    raise DatasetError(f"{name}: parquet file {shard} row {i} has an empty {col!r}")
            video_name = str(row["video_name"])
            names = [video_name] if Path(video_name).suffix.lower() in VIDEO_EXTENSIONS else []
            names += [video_name + ext for ext in _VDC_EXTENSIONS]
            locations = [(d / n, "file", {}) for d in video_dirs for n in names]
            answer = row.get("answer")
            entries.append(
                _Entry(
                    sample_id=video_name,
                    prompt=str(row["question"]),
                    reference=None if answer is None else str(answer),
                    meta={"video_name": video_name, "annotation": str(shard), "row": i},
                    locations=locations,
                )
            )
    return entries


def _read_mvbench(root: Path, tasks: Any) -> list[_Entry]:
    name = "mvbench"
    selected = list(MVBENCH_TASKS) if tasks is None else _select_tasks(name, tasks, MVBENCH_TASKS)
    json_dir = root / "json"
    if not json_dir.is_dir():
        raise DatasetError(f"{name}: annotation folder missing: {json_dir}")
    files = {t: json_dir / f"{t}.json" for t in selected}
    _require_files(name, list(files.values()))

    entries: list[_Entry] = []
    for task in selected:
        path = files[task]
        rev_dir, main_dirs, main_type, bound = _MVBENCH[task]
        for i, e in enumerate(_load_json_list(name, path)):
            video = _get(name, e, "video", path, i)
            question = _get(name, e, "question", path, i)
            candidates = _get(name, e, "candidates", path, i, "options")
            answer = _get(name, e, "answer", path, i)
            letter = _answer_letter(candidates, answer)
            prompt = (
                "Question:" + question + "\nOption:\n"
                + _mc_options(candidates, "({letter}) {text}\n")
                + _MVBENCH_POST_PROMPT
            )
            video_meta = {"layout": "video", "data_type": "video"}
            main_meta: dict[str, Any] = {"layout": "main", "data_type": main_type}
            if bound and e.get("start") is not None and e.get("end") is not None:
                main_meta["bound"] = (float(e["start"]), float(e["end"]))
            kind = "dir" if main_type == "frame" else "file"
            locations = [
                (root / rev_dir / video, "file", video_meta),
                (root / "data0613" / rev_dir / video, "file", video_meta),
            ]
            for d in main_dirs:
                locations.append((root / "video" / d / video, kind, main_meta))
            for d in main_dirs:
                locations.append((root / "video" / "data0613" / d / video, kind, main_meta))
            meta = {
                "task": task,
                "candidates": candidates,
                "answer": answer,
                "video_name": video,
                "annotation": str(path),
                "index": i,
            }
            for k in ("start", "end", "fps", "accurate_start", "accurate_end"):
                if k in e:
                    meta[k] = e[k]
            entries.append(
                _Entry(
                    sample_id=f"{task}:{i}",
                    prompt=prompt,
                    reference=letter if letter is not None else answer,
                    meta=meta,
                    locations=locations,
                )
            )
    return entries


def _read_mlvu(root: Path, tasks: Any) -> list[_Entry]:
    name = "mlvu"
    selected = (
        list(MLVU_MC_TASKS) if tasks is None else _select_tasks(name, tasks, MLVU_TASKS, _MLVU_ALIASES)
    )
    base = root
    if not (root / "json").is_dir() and (root / "MLVU" / "json").is_dir():
        base = root / "MLVU"
    json_dir = base / "json"
    if not json_dir.is_dir():
        raise DatasetError(f"{name}: annotation folder missing: {json_dir}")
    files = {t: json_dir / _MLVU[t][0] for t in selected}
    _require_files(name, list(files.values()))

    entries: list[_Entry] = []
    for task in selected:
        path = files[task]
        _, video_dirs, mc = _MLVU[task]
        for i, e in enumerate(_load_json_list(name, path)):
            video = _get(name, e, "video", path, i)
            question = _get(name, e, "question", path, i)
            answer = _get(name, e, "answer", path, i)
            meta: dict[str, Any] = {
                k: v for k, v in e.items() if k not in ("video", "question", "candidates", "answer")
            }
            meta.update({
                "task": task,
                "question_type": e.get("question_type"),
                "duration": e.get("duration"),
                "answer": answer,
                "video_name": video,
                "annotation": str(path),
                "index": i,
            })
            if mc:
                candidates = _get(name, e, "candidates", path, i, "options")
                letter = _answer_letter(candidates, answer)
                prompt = (
                    "Question: " + question + "\nOptions:\n"
                    + _mc_options(candidates, "({letter}) {text}\n")
                    + "Only give the best option."
                )
                reference = letter if letter is not None else answer
                meta["candidates"] = candidates
            else:
                prompt, reference = question, answer
            locations = [(base / "video" / d / video, "file", {}) for d in video_dirs]
            entries.append(_Entry(f"{task}:{i}", prompt, reference, meta, locations))
    return entries


def _read_longvideobench(root: Path, tasks: Any) -> list[_Entry]:
    name = "longvideobench"
    path = root / "lvb_val.json"
    _require_files(name, [path])
    if tasks is not None and (isinstance(tasks, str) or not isinstance(tasks, (list, tuple)) or not tasks):
        raise DatasetError(
            f"{name}: tasks must be a non-empty list of question_category values, got {tasks!r}"
        )
    data = _load_json_list(name, path)
    entries: list[_Entry] = []
    for i, e in enumerate(data):
        sid = _get(name, e, "id", path, i)
        video_path = _get(name, e, "video_path", path, i)
        question = _get(name, e, "question", path, i)
        candidates = _get(name, e, "candidates", path, i, "options")
        choice = e.get("correct_choice")
        reference = None
        if isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < len(candidates):
            reference = _LETTERS[choice]
        prompt = (
            question + "\n" + _mc_options(candidates, "{letter}. {text}\n") + _LVB_POST_PROMPT
        )
        meta = {k: v for k, v in e.items() if k not in ("question", "candidates")}
        meta.update(
            task=e.get("question_category"),
            candidates=candidates,
            answer=candidates[choice] if reference is not None else None,
            annotation=str(path),
            index=i,
        )
        entries.append(_Entry(sid, prompt, reference, meta, [(root / "videos" / video_path, "file", {})]))
    if tasks is not None:
        present = sorted({str(e.meta.get("task")) for e in entries})
        unknown = [t for t in tasks if t not in present]
        if unknown:
            raise DatasetError(
                f"{name}: no entries in {path} with question_category "
                f"{', '.join(repr(t) for t in unknown)}; present: {', '.join(present)}"
            )
        entries = [e for e in entries if e.meta.get("task") in tasks]
    return entries


def _read_folder(root: Path, tasks: Any) -> list[_Entry]:
    name = "folder"
    if tasks is not None:
        raise DatasetError(f"{name} has no tasks; tasks= is not supported (got {tasks!r})")
    files = sorted(
        (p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS),
        key=lambda p: p.name,
    )
    if not files:
        raise DatasetError(
            f"{name}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in {root}"
        )
    return [_Entry(p.name, "", None, {}, [(p, "file", {})]) for p in files]


_READERS = {
    "videodetailcaption": _read_videodetailcaption,
    "mvbench": _read_mvbench,
    "mlvu": _read_mlvu,
    "longvideobench": _read_longvideobench,
    "folder": _read_folder,
}


# --------------------------------------------------------------------------- entry point


def load_samples(
    name: str,
    root: str | os.PathLike[str],
    *,
    limit: int | None = None,
    prompt: str | None = None,
    tasks: list[str] | None = None,
    skip_missing: bool = False,
) -> SampleList:
    """Read the samples of benchmark ``name`` from the local folder ``root``.

    See the module docstring for the layouts, order, ids, prompts and the
    missing-video policy. Returns a :class:`SampleList` (a ``list`` of
    :class:`Sample` with a ``skipped`` attribute). Raises :class:`DatasetError`.
    """
    if name not in _READERS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise DatasetError(f"{name}: limit must be a non-negative int or None, got {limit!r}")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise DatasetError(f"{name}: prompt must be a non-empty string or None, got {prompt!r}")
    if name == "folder" and prompt is None:
        raise DatasetError(
            "folder: a prompt is required (load_samples('folder', root, prompt=...)): "
            "a plain folder of videos has no annotations"
        )
    if not isinstance(skip_missing, bool):
        raise DatasetError(f"{name}: skip_missing must be True or False, got {skip_missing!r}")

    root_path = _check_root(name, root)
    entries = _READERS[name](root_path, tasks)
    _unique_ids(entries)

    samples: list[Sample] = []
    skipped: list[MissingVideo] = []
    for entry in entries:
        if limit is not None and len(samples) >= limit:
            break
        found = None
        for path, kind, extra in entry.locations:
            if (path.is_dir() if kind == "dir" else path.is_file()):
                found = (path, extra)
                break
        if found is None:
            tried = tuple(p for p, _, _ in entry.locations)
            if skip_missing:
                skipped.append(MissingVideo(entry.sample_id, tried[0], tried))
                continue
            also = ""
            if len(tried) > 1:
                also = " (also tried: " + ", ".join(str(p) for p in tried[1:]) + ")"
            raise DatasetError(
                f"{name}: video of sample {entry.sample_id!r} not found: expected {tried[0]}{also}"
            )
        path, extra = found
        meta = dict(entry.meta)
        meta.update(extra)
        text = entry.prompt
        if prompt is not None:
            if name != "folder":
                meta["benchmark_prompt"] = entry.prompt
            text = prompt
        samples.append(Sample(name, entry.sample_id, path, text, entry.reference, meta))

    if skipped:
        first = ", ".join(f"{m.sample_id} ({m.expected})" for m in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        warnings.warn(
            f"{name}: skipped {len(skipped)} sample(s) whose video is missing: {first}{more}; "
            "see the result's .skipped",
            MissingVideoWarning,
            stacklevel=2,
        )
    return SampleList(samples, skipped)
