"""The lossless gate: speculative output == target-only output == the model's own generate.

Every family x chain (k = 1, 3, 5) and tree (the published default and two other shapes) x several
inputs, with an independently initialised draft (low acceptance) and with the target as its own
draft (every drafted token must be accepted). Exactness is asserted in float32 on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specvlm.engine.config import SpecConfig
from specvlm.engine.decoding import decode_target
from specvlm.engine.speculative import speculative_decode
from specvlm.engine.tree import DraftTree
from specvlm.models import load_adapter
from specvlm.pruning import PruneConfig
from specvlm.testing.tiny import FAMILIES
from specvlm.video import write_video

MAX_NEW = 24
TREES = {
    "chain1": DraftTree.chain(1),
    "chain3": DraftTree.chain(3),
    "chain5": DraftTree.chain(5),
    "default": DraftTree.default(),
    "wide": DraftTree(((0,), (1,), (2,), (3,), (4,), (0, 0), (1, 0), (0, 0, 0))),
    "binary": DraftTree(((0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1), (0, 0, 0), (0, 0, 1), (0, 1, 0))),
}
PROMPTS = ("Describe the video.", "What moves, and where does it go?")


def _clip(path, seed: int):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    write_video(path, frames, fps=6)
    return path


class Family:
    """Adapters and prepared inputs of one family, each input with its target-only reference."""

    def __init__(self, family, pair, root):
        self.name = family
        target_dir, draft_dir = pair
        self.target = load_adapter(str(target_dir), dtype="float32")
        self.draft = load_adapter(str(draft_dir), dtype="float32")
        self.inputs = []
        for i, prompt in enumerate(PROMPTS):
            features = self.target.build_inputs(_clip(root / f"clip{i}.mp4", seed=i), prompt, num_frames=8)
            full = self.target.prepare(features)
            reference = decode_target(self.target, full, max_new_tokens=MAX_NEW).token_ids
            self.inputs.append((features, full, self.draft.prepare(features), reference))

    def decode(self, draft, full, draft_inputs, *, max_new_tokens=MAX_NEW, static=None, **config):
        """The target's speculative decoding with ``draft`` on ``draft_inputs``, as SpecConfig(**config) says."""
        return speculative_decode(self.target, draft, full, draft_inputs, max_new_tokens=max_new_tokens,
                                  static=static, config=SpecConfig(**config))  # fmt: skip


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, tiny_pairs, tmp_path_factory):
    return Family(request.param, tiny_pairs(request.param), tmp_path_factory.mktemp(request.param))


def test_reference_is_the_models_own_generate(fam):
    features, _, _, reference = fam.inputs[0]
    with torch.no_grad():
        out = fam.target.model.generate(**features, max_new_tokens=MAX_NEW, do_sample=False)
    assert out[0, features["input_ids"].shape[1] :].tolist() == reference


@pytest.mark.parametrize("tree_name", list(TREES))
def test_independent_draft_is_lossless(fam, tree_name):
    tree = TREES[tree_name]
    for _, full, draft_inputs, reference in fam.inputs:
        result = fam.decode(fam.draft, full, draft_inputs, tree=tree)
        assert result.token_ids == reference
        stats = result.stats
        assert stats.new_tokens == len(reference)
        assert stats.cycle_tokens == len(reference) - 1
        assert 1.0 <= stats.tau <= tree.depth + 1
        # the rank counts add up to the depths reached: one rank hit per accepted depth
        for d, (hits, tries) in enumerate(zip(stats.rank_hits, stats.rank_tries)):
            assert sum(hits) == stats.reached_depth[d + 1] and max(tries) <= stats.reached_depth[d]
            assert len(tries) == tree.max_children and all(h <= t for h, t in zip(hits, tries))


@pytest.mark.parametrize("tree_name", list(TREES))
def test_target_as_its_own_draft_accepts_everything(fam, tree_name):
    tree = TREES[tree_name]
    for _, full, _, reference in fam.inputs:
        result = fam.decode(fam.target, full, full, tree=tree)
        assert result.token_ids == reference
        stats = result.stats
        # every cycle but possibly the last (cut by the stop rule) accepts a full path: tau = depth + 1
        assert stats.reached_depth[tree.depth] >= stats.target_passes - 1
        full_cycles = stats.target_passes - 1
        assert stats.cycle_tokens >= full_cycles * (tree.depth + 1)
        assert all(rate == 1.0 for rate in stats.acceptance_by_depth)


