"""Lossless speculative decoding of a target video LLM with a (pruned) draft of the same family.

The loop: prefill both models -> repeat { the draft proposes a tree (a chain is a tree) -> the target
scores every node in ONE forward pass with a tree mask -> accept a path (verify.py) -> the draft's
cache keeps only the accepted path -> stop? -> the draft's next tree is queued -> the target's cache
keeps only the accepted path -> emit accepted + bonus/recovered tokens }.

What it promises:
- greedy output identical to ``decode_target`` (and so to the model's own generate), token for token;
  sampled output distributed exactly as the target's, for chains and trees;
- the draft may see a pruned prompt (``draft_inputs`` from ``drop_video_tokens``); positions come from
  each model's prepared inputs, never from a cache length;
- fixed-capacity caches kept between calls; rollback is a length change plus an in-place compaction
  of the accepted tree path, queued on the device; greedy cycles wait for the device once, for the
  accept decision; drafting and verifying are timed on the device's clock, not by waiting.

The engine knows nothing about video files or tokenization beyond the stop rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from specvlm.engine.config import SpecConfig
from specvlm.engine.decoding import Clock, DecodeStats, GenerationResult, _sync
from specvlm.engine.distributed import agree
from specvlm.engine.drafter import Drafter, Proposal
from specvlm.engine.drafters import make_drafter
from specvlm.engine.sampling import SamplingConfig, next_token, probabilities
from specvlm.engine.static import Workspace, default_compile, default_static
from specvlm.engine.stopping import StopRule
from specvlm.engine.tree import DraftTree
from specvlm.engine.verify import (
    Verdict,
    greedy_decision,
    read_verdict,
    sampled_decision,
)
from specvlm.models.base import PreparedInputs, VideoLMAdapter
from specvlm.pruning.strategies import PruneConfig, needs_scores, select


class PairMismatchError(ValueError):
    """The target and the draft cannot be used together."""


@dataclass
class SpecStats(DecodeStats):
    """DecodeStats plus what speculation did. ``target_passes`` counts verification passes."""

    draft_prefill_s: float = 0.0
    drafting_s: float = 0.0
    verify_s: float = 0.0
    draft_passes: int = 0
    overlapped_cycles: int = 0  # cycles whose tree was drafted while the target verified the one before
    tree_depth: int = 0
    video_tokens: int = 0  # video tokens the target sees
    draft_video_tokens: int = 0  # video tokens the draft sees
    stage1_tokens: int = 0  # of those, chosen by Stage I attention
    cycle_tokens: int = 0  # tokens emitted by verification passes (all but the prefill's token)
    reached_depth: list[int] = field(default_factory=list)  # [d]: cycles whose accepted path reached depth d
    # [d][r]: cycles whose accepted path reached a depth-d node with a rank-r child that was proposed
    # (rank_tries) and whose path went on through that child (rank_hits)
    rank_tries: list[list[int]] = field(default_factory=list)
    rank_hits: list[list[int]] = field(default_factory=list)

    def record_cycle(self, draft_passes: int, accepted: int, emitted: int, overlapped: bool = False,
                     path: list[int] | None = None, tree: DraftTree | None = None,
                     proposed_depth: int | None = None) -> None:  # fmt: skip
        """One verification: its draft passes, accepted draft tokens and emitted tokens; with the
        accepted ``path`` (node indices from the root) of ``tree``, drafted to ``proposed_depth``,
        the per-rank counts too."""
        self.draft_passes += draft_passes
        self.overlapped_cycles += overlapped
        self.target_passes += 1
        self.cycle_tokens += emitted
        for d in range(accepted + 1):
            self.reached_depth[d] += 1
        if path is None or tree is None:
            return
        kids, ranks = tree.host_children, tree.host_ranks
        depth = tree.depth if proposed_depth is None else proposed_depth
        while len(self.rank_tries) < depth:
            self.rank_tries.append([0] * tree.max_children)
            self.rank_hits.append([0] * tree.max_children)
        for d, node in enumerate(path[: depth]):
            tries, hits = self.rank_tries[d], self.rank_hits[d]
            for r in range(len(kids[node])):
                tries[r] += 1
            if d + 1 < len(path):
                hits[ranks[path[d + 1]]] += 1

    @property
    def rank_acceptance(self) -> list[list[float]]:
        """[d][r]: P(the target's token at depth d + 1 is the draft's rank-r candidate | the path
        reached depth d), over the cycles whose tree had that candidate (tree_search.py)."""
        return [[h / t for h, t in zip(hits, tries) if t] for hits, tries in zip(self.rank_hits, self.rank_tries)]

    @property
    def tau(self) -> float:
        """Mean accepted length: tokens per target verification pass."""
        return self.cycle_tokens / self.target_passes if self.target_passes else float("nan")

    @property
    def acceptance_by_depth(self) -> list[float]:
        """[d-1]: P(a depth-d draft token is accepted | the path reached depth d-1)."""
        rates = []
        for d in range(1, self.tree_depth + 1):
            before = self.reached_depth[d - 1]
            rates.append(self.reached_depth[d] / before if before else float("nan"))
        return rates

    def as_dict(self) -> dict:
        return {
            "new_tokens": self.new_tokens,
            "target_passes": self.target_passes,
            "draft_passes": self.draft_passes,
            "overlapped_cycles": self.overlapped_cycles,
            "tau": self.tau,
            "acceptance_by_depth": self.acceptance_by_depth,
            "rank_acceptance": self.rank_acceptance,
            "rank_tries": self.rank_tries,
            "rank_hits": self.rank_hits,
            "video_tokens": self.video_tokens,
            "draft_video_tokens": self.draft_video_tokens,
            "stage1_tokens": self.stage1_tokens,
            "prefill_s": self.prefill_s,
            "draft_prefill_s": self.draft_prefill_s,
            "drafting_s": self.drafting_s,
            "verify_s": self.verify_s,
            "decode_s": self.decode_s,
            "warmup_s": self.warmup_s,
            "tokens_per_s": self.tokens_per_s,
        }


def check_pair(target: VideoLMAdapter, draft: VideoLMAdapter) -> None:
    """Refuse pairs that cannot verify each other: other family or another vocabulary."""
    if target.family != draft.family:
        raise PairMismatchError(
            f"target and draft must be of one family: target is {target.family}, draft is {draft.family}"
        )
    check_same_tokenizer(target.tokenizer, draft.tokenizer)


def check_same_tokenizer(target_tokenizer, draft_tokenizer) -> None:
    """Refuse a draft whose tokenizer maps any token to another id than the target's (checked by
    from_pretrained before any weight is read)."""
    t_vocab, d_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if t_vocab != d_vocab:
        only_t = len(set(t_vocab.items()) - set(d_vocab.items()))
        only_d = len(set(d_vocab.items()) - set(t_vocab.items()))
        raise PairMismatchError(
            f"target and draft tokenizers differ ({len(t_vocab)} vs {len(d_vocab)} tokens; {only_t} "
            f"token->id entries only in the target's, {only_d} only in the draft's): a draft must share "
            "the target's tokenizer"
        )


def speculative_decode(
    target: VideoLMAdapter,
    draft: VideoLMAdapter,
    target_inputs: PreparedInputs,
    draft_inputs: PreparedInputs,
    *,
    config: SpecConfig = SpecConfig(),
    max_new_tokens: int,
    generator: torch.Generator | None = None,
    stop_strings: tuple[str, ...] = (),
    on_tokens: Callable[[list[int]], None] | None = None,
    static: bool | None = None,
    compile: bool | None = None,
    on_proposal: Callable[[torch.Tensor, int], None] | None = None,
) -> GenerationResult:
    """Generate with the target's exact output, drafting with ``draft`` on ``draft_inputs``, as
    ``config`` says (tree, sampling, prune, reindex, drafter: engine/config.py).

    ``draft_inputs`` is the draft's own prepared prompt: the full one, or one with video tokens
    already dropped. With ``config.prune``, it must be the full one: the target's prefill (split, to
    score the video tokens when the strategy needs scores) picks the kept tokens, and the draft is
    prefilled with those only (``config.reindex`` as in ``drop_video_tokens``). ``on_tokens``
    receives each cycle's newly accepted tokens (for streaming). ``static`` runs the draft and verify
    steps as captured CUDA graphs (default: the mode chosen when the pair was loaded), ``compile``
    compiles them (likewise; see engine/static.py). ``on_proposal(tokens, emitted)`` may rewrite the
    proposal's node tokens (N,) on the device before verification, ``emitted`` tokens into the
    output (benchmarks use it to control acceptance; the output stays the target's).
    ``config.drafter`` is the drafting rule run on ``draft`` (see engine/drafter.py); the output
    does not depend on it.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tree, sampling = config.tree_for(target_inputs.length), config.sampling
    if tree.max_children > draft.vocab_size:  # a node's children are distinct tokens of the draft's vocabulary
        raise ValueError(f"the draft tree gives a node {tree.max_children} children, more than the draft's "
                         f"vocabulary of {draft.vocab_size} tokens")  # fmt: skip
    stop = StopRule(target.eos_token_ids, max_new_tokens, stop_strings, target.tokenizer)
    stats = SpecStats(tree_depth=tree.depth, reached_depth=[0] * (tree.depth + 1))
    pair = prefill_pair(target, make_drafter(config.drafter, draft), target_inputs, draft_inputs, stats,
                        room=max_new_tokens + tree.num_nodes + tree.draft_width, sampling=sampling, generator=generator,
                        prune=config.prune, reindex=config.reindex, static=static, compile=compile)  # fmt: skip
    t0 = time.perf_counter()
    tokens, pending = [pair.root], [pair.root]
    if on_tokens is not None:
        on_tokens(tokens[:])
    clock, drafter = Clock(target.device), pair.drafter
    clock.mark("draft")
    root_position = pair.position + pair.draft_offset
    proposal = None if stop.done(tokens) else drafter.propose(tree, pending, root_position, sampling, generator)
    while proposal is not None:
        node_tokens = proposal.tokens.to(target.device)
        if on_proposal is not None:
            on_proposal(node_tokens, len(tokens))
        clock.mark("verify")
        proposed = _event(target.device)  # the proposal is final: what the drafter may work after
        decision = decide(pair.target, tree, agree(node_tokens), proposal, pair.position, sampling, generator)
        verified = _event(target.device, timing=False)  # reached once the verification is done
        drafter.during_verify(tree, proposal, root_position, sampling, generator, proposed, verified)
        verdict = read_verdict(agree(decision), tree.depth)
        clock.mark("draft")
        processed = drafter.accept(verdict, proposal)  # the draft's cache keeps the accepted path
        kept = stop.cut(tokens, verdict.accepted_tokens + [verdict.next_token])
        tokens.extend(kept)
        pending = verdict.accepted_tokens[processed:] + [verdict.next_token]  # the deepest accepted node, if unprocessed
        pair.position += verdict.num_accepted + 1
        root_position = pair.position + pair.draft_offset
        # the next tree is queued before the target's roll-back and the bookkeeping: what the host
        # does between reading a verdict and queueing the next draft pass, the device waits for
        following = None if stop.done(tokens) else drafter.propose(tree, pending, root_position, sampling, generator)
        roll_back(pair.target.cache, verdict)
        if on_tokens is not None and kept:
            on_tokens(kept)
        stats.record_cycle(proposal.passes, verdict.num_accepted, len(kept), proposal.overlapped, verdict.accepted,
                           tree, proposal.depth)  # fmt: skip
        proposal = following
    clock.mark("end")
    _sync(target.device)
    stats.decode_s = time.perf_counter() - t0
    stats.drafting_s, stats.verify_s = clock.seconds("draft"), clock.seconds("verify")
    stats.new_tokens = len(tokens)
    stats.warmup_s = pair.target.warmup_s + pair.drafter.workspace.warmup_s - pair.warm
    return GenerationResult(token_ids=tokens, stats=stats, selection=pair.selection, scores=pair.scores)


@dataclass
class PairState:
    """Both models after the prefill stage: the target's workspace, the started drafter, the first
    token (the root of the first tree) and its rotary position in the target."""

    target: Workspace
    drafter: Drafter
    root: int
    position: int
    draft_offset: int  # the draft's rotary position minus the target's (a pruned prompt may differ)
    selection: object = None
    scores: torch.Tensor | None = None
    warm: float = 0.0  # compile/capture seconds spent before this call's decoding


def prefill_pair(target: VideoLMAdapter, drafter: Drafter, target_inputs: PreparedInputs,
                 draft_inputs: PreparedInputs, stats: SpecStats, *, room: int, sampling: SamplingConfig,
                 generator, prune: PruneConfig | None, reindex: bool, static: bool | None,
                 compile: bool | None) -> PairState:  # fmt: skip
    """target prefill -> Stage I scores -> prune -> draft prefill; the first token from the target."""
    draft = drafter.adapter
    t_ws = Workspace.reuse(target, target_inputs.length + room, role="target", static=default_static(target, static),
                           compile=default_compile(target, compile))  # fmt: skip
    warm = t_ws.warmup_s
    _sync(target.device)
    t0 = time.perf_counter()
    scores = selection = None
    if not len(target_inputs.video):  # a text-only prompt: nothing to prune
        prune = None
    if prune is not None and needs_scores(prune.strategy):
        logits, scores = target.prefill_with_scores(target_inputs, t_ws.cache)
    else:
        logits = target.prefill(target_inputs, t_ws.cache)
    root = int(agree(next_token(logits, sampling, generator).view(1)))
    if prune is not None:
        selection = select(prune, target_inputs.video, None if scores is None else scores.cpu())
        draft_inputs = draft.drop_video_tokens(draft_inputs, selection.kept, reindex=reindex)
        stats.stage1_tokens = selection.num_stage1
    stats.video_tokens, stats.draft_video_tokens = len(target_inputs.video), len(draft_inputs.video)
    _sync(target.device)
    t1 = time.perf_counter()
    drafter.start(draft_inputs, room, static=default_static(draft, static), compile=default_compile(draft, compile))
    _sync(draft.device)
    stats.prefill_s, stats.draft_prefill_s = t1 - t0, time.perf_counter() - t1
    return PairState(target=t_ws, drafter=drafter, root=root, position=target_inputs.next_position,
                     draft_offset=draft_inputs.next_position - target_inputs.next_position, selection=selection,
                     scores=scores, warm=warm + drafter.workspace.warmup_s)  # fmt: skip


def _event(device: torch.device, *, timing: bool = True):
    """A CUDA event recorded now on the device's current stream (None off the GPU)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event(enable_timing=timing)
    event.record(torch.cuda.current_stream(device))
    return event


def decide(t_ws: Workspace, tree: DraftTree, node_tokens: torch.Tensor, proposal: Proposal, position: int,
           sampling: SamplingConfig, generator) -> torch.Tensor:  # fmt: skip
    """Every node in one target pass and the accept decision, queued on the device (nothing waits);
    ``read_verdict`` brings it back in one transfer. Under tensor parallelism the loop takes rank 0's
    decision on every rank (one broadcast)."""
    on = tree.on(node_tokens.device)
    logits = t_ws.step(node_tokens[None], (position + on.node_depth)[None], t_ws.cache.length, on.ancestor_mask)[0]
    if sampling.greedy:
        return greedy_decision(tree, node_tokens, logits.argmax(-1), proposal.depth)
    p = probabilities(logits, sampling)
    return sampled_decision(tree, node_tokens, proposal.q.to(node_tokens.device), p, generator, proposal.depth)


def roll_back(cache, verdict: Verdict) -> None:
    """The target's cache keeps only the accepted path (device-side copies, queued without waiting)."""
    cache.move(verdict.path.clamp(min=0) + cache.length, cache.length)  # node i sits at length + i
    cache.commit(verdict.num_accepted + 1)
