"""lmms-eval's ``--model specvlm``: benchmark answers from speculative decoding, and their speed.

    python -m pip install -e ".[eval]"
    python -m lmms_eval --model specvlm --model_args target=T,draft=D,prune=specvlm,prune_ratio=0.9,tree=default,\
num_frames=32,dtype=bfloat16,device=cuda:0,speculative=true --tasks videomme --log_samples --output_path runs/eval

What it promises:
- each ``generate_until`` request about one video (a file or a folder of frames) is answered by
  ``SpeculativeVLM.generate``, greedy unless the task's ``generation_kwargs`` sample, so the answer
  is the target's own; ``speculative=false`` runs the target alone through the same path, and the
  two runs score the same;
- per request, lmms-eval's per-sample log (``--log_samples``) holds the speed in the sample's
  ``token_counts`` entry (``SpeedCounts``): tau, tokens/s, prefill and decode seconds, the video
  tokens the target saw and the draft kept;
- at the end, one summary goes through lmms-eval's throughput log: printed as the "Throughput
  Summary" table under the score table and saved as ``throughput`` in the results JSON. Its
  ``total_elapsed_time``, ``avg_latency`` and ``avg_speed`` are decode time and tokens per decode
  second, as ``stats.tokens_per_s``; prefill (``avg_prefill_time``) and compilation met on the way
  (``avg_warmup_time``) are reported apart, and ``warmup`` untimed answers to the first request
  come first (a process's first calls pay one-off costs);
- what it cannot serve is refused with one line, lmms-eval's way (``NotImplementedError``):
  log-likelihood and multi-round requests, requests with more than one visual or an image (the
  adapters take one video per prompt; none is a text-only request), beam search.

``--model_args`` take the names of the CLI and the API (``ModelArgs``); with no target and no draft,
the bundled trained pair (``specvlm.assets``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from loguru import logger as eval_logger
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from tqdm import tqdm

from specvlm.api import SpeculativeVLM
from specvlm.cli import DTYPES, frame_options
from specvlm.engine.tree import parse_tree
from specvlm.pruning import STRATEGIES, PruneConfig
from specvlm.video import DEFAULT_MAX_VIDEO_PIXELS, IMAGE_EXTENSIONS, load_video

# ------------------------------------------------------------------------------------ model args


@dataclass(frozen=True)
class ModelArgs:
    """``--model_args``, one field per flag of ``specvlm generate`` / argument of the API."""

    target: str | None = None  # --target: hub id or folder (none with no draft: the bundled pair)
    draft: str | None = None  # --draft
    dtype: str = "auto"  # --dtype
    device: str | None = None  # --device
    device_map: str | None = None  # --device-map
    draft_device: str | None = None  # --draft-device
    attn: str = "sdpa"  # --attn
    tree: str = "default"  # --tree: default | chain:K | a file of paths | schedule:FILE
    prune: str = "specvlm"  # --prune (none: plain speculative decoding)
    prune_ratio: float = 0.9  # --prune-ratio
    stage1_mass: float = 0.4  # --stage1-mass
    prune_seed: int = 0  # --prune-seed
    reindex: bool = False  # --reindex
    drafter: str = "model"  # --drafter: model | adaptive[:P] | overlap
    compile: bool | None = None  # --no-compile is compile=false (default: compiled on one GPU)
    num_frames: int | None = None  # --frames (default 32 when no fps is given)
    fps: float | None = None  # --fps
    max_frames: int | None = None  # --max-frames
    max_video_pixels: int | None = DEFAULT_MAX_VIDEO_PIXELS  # --max-video-pixels (none: no bound)
    max_new_tokens: int = 256  # --max-new-tokens, when the task's generation_kwargs do not say
    speculative: bool = True  # false: --no-speculative, the target alone (the baseline)
    seed: int | None = None  # --seed of sampling, when a task samples
    warmup: int = 1  # bench's --warmup: untimed answers to the first request before any is timed

    @classmethod
    def parse(cls, given: dict) -> "ModelArgs":
        """From lmms-eval's parsed ``key=value`` pairs (it turns numbers and true/false into values)."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"--model_args: unknown {', '.join(unknown)}; specvlm takes {', '.join(names)}")
        values = {name: _CONVERT[name](name, value) for name, value in given.items()}
        args = cls(**values)
        if (args.target is None) != (args.draft is None):
            raise ValueError("--model_args: give both target= and draft= (or neither, for the bundled pair)")
        if args.fps is not None and args.num_frames is not None:
            raise ValueError("--model_args: give num_frames= or fps=, not both")
        if args.device is not None and args.device_map is not None:
            raise ValueError("--model_args: give device= or device_map=, not both")
        return args

    def prune_config(self) -> PruneConfig | None:
        if self.prune == "none":
            return None
        return PruneConfig(self.prune, ratio=self.prune_ratio, stage1_mass=self.stage1_mass, seed=self.prune_seed)

    def frames(self) -> dict:
        return frame_options(self.num_frames, self.fps, self.max_frames)