def test_pruned_self_draft_is_lossless(fam):
    """The draft may see a prompt with video tokens dropped; output stays the target's."""
    for _, full, _, reference in fam.inputs:
        for reindex in (False, True):
            keep = torch.arange(0, len(full.video), 3)
            pruned = fam.target.drop_video_tokens(full, keep, reindex=reindex)
            for tree in (TREES["chain3"], TREES["default"]):
                result = fam.decode(fam.target, full, pruned, tree=tree)
                assert result.token_ids == reference


STRATEGY_RATIOS = [0.0, 0.5, 0.9, 0.95]
SWEEP_NEW = 10  # tokens per run in the strategy sweep: several verify cycles each


def test_every_pruning_strategy_is_lossless(fam):
    """Every strategy x ratio: the target scores, the draft sees only the kept tokens, output is exact."""
    from specvlm.pruning import STRATEGIES, PruneConfig, keep_budget

    _, full, draft_inputs, reference = fam.inputs[0]
    n_video = len(full.video)
    for strategy in STRATEGIES:
        for ratio in STRATEGY_RATIOS:
            result = fam.decode(fam.draft, full, draft_inputs, max_new_tokens=SWEEP_NEW, tree=TREES["chain3"],
                                prune=PruneConfig(strategy=strategy, ratio=ratio))  # fmt: skip
            assert result.token_ids == reference[:SWEEP_NEW], (strategy, ratio)
            kept = n_video if strategy == "none" else keep_budget(n_video, ratio)
            assert result.stats.draft_video_tokens == kept == len(result.selection.kept)
            assert (result.scores is not None) == (strategy in ("specvlm", "attention", "reversed-attention"))


@pytest.mark.parametrize("reindex", [False, True], ids=["original-positions", "reindexed"])
def test_pruned_self_draft_with_scores_is_lossless(fam, reindex):
    """The target drafting for itself on its own top tokens: partial acceptance, exact output."""
    from specvlm.pruning import PruneConfig

    _, full, _, reference = fam.inputs[1]
    for ratio in STRATEGY_RATIOS:
        for tree in (TREES["chain5"], TREES["default"]):
            result = fam.decode(fam.target, full, full, tree=tree, reindex=reindex,
                                prune=PruneConfig(strategy="specvlm", ratio=ratio))  # fmt: skip
            assert result.token_ids == reference, ratio
            if ratio == 0.0 and not reindex:
                assert all(rate == 1.0 for rate in result.stats.acceptance_by_depth)


def test_pruning_everything_leaves_the_draft_only_text(fam):
    from specvlm.pruning import PruneConfig

    _, full, _, reference = fam.inputs[1]
    result = fam.decode(fam.target, full, full, tree=TREES["default"], prune=PruneConfig(strategy="specvlm", ratio=1.0))
    assert result.token_ids == reference
    assert result.stats.draft_video_tokens == 0 and result.stats.video_tokens == len(full.video)


def test_static_steps_are_lossless(fam):
    """The static-shape steps (captured as CUDA graphs on a GPU) run eagerly here: same output."""
    _, full, draft_inputs, reference = fam.inputs[0]
    assert decode_target(fam.target, full, max_new_tokens=MAX_NEW, static=True).token_ids == reference
    for tree in (TREES["chain3"], TREES["default"]):
        for draft, d_inputs in ((fam.draft, draft_inputs), (fam.target, full)):
            result = fam.decode(draft, full, d_inputs, static=True, tree=tree)
            assert result.token_ids == reference


@pytest.mark.parametrize("tree_name", ["chain3", "default"])
def test_text_only_chat_is_lossless(fam, tree_name):
    """No video: the model's own generate, target-only decoding, and speculation (pruning asked for,
    nothing to prune) give the same tokens; the target as its own draft accepts everything."""
    features = fam.target.build_inputs(None, "Tell me about colours.")
    full = fam.target.prepare(features)
    assert len(full.video) == 0
    with torch.no_grad():
        out = fam.target.model.generate(**features, max_new_tokens=MAX_NEW, do_sample=False)
    reference = decode_target(fam.target, full, max_new_tokens=MAX_NEW).token_ids
    assert out[0, features["input_ids"].shape[1] :].tolist() == reference
    tree = TREES[tree_name]
    spec = fam.decode(fam.draft, full, fam.draft.prepare(features), tree=tree, prune=PruneConfig(ratio=0.9))
    assert spec.token_ids == reference and spec.stats.draft_video_tokens == 0
    own = fam.decode(fam.target, full, full, tree=tree)
    assert own.token_ids == reference and own.stats.tau > tree.depth


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_the_adaptive_drafter_is_lossless_and_stops_early(fam, threshold):
    """Drafting stopped by the draft's confidence changes the cost, never the output: 0.0 never stops
    (the model drafter's passes), 1.0 always stops after the first level (one pass a cycle)."""
    from specvlm.engine.drafters import AdaptiveDrafter

    tree = TREES["default"]
    for _, full, d_full, reference in fam.inputs:
        drafter = AdaptiveDrafter(fam.draft, threshold=threshold)
        out = fam.decode(fam.draft, full, d_full, tree=tree, drafter=drafter)
        assert out.token_ids == reference
        model = fam.decode(fam.draft, full, d_full, tree=tree)
        if threshold == 0.0:
            assert out.stats.draft_passes == model.stats.draft_passes
        if threshold == 1.0:
            assert out.stats.draft_passes == out.stats.target_passes
        own = fam.decode(fam.target, full, full, tree=tree, drafter=AdaptiveDrafter(fam.target, threshold=threshold))
        assert own.token_ids == reference


