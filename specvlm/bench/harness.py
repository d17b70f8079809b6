"""Benchmark runs: every method on the same inputs of each sample, one record per (sample, method).

For each sample the video is read and prepared ONCE (processor features, then each model's
``prepare``), and every method decodes greedily from those same prepared inputs:

* ``target``: the target alone (``decode_target``), the baseline of every speedup;
* ``sd``: speculative decoding, the draft sees every video token (plain SD);
* ``pruned:<strategy>@<ratio>``: speculative decoding, the draft sees the tokens that
  ``PruneConfig(strategy, ratio, stage1_mass)`` keeps (selected from the target's prefill);
* ``hf-assisted`` (optional): the Hugging Face peer, ``target.model.generate(**features,
  assistant_model=draft.model, do_sample=False, ...)``. Its wall time (``total_s``) covers vision
  encoding, prefill and decoding. Right before it, the same ``generate`` of the target alone and of
  the draft alone for one token is timed (``first_token_s``: both models' vision encoding and
  prefill, the part SD's ``decode_s`` leaves out); its ``decode_s`` is ``total_s - first_token_s``,
  flagged ``decode_s_estimated``. If it raises, the record says ``status: "failed"`` with the error
  text and the run goes on.

What a record holds (``samples.jsonl``, one JSON object per line, written and flushed as soon
as the method finished): ``sample_id``, ``dataset``, ``video``, ``method``, ``kind``,
``strategy``/``ratio`` (pruned only), ``status`` ("ok" | "failed"), ``error``, ``tokens``,
``prompt_tokens``, ``prefill_s`` (target prefill, Stage I scoring included), ``draft_prefill_s``,
``decode_s``, ``tokens_per_s``, ``tau``, ``target_passes``, ``draft_passes`` (the drafter's model
passes; fewer under ``--drafter adaptive``), ``acceptance_by_depth``, ``rank_tries`` /
``rank_hits`` (per depth and rank: cycles that reached a candidate, cycles that went on through it;
``benchmarks/tree_choice.py --acceptance-from`` chooses a tree from them),
``video_tokens``, ``draft_video_tokens``, ``stage1_tokens``, ``speedup`` (the baseline's decode_s
over this method's, same sample), ``equal_to_target`` (token ids identical to the baseline's),
``token_ids``, ``text``, ``prepare_s`` (vision encoding of both models for this sample).
Non-finite numbers are written as null. Every record's ``tokens_per_s`` and ``speedup`` are checked
against its ``tokens`` and ``decode_s`` (and the baseline's ``decode_s``): figures that contradict
them make the record ``status: "failed"`` (see ``timing_error``), never a number in the summary.

Resume: a run appends to ``samples.jsonl``; (sample_id, method) pairs already there are not
run again, a truncated last line (an interrupted write) is cut off. The baseline of a sample
finished earlier is read back from its record. ``run.json`` keeps the settings that shape the
numbers; a rerun with other settings into the same folder is refused.

Skipped samples (missing or unreadable video, prompt past the target's context) go to
``skipped.jsonl`` (``sample_id``, ``video``, ``reason``, ``error``) and are not retried by a rerun
(delete their line to retry).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from specvlm.models.base import PromptTooLongError
from specvlm.pruning import PruneConfig
from specvlm.video import DEFAULT_MAX_VIDEO_PIXELS

SAMPLES_FILE = "samples.jsonl"
SKIPPED_FILE = "skipped.jsonl"
RUN_FILE = "run.json"

METHOD_KINDS: tuple[str, ...] = ("target", "sd", "pruned")
HF_ASSISTED = "hf-assisted"

OOM_HINT = (
    "try fewer --frames or a lower --fps, --dtype bfloat16, --device-map auto (spread the target "
    "over GPUs) or --draft-device (put the draft on another GPU)"
)


# ---------------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One way of decoding a sample; ``name`` is its key in the records."""

    name: str
    kind: str  # "target" | "sd" | "pruned" | "hf-assisted"
    prune: PruneConfig | None = None  # pruned only

    @property
    def strategy(self) -> str | None:
        return None if self.prune is None else self.prune.strategy

    @property
    def ratio(self) -> float | None:
        return None if self.prune is None else self.prune.ratio


