"""Drafting while the target verifies (PEARL's post-verification, on a tree): once the target's
verification of cycle k is queued, the draft guesses its outcome, every node of the main path
accepted and the bonus token its own top-1 after the main path's leaf, and drafts cycle k + 1 from
there, on a stream of its own (a GPU runs the two side by side where their kernels leave room).
When the verdict comes, a right guess makes that tree the next proposal (its drafting cost hidden
behind the verification); a wrong one is thrown away: the slots the guess wrote over are put back
and the draft takes the truth as the model drafter does. The guess changes which tree is proposed,
never how it is verified: greedy output stays the target's own, and a tree drafted after a right
guess was drawn from the draft's distributions given the very prefix the verdict confirmed, so
sampled output stays exactly distributed.

The guess costs one pass more than drafting from the truth (the leaf, then the guessed token);
it is only worth its contention when the main path is often fully accepted. Its passes are queued
one at a time while the verification runs (each once the one before is done), and no more once the
verification is done: a wrong guess then leaves at most the pass in flight to wait for, and a right
one finishes its remaining passes after the verdict. While guesses are right less often than
``min_hit_rate`` (a decaying rate), only one cycle in ``probe`` guesses: measured on one H200
(7B/0.5B, results/overlap.md), a guess slows the verification beside it by about 1 ms and a wrong
one leaves about 2 ms of its pass to wait for, while a right one saves about 4.4 ms: it pays only
when right in about half the cycles or more. Per-stream timelines:
``timeline()`` (CUDA events: verification queued, guess started and ended on the side stream,
verdict known on the main one), ``busy_s()`` the side stream's total.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from specvlm.engine.drafter import Proposal
from specvlm.engine.drafters.model import ModelDrafter, finish
from specvlm.engine.sampling import SamplingConfig
from specvlm.engine.tree import DraftTree
from specvlm.engine.verify import Verdict


class OverlapDrafter(ModelDrafter):
    def __init__(self, adapter, on_guess=None, priority: str = "high", ahead: int | None = None,
                 min_hit_rate: float = 0.5, probe: int = 8):  # fmt: skip
        if priority not in ("high", "normal"):
            raise ValueError(f"the side stream's priority is high or normal, got {priority!r}")
        if ahead is not None and ahead < 1:
            raise ValueError(f"a guess queues at least one pass before the verdict, got ahead={ahead}")
        if not 0.0 <= min_hit_rate <= 1.0 or probe < 1:
            raise ValueError(f"min_hit_rate is a rate in [0, 1] and probe a number of cycles >= 1, got {min_hit_rate}, {probe}")
        super().__init__(adapter)
        self.ahead = ahead  # passes of a guess queued before the verdict at most (None: as time allows)
        # guess only while guesses are right often enough to pay for their contention (measured on
        # one H200, 7B/0.5B: break-even near a half, results/overlap.md); when they are not, one
        # cycle in ``probe`` still guesses, so the rate follows the video
        self.min_hit_rate, self.probe = min_hit_rate, probe
        self.hit_rate, self.since_guess = 1.0, 0  # decaying rate of right guesses (kept across requests)
        self.priority = priority  # high: the guess's small kernels take SMs first as the verification's free up
        self.on_guess = on_guess  # benchmarks: on_guess(token (1,) on the device, depth) may rewrite the guess
        self.cuda = False
        self.side = self.guess_host = self.guess_done = None  # made at the first start, on the draft's device
        self.side_spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.hits = self.guesses = 0
        self.queued: list[int] = []  # passes of each guess queued before its verdict
        self._reset()

    def _reset(self) -> None:
        self.ready: Proposal | None = None  # the next cycle's tree, drafted after a right guess
        self.undo = None  # what a wrong guess must put back: (root slot, length, saved slots, next)

    def start(self, inputs, room: int, *, static: bool, compile: bool) -> None:
        if self.guess_host is None:
            self.cuda = self.device.type == "cuda"
            # a priority past the allowed range maps to the range's end (the highest, here)
            self.side = torch.cuda.Stream(self.device, priority=-100 if self.priority == "high" else 0) if self.cuda else None
            self.guess_host = torch.zeros(1, dtype=torch.long, pin_memory=self.cuda)
            self.guess_done = torch.cuda.Event() if self.cuda else None
        self._join()
        self._reset()
        self.side_spans.clear()
        self.queued.clear()
        self.hits = self.guesses = 0
        super().start(inputs, room, static=static, compile=compile)

    def _join(self) -> None:
        """The draft's own stream of work waits for the guess."""
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self.side)

    def propose(self, tree: DraftTree, pending, root_position: int, sampling: SamplingConfig,
                generator: torch.Generator | None) -> Proposal:  # fmt: skip
        ready, self.ready = self.ready, None
        if ready is not None:
            return ready
        return super().propose(tree, pending, root_position, sampling, generator)

    def during_verify(self, tree: DraftTree, proposal: Proposal, root_position: int, sampling: SamplingConfig,
                      generator: torch.Generator | None, proposed=None, verified=None) -> None:  # fmt: skip
        cache, depth = self.workspace.cache, tree.depth
        # the guess writes the main path, its leaf, the guessed token and one tree's levels
        if proposal.depth < depth or len(tree.main_path) != depth + 1 or cache.length + depth + tree.num_nodes + tree.draft_width > cache.capacity:
            return
        self.since_guess += 1
        if self.hit_rate < self.min_hit_rate and self.since_guess < self.probe:
            return
        self.since_guess = 0
        if not self.cuda:
            verified = None
        elif verified is None:  # not given: the verification was queued on this device's stream
            verified = torch.cuda.Event()
            verified.record(torch.cuda.current_stream(self.device))
        root, length = self.root_slot, cache.length
        self.guesses += 1
        with torch.cuda.stream(self.side) if self.cuda else nullcontext():
            if self.cuda:  # after the proposal, not after the verification
                if proposed is None:
                    self.side.wait_stream(torch.cuda.current_stream(self.device))
                else:
                    self.side.wait_event(proposed)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            saved = cache.save(root + 1, length - root - 1)  # the tree's slots, which the guess writes over
            passes = self._guess(tree, proposal, root_position, sampling, generator)
            following, queued = self._queue(passes, verified)
            if self.cuda:
                end.record()
                self.side_spans.append((proposed, start, end))
        self.queued.append(queued)
        self.undo = (root, length, saved, passes, following)
        self.guessed_path = tree.main_path

    def _queue(self, passes, verified) -> tuple[Proposal | None, int]:
        """Queue the guess's passes on the side stream while the verification runs (at least the
        first, which makes the guess; at most ``ahead``), each once the one before is done, so that a
        verdict against the guess leaves at most the pass the GPU is on to wait for.
        Returns the guess's proposal if every pass was queued, and how many were."""
        queued, running = 0, None
        while self.ahead is None or queued < self.ahead:
            if verified is not None and queued:
                while not running.query() and not verified.query():
                    time.sleep(0)  # nothing else to do before the verdict; other threads may run
                if verified.query():
                    break
            try:
                next(passes)
            except StopIteration as done:
                return done.value, queued
            queued += 1
            if verified is not None:
                running = torch.cuda.Event()
                running.record()
        return None, queued

    def _guess(self, tree: DraftTree, proposal: Proposal, root_position: int, sampling: SamplingConfig,
               generator: torch.Generator | None):  # fmt: skip
        """The guess, one pass at a time (see ``drafting``): the main path as if all accepted, the
        draft's top-1 after its leaf, then the tree that follows."""
        cache, depth, on = self.workspace.cache, tree.depth, tree.on(self.device)
        guess_path = Verdict(accepted=list(tree.main_path), next_token=-1, recovered=False, path=on.main_path)
        super().accept(guess_path, proposal)  # the main path but its leaf, as if all were accepted
        step_tokens = torch.zeros(1, tree.draft_width, dtype=torch.long, device=self.device)
        step_tokens[0, :1] = proposal.tokens[on.main_path[-1:]]  # a (1,) index: a 0-d one would sync
        positions = (on.draft_rows + root_position + depth)[None]
        logits = self.workspace.step(step_tokens, positions, cache.length, on.draft_patterns[0])
        cache.commit(1)
        guess = logits[0, :1].argmax(-1)  # (1,): the draft's top-1 after the leaf
        if self.on_guess is not None:
            self.on_guess(guess, depth)
        self.guess_host.copy_(guess, non_blocking=True)
        if self.cuda:
            self.guess_done.record()
        yield
        following = yield from self.drafting(tree, guess, root_position + depth + 1, sampling, generator)
        following.overlapped = True
        return following

    def accept(self, verdict: Verdict, proposal: Proposal) -> int:
        if self.undo is None:
            return super().accept(verdict, proposal)
        root, length, saved, passes, following = self.undo
        self.undo = None
        if self.cuda:
            self.guess_done.synchronize()
            seen = torch.cuda.Event(enable_timing=True)  # the verdict is known: the main stream is idle here
            seen.record(torch.cuda.current_stream(self.device))
            self.side_spans[-1] += (seen,)
        guessed = int(self.guess_host[0])
        self._join()
        right = verdict.accepted == list(self.guessed_path) and verdict.next_token == guessed
        self.hit_rate = 0.9 * self.hit_rate + 0.1 * right
        if right:
            self.hits += 1
            if following is None:  # the verdict came first: the rest of the guess's passes, on this stream
                following = finish(passes)
            if self.cuda:  # made (partly) on the side stream, read on this one
                for t in (following.tokens, following.q):
                    if t is not None:
                        t.record_stream(torch.cuda.current_stream(self.device))
            self.ready = following
            return verdict.num_accepted  # every accepted token, and the bonus, processed
        passes.close()
        cache = self.workspace.cache
        if self.cuda:
            for t in saved:
                t.record_stream(torch.cuda.current_stream(self.device))
        cache.restore(saved, root + 1)
        cache.length = length
        self.root_slot = root
        return super().accept(verdict, proposal)

    def busy_s(self) -> float:
        """Seconds the side stream spent on guesses (after the device has finished)."""
        return sum(span[1].elapsed_time(span[2]) for span in self.side_spans) / 1000

    def timeline(self) -> list[dict]:
        """Per guess, in ms from the moment its verification was queued (after the device has
        finished; for a draft on a GPU of its own, from the guess's start): when the side stream
        started and ended the guess, how many of its passes were queued before the verdict, and
        when the verdict was known on the draft's main stream (verification done, read back)."""
        out = []
        for span in self.side_spans:
            proposed, start, end, *seen = span
            if proposed is None or proposed.device != start.device:  # a draft on its own GPU: from the guess's start
                proposed = start
            row = {"side_start": proposed.elapsed_time(start), "side_end": proposed.elapsed_time(end),
                   "passes_ahead": self.queued[len(out)]}  # fmt: skip
            if seen:
                row["verdict"] = proposed.elapsed_time(seen[0])
            out.append(row)
        return out