@pytest.mark.parametrize("tree_name", ["chain1", "chain5", "default", "binary"])
def test_drafting_while_verifying_is_lossless(fam, tree_name):
    """The overlapped drafter guesses each verdict (main path accepted, its own top-1 next) and
    drafts the next tree before the verdict is read. With the target as its own draft every guess is
    right and every cycle after the first uses a tree drafted during the verification before it;
    with an independent draft the guesses fail and the slots they wrote over are put back. The
    output is the target's own either way."""
    from specvlm.engine.drafters import OverlapDrafter
    from specvlm.engine.drafters.overlap import GuessPolicy

    tree = TREES[tree_name]
    for _, full, d_full, reference in fam.inputs:
        other = OverlapDrafter(fam.draft, policy=GuessPolicy(always=True))  # guess every cycle, right or not
        out = fam.decode(fam.draft, full, d_full, tree=tree, drafter=other)
        assert out.token_ids == reference
        assert other.guesses >= out.stats.target_passes - 1 and out.stats.overlapped_cycles <= other.hits
        own = OverlapDrafter(fam.target, policy=GuessPolicy(always=True))
        out = fam.decode(fam.target, full, full, tree=tree, drafter=own)
        assert out.token_ids == reference
        assert out.stats.overlapped_cycles == out.stats.target_passes - 1 > 0  # the first tree has no cycle before it
        assert own.hits >= out.stats.overlapped_cycles  # the last right guess may go unused


def _run_policy(policy, cost, cycles):
    """Cycles under ``policy`` where a cycle costs ``cost(i, guessed)``; which cycles guessed."""
    guessed = []
    for i in range(cycles):
        guessed.append(policy.want())
        policy.record(guessed[-1], cost(i, guessed[-1]))
    return guessed


def test_the_guess_policy_takes_the_cheaper_way_and_watches_the_other_ever_more_rarely():
    """A cycle's cost holds all a guess does; the policy guesses while guessing is the cheaper way,
    tries the dearer way again at doubling intervals (8 up to 64 cycles), and follows a change."""
    from specvlm.engine.drafters.overlap import GuessPolicy

    dear = _run_policy(GuessPolicy(), lambda i, g: 12.0 if g else 10.0, 600)  # guessing never pays
    assert dear[:2] == [False, True]  # each way measured once, not guessing first
    tries = [i for i, g in enumerate(dear) if g]
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps[:4] == [8, 16, 32, 64] and set(gaps[4:]) == {64} and len(tries) <= 2 + 600 // 64 + 4
    cheap = _run_policy(GuessPolicy(), lambda i, g: 8.0 if g else 10.0, 600)  # a right guess saves drafting
    assert sum(cheap) >= 600 - 2 - 600 // 64 - 4 and not all(cheap[2:])  # not guessing is still tried
    # costs that change: guessing dearer for 300 cycles, then cheaper (a longer video, say); a try
    # cheaper than the other way's mean is looked at again soon
    change = _run_policy(GuessPolicy(), lambda i, g: (12.0 if i < 300 else 6.0) if g else 10.0, 600)
    assert sum(change[:300]) <= 2 + 300 // 64 + 4 and sum(change[300 + 64 + 48 :]) >= 600 - 412 - 4
    assert GuessPolicy(always=True).want() and _run_policy(GuessPolicy(always=True), lambda i, g: 99.0 if g else 1.0, 50) == [True] * 50
    with pytest.raises(ValueError, match="probe"):
        GuessPolicy(probe=0)
    with pytest.raises(ValueError, match="weight"):
        GuessPolicy(weight=0.0)


