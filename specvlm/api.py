"""The Python API: a target/draft pair that answers like ``model.generate``, only faster.

    from specvlm import SpeculativeVLM
    pair = SpeculativeVLM.from_pretrained("Qwen/Qwen2.5-VL-32B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct",
                                          dtype="bfloat16", device_map="auto")
    out = pair.generate("clip.mp4", "Describe this video.", num_frames=64, max_new_tokens=256)
    print(out.text, out.stats.tau)
    for piece in pair.stream("clip.mp4", "What happens at the end?"):
        print(piece, end="", flush=True)

Greedy output is the target's own, token for token; sampled output follows the target's distribution.
"""

from __future__ import annotations

import math
import numbers
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from specvlm.engine.config import SpecConfig
from specvlm.engine.decoding import DecodeStats, decode_target
from specvlm.engine.drafters import make_drafter
from specvlm.engine.sampling import MIN_SAMPLING, SEED_RANGE, SamplingConfig
from specvlm.engine.speculative import PairMismatchError, check_pair, check_same_tokenizer, speculative_decode
from specvlm.engine.static import choose_step_mode
from specvlm.engine.tree import DraftTree, TreeSchedule, parse_tree
from specvlm.models import (
    adapter_class,
    check_placement,
    check_tensor_parallel,
    checkpoint_config,
    load_adapter,
    load_processor,
)
from specvlm.models.base import Prompt, VideoLMAdapter
from specvlm.pruning import PruneConfig
from specvlm.video import (
    DEFAULT_MAX_VIDEO_PIXELS,
    VideoClip,
    check_max_pixels,
    load_video,
)


@dataclass
class GenerateOutput:
    text: str
    token_ids: list[int]
    stats: DecodeStats  # SpecStats for speculative runs (tau, acceptance by depth, phase times)
    selection: object = None  # pruning.Selection: the draft's kept video tokens
    scores: torch.Tensor | None = None  # Stage I attention scores of the video tokens
    clip: VideoClip | None = None  # the frames the models saw
    layout: object = None  # the target's VideoTokenLayout
    prompt_tokens: int = 0  # tokens of the prompt, video included

    def save_picture(self, path, **kwargs):
        """A PNG of sampled frames with the draft's kept tokens outlined over the Stage I heat map."""
        from specvlm.pruning import render_selection

        if self.selection is None:
            raise ValueError("this answer was generated without pruning: there is no selection to draw")
        return render_selection(self.clip, self.layout, self.selection, self.scores, path, **kwargs)


class TextDeltas:
    """The text of a growing list of token ids, handed out piece by piece: the whole list is decoded
    each time (so pieces join to exactly the decoded answer), and a trailing incomplete UTF-8
    sequence waits for the next token."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.shown = 0

    def add(self, new: list[int]) -> str:
        self.tokens.extend(new)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd") or len(text) <= self.shown:
            return ""
        piece, self.shown = text[self.shown :], len(text)
        return piece

    def rest(self, text: str) -> str:
        """What the final answer ``text`` holds past the pieces handed out."""
        piece, self.shown = text[self.shown :], max(self.shown, len(text))
        return piece


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_prompt(prompt) -> None:
    """ValueError unless ``prompt`` is a non-blank string or a non-empty list of chat messages
    (dicts): None, a number or an empty prompt would otherwise fail deep in the processor, or
    answer nothing in particular."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"prompt must not be empty: ask something (got prompt={prompt!r})")
        if not _is_utf8(prompt):  # the tokenizer fails on lone surrogates with a TypeError
            raise ValueError(f"prompt must be valid text: it holds a lone surrogate (bytes that were no UTF-8?), "
                             f"got prompt={prompt!r}"[:300])  # fmt: skip
        return
    if isinstance(prompt, list):
        if not prompt:
            raise ValueError("prompt must not be empty: give a string or a non-empty list of chat messages, got []")
        bad = next((m for m in prompt if not isinstance(m, dict)), None)
        if bad is not None:
            raise ValueError(f"prompt as a list must hold chat messages (dicts with 'role' and 'content'), "
                             f"got an item {bad!r}"[:300])  # fmt: skip
        return
    raise ValueError(f"prompt must be a string or a list of chat messages, got prompt={prompt!r}"[:300])


