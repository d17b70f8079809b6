"""specvlm: lossless speculative decoding for video LLMs with a verifier-guided pruned draft."""

__version__ = "0.1.0"
__all__ = ["SpeculativeVLM", "load_video", "load_adapter"]


def __getattr__(name):  # keep `import specvlm` light: transformers loads on first use
    if name == "SpeculativeVLM":
        from specvlm.api import SpeculativeVLM

        return SpeculativeVLM
    if name == "load_video":
        from specvlm.video import load_video

        return load_video
    if name == "load_adapter":
        from specvlm.models import load_adapter

        return load_adapter
    raise AttributeError(f"module 'specvlm' has no attribute {name!r}")