def _none(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def _text(name, value):
    return None if _none(value) else str(value)


def _flag(name, value):
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise ValueError(f"--model_args {name}: expected true or false, got {value!r}")


def _optional_flag(name, value):
    return None if _none(value) else _flag(name, value)


def _number(kind, check, rule: str, optional: bool = False):
    def convert(name, value):
        if optional and _none(value):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        whole = math.isfinite(number) and number.is_integer()
        if isinstance(value, bool) or not (whole if kind is int else math.isfinite(number)) or not check(number):
            raise ValueError(f"--model_args {name}: expected {rule}, got {value!r}")
        return kind(number)

    return convert


def _choice(options):
    def convert(name, value):
        if str(value) not in options:
            raise ValueError(f"--model_args {name}: expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return convert


def _tree(name, value):
    try:
        parse_tree(str(value))
    except ValueError as error:
        raise ValueError(f"--model_args {name}: {error}") from None
    return str(value)


def _drafter(name, value) -> str:
    from specvlm.engine.drafters import make_drafter

    try:
        make_drafter(str(value), None)
    except ValueError as error:
        raise ValueError(f"--model_args {name}: {error}") from None
    return str(value)


_fraction = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
_CONVERT = {
    "target": _text,
    "draft": _text,
    "dtype": _choice(DTYPES),
    "device": _text,
    "device_map": _text,
    "draft_device": _text,
    "attn": _text,
    "tree": _tree,
    "prune": _choice(STRATEGIES),
    "prune_ratio": _fraction,
    "stage1_mass": _fraction,
    "prune_seed": _number(int, lambda v: True, "an integer"),
    "reindex": _flag,
    "drafter": _drafter,
    "compile": _optional_flag,
    "num_frames": _number(int, lambda v: v >= 1, "an integer >= 1", optional=True),
    "fps": _number(float, lambda v: v > 0, "a number > 0", optional=True),
    "max_frames": _number(int, lambda v: v >= 1, "an integer >= 1", optional=True),
    "max_video_pixels": _number(int, lambda v: v >= 1, "an integer >= 1", optional=True),
    "max_new_tokens": _number(int, lambda v: v >= 1, "an integer >= 1"),
    "speculative": _flag,
    "seed": _number(int, lambda v: True, "an integer", optional=True),
    "warmup": _number(int, lambda v: v >= 0, "an integer >= 0"),
}


# ---------------------------------------------------------------------------- generation kwargs


def generation_options(gen_kwargs: dict, max_new_tokens: int) -> dict:
    """A task's ``generation_kwargs`` (Hugging Face ``generate`` names) as ``SpeculativeVLM.generate``
    arguments: greedy unless ``do_sample`` (or a temperature above 0 without it) says otherwise."""
    if int(gen_kwargs.get("num_beams") or 1) > 1:
        raise NotImplementedError(
            "specvlm does not support beam search (num_beams > 1): speculative decoding reproduces "
            "greedy or sampled decoding"
        )
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = gen_kwargs.get("do_sample")
    if do_sample is None:
        do_sample = temperature > 0
    elif do_sample and "temperature" not in gen_kwargs:
        temperature = 1.0  # generate's default
    until = gen_kwargs.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(s for s in until if s)
    options = {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or max_new_tokens),
        "stop_strings": until,
        "temperature": temperature if do_sample else 0.0,
    }
    if do_sample and temperature > 0:
        top_p = gen_kwargs.get("top_p")
        if top_p is not None and float(top_p) < 1:
            options["top_p"] = float(top_p)
        if gen_kwargs.get("top_k"):
            options["top_k"] = int(gen_kwargs["top_k"])
    return options


def cut_at_stop(text: str, stop_strings: tuple[str, ...]) -> str:
    """The answer before the first stop string (lmms-eval's ``until``: the stop string is left out)."""
    for stop in stop_strings:
        text = text.split(stop)[0]
    return text


def one_video(visuals, where: str) -> str | None:
    """The request's one video (a path to a file or a folder of frames; None for a text-only
    request), or a refusal in one line."""
    items = [v for v in (visuals if isinstance(visuals, (list, tuple)) else [visuals]) if v is not None]
    if not items:
        return None
    if len(items) == 1 and isinstance(items[0], (str, os.PathLike)):
        if Path(items[0]).suffix.lower() not in IMAGE_EXTENSIONS:
            return os.fspath(items[0])
    if len(items) > 1:
        held = f"{len(items)} visuals"
    elif isinstance(items[0], (str, os.PathLike)):
        held = f"an image file ({Path(items[0]).name})"
    else:
        held = f"a {type(items[0]).__module__}.{type(items[0]).__qualname__}"  # PIL.Image.Image, say
    raise NotImplementedError(
        f"specvlm answers about at most one video per request (a video file or a folder of frames; "
        f"its adapters take no images): {where} holds {held}"
    )


# ------------------------------------------------------------------------------ what is logged


@dataclass
class SpeedCounts(TokenCounts):
    """lmms-eval's per-request token counts plus how the answer was decoded, written into the
    per-sample log as the sample's ``token_counts`` entry. ``input_tokens`` counts the prompt with
    its video tokens; ``output_tokens`` the generated tokens (the stopping one included)."""

    speculative: bool = True
    tau: float | None = None  # mean accepted length per target verification pass (None: target only)
    tokens_per_s: float | None = None  # output tokens / decode seconds (None: one token, no decode step)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    warmup_s: float = 0.0  # of decode_s: compiling and capturing steps met for the first time
    target_passes: int = 0  # target forward passes after its prefill
    cycle_tokens: int = 0  # tokens emitted by verification passes: tau = cycle_tokens / target_passes
    video_tokens: int = 0  # video tokens the target saw
    draft_video_tokens: int | None = None  # video tokens the draft kept (None: target only)

    def to_dict(self) -> dict:
        speed = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TOKEN_FIELDS}
        return {**super().to_dict(), **speed}

    @classmethod
    def of(cls, out, speculative: bool) -> "SpeedCounts":
        stats = out.stats
        return cls(
            input_tokens=out.prompt_tokens,
            output_tokens=len(out.token_ids),
            speculative=speculative,
            tau=_finite(stats.tau) if speculative else None,
            tokens_per_s=_finite(stats.tokens_per_s),
            prefill_s=stats.prefill_s,
            decode_s=stats.decode_s,
            warmup_s=stats.warmup_s,
            target_passes=stats.target_passes,
            cycle_tokens=stats.cycle_tokens if speculative else 0,
            video_tokens=stats.video_tokens if speculative else len(out.layout),
            draft_video_tokens=stats.draft_video_tokens if speculative else None,
        )