def pruned_name(strategy: str, ratio: float) -> str:
    return f"pruned:{strategy}@{ratio:g}"


def method_list(
    kinds: Sequence[str] = METHOD_KINDS,
    strategies: Sequence[str] = ("specvlm",),
    ratios: Sequence[float] = (0.9,),
    *,
    stage1_mass: float = 0.4,
    hf_assisted: bool = False,
) -> list[Method]:
    """The methods to run, baseline first. ``target`` is always included: it is the baseline."""
    unknown = [k for k in kinds if k not in METHOD_KINDS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHOD_KINDS)}")
    methods = [Method("target", "target")]
    if "sd" in kinds:
        methods.append(Method("sd", "sd"))
    if "pruned" in kinds:
        for strategy in dict.fromkeys(strategies):
            for ratio in dict.fromkeys(ratios):
                if strategy == "none":  # keeps every token: that is plain SD
                    continue
                prune = PruneConfig(strategy=strategy, ratio=ratio, stage1_mass=stage1_mass)
                methods.append(Method(pruned_name(strategy, ratio), "pruned", prune))
    if hf_assisted:
        methods.append(Method(HF_ASSISTED, HF_ASSISTED))
    return methods


@dataclass(frozen=True)
class BenchSettings:
    """What shapes the numbers of a run; stored in run.json and checked on resume."""

    target: str
    draft: str
    num_frames: int | None
    fps: float | None
    max_frames: int | None
    max_new_tokens: int
    tree: str
    reindex: bool
    stage1_mass: float
    dtype: str
    # decoded frames x height x width a sample's video may hold; a larger one is skipped as too large
    max_video_pixels: int | None = DEFAULT_MAX_VIDEO_PIXELS
    prompt: str | None = None  # the one prompt of every sample (--prompt); None: each sample's own
    compile: bool = True  # torch.compile'd steps (--no-compile: eager): timings differ by tens of percent
    attn: str | None = "sdpa"  # the models' attention implementation (--attn)
    drafter: str = "model"  # the drafting rule (--drafter): the timings depend on it, the outputs do not

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------- small helpers


def is_oom(error: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(error, oom)


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def stats_dict(stats) -> dict[str, Any]:
    """``stats.as_dict()`` for SpecStats; the same keys that exist for a plain DecodeStats."""
    if hasattr(stats, "as_dict"):
        return clean(stats.as_dict())
    return clean(
        {
            "new_tokens": stats.new_tokens,
            "target_passes": stats.target_passes,
            "prefill_s": stats.prefill_s,
            "decode_s": stats.decode_s,
            "tokens_per_s": stats.tokens_per_s,
        }
    )


def timing_error(record: dict[str, Any], baseline: dict[str, Any] | None) -> str | None:
    """Why the figures of ``record`` contradict its measured decode time (None when they agree).

    ``tokens_per_s`` must be ``tokens / decode_s`` and ``speedup`` the baseline's ``decode_s`` over
    this record's; a decode time must be a positive number, and within ``total_s`` where one is given.
    """
    decode, tokens = record.get("decode_s"), record.get("tokens")
    rate, speedup = record.get("tokens_per_s"), record.get("speedup")
    if decode is None:
        if rate is not None or speedup is not None:
            return f"tokens/s {rate} and speedup {speedup} without a decode time"
        return None
    if not (math.isfinite(decode) and decode > 0):
        return f"decode time {decode} s is not a positive number"
    total = record.get("total_s")
    if total is not None and decode > total:
        return f"decode time {decode:.4g} s is longer than the whole run, {total:.4g} s"
    if rate is not None and not math.isclose(rate, tokens / decode, rel_tol=1e-6):
        return f"{rate:.4g} tokens/s, but {tokens} tokens in {decode:.4g} s is {tokens / decode:.4g} tokens/s"
    base = None if baseline is None else baseline.get("decode_s")
    if speedup is not None:
        if base is None:
            return f"speedup {speedup:.4g}x without a baseline decode time"
        if not math.isclose(speedup, base / decode, rel_tol=1e-6):
            return (f"speedup {speedup:.4g}x, but the baseline's {base:.4g} s over {decode:.4g} s "
                    f"is {base / decode:.4g}x")
    return None


def _sync(*devices: torch.device) -> None:
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def _one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------ JSONL files


class JsonlLog:
    """An append-only JSONL file: every line flushed at once; a truncated last line is cut off.

    With ``write=False`` (the other ranks of a tensor-parallel group) it reads the file but keeps
    new records in memory only: one process writes.
    """

    def __init__(self, path: Path, *, write: bool = True):
        self.path = Path(path)
        self.write = write
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            self.records = self._read_and_repair()
        elif write:
            self.path.touch()  # present, even empty: readers need not guess

    def _read_and_repair(self) -> list[dict[str, Any]]:
        data = self.path.read_bytes()
        records, good_end, offset = [], 0, 0
        for line in data.splitlines(keepends=True):
            offset += len(line)
            text = line.strip()
            if not text:
                good_end = offset if line.endswith(b"\n") else good_end
                continue
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if isinstance(record, dict) and line.endswith(b"\n"):
                records.append(record)
                good_end = offset
            elif offset < len(data):  # a bad line in the middle: keep it in the file, ignore it
                print(f"warning: ignoring an unreadable line in {self.path}", file=sys.stderr)
                good_end = offset
        if good_end < len(data) and self.write:  # an interrupted last write: cut it off before appending
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        return records

    def append(self, record: dict[str, Any]) -> None:
        record = clean(record)
        if not self.write:
            self.records.append(record)
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)


