"""When generation stops: an EOS id, max_new_tokens, or a stop string, checked token by token.

Target-only and speculative decoding share this rule, so speculation cuts a cycle's tokens exactly
where target-only decoding would have stopped. The stopping token is kept (as ``generate`` does).
"""

from __future__ import annotations


class StopRule:
    def __init__(self, eos_token_ids, max_new_tokens: int, stop_strings=(), tokenizer=None):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if isinstance(stop_strings, str):  # one string, not its characters
            stop_strings = (stop_strings,)
        if stop_strings and tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode the generated text")
        if any(not s for s in stop_strings):
            raise ValueError("stop strings must be non-empty")
        self.eos = frozenset(int(e) for e in eos_token_ids)
        self.max_new_tokens = max_new_tokens
        self.stop_strings = tuple(stop_strings)
        self.tokenizer = tokenizer

    def done(self, tokens: list[int]) -> bool:
        if not tokens:
            return False
        if len(tokens) >= self.max_new_tokens or tokens[-1] in self.eos:
            return True
        if self.stop_strings:
            text = self.tokenizer.decode(tokens)
            return any(s in text for s in self.stop_strings)
        return False

    def cut(self, tokens: list[int], new: list[int]) -> list[int]:
        """The prefix of ``new`` to emit after ``tokens``: up to and including the stopping token."""
        kept: list[int] = []
        for token in new:
            kept.append(token)
            if self.done(tokens + kept):
                break
        return kept