def test_the_overlapped_drafter_measures_every_cycle_but_the_first(fam):
    """By default the overlapped drafter guesses by its measured cycle costs (here on the host's
    clock): every cycle's cost but the request's first (its verification's warm-up) and the last
    (no proposal follows) reaches its policy, and the output is the target's own."""
    from specvlm.engine.drafters import OverlapDrafter

    _, full, d_full, reference = fam.inputs[0]
    drafter = OverlapDrafter(fam.draft)
    for _ in range(2):  # the policy is kept across requests
        before = sum(drafter.policy.samples.values())
        out = fam.decode(fam.draft, full, d_full, tree=TREES["default"], drafter=drafter)
        assert out.token_ids == reference
        assert sum(drafter.policy.samples.values()) - before == out.stats.target_passes - 2
    assert drafter.policy.samples[True] >= 1 and drafter.policy.samples[False] >= 1


@pytest.mark.parametrize("ahead", [1, 2])
def test_a_guess_cut_short_by_its_verdict_is_lossless(fam, ahead):
    """A guess queued only partly before its verdict (``ahead`` passes: on a GPU, as many as the
    verification leaves time for) finishes after it when right, and is dropped when wrong."""
    from specvlm.engine.drafters import OverlapDrafter
    from specvlm.engine.drafters.overlap import GuessPolicy

    tree = TREES["default"]
    _, full, d_full, reference = fam.inputs[0]
    for draft, inputs in ((fam.draft, d_full), (fam.target, full)):
        drafter = OverlapDrafter(draft, ahead=ahead, policy=GuessPolicy(always=True))
        out = fam.decode(draft, full, inputs, tree=tree, drafter=drafter)
        assert out.token_ids == reference
        assert drafter.queued and set(drafter.queued) == {ahead}
    assert out.stats.overlapped_cycles == out.stats.target_passes - 1 > 0  # self-draft: every guess right


def _random_tree(rng) -> DraftTree:
    """Paths with sibling ranks 0..n-1 under each node: up to 30 nodes and 7 levels."""
    paths, depth = set(), rng.integers(1, 8)
    for _ in range(rng.integers(1, 31)):
        path = tuple(int(rng.choice([0, 0, 1, 2, 5])) for _ in range(rng.integers(1, depth + 1)))
        for k in range(1, len(path) + 1):
            paths.update(path[: k - 1] + (r,) for r in range(path[k - 1] + 1))
    return DraftTree(tuple(sorted(paths, key=lambda p: (len(p), p))))


def _tie_at_divergence(fam, features, out, reference) -> float:
    """The target's top-two logit margin (its own generate) where ``out`` first leaves ``reference``."""
    first = next((i for i, (a, b) in enumerate(zip(out, reference)) if a != b), min(len(out), len(reference)))
    with torch.no_grad():
        scores = fam.target.model.generate(**features, max_new_tokens=first + 1, do_sample=False, output_scores=True,
                                           return_dict_in_generate=True).scores  # fmt: skip
    top = scores[first][0].float().topk(2).values
    return float(top[0] - top[1])


def test_random_settings_are_lossless(fam):
    """Seeded random cases: tree shapes (1-30 nodes, up to 7 deep), pruning strategies and ratios
    (0 to 1), reindexing, every drafter, output lengths, an independent draft or the target as its
    own. Float32 on CPU: a divergence is allowed only where the target's own top two logits tie
    (the tree pass and a one-token step add in different orders), and none is expected here."""
    from specvlm.pruning import STRATEGIES

    rng = np.random.default_rng(FAMILIES.index(fam.name))
    for case in range(12):
        features, full, d_full, reference = fam.inputs[case % len(fam.inputs)]
        own = rng.random() < 0.4
        draft, d_inputs = (fam.target, full) if own else (fam.draft, d_full)
        prune = None
        if not own and rng.random() < 0.8:  # (the target as its own draft on its full prompt: every path accepted)
            prune = PruneConfig(str(rng.choice(sorted(STRATEGIES))), ratio=float(rng.choice([0.0, 0.3, 0.9, 0.99, 1.0])))
            d_inputs = draft.prepare(features)  # pruning takes the draft's full prompt
        config = SpecConfig(tree=_random_tree(rng), prune=prune, reindex=bool(rng.random() < 0.5),
                            drafter=str(rng.choice(["model", "adaptive", "adaptive:0.6", "overlap"])))  # fmt: skip
        n = int(rng.integers(8, MAX_NEW + 1))
        out = speculative_decode(fam.target, draft, full, d_inputs, max_new_tokens=n, config=config).token_ids
        if out != reference[:n]:
            margin = _tie_at_divergence(fam, features, out, reference[:n])
            assert margin < 1e-5, (case, config, n, own, out, reference[:n], margin)
