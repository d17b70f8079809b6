"""specvlm: lossless speculative decoding for video LLMs with a verifier-guided pruned draft."""

__version__ = "0.1.0"