_TOKEN_FIELDS = {f.name for f in fields(TokenCounts)}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


@dataclass(frozen=True)
class SpeedSummary:
    """The whole run's speed: sums over requests, tau over all verification passes."""

    requests: int
    tokens: int
    decode_s: float  # compilation warm-up excluded
    prefill_s: float
    warmup_s: float
    tau: float | None
    video_tokens: float  # mean per request
    draft_video_tokens: float | None  # mean per request

    @classmethod
    def of(cls, counts: list[SpeedCounts]) -> "SpeedSummary":
        passes = sum(c.target_passes for c in counts)
        speculative = bool(counts) and counts[0].speculative
        n = max(len(counts), 1)
        return cls(
            requests=len(counts),
            tokens=sum(c.output_tokens for c in counts),
            decode_s=sum(c.decode_s - c.warmup_s for c in counts),
            prefill_s=sum(c.prefill_s for c in counts),
            warmup_s=sum(c.warmup_s for c in counts),
            tau=sum(c.cycle_tokens for c in counts) / passes if speculative and passes else None,
            video_tokens=sum(c.video_tokens for c in counts) / n,
            draft_video_tokens=sum(c.draft_video_tokens for c in counts) / n if speculative else None,
        )

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.decode_s if self.decode_s > 0 else 0.0

    def line(self, mode: str) -> str:
        parts = [f"specvlm {mode}: {self.requests} requests", f"{self.tokens} tokens",
                 f"{self.tokens_per_s:.1f} tokens/s (decode {self.decode_s:.2f}s, prefill {self.prefill_s:.2f}s, "
                 f"warm-up {self.warmup_s:.2f}s left out)"]  # fmt: skip
        if self.tau is not None:
            parts.append(f"tau {self.tau:.2f}")
        if self.draft_video_tokens is not None and self.video_tokens:
            kept, share = self.draft_video_tokens, 100 * self.draft_video_tokens / self.video_tokens
            parts.append(f"draft kept {kept:.0f}/{self.video_tokens:.0f} video tokens ({share:.1f}%)")
        return " | ".join(parts)


