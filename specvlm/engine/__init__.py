"""The decoding engine: KV cache, sampling, target-only decoding (and speculative decoding)."""