def check_sampling_args(temperature, top_k, top_p) -> None:
    """ValueError naming the argument; the same rules as SamplingConfig (temperature >= 0, top_k >= 1,
    top_p in (0, 1]), plus what it lets through: NaN or infinite values, non-numbers, a fractional
    top_k, and a positive temperature or top_p so small that the float32 sampler overflows or underflows."""
    if not _is_real(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be >= 0 and finite (0 = greedy), got temperature={temperature!r}"[:300])
    if 0 < temperature < MIN_SAMPLING:
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_SAMPLING:g}, got temperature={temperature!r}")
    if top_k is not None and not (_is_int(top_k) and top_k >= 1):
        raise ValueError(f"top_k must be >= 1 (an integer) or None, got top_k={top_k!r}"[:300])
    if top_p is not None and not (_is_real(top_p) and 0 < top_p <= 1):  # NaN fails the comparison
        raise ValueError(f"top_p must lie in (0, 1] or be None, got top_p={top_p!r}"[:300])
    if top_p is not None and top_p < MIN_SAMPLING:
        raise ValueError(f"top_p must be at least {MIN_SAMPLING:g} (a smaller one underflows the float32 sampler), "
                         f"got top_p={top_p!r}")  # fmt: skip


def check_generate_args(max_new_tokens, seed, stop_strings, prune, *, temperature=0.0, top_k=None,
                        top_p=None, max_video_pixels=None, generator=None, speculative=True,
                        on_tokens=None) -> None:  # fmt: skip
    """ValueError naming the argument, for what ``generate`` cannot take. A max_new_tokens that is no
    integer would otherwise size the reused cache with a float and break every later call; a generator
    or on_tokens of the wrong kind would fail only after the prefill, and speculative="no" would be true."""
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got max_new_tokens={max_new_tokens!r}")
    check_sampling_args(temperature, top_k, top_p)
    if seed is not None and not (_is_int(seed) and SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise ValueError(f"seed must be an integer in [-2**63, 2**64 - 1] (what torch takes), got seed={seed!r}")
    stops = (stop_strings,) if isinstance(stop_strings, str) else stop_strings  # one string is one stop string
    if not isinstance(stops, (tuple, list)) or not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop_strings must be a tuple of non-empty strings, got stop_strings={stop_strings!r}")
    if not (prune is None or prune == "default" or isinstance(prune, PruneConfig)):
        raise ValueError(f"prune must be a PruneConfig, None (no pruning) or 'default', got prune={prune!r}")
    check_max_pixels(max_video_pixels, "max_video_pixels")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got generator={generator!r}"[:300])
    if not isinstance(speculative, bool):
        raise ValueError(f"speculative must be True or False, got speculative={speculative!r}"[:300])
    if on_tokens is not None and not callable(on_tokens):
        raise ValueError(f"on_tokens must be a callable taking a list of token ids, got on_tokens={on_tokens!r}"[:300])


def check_prune(prune) -> None:
    """ValueError unless ``prune`` is a PruneConfig or None (a strategy's name fails only at generate)."""
    if not (prune is None or isinstance(prune, PruneConfig)):
        raise ValueError(f"prune must be a PruneConfig or None (no pruning), got prune={prune!r}, e.g. "
                         "PruneConfig(strategy='uniform')"[:300])  # fmt: skip


class SpeculativeVLM:
    """A target model and a draft of the same family and tokenizer."""

    def __init__(
        self,
        target: VideoLMAdapter,
        draft: VideoLMAdapter,
        *,
        tree: DraftTree | TreeSchedule | str = "default",
        prune: PruneConfig | None = PruneConfig(),
        reindex: bool = False,
        compile: bool | None = None,
        drafter: str = "model",
    ):
        """``prune`` decides which video tokens the draft sees (default: the method's two-stage
        selection keeping 10%); None shows the draft every token (plain speculative decoding).
        ``compile`` compiles the decode steps with torch.compile (default: on a single GPU; the first
        call of each prompt-length bucket then pays tens of seconds of compilation, later ones and
        later processes reuse it). ``drafter`` is the drafting rule: "model" (every level of the
        tree), "adaptive" / "adaptive:P" (stop drafting when the draft's confidence in its main path
        drops below P, default 0.3), or "overlap" (draft the next tree while the target verifies, from
        a guess of its verdict; engine/drafters/overlap.py); the output does not depend on it."""
        check_prune(prune)
        check_pair(target, draft)
        self.compile = compile
        for adapter in (target, draft):  # eager, or compiled and captured: decided here, once
            choose_step_mode(adapter, compile)
        self.target = target
        self.draft = draft
        # what every call does unless told otherwise (sampling is per call)
        # made once (a bad name fails here, not at the first generate) and kept: one generation at a time
        self.config = SpecConfig(tree=tree, prune=prune, reindex=reindex, drafter=make_drafter(drafter, draft))

    @property
    def tree(self) -> DraftTree | TreeSchedule:
        return self.config.tree

    @property
    def prune(self) -> PruneConfig | None:
        return self.config.prune

    @classmethod
    def from_pretrained(
        cls,
        target: str,
        draft: str,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | None = None,
        device_map: str | dict | None = None,
        draft_device: str | None = None,
        attn_implementation: str | None = "sdpa",
        tree: DraftTree | TreeSchedule | str = "default",
        prune: PruneConfig | None = PruneConfig(),
        reindex: bool = False,
        compile: bool | None = None,
        tensor_parallel: int | None = None,
        drafter: str = "model",
    ) -> "SpeculativeVLM":
        """Load both models from hub ids or folders. The draft goes to ``draft_device`` (default: the
        target's ``device``, or its first device under a device map or tensor parallelism).

        ``tensor_parallel=N``: under ``torchrun --nproc-per-node N``, the target is sharded over the
        N ranks (the draft is whole on each); every rank runs the same loop and takes rank 0's
        decisions (``specvlm.engine.distributed``)."""
        check_prune(prune)  # what can be refused without a weight, before any loads
        if isinstance(tree, str):
            parse_tree(tree)
        if isinstance(drafter, str):
            make_drafter(drafter, None)
        configs = [checkpoint_config(name) for name in (target, draft)]
        families = [adapter_class(config.model_type).family for config in configs]
        if families[0] != families[1]:
            raise PairMismatchError(f"target and draft must be of one family: target is {families[0]}, "
                                    f"draft is {families[1]}")  # fmt: skip
        check_placement(dtype, device, device_map, tensor_parallel)
        check_placement(dtype, draft_device, None, None, device_name="draft_device")
        if tensor_parallel is not None:
            check_tensor_parallel(configs[0], tensor_parallel)
        processors = [load_processor(name) for name in (target, draft)]  # both, before any weight: a missing
        check_same_tokenizer(*(p.tokenizer for p in processors))  # or mismatched tokenizer fails in seconds
        target_adapter = load_adapter(
            target, dtype=dtype, device=device, device_map=device_map, attn_implementation=attn_implementation,
            tensor_parallel=tensor_parallel, config=configs[0], processor=processors[0],
        )  # fmt: skip
        placed = device_map is not None or tensor_parallel is not None
        draft_device = draft_device or device or (str(target_adapter.device) if placed else None)
        draft_adapter = load_adapter(draft, dtype=dtype, device=draft_device, attn_implementation=attn_implementation,
                                     config=configs[1], processor=processors[1])  # fmt: skip
        return cls(target_adapter, draft_adapter, tree=tree, prune=prune, reindex=reindex, compile=compile,
                   drafter=drafter)  # fmt: skip

    def check_context(self, input_ids: torch.Tensor, max_new_tokens: int, *, speculative: bool = True) -> None:
        """PromptTooLongError when the prompt and ``max_new_tokens`` overflow the target's context, or
        the draft's (which holds the same prompt unpruned) when it will run."""
        self.target.check_context(input_ids, max_new_tokens, "target")
        if speculative:
            self.draft.check_context(input_ids, max_new_tokens, "draft")

    def _generator(self, seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
        if generator is not None:
            return generator
        if seed is None:
            return None
        return torch.Generator(device=self.target.device).manual_seed(seed)

    def inputs(self, clip: VideoClip | None, prompt: Prompt):
        """The processor's output (input ids, pixels, grid) for a loaded clip and a prompt."""
        return self.target.build_inputs(clip, prompt)

    def generate(
        self,
        video: str | VideoClip | None,
        prompt: Prompt,
        *,
        num_frames: int | None = None,
        fps: float | None = None,
        max_video_pixels: int | None = DEFAULT_MAX_VIDEO_PIXELS,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        stop_strings: tuple[str, ...] = (),
        speculative: bool = True,
        on_tokens: Callable[[list[int]], None] | None = None,
        prune: PruneConfig | None | str = "default",
        inputs=None,
    ) -> GenerateOutput:
        """Answer ``prompt`` about ``video`` (a path, a folder of frames, an array or a VideoClip; None
        for a text-only chat, which the draft then sees whole).

        A video given by path (a file or a folder of frames) is refused with a VideoBudgetError
        before its frames are decoded when ``num_frames`` / ``fps`` would hold more than
        ``max_video_pixels`` frames x height x width (default 2**31: about a thousand frames of 1080p; None: no
        bound).

        ``speculative=False`` decodes with the target alone (the baseline). ``on_tokens`` receives
        token ids as they are accepted. ``prune`` overrides the pair's pruning for this call.
        ``inputs``: the processor's output for this clip and prompt (``self.inputs(clip, prompt)``)
        when the caller already built it, so the processor does not run twice.
        """
        check_prompt(prompt)  # the arguments before any work (and any workspace)
        check_generate_args(max_new_tokens, seed, stop_strings, prune, temperature=temperature, top_k=top_k, top_p=top_p,
                            max_video_pixels=max_video_pixels, generator=generator, speculative=speculative,
                            on_tokens=on_tokens)  # fmt: skip
        prune = self.prune if prune == "default" else prune
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
        clip = video
        if video is not None and not isinstance(video, VideoClip):
            clip = load_video(video, num_frames=num_frames, fps=fps, max_pixels=max_video_pixels)
        features = self.inputs(clip, prompt) if inputs is None else inputs
        self.check_context(features["input_ids"], max_new_tokens, speculative=speculative)  # before any work
        target_inputs = self.target.prepare(features)
        gen = self._generator(seed, generator)
        if speculative:
            draft_inputs = self.draft.prepare(features)
            result = speculative_decode(
                self.target,
                self.draft,
                target_inputs,
                draft_inputs,
                max_new_tokens=max_new_tokens,
                generator=gen,
                stop_strings=stop_strings,
                on_tokens=on_tokens,
                compile=self.compile,
                config=self.config.replace(sampling=sampling, prune=prune),
            )
        else:
            result = decode_target(
                self.target,
                target_inputs,
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                generator=gen,
                stop_strings=stop_strings,
                compile=self.compile,
                on_tokens=on_tokens,
            )
        text = self.target.tokenizer.decode(result.token_ids, skip_special_tokens=True)
        return GenerateOutput(
            text=text,
            token_ids=result.token_ids,
            stats=result.stats,
            selection=result.selection,
            scores=result.scores,
            clip=clip,
            layout=target_inputs.video,
            prompt_tokens=target_inputs.length,
        )

    def stream(self, video, prompt: Prompt, **kwargs) -> Iterator[str]:
        """Yield the answer's text as tokens are accepted (generation runs in a worker thread)."""
        pieces: queue.Queue = queue.Queue()
        done = object()
        deltas = TextDeltas(self.target.tokenizer)

        def on_tokens(new: list[int]) -> None:
            pieces.put(list(new))

        def work() -> None:
            try:
                self.generate(video, prompt, on_tokens=on_tokens, **kwargs)
            except BaseException as error:  # handed to the consumer, raised there
                pieces.put(error)
            finally:
                pieces.put(done)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while (item := pieces.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            if piece := deltas.add(item):
                yield piece
        worker.join()