DONE_FILE = "done.json"
SHARDS_DIR = "shards"


def shard_dir(out_dir: Path, i: int, n: int) -> Path:
    return Path(out_dir) / SHARDS_DIR / f"{i}-of-{n}"


def merge_shards(out_dir: Path) -> tuple[list[dict], list[dict], dict]:
    """(records, skipped, settings) of every shard of a sharded run in ``out_dir``.

    Refuses (ValueError, naming them) while a shard is missing or unfinished, or when shards were
    run with different settings or shard counts.
    """
    root = Path(out_dir) / SHARDS_DIR
    found = sorted(root.glob("*-of-*")) if root.is_dir() else []
    if not found:
        raise ValueError(f"{out_dir} holds no shards ({SHARDS_DIR}/I-of-N): run `specvlm bench --shard I/N` first")
    counts = {int(p.name.split("-of-")[1]) for p in found}
    if len(counts) != 1:
        raise ValueError(f"{root} holds shards of different counts ({sorted(counts)}): one sharded run per --out")
    n = counts.pop()
    waiting = [i for i in range(n) if not (shard_dir(out_dir, i, n) / DONE_FILE).exists()]
    if waiting:
        raise ValueError(f"waiting for shards {', '.join(f'{i}/{n}' for i in waiting)} (rerun one to resume it); "
                         "the last to finish writes the summary")  # fmt: skip
    settings = [json.loads((shard_dir(out_dir, i, n) / RUN_FILE).read_text(encoding="utf-8")) for i in range(n)]
    if any(s != settings[0] for s in settings):
        raise ValueError(f"the shards in {root} were run with different settings: merge only one run")
    records, skipped = [], []
    for i in range(n):
        records += JsonlLog(shard_dir(out_dir, i, n) / SAMPLES_FILE).records
        skipped += JsonlLog(shard_dir(out_dir, i, n) / SKIPPED_FILE).records
    return records, skipped, settings[0]


def check_run_settings(out_dir: Path, settings: BenchSettings, *, write: bool = True) -> None:
    """Write run.json (unless ``write`` is False), or refuse if the folder holds records measured
    with other settings."""
    path = out_dir / RUN_FILE
    current = clean(settings.as_dict())
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            stored = None
        if isinstance(stored, dict):
            differ = [k for k in current if k in stored and stored[k] != current[k]]
            if differ:
                what = ", ".join(f"{k}={stored[k]!r} there, {current[k]!r} now" for k in differ)
                raise ValueError(
                    f"{out_dir} holds a run with other settings ({what}): use another --out to compare them"
                )
    if write:
        path.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ runs


