"""The model adapter contract: one small interface over a Hugging Face video LLM.

An adapter wraps a loaded ``*ForConditionalGeneration`` model and its processor, and promises:
- inputs: (video, prompt) -> processor features -> ``PreparedInputs``: the full input sequence as
  embeddings with the video features merged, the model's own positions, and a ``VideoTokenLayout``
  that places every video token in the video (frame, row, col);
- dropping: ``drop_video_tokens`` removes any subset of the video tokens (embeddings, positions and
  per-token extras alike) for a draft model. By default the kept tokens and the text after the video
  keep their original positions; ``reindex=True`` closes the gap instead (see each family);
- running: the language model on new tokens on top of a ``KVCache``, with explicit positions and an
  optional additive 4D attention mask, returning logits over the real vocabulary only.

Adapters own positions. Nothing here derives a position from a cache length.
It never forks modeling code: it calls the models' public pieces (``get_video_features``,
``get_rope_index``, ``language_model``, ``lm_head``).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from specvlm.attention import install as install_attention
from specvlm.cache import KVCache
from specvlm.layout import VideoTokenLayout
from specvlm.video import DEFAULT_MAX_VIDEO_PIXELS, VideoClip, VideoInputError, load_video

Prompt = str | list[dict[str, Any]]

# SDPA kernels the language model may use. cuDNN is left out: it builds a plan for every new key
# length, about a millisecond of CPU per attention call while decoding (measured on an H200).
ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class UnsupportedModelError(ValueError):
    """The checkpoint is not of a supported video-LLM family."""


class PromptTooLongError(ValueError):
    """The prompt plus the tokens to generate do not fit a model's context."""


