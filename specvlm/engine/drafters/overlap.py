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
one finishes its remaining passes after the verdict. Whether a cycle guesses is decided by what
cycles cost (``GuessPolicy``): the device time from one proposal to the next, measured apart for
cycles that guessed and cycles that did not, holds everything a guess does (the verification it
slows, the pass a wrong one leaves to wait for, the drafting a right one saves), so the drafter
takes the cheaper way on the pair, card and video at hand and watches the other ever more rarely
while it stays dearer. Per-stream timelines:
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


class GuessPolicy:
    """Whether a cycle guesses, from what cycles cost.

    ``record(guessed, seconds)`` takes one cycle's cost: the time from its proposal to the next
    one's, which holds its verification, whatever the guess added to it or left to wait for, and the
    next proposal's drafting (all but nothing after a right guess). The mean cost of each way is
    kept (the running mean of its first samples, then a moving one, ``weight``), and ``want()``
    takes the cheaper; until both ways have a cost it tries not guessing, then guessing. The dearer
    way is tried again one cycle in ``interval``: ``probe`` cycles after a change of way, doubled
    (up to ``max_probe``) each time a try leaves it the dearer, so a way that never pays (guessing
    beside a bandwidth-bound draft on one GPU, say) costs ever less to keep watching, and one that
    starts to pay (longer contexts, easier video) is taken up again. ``always`` guesses every cycle.
    """

    def __init__(self, probe: int = 8, max_probe: int = 64, weight: float = 0.1, always: bool = False):
        if not 1 <= probe <= max_probe or not 0.0 < weight <= 1.0:
            raise ValueError(f"a guess policy needs 1 <= probe <= max_probe and a weight in (0, 1], got "
                             f"probe={probe}, max_probe={max_probe}, weight={weight}")  # fmt: skip
        self.probe, self.max_probe, self.weight, self.always = probe, max_probe, weight, always
        self.mean: dict[bool, float | None] = {True: None, False: None}  # seconds a cycle, guessing or not
        self.samples = {True: 0, False: 0}
        self.interval, self.since = probe, 0

    @property
    def guessing(self) -> bool:
        """The cheaper way so far: guessing when its mean cost is below not guessing's."""
        guess, plain = self.mean[True], self.mean[False]
        return guess is not None and plain is not None and guess < plain

    def want(self) -> bool:
        if self.always:
            return True
        if self.mean[False] is None or self.mean[True] is None:
            return self.mean[False] is not None
        self.since += 1
        if self.since >= self.interval:  # try the dearer way
            self.since = 0
            return not self.guessing
        return self.guessing

    def record(self, guessed: bool, seconds: float) -> None:
        before, first = self.guessing, self.mean[guessed] is None
        self.samples[guessed] += 1
        mean = self.mean[guessed]
        weight = max(self.weight, 1.0 / self.samples[guessed])
        self.mean[guessed] = seconds if mean is None else mean + weight * (seconds - mean)
        if self.always or first or None in self.mean.values() or guessed == before and self.guessing == before:
            return
        if self.guessing != before:  # the ways changed places
            self.interval, self.since = self.probe, 0
        elif seconds < self.mean[not guessed]:  # a try cheaper than the cheaper way's mean: look again soon
            self.interval = self.probe
        else:  # a try of the dearer way left it the dearer: try it less often
            self.interval = min(2 * self.interval, self.max_probe)


class OverlapDrafter(ModelDrafter):
    def __init__(self, adapter, on_guess=None, priority: str = "high", ahead: int | None = None,
                 policy: GuessPolicy | None = None):  # fmt: skip
        if priority not in ("high", "normal"):
            raise ValueError(f"the side stream's priority is high or normal, got {priority!r}")
        if ahead is not None and ahead < 1:
            raise ValueError(f"a guess queues at least one pass before the verdict, got ahead={ahead}")
        super().__init__(adapter)
        self.ahead = ahead  # passes of a guess queued before the verdict at most (None: as time allows)
        self.policy = GuessPolicy() if policy is None else policy  # kept across requests
        # the cycle before this one and this one: (the moment its proposal was final, whether it
        # guessed, the workspace's warm-up seconds then); a cycle's cost runs from one to the next
        self.marks: list[list] = []
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
        self.marks.clear()  # the prefill is no cycle's cost
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
        if self.cuda and proposed is None:  # not given: the proposal was final on this device's stream
            proposed = torch.cuda.Event(enable_timing=True)
            proposed.record(torch.cuda.current_stream(self.device))
        # the request's first cycle holds its verification's warm-up (on the target): not measured
        warm = self.workspace.warmup_s if self.marks else None
        self.marks = self.marks[-1:] + [[proposed if self.cuda else time.perf_counter(), False, warm]]
        # the guess writes the main path, its leaf, the guessed token and one tree's levels
        if proposal.depth < depth or len(tree.main_path) != depth + 1 or cache.length + depth + tree.num_nodes + tree.draft_width > cache.capacity:
            return
        if not self.policy.want():
            return
        self.marks[-1][1] = True
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

    def _cost(self) -> None:
        """The cycle before this one's cost, for the policy (its end, this cycle's proposal, was
        reached before this verification, whose verdict is read). A cycle in which a step was
        compiled or captured, or the first of a request (its verification's, on the target), is
        no measure of what guessing costs."""
        if len(self.marks) < 2:
            return
        (start, guessed, warm), (end, _, warm_end) = self.marks
        if warm is not None and warm_end == warm:
            seconds = start.elapsed_time(end) / 1000 if self.cuda else end - start
            self.policy.record(guessed, seconds)
        self.marks = self.marks[1:]

    def accept(self, verdict: Verdict, proposal: Proposal) -> int:
        self._cost()
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

