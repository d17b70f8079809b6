"""Test helpers for specvlm.

:mod:`specvlm.testing.tiny` builds tiny random-weight checkpoints of the real
video-LLM architectures offline (no Hugging Face hub access needed).
"""