# ----------------------------------------------------------------------------------------- model


class SpecVLM(lmms):
    """A target/draft pair behind lmms-eval's simple-model interface, one request at a time."""

    is_simple = True

    def __init__(self, batch_size=1, max_batch_size=None, **model_args) -> None:
        super().__init__()
        self.args = ModelArgs.parse(model_args)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise NotImplementedError(
                "specvlm runs lmms-eval in one process (the engine decodes one request at a time): "
                "launch it without accelerate/torchrun data parallelism"
            )
        if str(batch_size) not in ("1", "auto") or max_batch_size not in (None, 1):
            eval_logger.warning("specvlm answers one request at a time: batch_size is ignored")
        a = self.args
        target, draft = a.target, a.draft
        if target is None:
            from specvlm.assets import default_pair

            target, draft = (str(p) for p in default_pair())
        self.pair = SpeculativeVLM.from_pretrained(
            target, draft, dtype=a.dtype, device=a.device, device_map=a.device_map, draft_device=a.draft_device,
            attn_implementation=a.attn, tree=a.tree, prune=a.prune_config(), reindex=a.reindex, compile=a.compile, drafter=a.drafter,
        )  # fmt: skip
        self.mode = "speculative" if a.speculative else "target only"
        eval_logger.info(f"specvlm {self.mode}: target {target}, draft {draft}, {asdict(a)}")

    def generate_until(self, requests) -> list[GenerationResult]:
        # every request is checked before any is decoded: a refusal costs no run
        jobs = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            where = f"task {task} ({split}), doc {doc_id}"
            video = one_video(doc_to_visual(self.task_dict[task][split][doc_id]), where)
            jobs.append((context, gen_kwargs, video, generation_options(gen_kwargs, self.args.max_new_tokens)))
        answers, measured = [], []
        for i, (context, gen_kwargs, video, options) in enumerate(tqdm(jobs, desc=f"specvlm ({self.mode})")):
            clip = None if video is None else load_video(video, **self.args.frames(), max_pixels=self.args.max_video_pixels)
            # A process's first calls pay one-off costs (CPU kernels' first use, CUDA graphs, compiling
            # where warmup_s misses it): the first request is answered untimed first, in both modes.
            for _ in range(self.args.warmup if i == 0 else 0):
                self._answer(clip, context, options)
            out = self._answer(clip, context, options)
            counts = SpeedCounts.of(out, self.args.speculative)
            measured.append(counts)
            text = cut_at_stop(out.text, options["stop_strings"])
            answers.append(GenerationResult(text=text, token_counts=counts))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        self._log_summary(SpeedSummary.of(measured))
        return answers

    def _answer(self, clip, context: str, options: dict):
        return self.pair.generate(clip, context, speculative=self.args.speculative, seed=self.args.seed, **options)

    def _log_summary(self, summary: SpeedSummary) -> None:
        """Into lmms-eval's throughput log: the table printed under the scores, results' ``throughput``."""
        eval_logger.info(summary.line(self.mode))
        # lmms-eval prints each extra metric as avg_<name>: per-request means, as its avg_latency
        n = max(summary.requests, 1)
        extra = {
            "total_requests": summary.requests,
            "prefill_time": summary.prefill_s / n,
            "warmup_time": summary.warmup_s / n,
            "video_tokens": summary.video_tokens,
            "mode": self.mode,
        }
        if summary.tau is not None:
            extra["tau"] = summary.tau
        if summary.draft_video_tokens is not None:
            extra["draft_video_tokens"] = summary.draft_video_tokens
        log_metrics(
            total_elapsed_time=summary.decode_s,
            total_gen_tokens=summary.tokens,
            avg_speed=summary.tokens_per_s,
            additional_metrics=extra,
        )

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "specvlm answers generation requests (generate_until) only: log-likelihood requests score "
            "given continuations and decode nothing; run the task's generation variant"
        )

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("specvlm answers single-round generation requests (generate_until) only")
