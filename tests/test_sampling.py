"""Tests for specvlm.engine.sampling: config validation and logits -> float32 probabilities with
temperature, top-k and top-p, checked against distributions whose answer is written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from specvlm.engine.sampling import SamplingConfig, next_token, probabilities, sample


def support(probs: torch.Tensor) -> set[int]:
    return set(torch.nonzero(probs > 0).flatten().tolist())


def renormalized(p: list[float], keep: set[int]) -> torch.Tensor:
    out = torch.tensor([x if i in keep else 0.0 for i, x in enumerate(p)], dtype=torch.float64)
    return out / out.sum()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(temperature=math.nan), "temperature must be >= 0"),
        (dict(temperature=1.0, top_k=0), "top_k must be >= 1"),
        (dict(temperature=1.0, top_p=0.0), r"top_p must lie in \(0, 1\]"),
        (dict(temperature=1.0, top_p=1.5), r"top_p must lie in \(0, 1\]"),
        (dict(temperature=1.0, top_p=-0.1), r"top_p must lie in \(0, 1\]"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


def test_config_defaults_and_greedy():
    assert SamplingConfig().greedy
    assert not SamplingConfig(temperature=0.7, top_k=1, top_p=1.0).greedy
    with pytest.raises(ValueError, match="greedy decoding has no sampling distribution"):
        probabilities(torch.zeros(4), SamplingConfig())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_is_softmax_of_scaled_logits(temperature):
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    probs = probabilities(logits, SamplingConfig(temperature=temperature))
    assert probs.dtype == torch.float32 and probs.shape == (2, 3, 11)
    expected = torch.softmax(logits / temperature, -1)
    assert torch.allclose(probs.double(), expected, atol=1e-6)
    # Temperature is not a no-op: 0.5 sharpens, 2 flattens.
    if temperature != 1.0:
        assert not torch.allclose(probs.double(), torch.softmax(logits, -1), atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_is_float32(dtype):
    logits = torch.tensor([1.0, 2.0, 3.0], dtype=dtype)
    probs = probabilities(logits, SamplingConfig(temperature=1.0, top_k=2, top_p=0.9))
    assert probs.dtype == torch.float32
    assert torch.allclose(probs.sum(), torch.tensor(1.0))


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([0.3, -1.0, 2.5, 0.9, 1.7, -0.2, 0.0])  # distinct values
    order = torch.argsort(logits, descending=True).tolist()  # [2, 4, 3, 0, 6, 5, 1]
    assert order == [2, 4, 3, 0, 6, 5, 1]
    for k in range(1, 8):
        probs = probabilities(logits, SamplingConfig(temperature=0.8, top_k=k))
        assert support(probs) == set(order[:k]), f"k={k}"
        kept = torch.tensor(order[:k])
        assert torch.allclose(probs[kept], torch.softmax(logits[kept] / 0.8, -1))
    # k >= V: no truncation.
    full = probabilities(logits, SamplingConfig(temperature=1.0, top_k=50))
    assert torch.allclose(full, torch.softmax(logits, -1))


def test_top_k_keeps_ties_at_the_kth_value():
    probs = probabilities(torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0]), SamplingConfig(temperature=1.0, top_k=2))
    assert support(probs) == {1, 2, 3}


def test_top_k_per_row():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    probs = probabilities(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert support(probs[0]) == {0, 1} and support(probs[1]) == {2, 3}


P4 = [0.1, 0.4, 0.2, 0.3]  # sorted: token 1 (0.4), 3 (0.3), 2 (0.2), 0 (0.1)


@pytest.mark.parametrize(
    "top_p, keep",
    [
        (1e-6, {1}),  # the top token always stays
        (0.35, {1}),  # 0.4 alone reaches 0.35
        (0.5, {1, 3}),  # 0.4 < 0.5 <= 0.7
        (0.65, {1, 3}),
        (0.75, {1, 3, 2}),  # 0.7 < 0.75 <= 0.9
        (0.95, {0, 1, 2, 3}),
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p, keep):
    logits = torch.tensor(P4).log()
    probs = probabilities(logits, SamplingConfig(temperature=1.0, top_p=top_p))
    assert support(probs) == keep
    assert torch.allclose(probs.double(), renormalized(P4, keep), atol=1e-6)


def test_top_p_applies_to_the_tempered_distribution():
    logits = torch.tensor(P4).log()
    hot = torch.softmax(logits / 3.0, -1).tolist()  # flatter: about [0.19, 0.30, 0.24, 0.27]
    assert 0.29 < hot[1] < 0.31 and 0.56 < hot[1] + hot[3] < 0.58
    # Cumulative mass in order 1, 3, 2: 0.30, 0.57, 0.81 here; 0.4, 0.7, 0.9 at temperature 1.
    probs = probabilities(logits, SamplingConfig(temperature=3.0, top_p=0.35))
    assert support(probs) == {1, 3}  # at temperature 1: {1}
    probs = probabilities(logits, SamplingConfig(temperature=3.0, top_p=0.65))
    assert support(probs) == {1, 3, 2}  # at temperature 1: {1, 3}
    assert torch.allclose(probs.double(), renormalized(hot, {1, 2, 3}), atol=1e-6)


def test_top_k_then_top_p():
    logits = torch.tensor(P4).log()
    # After top-k 2 the kept mass is {1: 4/7, 3: 3/7}; 4/7 = 0.571 already reaches 0.55. Applying
    # top-p to the untruncated distribution first would keep {1, 3} (0.4 < 0.55).
    probs = probabilities(logits, SamplingConfig(temperature=1.0, top_k=2, top_p=0.55))
    assert support(probs) == {1}
    probs = probabilities(logits, SamplingConfig(temperature=1.0, top_k=3, top_p=0.6))
    assert support(probs) == {1, 3}  # top-3 mass {4/9, 3/9, 2/9}: 4/9 < 0.6 <= 7/9


def test_top_p_per_row():
    logits = torch.tensor([P4, [0.7, 0.1, 0.1, 0.1]]).log()
    probs = probabilities(logits, SamplingConfig(temperature=1.0, top_p=0.6))
    assert support(probs[0]) == {1, 3} and support(probs[1]) == {0}


def test_next_token_and_sample():
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 0.0, -1.0]])
    assert next_token(logits, SamplingConfig(), None).tolist() == [1, 0]
    onehot = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    assert sample(onehot, None).tolist() == [[2, 0]]

    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return next_token(logits.expand(50, 2, 3), SamplingConfig(temperature=1.5), g)

    out = draws(0)
    assert out.shape == (50, 2)
    assert torch.equal(out, draws(0)) and not torch.equal(out, draws(1))
    assert set(out.flatten().tolist()) == {0, 1, 2}
    truncated = next_token(logits, SamplingConfig(temperature=5.0, top_k=1), torch.Generator().manual_seed(0))
    assert truncated.tolist() == [1, 0]
