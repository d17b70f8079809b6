"""The language models' attention entry, installed once when a model is loaded (models/base.py).

A model keeps the attention it was loaded with (SDPA, eager, ...) for everything ordinary: prefill,
plain decoding steps. Two things are routed elsewhere, and nothing changes the model's config
around a call to do it:
- a mask that brings its own attention (``attention_mask.attend``): the engine's static steps hand
  the model a FlexAttention BlockMask whose ``attend`` runs the split-prefix tree attention over the
  whole static cache (engine/static.py);
- while ``scoring(sink)`` is active, each layer's post-RoPE queries and keys are shown to
  ``sink.add(query, key, scaling)`` before the model's own attention runs (Stage I scores,
  pruning/scores.py).
"""

from __future__ import annotations

import contextlib
import sys
from contextvars import ContextVar

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

PREFIX = "specvlm_"
_SINK: ContextVar = ContextVar("specvlm_attention_sink", default=None)


def install(language_model) -> str:
    """Route the language model's attention through the entry below (once; returns its name)."""
    config = language_model.config
    current = config._attn_implementation or "sdpa"
    if current.startswith(PREFIX):
        return current
    name = PREFIX + current
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _entry(current))
        masks = AttentionMaskInterface._global_mapping
        AttentionMaskInterface.register(name, masks.get(current) or masks["eager"])
    config._attn_implementation = name
    return name


def original(language_model) -> str:
    """The attention implementation the model was loaded with."""
    return language_model.config._attn_implementation.removeprefix(PREFIX)


def _delegate(module, name: str):
    if name in AttentionInterface._global_mapping:
        return AttentionInterface._global_mapping[name]
    # "eager" is not in the registry: each modeling file has its own
    return sys.modules[type(module).__module__].eager_attention_forward


def _entry(name: str):
    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        attend = getattr(attention_mask, "attend", None)
        if attend is not None:
            return attend(query, key, value, scaling)
        sink = _SINK.get()
        if sink is not None:
            sink.add(query, key, scaling)
        return _delegate(module, name)(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    return attention


@contextlib.contextmanager
def scoring(sink):
    """Within the block, every layer's attention shows its queries and keys to ``sink`` first."""
    if _SINK.get() is not None:
        raise RuntimeError("score capture is already active")
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)