@dataclass
class _Prepared:
    """One sample ready for every method."""

    features: Any
    target_inputs: Any
    draft_inputs: Any
    prepare_s: float
    prompt_tokens: int


@dataclass(frozen=True)
class _AssistedTiming:
    """Wall times of the Hugging Face peer on one sample (see the module docstring)."""

    total_s: float  # assisted generate: vision encoding, prefill and decoding
    first_token_s: float  # generate for one token, target alone plus draft alone

    @property
    def decode_s(self) -> float | None:
        decode = self.total_s - self.first_token_s
        return decode if decode > 0 else None


@dataclass
class BenchResult:
    records: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    new_records: int = 0
    new_skipped: int = 0
    short_videos: list[str] = field(default_factory=list)  # sample ids with fewer frames than num_frames


@dataclass
class Bench:
    """Runs ``methods`` over samples with a loaded ``SpeculativeVLM`` pair; see the module docstring."""

    methods: list[Method]
    settings: BenchSettings
    out_dir: Path
    warmup: int = 1
    progress: bool = True
    write: bool = True  # False on the other ranks of a tensor-parallel group: rank 0 writes
    pair: Any = field(default=None, init=False)  # SpeculativeVLM, given to run()
    short_videos: list[str] = field(default_factory=list, init=False)  # run this time, fewer frames than asked
    _warm: bool = field(default=False, init=False)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.samples_log = JsonlLog(self.out_dir / SAMPLES_FILE, write=self.write)
        self.skipped_log = JsonlLog(self.out_dir / SKIPPED_FILE, write=self.write)

    # -------------------------------------------------------------------------- bookkeeping
    def pending(self, samples: Iterable) -> list[tuple[Any, list[Method]]]:
        """(sample, methods not yet recorded) for every sample with work left."""
        done = {(r.get("sample_id"), r.get("method")) for r in self.samples_log.records}
        skipped = {r.get("sample_id") for r in self.skipped_log.records}
        work = []
        for sample in samples:
            if sample.sample_id in skipped:
                continue
            todo = [m for m in self.methods if (sample.sample_id, m.name) not in done]
            if todo:
                work.append((sample, todo))
        return work

    def mark_done(self) -> None:
        """Mark this (shard's) folder finished: every sample given to run() has every method."""
        if self.write:
            (self.out_dir / DONE_FILE).write_text(json.dumps({"records": len(self.samples_log.records)}) + "\n")

    def record_missing(self, missing: Iterable) -> int:
        """Record samples whose video the dataset reader did not find (MissingVideo)."""
        known = {r.get("sample_id") for r in self.skipped_log.records}
        n = 0
        for m in missing:
            if m.sample_id not in known:
                self.skipped_log.append(
                    {"sample_id": m.sample_id, "video": str(m.expected), "reason": "missing video",
                     "error": f"video not found: {m.expected}"}
                )
                n += 1
        return n

    def _baseline(self, sample_id: str) -> dict[str, Any] | None:
        for r in reversed(self.samples_log.records):
            if r.get("sample_id") == sample_id and r.get("method") == "target" and r.get("status") == "ok":
                return r
        return None

    # -------------------------------------------------------------------------------- running
    def run(self, pair, samples: Sequence) -> BenchResult:
        """Run what is left of ``samples`` with ``pair`` (a SpeculativeVLM: its target, draft and
        tree are used, its own pruning is not)."""
        from tqdm import tqdm

        self.pair = pair
        work = self.pending(samples)
        n_records, n_skipped = len(self.samples_log.records), len(self.skipped_log.records)
        total = sum(len(todo) for _, todo in work)
        bar = tqdm(total=total, file=sys.stderr, unit="run", disable=not self.progress or total == 0,
                   dynamic_ncols=True)
        try:
            for sample, todo in work:
                bar.set_description(str(sample.sample_id)[:30])
                prepared = self._prepare(sample)
                if prepared is None:
                    bar.update(len(todo))
                    continue
                if not self._warm and self.warmup > 0:
                    self._warm_up(prepared, todo)
                for method in self._ordered(todo):
                    record = self._run_method(sample, method, prepared)
                    self.samples_log.append(record)
                    if record.get("speedup") is not None and method.kind != "target":
                        bar.set_postfix_str(f"{method.name} x{record['speedup']:.2f}", refresh=False)
                    bar.update(1)
        finally:
            bar.close()
        return BenchResult(
            records=self.samples_log.records,
            skipped=self.skipped_log.records,
            new_records=len(self.samples_log.records) - n_records,
            new_skipped=len(self.skipped_log.records) - n_skipped,
            short_videos=list(self.short_videos),
        )

    @staticmethod
    def _ordered(todo: list[Method]) -> list[Method]:
        # The baseline first: every other record's speedup and equality refer to it.
        return sorted(todo, key=lambda m: m.kind != "target")

    def _skip(self, sample, reason: str, error: BaseException) -> None:
        self.skipped_log.append(
            {"sample_id": sample.sample_id, "video": str(sample.video), "reason": reason,
             "error": _one_line(error)}
        )

    def _prepare(self, sample) -> _Prepared | None:
        from specvlm.video import VideoBudgetError, VideoInputError, load_video

        target, draft = self.pair.target, self.pair.draft
        s = self.settings
        try:
            clip = load_video(sample.video, num_frames=s.num_frames, fps=s.fps, max_frames=s.max_frames,
                              max_pixels=s.max_video_pixels)  # fmt: skip
        except VideoBudgetError as error:  # refused before its frames were decoded
            self._skip(sample, "video too large", error)
            return None
        except VideoInputError as error:
            self._skip(sample, "unreadable video", error)
            return None
        asked = min(s.num_frames, s.max_frames or s.num_frames) if s.num_frames else None
        if asked is not None and clip.num_frames < asked:  # load_video took every frame it has
            self.short_videos.append(str(sample.sample_id))
        try:
            features = target.build_inputs(clip, sample.prompt)
        except VideoInputError as error:  # frames the processor refuses (an extreme aspect ratio)
            self._skip(sample, "unreadable video", error)
            return None
        try:
            self.pair.check_context(features["input_ids"], s.max_new_tokens)
        except PromptTooLongError as error:
            self._skip(sample, "prompt too long", error)
            return None
        try:
            _sync(target.device, draft.device)
            t0 = time.perf_counter()
            target_inputs = target.prepare(features)
            draft_inputs = draft.prepare(features)
            _sync(target.device, draft.device)
        except Exception as error:
            if not is_oom(error):
                raise
            self._free()
            message = f"out of GPU memory while encoding the video: {OOM_HINT}"
            self._skip(sample, "out of memory", RuntimeError(message))
            return None
        return _Prepared(features, target_inputs, draft_inputs, time.perf_counter() - t0,
                         int(features["input_ids"].shape[-1]))

    def _warm_up(self, prepared: _Prepared, methods: list[Method]) -> None:
        """Short untimed runs of ``methods``, so the first timed run pays no one-off start-up cost."""
        n = min(8, self.settings.max_new_tokens)
        for _ in range(self.warmup):
            for method in methods:
                try:
                    self._decode(method, prepared, n)
                except Exception:  # a failing method fails again, timed, in its own record
                    pass
        self._warm = True

    def _decode(self, method: Method, prepared: _Prepared, max_new_tokens: int):
        """(token_ids, stats or None, _AssistedTiming or None) of one greedy run."""
        from specvlm.engine.decoding import decode_target
        from specvlm.engine.speculative import speculative_decode

        target, draft = self.pair.target, self.pair.draft
        if method.kind == "target":
            result = decode_target(target, prepared.target_inputs, max_new_tokens=max_new_tokens,
                                   compile=self.pair.compile)  # fmt: skip
            return result.token_ids, result.stats, None
        if method.kind in ("sd", "pruned"):
            result = speculative_decode(
                target,
                draft,
                prepared.target_inputs,
                prepared.draft_inputs,
                max_new_tokens=max_new_tokens,
                compile=self.pair.compile,
                config=self.pair.config.replace(prune=method.prune, reindex=self.settings.reindex),
            )
            return result.token_ids, result.stats, None
        # The Hugging Face peer: repetition_penalty pinned to 1 so that checkpoints whose
        # generation_config sets one (real Qwen2.5-VL does) still decode plain greedy.
        features = prepared.features.to(target.device)
        n_prompt = int(features["input_ids"].shape[-1])
        greedy = {"do_sample": False, "repetition_penalty": 1.0}

        def timed(model, inputs, **kwargs):
            _sync(target.device, draft.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(**inputs, **greedy, **kwargs)
            _sync(target.device, draft.device)
            return out, time.perf_counter() - t0

        # Vision encoding and prefill, timed apart from decoding as the other methods have them.
        _, target_first = timed(target.model, features, max_new_tokens=1)
        _, draft_first = timed(draft.model, prepared.features.to(draft.device), max_new_tokens=1)
        out, total = timed(target.model, features, assistant_model=draft.model, max_new_tokens=max_new_tokens)
        return out[0, n_prompt:].tolist(), None, _AssistedTiming(total, target_first + draft_first)

    def _run_method(self, sample, method: Method, prepared: _Prepared) -> dict[str, Any]:
        record: dict[str, Any] = {
            "sample_id": sample.sample_id,
            "dataset": sample.dataset,
            "video": str(sample.video),
            "method": method.name,
            "kind": method.kind,
            "strategy": method.strategy,
            "ratio": method.ratio,
            "status": "ok",
            "error": None,
            "prompt_tokens": prepared.prompt_tokens,
            "prepare_s": prepared.prepare_s,
        }
        try:
            token_ids, stats, assisted = self._decode(method, prepared, self.settings.max_new_tokens)
        except Exception as error:
            if method.kind != HF_ASSISTED and not is_oom(error):
                raise  # our own methods failing is a bug: let it surface
            if is_oom(error):
                self._free()
                message = f"out of GPU memory: {OOM_HINT}"
            else:
                message = _one_line(error)
            record.update(status="failed", error=message)
            return record

        baseline = record if method.kind == "target" else self._baseline(sample.sample_id)
        record["token_ids"] = token_ids
        record["tokens"] = len(token_ids)
        record["text"] = self.pair.target.tokenizer.decode(token_ids, skip_special_tokens=True)
        if stats is not None:
            d = stats_dict(stats)
            record.update(
                prefill_s=d.get("prefill_s"),
                draft_prefill_s=d.get("draft_prefill_s"),
                decode_s=d.get("decode_s"),
                tokens_per_s=d.get("tokens_per_s"),
                tau=d.get("tau"),
                target_passes=d.get("target_passes"),
                draft_passes=d.get("draft_passes"),
                acceptance_by_depth=d.get("acceptance_by_depth"),
                rank_tries=d.get("rank_tries"),
                rank_hits=d.get("rank_hits"),
                video_tokens=d.get("video_tokens", len(prepared.target_inputs.video)),
                draft_video_tokens=d.get("draft_video_tokens"),
                stage1_tokens=d.get("stage1_tokens"),
            )
        else:  # hf-assisted
            decode = assisted.decode_s
            record.update(
                total_s=assisted.total_s,
                first_token_s=assisted.first_token_s,
                decode_s=decode,
                decode_s_estimated=True,
                tokens_per_s=len(token_ids) / decode if decode else None,
                video_tokens=len(prepared.target_inputs.video),
                draft_video_tokens=len(prepared.draft_inputs.video),
            )
        if baseline is not None:
            base_decode, own = baseline.get("decode_s"), record.get("decode_s")
            record["speedup"] = base_decode / own if base_decode and own else None
            record["equal_to_target"] = token_ids == baseline.get("token_ids")
        else:
            record["speedup"] = record["equal_to_target"] = None
        if (problem := timing_error(record, baseline)) is not None:
            record.update(status="failed", error=f"inconsistent timing: {problem}", tokens_per_s=None, speedup=None)
        return record

    def _free(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
