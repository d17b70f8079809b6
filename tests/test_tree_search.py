"""The tree search: expected tokens from acceptance by rank, costs, the best tree, and the engine's
per-rank counts that feed it."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from specvlm.engine.speculative import SpecStats
from specvlm.engine.tree import DraftTree
from specvlm.engine.tree_search import (
    RankAcceptance,
    StepCosts,
    best_tree,
    score,
    write_tree,
)


@pytest.fixture
def tree_choice(monkeypatch, capsys, benchmark_script):
    """``python benchmarks/tree_choice.py ARGS`` run in this process (no interpreter and torch start
    per run): returns its exit code, stdout and stderr."""
    module = benchmark_script("tree_choice")

    def run(argv: list[str]) -> SimpleNamespace:
        monkeypatch.setattr(sys, "argv", ["tree_choice.py", *map(str, argv)])
        capsys.readouterr()
        try:
            module.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def test_expected_tokens_is_one_plus_the_path_chances():
    acc = RankAcceptance(((0.6, 0.3), (0.5, 0.2)))
    tree = DraftTree(((0,), (1,), (0, 0), (0, 1), (1, 0)))
    want = 1 + 0.6 + 0.3 + 0.6 * 0.5 + 0.6 * 0.2 + 0.3 * 0.5
    assert acc.expected_tokens(tree) == pytest.approx(want)
    # ranks and depths never measured have no chance
    assert acc.expected_tokens(DraftTree(((0,), (1,), (2,), (0, 0, 0), (0, 0)))) == pytest.approx(1 + 0.9 + 0.3)


@pytest.mark.parametrize("bad", [((),), ((0.7, 0.5),), ((1.2,),), ((-0.1,),)])
def test_acceptance_refuses_what_is_not_a_distribution_over_ranks(bad):
    with pytest.raises(ValueError):
        RankAcceptance(bad if bad != ((),) else ())


def test_costs_interpolate_and_refuse_to_extrapolate():
    costs = StepCosts(1.5, ((26, 9.0), (1, 6.0)))
    assert costs.verify(1) == 6.0 and costs.verify(26) == 9.0
    assert costs.verify(11) == pytest.approx(6.0 + 3.0 * 10 / 25)
    assert costs.cycle_ms(DraftTree.chain(3)) == pytest.approx(3 * 1.5 + costs.verify(4))
    with pytest.raises(ValueError, match="up to 26"):
        costs.verify(27)
    for bad in [(1.0, ()), (-1.0, ((1, 2.0),)), (1.0, ((1, 2.0), (1, 3.0))), (1.0, ((0, 2.0),))]:
        with pytest.raises(ValueError):
            StepCosts(*bad)


def _all_trees(max_nodes: int, depth: int, width: int):
    """Every valid tree (prefix- and sibling-closed path set) within the bounds, by brute force."""
    paths = [p for d in range(1, depth + 1) for p in itertools.product(range(width), repeat=d)]
    for k in range(1, max_nodes):
        for chosen in itertools.combinations(paths, k):
            s = set(chosen)
            if all((len(p) == 1 or p[:-1] in s) and (p[-1] == 0 or p[:-1] + (p[-1] - 1,) in s) for p in s):
                yield DraftTree(chosen)


@pytest.mark.parametrize("seed", range(6))
def test_best_tree_is_the_best_of_every_small_tree(seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(3):
        p = torch.rand(3, generator=g)
        p = p / p.sum() * float(torch.rand((), generator=g) * 0.5 + 0.5)
        rows.append(tuple(sorted(p.tolist(), reverse=True)))
    acc = RankAcceptance(tuple(rows))
    slope = float(torch.rand((), generator=g)) * 0.6
    costs = StepCosts(float(torch.rand((), generator=g)) * 2, ((1, 5.0), (6, 5.0 + 5 * slope)))
    found = best_tree(acc, costs)
    brute = min((score(t, acc, costs) for t in _all_trees(6, 3, 3)), key=lambda c: c.ms_per_token)
    assert found.ms_per_token == pytest.approx(brute.ms_per_token)
    assert found.tree.num_nodes <= 6


def test_free_drafting_and_flat_verification_take_the_whole_budget():
    acc = RankAcceptance(((0.8, 0.1),) * 4)
    found = best_tree(acc, StepCosts(0.0, ((1, 5.0), (12, 5.0))))
    assert found.tree.num_nodes == 12 and found.tree.depth == 4
    # costly draft passes: one level
    assert best_tree(acc, StepCosts(50.0, ((1, 5.0), (12, 5.0)))).tree.depth == 1


def test_nodes_that_cannot_be_accepted_are_never_added():
    """Top-1 acceptance only: side branches emit nothing, so the choice is a chain even where the
    measured costs (noisy, or flat) make a larger tree verify no slower, or faster."""
    acc = RankAcceptance.main_path((0.9, 0.8, 0.7))
    for verify in (((1, 5.0), (12, 5.0)), ((1, 5.0), (12, 4.0))):
        found = best_tree(acc, StepCosts(0.1, verify))
        assert all(set(p) == {0} for p in found.tree.paths), found.tree.paths
        assert found.tree.depth == 3
    # a first node with no chance still makes a tree (of one node)
    assert best_tree(RankAcceptance.main_path((0.0,)), StepCosts(0.1, ((1, 5.0), (4, 5.0)))).tree.num_nodes == 2


def test_written_tree_reads_back(tmp_path):
    tree = DraftTree(((0,), (1,), (0, 0), (1, 0), (0, 0, 0)))
    write_tree(tree, tmp_path / "t.txt")
    assert DraftTree.parse(str(tmp_path / "t.txt")) == tree


def test_stats_count_ranks_of_the_accepted_path():
    tree = DraftTree(((0,), (1,), (2,), (0, 0), (0, 1), (1, 0)))  # nodes: 1=(0) 2=(1) 3=(2) 4=(0,0) 5=(0,1) 6=(1,0)
    stats = SpecStats(tree_depth=tree.depth, reached_depth=[0] * (tree.depth + 1))
    stats.record_cycle(2, 2, 3, path=[0, 1, 5], tree=tree)  # ranks 0 then 1
    stats.record_cycle(2, 1, 2, path=[0, 2], tree=tree)  # rank 1, then its one child missed
    stats.record_cycle(2, 0, 1, path=[0], tree=tree)  # nothing
    stats.record_cycle(1, 1, 2, path=[0, 3], tree=tree, proposed_depth=1)  # rank 2, one level proposed
    assert stats.rank_tries == [[4, 4, 4], [2, 1, 0]]
    assert stats.rank_hits == [[1, 1, 1], [0, 1, 0]]
    assert stats.rank_acceptance == [[0.25, 0.25, 0.25], [0.0, 1.0]]


def test_tree_choice_benchmark_on_the_bundled_pair(tmp_path, tree_choice):
    """benchmarks/tree_choice.py end to end on a CPU: the bundled pair's acceptance by rank, a tree
    chosen from given step costs, written as a file the engine reads, every check run lossless."""
    costs = tmp_path / "e2e.jsonl"
    common = {"pair": "t:d", "context": 4096, "workspace": "fresh", "engine": "x", "sampling": 0.0}
    costs.write_text("\n".join(json.dumps(r) for r in [
        {**common, "method": "target-only", "ms_per_token": 5.0},
        {**common, "method": "SD pruned 0.9", "tree": "default", "tree_nodes": 26, "verify_ms_per_cycle": 8.0,
         "drafting_ms_per_cycle": 5.0, "draft_passes_per_cycle": 5.0}]) + "\n")  # fmt: skip
    out, trees = tmp_path / "choice.json", tmp_path / "trees"
    cmd = ["--clips", "2", "--min-tries", "5", "--probe-depth", "4", "--probe-width", "2", "--max-new-tokens", "32",
           "--costs", str(costs), "--out", str(out), "--trees-dir", str(trees)]  # fmt: skip
    done = tree_choice(cmd)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["probe"]["equal"] == 2 and all(c["equal"] == c["clips"] for c in result["checks"])
    chosen = DraftTree.parse(str(trees / "t_4096_fresh.txt"))
    assert [list(p) for p in chosen.paths] == result["choices"][0]["chosen"]["paths"]
    assert {c["drafter"] for c in result["checks"]} == {"model", "adaptive:0.3"}
    assert result["choices"][0]["chosen"]["ms_per_token"] <= result["choices"][0]["default"]["ms_per_token"]
    bad = tree_choice(cmd[:-6] + ["--costs", str(tmp_path / "none.jsonl")])
    assert bad.returncode == 2 and "--costs" in bad.stderr and "Traceback" not in bad.stderr


def test_tree_choice_takes_the_users_pair_and_videos(tmp_path, tiny_pairs, tree_choice):
    import numpy as np

    from specvlm.video import write_video

    target_dir, draft_dir = tiny_pairs("llava_onevision")
    video = write_video(tmp_path / "clip.mp4", np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8), fps=4)
    costs = tmp_path / "e2e.jsonl"
    common = {"pair": "t:d", "context": 4096, "workspace": "fresh", "engine": "x", "sampling": 0.0}
    costs.write_text("\n".join(json.dumps(r) for r in [
        {**common, "method": "target-only", "ms_per_token": 5.0},
        {**common, "method": "SD pruned 0.9", "tree_nodes": 26, "verify_ms_per_cycle": 8.0,
         "drafting_ms_per_cycle": 5.0, "draft_passes_per_cycle": 5.0}]) + "\n")  # fmt: skip
    cmd = ["--target", str(target_dir), "--draft", str(draft_dir), "--videos", str(video), "--prompts", "Describe the video.", "What moves?", "--num-frames", "8",
           "--min-tries", "1", "--probe-depth", "2", "--probe-width", "2", "--max-new-tokens", "12", "--temperature", "0.7",
           "--costs", "measure", "--out", str(tmp_path / "c.json"), "--trees-dir", str(tmp_path / "trees")]  # fmt: skip
    done = tree_choice(cmd)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "c.json").read_text())
    # the step costs are the pair's own, timed here: target-only (1 node) and three trees' verification
    (choice,) = result["choices"]
    assert choice["workspace"] == "measured" and [n for n, _ in choice["costs"]["verify_ms"]] == [1, 3, 5, 26]  # chain:2, the 2 x 2 probe, the default
    assert "measured speedup" in done.stdout and all(c["ms_per_token"] > 0 for c in result["checks"])
    # sampled: acceptance by the rank of the draft's draws; outputs follow the target's distribution, not its tokens
    assert result["probe"]["clips"] == 2 and result["probe"]["equal"] is None and result["probe"]["cycles"] > 0
    assert f"{target_dir} / {draft_dir}" in done.stdout and "sampled at temperature 0.7" in done.stdout
    for bad, flag in [(["--target", str(target_dir)], "--draft"), (["--videos", str(tmp_path / "none.mp4")], "--videos"),
                      (["--acceptance-from", str(costs), "--costs", "measure"], "--costs measure"),
                      (["--min-tries", "0"], "--min-tries must be >= 1"), (["--max-new-tokens", "-3"], "--max-new-tokens"),
                      (["--prompts", " "], "must not be empty")]:  # fmt: skip
        run = tree_choice(["--costs", str(costs)] + bad)
        assert run.returncode == 2 and flag in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_tree_choice_from_a_benchmark_runs_counts(tmp_path, tree_choice):
    """--acceptance-from: the rank counts a `specvlm bench` run wrote (samples.jsonl), pooled over
    the method's records; no pair is loaded and no check is run."""
    costs = tmp_path / "e2e.jsonl"
    common = {"pair": "t:d", "context": 4096, "workspace": "fresh", "engine": "x", "sampling": 0.0}
    long = {**common, "context": 65536}  # a long context: verification and draft passes dear, a small tree pays
    costs.write_text("\n".join(json.dumps(r) for r in [
        {**common, "method": "target-only", "ms_per_token": 5.0},
        {**common, "method": "SD pruned 0.9", "tree_nodes": 26, "verify_ms_per_cycle": 6.0,
         "drafting_ms_per_cycle": 2.5, "draft_passes_per_cycle": 5.0},
        {**long, "method": "target-only", "ms_per_token": 6.0},
        {**long, "method": "SD pruned 0.9", "tree_nodes": 26, "verify_ms_per_cycle": 14.0,
         "drafting_ms_per_cycle": 10.0, "draft_passes_per_cycle": 5.0}]) + "\n")  # fmt: skip
    record = {"method": "pruned:specvlm@0.9", "status": "ok", "rank_tries": [[20, 20], [15, 15]],
              "rank_hits": [[15, 3], [9, 3]]}  # fmt: skip
    other = {**record, "method": "sd", "rank_hits": [[0, 0], [0, 0]]}  # another method: not pooled
    failed = {**record, "status": "failed", "rank_hits": [[0, 0], [0, 0]]}
    samples = tmp_path / "samples.jsonl"
    samples.write_text("\n".join(json.dumps(r) for r in [record, record, other, failed]) + "\n")
    cmd = ["--acceptance-from", str(samples), "--min-tries", "10", "--costs", str(costs), "--out", str(tmp_path / "c.json"),
           "--trees-dir", str(tmp_path)]  # fmt: skip
    done = tree_choice(cmd)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["rank_acceptance"] == [[0.75, 0.15], [0.6, 0.2]] and result["checks"] == []
    assert result["probe"]["records"] == 2 and "2 records of pruned:specvlm@0.9" in done.stdout
    chosen = DraftTree.parse(str(tmp_path / "t_4096_fresh.txt"))
    assert chosen.depth <= 2 and chosen.max_children <= 2
    # two contexts: a schedule switching between their trees at the geometric mean of the two
    from specvlm.engine.tree import parse_tree

    old = tmp_path / "old.jsonl"  # records of a run from before the counts
    old.write_text(json.dumps({"method": "pruned:specvlm@0.9", "status": "ok", "tau": 2.0}) + "\n")
    for bad, words in [(["--method", "sd:nothing"], "no successful records of --method sd:nothing"),
                       (["--acceptance-from", str(costs)], "no successful records"),
                       (["--acceptance-from", str(old)], "hold no rank counts")]:  # fmt: skip
        run = tree_choice(cmd + bad)
        assert run.returncode == 2 and words in run.stderr and "Traceback" not in run.stderr, run.stderr
    schedule = parse_tree(f"schedule:{tmp_path / 't_fresh_schedule.txt'}")
    long_tree = DraftTree.parse(str(tmp_path / "t_65536_fresh.txt"))
    assert long_tree.num_nodes < chosen.num_nodes and [n for n, _ in schedule.steps] == [0, 16384]
    assert schedule.for_context(4096) == chosen and schedule.for_context(70000) == long_tree


def test_guess_coverage_enumerates_every_outcome_of_a_tree_once():
    """benchmarks/guess_coverage.py: an outcome is the path of ranks the target follows through the
    tree and the first rank off it (the bonus); their probabilities are the products of the ranks'."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("guess_coverage", Path(__file__).resolve().parents[1] / "benchmarks" / "guess_coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (a0, a1), (b0, b1), (c0, c1) = acceptance = [[0.6, 0.3], [0.5, 0.4], [0.7, 0.2]]
    listed = module.outcomes(set(DraftTree.chain(2).paths), acceptance)
    found = {ranks: p for p, ranks in listed}
    expected = {(1,): a1, (0, 1): a0 * b1, (0, 0, 0): a0 * b0 * c0, (0, 0, 1): a0 * b0 * c1}
    assert found.keys() == expected.keys()
    assert all(abs(found[k] - expected[k]) < 1e-12 for k in expected)
    assert len(found) == len(listed) and [p for p, _ in listed] == sorted(found.values(), reverse=True)
