"""Tests for specvlm.engine.stopping.StopRule: EOS, max_new_tokens and stop strings, token by token.

Stop-string cases use the tiny Qwen2.5-VL tokenizer; the token ids below are pinned by
``test_tokenization_assumptions`` so a tokenizer change fails loudly there, not obscurely later.
"""

from __future__ import annotations

import pytest

from specvlm.engine.stopping import StopRule
from specvlm.testing.tiny import build_tokenizer

A, BASKET, OF, APPLES, AND, SPACE_A, K, ITE = 64, 507, 285, 515, 298, 258, 328, 390
EOS = 642  # <|im_end|>
TEXT = [A, BASKET, OF, APPLES, AND, SPACE_A, K, ITE]  # "a basket of apples and a kite"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("qwen2_5_vl")


def test_tokenization_assumptions(tokenizer):
    assert tokenizer.decode(TEXT) == "a basket of apples and a kite"
    pieces = [tokenizer.decode([t]) for t in TEXT]
    assert pieces == ["a", " basket", " of", " apples", " and", " a", " k", "ite"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == EOS


def test_eos_is_kept_and_stops():
    rule = StopRule([EOS, 7], max_new_tokens=100)
    assert not rule.done([])
    assert not rule.done([1, 2])
    assert rule.done([1, EOS]) and rule.done([7])
    assert rule.cut([], [5, EOS, 9, 10]) == [5, EOS]
    assert rule.cut([5], [7, 9]) == [7]
    assert rule.cut([], [5, 6, 9]) == [5, 6, 9]  # no stop: everything is emitted


def test_max_new_tokens_counts_earlier_tokens():
    rule = StopRule([EOS], max_new_tokens=5)
    assert not rule.done([1, 2, 3, 4])
    assert rule.done([1, 2, 3, 4, 5])
    assert rule.cut([1, 2, 3], [4, 5, 6, 7]) == [4, 5]
    assert rule.cut([], [1, 2, 3, 4, 5, 6]) == [1, 2, 3, 4, 5]
    assert StopRule([], max_new_tokens=1).cut([], [8, 9]) == [8]


@pytest.mark.parametrize(
    "before, stop, kept",
    [
        ([A, BASKET], ("basket of",), [OF]),  # the string spans the earlier tokens and the first new one
        ([], ("of ap",), [A, BASKET, OF, APPLES]),  # completed mid-token: " apples" carries on past it
        ([], ("kite",), TEXT),  # " k" + "ite": only the last token completes it
        ([], ("kite", "and"), [A, BASKET, OF, APPLES, AND]),  # the first string to appear wins
        ([A, BASKET, OF], ("of apples",), [APPLES]),
        ([], ("zebra",), TEXT),  # never appears: nothing is cut
    ],
)
def test_stop_string_cuts_at_the_completing_token(tokenizer, before, stop, kept):
    rule = StopRule([EOS], max_new_tokens=100, stop_strings=stop, tokenizer=tokenizer)
    new = TEXT[len(before) :]
    assert TEXT[: len(before)] == before
    assert rule.cut(before, new) == kept
    stopped = any(s in tokenizer.decode(TEXT) for s in stop)
    assert rule.done(before + kept) == stopped
    if stopped:
        assert not rule.done(before + kept[:-1])


def test_eos_and_limit_still_apply_with_stop_strings(tokenizer):
    rule = StopRule([EOS], max_new_tokens=3, stop_strings=("kite",), tokenizer=tokenizer)
    assert rule.cut([], [A, EOS, BASKET]) == [A, EOS]
    assert rule.cut([], TEXT) == [A, BASKET, OF]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(max_new_tokens=5, stop_strings=("x",)), "stop strings need a tokenizer"),
        (dict(max_new_tokens=5, stop_strings=("x", ""), tokenizer=object()), "stop strings must be non-empty"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StopRule([EOS], **kwargs)
