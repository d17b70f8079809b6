"""Tests for specvlm.cache.KVCache, driven through ``Cache.update`` with known tensors.

Every key/value written carries its own slot id in its data (``slot * 10 + layer`` in keys, the
negative in values), so after any sequence of writes, commits and compactions we can read back
exactly which written slot ended up where.
"""

from __future__ import annotations

import pytest
import torch

from specvlm.cache import CacheFullError, KVCache

HEADS, DIM = 2, 3


def kv(ids, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values [1, HEADS, len(ids), DIM] whose every entry encodes (id, layer)."""
    ids = torch.as_tensor(ids, dtype=torch.float32)
    k = (ids * 10 + layer).view(1, 1, -1, 1).expand(1, HEADS, -1, DIM).clone()
    k[:, 1] += 0.5  # heads differ, so a head mix-up shows
    return k, -k


def ids_of(t: torch.Tensor, layer: int = 0) -> list[int]:
    """Invert ``kv``: the ids stored along the sequence axis of a key tensor."""
    assert torch.equal(t[:, 1], t[:, 0] + 0.5)
    col = t[0, 0, :, 0]
    assert torch.equal(t[0, 0], col[:, None].expand(-1, DIM))
    return ((col - layer) / 10).round().long().tolist()


def stored(cache: KVCache, layer: int = 0, upto: int | None = None) -> list[int]:
    keys, values = cache.layers[layer].keys, cache.layers[layer].values
    n = cache.length if upto is None else upto
    assert torch.equal(values[:, :, :n], -keys[:, :, :n])
    return ids_of(keys[:, :, :n], layer)


def test_update_writes_at_length_and_returns_the_prefix():
    cache = KVCache(num_layers=1, capacity=8)
    assert cache.get_seq_length() == 0
    k, v = kv([1, 2, 3])
    keys, values = cache.update(k, v, 0)
    assert keys.shape == (1, HEADS, 3, DIM) and values.shape == (1, HEADS, 3, DIM)
    assert torch.equal(keys, k) and torch.equal(values, v)
    assert cache.layers[0].keys.shape == (1, HEADS, 8, DIM)  # preallocated once
    assert cache.get_seq_length() == 0  # nothing committed yet
    cache.commit(3)
    assert cache.get_seq_length() == 3
    assert cache.get_mask_sizes(2, 0) == (5, 0)

    keys, values = cache.update(*kv([4, 5]), 0)
    assert ids_of(keys) == [1, 2, 3, 4, 5]
    assert torch.equal(values, -keys)


def test_uncommitted_writes_are_overwritten():
    cache = KVCache(1, 8)
    cache.update(*kv([1, 2]), 0)
    cache.commit(2)
    cache.update(*kv([7, 8, 9]), 0)  # speculative block, rejected: no commit
    keys, _ = cache.update(*kv([3]), 0)
    assert ids_of(keys) == [1, 2, 3]


def test_commit_keeps_a_prefix_of_the_block():
    cache = KVCache(1, 8)
    cache.update(*kv([1, 2]), 0)
    cache.commit(2)
    cache.update(*kv([3, 4, 5, 6]), 0)
    cache.commit(2)
    assert cache.length == 4 and stored(cache) == [1, 2, 3, 4]
    keys, _ = cache.update(*kv([9]), 0)
    assert ids_of(keys) == [1, 2, 3, 4, 9]


def test_rollback_and_crop():
    cache = KVCache(1, 8)
    cache.update(*kv(range(6)), 0)
    cache.commit(6)
    cache.rollback(4)
    assert cache.length == 4
    keys, _ = cache.update(*kv([40]), 0)
    assert ids_of(keys) == [0, 1, 2, 3, 40]
    cache.rollback(4)  # to the current length: no-op
    assert cache.length == 4
    cache.crop(-1)
    assert cache.length == 3
    cache.crop(10)  # longer than the cache: nothing to drop
    assert cache.length == 3
    cache.crop(2)
    assert cache.length == 2
    cache.rollback(0)
    assert cache.length == 0


@pytest.mark.parametrize(
    "slots, kept",
    [
        ([0, 1, 2, 3], [10, 11, 12, 13]),  # identity: nothing moves
        ([0, 1], [10, 11]),  # identity prefix
        ([1, 2], [11, 12]),  # overlapping move: 1->0, 2->1
        ([0, 2, 3], [10, 12, 13]),
        ([1, 3, 4], [11, 13, 14]),
        ([4], [14]),
        ([2, 3, 4], [12, 13, 14]),  # overlapping shift by two
    ],
)
def test_commit_path_compacts_the_chosen_slots(slots, kept):
    cache = KVCache(2, 10)
    for layer in range(2):
        cache.update(*kv([1, 2], layer), layer)
    cache.commit(2)
    block = [10, 11, 12, 13, 14]
    for layer in range(2):
        cache.update(*kv(block, layer), layer)
    cache.commit_path(torch.tensor(slots))
    assert cache.length == 2 + len(slots)
    for layer in range(2):
        assert stored(cache, layer) == [1, 2] + kept, f"layer {layer}"
    # Slots after the kept path are untouched, so the moves wrote nothing outside the path range.
    if slots == list(range(len(slots))):
        for layer in range(2):
            assert stored(cache, layer, upto=7) == [1, 2] + block


def test_commit_path_empty_is_a_no_op():
    cache = KVCache(1, 4)
    cache.update(*kv([1, 2]), 0)
    cache.commit_path(torch.tensor([], dtype=torch.long))
    assert cache.length == 0


def test_commit_path_accepts_any_shape_and_device_of_index():
    cache = KVCache(1, 6)
    cache.update(*kv([10, 11, 12]), 0)
    cache.commit_path(torch.tensor([[0], [2]], dtype=torch.int32))
    assert stored(cache) == [10, 12]


@pytest.mark.parametrize("slots", [[1, 0], [0, 0], [-1, 0], [2, 2]])
def test_commit_path_rejects_unordered_or_negative(slots):
    cache = KVCache(1, 6)
    cache.update(*kv([10, 11, 12]), 0)
    with pytest.raises(ValueError, match="ascending and non-negative"):
        cache.commit_path(torch.tensor(slots))
    assert cache.length == 0


def test_commit_path_rejects_slots_past_capacity():
    cache = KVCache(1, 6)
    cache.update(*kv([1, 2, 3]), 0)
    cache.commit(3)
    cache.update(*kv([10, 11, 12]), 0)
    with pytest.raises(ValueError, match="capacity 6"):
        cache.commit_path(torch.tensor([0, 3]))  # slot 6 does not exist
    assert cache.length == 3 and stored(cache) == [1, 2, 3]


def test_capacity_overflow_raises_with_the_numbers():
    cache = KVCache(1, 5)
    cache.update(*kv([1, 2, 3]), 0)
    cache.commit(3)
    with pytest.raises(CacheFullError, match=r"capacity 5 exceeded: 3 tokens cached, 3 more requested"):
        cache.update(*kv([4, 5, 6]), 0)
    keys, _ = cache.update(*kv([4, 5]), 0)  # exactly full is fine
    assert ids_of(keys) == [1, 2, 3, 4, 5]
    assert issubclass(CacheFullError, RuntimeError)


@pytest.mark.parametrize("n", [-1, 6])
def test_bad_commit_raises(n):
    cache = KVCache(1, 5)
    with pytest.raises(ValueError, match=f"cannot commit {n} slots at length 0 \\(capacity 5\\)"):
        cache.commit(n)
    assert cache.length == 0


@pytest.mark.parametrize("length", [-1, 3])
def test_bad_rollback_raises(length):
    cache = KVCache(1, 5)
    cache.update(*kv([1, 2]), 0)
    cache.commit(2)
    with pytest.raises(ValueError, match=f"cannot roll back to {length}: cache holds 2"):
        cache.rollback(length)
    with pytest.raises(ValueError):
        cache.crop(-3)
    assert cache.length == 2


def test_bad_capacity():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        KVCache(1, 0)


def test_layers_are_independent():
    cache = KVCache(num_layers=3, capacity=6)
    for layer in range(3):
        cache.update(*kv([1, 2], layer), layer)
    cache.commit(2)
    cache.update(*kv([5], 1), 1)  # only layer 1 gets a new token
    assert cache.layers[0].keys[:, :, 2].abs().sum() == 0  # layer 0's slot 2 never written
    assert cache.layers[2].keys[:, :, 2].abs().sum() == 0
    assert stored(cache, 1, upto=3) == [1, 2, 5]
    for layer in range(3):
        assert stored(cache, layer) == [1, 2]
    # Different dtypes per layer are kept per layer.
    cache2 = KVCache(2, 4)
    cache2.update(*(t.half() for t in kv([1], 0)), 0)
    cache2.update(*kv([1], 1), 1)
    assert cache2.layers[0].keys.dtype == torch.float16 and cache2.layers[1].keys.dtype == torch.float32


def test_reset_forgets_everything():
    cache = KVCache(1, 4)
    cache.update(*kv([1, 2]), 0)
    cache.commit(2)
    cache.reset()
    assert cache.get_seq_length() == 0
    keys, _ = cache.update(*kv([7]), 0)
    assert ids_of(keys) == [7]