@lru_cache(maxsize=None)
def cache_keyword(language_model_class: type) -> str:
    """The keyword a language model takes its KV cache by: ``cache`` where transformers has renamed
    ``past_key_values`` (the old name still works there, with a FutureWarning on every call)."""
    parameters = inspect.signature(language_model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@dataclass
class PreparedInputs:
    """One prompt ready for the language model (batch dimension 1 kept for later batching)."""

    input_ids: torch.Tensor  # (1, L) long
    inputs_embeds: torch.Tensor  # (1, L, D)
    position_ids: torch.Tensor  # (1, L) for 1D RoPE, (3, 1, L) for M-RoPE
    video: VideoTokenLayout
    next_position: int  # rotary position of the first generated token
    kept: torch.Tensor | None = None  # (k,) indices into the full video layout; None = all kept
    # Qwen3-VL deepstack: extra visual features added to the first decoder layers' hidden states.
    visual_mask: torch.Tensor | None = None  # (1, L) bool
    deepstack: list[torch.Tensor] | None = field(default=None, repr=False)  # each (n_visual, D)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def video_end(self) -> int:
        """Index just past the last video token: the text after it is the question."""
        return int(self.video.seq_index.max()) + 1 if len(self.video) else 0


class VideoLMAdapter(ABC):
    """Base adapter; one subclass per model family."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]

    tensor_parallel: bool = False  # sharded over the ranks of a torchrun group (load_adapter(tensor_parallel=N))
    max_aspect_ratio: ClassVar[float | None] = None  # the longest frame side over the shortest the processor takes

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.config = model.config
        tokenizer = processor.tokenizer
        self.tokenizer = tokenizer
        # The real vocabulary: heads are often padded past it (Qwen2.5-VL-3B 151936 vs -7B 152064).
        self.vocab_size = len(tokenizer)
        self.video_token_id = int(self.config.video_token_id)
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and not eos:
            eos = [tokenizer.eos_token_id]
        self.eos_token_ids: tuple[int, ...] = tuple(int(e) for e in eos)
        # state the engine keeps for this model, owned here so it lives and dies with the model:
        self.workspaces: dict = {}  # (role, static, compile) -> Workspace (KV cache, captured steps)
        self.compiled_language_model = None  # torch.compile of the language model, made on first use
        self.step_mode: tuple[bool, bool] | None = None  # (static, compiled) steps, chosen once at load
        install_attention(self.language_model)  # once, here: nothing flips the config around a call

    # ------------------------------------------------------------------ language model pieces
    @property
    def language_model(self):
        return self.model.model.language_model

    @property
    def num_layers(self) -> int:
        return len(self.language_model.layers)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (the first device under a device map)."""
        return self.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    @property
    def context_limit(self) -> int | None:
        """The language model's context length (``text_config.max_position_embeddings``), None if unknown."""
        text = getattr(self.config, "text_config", None) or self.config
        limit = getattr(text, "max_position_embeddings", None)
        return int(limit) if limit else None

    def check_context(self, input_ids: torch.Tensor, max_new_tokens: int, role: str = "target") -> None:
        """Refuse, before any decoding, a prompt that with ``max_new_tokens`` overflows the context."""
        limit = self.context_limit
        length = int(input_ids.shape[-1])
        if limit is None or length + max_new_tokens <= limit:
            return
        n_video = int((input_ids == self.video_token_id).sum())
        raise PromptTooLongError(
            f"the prompt is {length} tokens ({n_video} of them video) and {max_new_tokens} new tokens "
            f"would reach {length + max_new_tokens}, past the {role}'s context of {limit} tokens: "
            "use a smaller num_frames=... or fps=... (or max_new_tokens=...)"
        )

    def new_cache(self, capacity: int, *, static: bool = False) -> KVCache:
        return KVCache(self.num_layers, capacity, static=static, device=self.device)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.embed_tokens(token_ids.to(self.device))

    # ------------------------------------------------------------------ inputs
    def messages(self, prompt: Prompt, with_video: bool = True) -> list[dict[str, Any]]:
        """A chat message list with one video (or none, for text-only chat), from a plain prompt or a
        user-given list."""
        if isinstance(prompt, str):
            video = [{"type": "video"}] if with_video else []
            return [{"role": "user", "content": [*video, {"type": "text", "text": prompt}]}]
        n_videos = sum(
            1
            for m in prompt
            for c in (m.get("content") if isinstance(m.get("content"), list) else [])
            if isinstance(c, dict) and c.get("type") == "video"
        )
        if n_videos != int(with_video):
            wanted = "exactly one video entry" if with_video else "no video entry when no video is given"
            raise ValueError(f"the chat messages must hold {wanted}, found {n_videos}")
        return prompt

    def build_inputs(self, video, prompt: Prompt, *, num_frames: int | None = None, fps: float | None = None,
                     max_pixels: int | None = DEFAULT_MAX_VIDEO_PIXELS):  # fmt: skip
        """Processor features (input_ids, pixel values, grids...) for one video (or ``None``: a
        text-only chat) and one prompt. A video given by path is loaded within ``max_pixels``
        (decoded frames x height x width; None: no bound)."""
        if video is None:
            text = self.processor.apply_chat_template(
                self.messages(prompt, with_video=False), add_generation_prompt=True, tokenize=False
            )
            return self.processor(text=[text], return_tensors="pt")
        clip = video if isinstance(video, VideoClip) else load_video(video, num_frames=num_frames, fps=fps,
                                                                     max_pixels=max_pixels)
        self.check_clip(clip)
        text = self.processor.apply_chat_template(
            self.messages(prompt), add_generation_prompt=True, tokenize=False
        )
        features = self.processor(
            text=[text], videos=[clip.frames], return_tensors="pt", **self.processor_kwargs(clip)
        )
        return features

    @classmethod
    def check_clip(cls, clip: VideoClip) -> None:
        """VideoInputError for frames this family's processor refuses (known from the class alone, so
        the command line asks before any model loads): a shape past ``max_aspect_ratio``."""
        height, width = clip.frames.shape[1:3]
        ratio = max(height, width) / min(height, width)
        if cls.max_aspect_ratio is not None and ratio > cls.max_aspect_ratio:
            raise VideoInputError(
                f"frames of {width}x{height} pixels: an aspect ratio of {ratio:g}:1, and {cls.family} models take "
                f"at most {cls.max_aspect_ratio:g}:1 (crop or pad the video)"
            )

    def processor_kwargs(self, clip: VideoClip) -> dict[str, Any]:
        """Family-specific processor arguments (frame sampling is already done by ``load_video``).
        Frames are always (T, H, W, 3): said so, since a processor left to guess takes a frame 1 or
        3 pixels high for channels first and reads it wrongly."""
        return {"do_sample_frames": False, "input_data_format": "channels_last"}

    def prepare(self, features) -> PreparedInputs:
        """Embeddings with video features merged, positions and the video layout."""
        input_ids = features["input_ids"].to(self.device)
        if input_ids.shape[0] != 1:
            raise ValueError(f"batch size 1 is supported, got {input_ids.shape[0]} prompts")
        is_video = input_ids[0] == self.video_token_id
        if not bool(is_video.any()):
            if features.get("pixel_values_videos") is not None:
                raise ValueError("the prompt holds no video tokens: the chat template must place a video")
            return self.prepare_text(features, input_ids)
        with torch.no_grad():
            embeds = self.embed(input_ids)
            video_features, extras = self.video_features(features)
            if video_features.shape[0] != int(is_video.sum()):
                raise ValueError(
                    f"{int(is_video.sum())} video tokens in the prompt but {video_features.shape[0]} "
                    "video features: one video per prompt is supported"
                )
            embeds = embeds.clone()
            embeds[0, is_video] = video_features.to(embeds.device, embeds.dtype)
        position_ids, next_position = self.positions(features, input_ids)
        layout = self.video_layout(features, input_ids)
        prepared = PreparedInputs(
            input_ids=input_ids,
            inputs_embeds=embeds,
            position_ids=position_ids,
            video=layout,
            next_position=next_position,
        )
        return self.attach_extras(prepared, is_video, extras)

    def prepare_text(self, features, input_ids: torch.Tensor) -> PreparedInputs:
        """A text-only prompt: no video tokens, the model's own positions for text."""
        with torch.no_grad():
            embeds = self.embed(input_ids)
        position_ids, next_position = self.positions(features, input_ids)
        empty = torch.zeros(0, dtype=torch.long)
        layout = VideoTokenLayout(seq_index=empty, frame=empty, row=empty, col=empty, grid=(0, 0, 0))
        return PreparedInputs(input_ids=input_ids, inputs_embeds=embeds, position_ids=position_ids, video=layout,
                              next_position=next_position)  # fmt: skip

    def attach_extras(self, prepared: PreparedInputs, is_video: torch.Tensor, extras) -> PreparedInputs:
        return prepared

    def drop_video_tokens(
        self, prepared: PreparedInputs, keep: torch.Tensor, *, reindex: bool = False
    ) -> PreparedInputs:
        """The same prompt with only the video tokens ``keep`` (indices into the layout, any order).

        Tokens that are not droppable video tokens (text, LLaVA-OV's trailing newline) always stay.
        """
        if prepared.kept is not None:
            raise ValueError("drop_video_tokens takes the full prepared inputs, not an already pruned one")
        n = len(prepared.video)
        keep = torch.as_tensor(keep, dtype=torch.long).flatten().cpu()
        if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
            raise IndexError(f"kept video token indices must lie in [0, {n}), got {keep.min()}..{keep.max()}")
        keep = torch.unique(keep)  # sorted, so the kept tokens stay in their original order
        drop = torch.ones(n, dtype=torch.bool)
        drop[keep] = False
        seq_keep = torch.ones(prepared.length, dtype=torch.bool)
        seq_keep[prepared.video.seq_index.cpu()[drop]] = False
        new_index = torch.cumsum(seq_keep.long(), 0) - 1  # old sequence index -> new one
        seq_keep_dev = seq_keep.to(prepared.input_ids.device)
        if prepared.position_ids.dim() == 2:
            position_ids = prepared.position_ids[:, seq_keep_dev]
        else:
            position_ids = prepared.position_ids[:, :, seq_keep_dev]
        pruned = PreparedInputs(
            input_ids=prepared.input_ids[:, seq_keep_dev],
            inputs_embeds=prepared.inputs_embeds[:, seq_keep_dev],
            position_ids=position_ids,
            video=prepared.video.subset(keep, new_index[prepared.video.seq_index.cpu()[keep]]),
            next_position=prepared.next_position,
            kept=keep,
        )
        if prepared.visual_mask is not None:
            visual_seq = prepared.visual_mask[0].nonzero().flatten().cpu()
            visual_keep = seq_keep[visual_seq].to(prepared.deepstack[0].device)
            pruned.visual_mask = prepared.visual_mask[:, seq_keep_dev]
            pruned.deepstack = [d[visual_keep] for d in prepared.deepstack]
        if reindex:
            pruned.position_ids, pruned.next_position = self.reindexed_positions(prepared, pruned)
        return pruned

    # ------------------------------------------------------------------ running the LM
    def position_tensor(self, positions: torch.Tensor) -> torch.Tensor:
        """Text-token positions (1, q) -> the family's position_ids layout."""
        return positions

    def forward(
        self,
        inputs_embeds: torch.Tensor,  # (1, q, D)
        position_ids: torch.Tensor,  # family layout, see position_tensor
        cache: KVCache,
        attention_mask: torch.Tensor | None = None,  # (1, 1, q, cache.length + q) additive float
        *,
        logits_at: slice | torch.Tensor | None = None,
        language_model=None,
        **lm_kwargs,
    ) -> torch.Tensor:
        """Run the language model on ``q`` new tokens after ``cache.length`` cached ones.

        Writes the new keys/values at slots [cache.length, cache.length + q) without committing them.
        Returns logits (1, q', vocab_size) in float32 on ``self.device`` for the positions
        ``logits_at`` (all by default).
        A ``None`` mask means plain causal attention (the fast kernel's causal path on a prefill); a
        FlexAttention ``BlockMask`` goes to the static steps' attention (engine/static.py).
        ``language_model`` runs in place of the model's own (its compiled form).
        """
        if isinstance(attention_mask, torch.Tensor):
            attention_mask = attention_mask.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
        lm = self.language_model if language_model is None else language_model
        with torch.no_grad(), sdpa_kernel(ATTENTION_BACKENDS):
            out = lm(
                inputs_embeds=inputs_embeds,
                position_ids=position_ids.to(inputs_embeds.device),
                attention_mask=attention_mask,
                use_cache=True,
                **{cache_keyword(type(self.language_model)): cache},
                **lm_kwargs,
            )
            hidden = out.last_hidden_state
            if logits_at is not None:
                hidden = hidden[:, logits_at]
            head = self.model.lm_head
            logits = head(hidden.to(head.weight.device))
        # Under a device map the head may sit on another GPU: hand logits back where inputs live.
        return logits[..., : self.vocab_size].float().to(self.device)

    def prefill(
        self, prepared: PreparedInputs, cache: KVCache, start: int = 0, end: int | None = None
    ) -> torch.Tensor:
        """Run tokens [start, end) of a prepared prompt and commit them; logits (1, V) of the last one."""
        end = prepared.length if end is None else end
        if cache.length != start:
            raise ValueError(f"prefill from {start} needs a cache holding {start} tokens, it holds {cache.length}")
        pos = prepared.position_ids[..., start:end]
        logits = self.forward(
            prepared.inputs_embeds[:, start:end],
            pos,
            cache,
            logits_at=slice(-1, None),
            **self.chunk_kwargs(prepared, start, end),
        )
        cache.commit(end - start)
        return logits[:, -1]

    def prefill_with_scores(self, prepared: PreparedInputs, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill in two parts and return (last logits (1, V), Stage I scores (n_video,) float32).

        The video part runs on the usual kernels; only the text after the last video token is
        scored (see specvlm.pruning.scores).
        """
        from specvlm.pruning.scores import capturing_scores

        if prepared.kept is not None:
            raise ValueError("Stage I scores come from the target's full prompt, not a pruned one")
        split = prepared.video_end
        if split >= prepared.length:
            raise ValueError("the prompt has no text after the video to score the video tokens with")
        self.prefill(prepared, cache, 0, split)
        with capturing_scores(self.language_model, prepared.video.seq_index) as sink:
            logits = self.prefill(prepared, cache, split)
        return logits, sink.scores()

    def chunk_kwargs(self, prepared: PreparedInputs, start: int, end: int) -> dict[str, Any]:
        """Extra language-model inputs for a slice of the prompt (deepstack features for Qwen3-VL)."""
        return {}

    def step(
        self,
        token_ids: torch.Tensor,  # (1, q) long
        positions: torch.Tensor,  # (1, q) long rotary positions
        cache: KVCache,
        attention_mask=None,
        *,
        language_model=None,
    ) -> torch.Tensor:
        """Logits (1, q, V) for new text tokens; their keys/values are written but not committed."""
        return self.forward(
            self.embed(token_ids), self.position_tensor(positions), cache, attention_mask, language_model=language_model
        )

    # ------------------------------------------------------------------ family-specific
    @abstractmethod
    def video_features(self, features) -> tuple[torch.Tensor, Any]:
        """(n_video_tokens, D) features in sequence order, plus family extras."""

    @abstractmethod
    def positions(self, features, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The model's own position_ids for the full prompt and the first generated position."""

    @abstractmethod
    def video_layout(self, features, input_ids: torch.Tensor) -> VideoTokenLayout:
        """Frame/row/col of every droppable video token."""

    @abstractmethod
    def reindexed_positions(self, full: PreparedInputs, pruned: PreparedInputs) -> tuple[torch.Tensor, int]:
        """Positions of a pruned sequence with the gaps left by dropped tokens closed."""
