"""What a speculative generation is asked to do, in one object shared by the API, the benchmarks,
the server and the CLI: the draft tree, the sampling rule, the draft's pruning, position reindexing
after pruning, and the drafting rule. Nothing in it changes the output but ``sampling``: greedy
output is the target's own whatever the rest, sampled output is distributed as the target's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from specvlm.engine.sampling import SamplingConfig
from specvlm.engine.tree import DraftTree, TreeSchedule, parse_tree, tree_for
from specvlm.pruning.strategies import PruneConfig


@dataclass(frozen=True)
class SpecConfig:
    tree: DraftTree | TreeSchedule = field(default_factory=DraftTree.default)  # a schedule: a tree per prompt length
    sampling: SamplingConfig = SamplingConfig()
    prune: PruneConfig | None = None  # None: the draft sees its prompt as given (plain SD on a full one)
    reindex: bool = False  # close the position gaps the pruned tokens leave (see drop_video_tokens)
    drafter: object = "model"  # a name of specvlm.engine.drafters.DRAFTERS, or a Drafter

    def __post_init__(self):
        if isinstance(self.tree, str):
            object.__setattr__(self, "tree", parse_tree(self.tree))
        if not isinstance(self.tree, (DraftTree, TreeSchedule)):
            raise TypeError(f"tree must be a DraftTree, a TreeSchedule or a tree spec string, got {type(self.tree).__name__}")

    def tree_for(self, prompt_length: int) -> DraftTree:
        """The draft tree for a prompt of this many tokens."""
        return tree_for(self.tree, prompt_length)

    def replace(self, **changes) -> "SpecConfig":
        return dataclasses.replace(self, **changes)
