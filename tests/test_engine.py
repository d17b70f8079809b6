"""Speculative engine behaviour beyond the greedy gate: stopping, pair checks, sampling, the API."""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from specvlm import SpeculativeVLM
from specvlm.engine.config import SpecConfig
from specvlm.engine.decoding import decode_target
from specvlm.engine.sampling import SamplingConfig, probabilities
from specvlm.engine.speculative import PairMismatchError, check_pair, speculative_decode
from specvlm.engine.tree import DraftTree
from specvlm.models import load_adapter
from specvlm.testing.tiny import build_tiny_checkpoint
from specvlm.video import write_video

FAMILY = "qwen2_5_vl"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("engine") / "clip.mp4"
    write_video(path, rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8), fps=4)
    return path


@pytest.fixture(scope="module")
def pair(tiny_pairs, video):
    target_dir, draft_dir = tiny_pairs(FAMILY)
    target = load_adapter(str(target_dir), dtype="float32")
    draft = load_adapter(str(draft_dir), dtype="float32")
    features = target.build_inputs(video, "Describe the video.", num_frames=8)
    return target, draft, target.prepare(features), draft.prepare(features)


def test_stop_string_cuts_where_target_only_stops(pair):
    target, _, full, _ = pair
    reference = decode_target(target, full, max_new_tokens=30).token_ids
    stop = target.tokenizer.decode(reference[6:8])
    expected = decode_target(target, full, max_new_tokens=30, stop_strings=(stop,)).token_ids
    assert len(expected) < len(reference) and stop in target.tokenizer.decode(expected)
    for tree in (DraftTree.chain(5), DraftTree.default()):
        got = speculative_decode(
            target,
            target,
            full,
            full,
            max_new_tokens=30,
            stop_strings=(stop,),
            config=SpecConfig(tree=tree),
        )
        assert got.token_ids == expected


def test_eos_inside_a_cycle_stops_there(pair, monkeypatch):
    target, _, full, _ = pair
    reference = decode_target(target, full, max_new_tokens=30).token_ids
    eos = reference[7]
    monkeypatch.setattr(target, "eos_token_ids", (eos,))
    expected = decode_target(target, full, max_new_tokens=30).token_ids
    assert expected == reference[: reference.index(eos) + 1]
    got = speculative_decode(
        target,
        target,
        full,
        full,
        max_new_tokens=30,
        config=SpecConfig(tree=DraftTree.chain(5)),
    )
    assert got.token_ids == expected


@pytest.mark.parametrize("max_new", [1, 2, 7])
def test_max_new_tokens_is_exact(pair, max_new):
    target, draft, full, draft_inputs = pair
    expected = decode_target(target, full, max_new_tokens=max_new).token_ids
    got = speculative_decode(
        target,
        target,
        full,
        full,
        max_new_tokens=max_new,
        config=SpecConfig(tree=DraftTree.default()),
    )
    assert len(got.token_ids) == max_new and got.token_ids == expected
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        speculative_decode(
            target,
            draft,
            full,
            draft_inputs,
            max_new_tokens=0,
            config=SpecConfig(tree=DraftTree.chain(2)),
        )


def test_pairs_are_checked(tiny_pairs, pair, tmp_path):
    target, draft, full, _ = pair
    check_pair(target, draft)
    other = load_adapter(str(tiny_pairs("qwen3_vl")[1]), dtype="float32")
    with pytest.raises(PairMismatchError, match="one family: target is qwen2_5_vl, draft is qwen3_vl"):
        check_pair(target, other)
    changed = load_adapter(str(tiny_pairs(FAMILY)[1]), dtype="float32")
    changed.tokenizer.add_tokens(["<not-in-the-target>"])
    with pytest.raises(PairMismatchError, match="tokenizers differ"):
        check_pair(target, changed)


def test_a_tree_wider_than_the_vocabulary_is_refused_before_any_work(pair):
    target, draft, full, reduced = pair
    wide = DraftTree(tuple((i,) for i in range(draft.vocab_size + 1)))
    with pytest.raises(ValueError, match=f"{draft.vocab_size + 1} children, more than the draft's vocabulary"):
        speculative_decode(target, draft, full, reduced, max_new_tokens=4, config=SpecConfig(tree=wide))


def test_a_checkpoint_without_its_tokenizer_is_named_when_loaded(tiny_pairs, tmp_path):
    import shutil

    target_dir, draft_dir = tiny_pairs(FAMILY)
    broken = tmp_path / "target"
    shutil.copytree(target_dir, broken)
    (broken / "tokenizer.json").unlink()  # transformers then builds a tokenizer of the special tokens alone
    with pytest.raises(FileNotFoundError, match=rf"{broken}: the checkpoint has no tokenizer \(none of .*tokenizer.json"):
        SpeculativeVLM.from_pretrained(str(broken), str(draft_dir), dtype="float32")  # a MissingTokenizerError
    (broken / "tokenizer_config.json").unlink()  # transformers then fails to build one
    with pytest.raises(FileNotFoundError, match=rf"{broken}: the checkpoint has no tokenizer"):
        load_adapter(str(broken), dtype="float32")


def test_both_tokenizers_are_checked_before_any_weight_is_read(tiny_pairs, tmp_path):
    """A 32B target takes minutes to load: a draft without its tokenizer, or with another one, is
    refused before the target's weights are read (here they are damaged, so reading them would fail)."""
    import shutil

    from transformers import AutoTokenizer

    target_dir, draft_dir = tiny_pairs(FAMILY)
    target = tmp_path / "target"
    shutil.copytree(target_dir, target)
    for weights in target.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])
    no_tokenizer, other_tokenizer = tmp_path / "no-tokenizer", tmp_path / "other-tokenizer"
    for folder in (no_tokenizer, other_tokenizer):
        shutil.copytree(draft_dir, folder)
    (no_tokenizer / "tokenizer.json").unlink()
    tokenizer = AutoTokenizer.from_pretrained(draft_dir)
    tokenizer.add_tokens(["<not-in-the-target>"])
    tokenizer.save_pretrained(other_tokenizer)
    with pytest.raises(FileNotFoundError, match=rf"{no_tokenizer}: the checkpoint has no tokenizer"):
        SpeculativeVLM.from_pretrained(str(target), str(no_tokenizer), dtype="float32")
    with pytest.raises(PairMismatchError, match=r"tokenizers differ \(\d+ vs \d+ tokens; 0 .* only in the target's, 1 only"):
        SpeculativeVLM.from_pretrained(str(target), str(other_tokenizer), dtype="float32")
    with pytest.raises(Exception, match="(?i)safetensor|header|deserializ"):  # the damage is real: it fails once read
        SpeculativeVLM.from_pretrained(str(target), str(draft_dir), dtype="float32")


def test_a_draft_with_a_padded_head_shares_the_vocabulary(pair, tmp_path, video):
    """Like Qwen2.5-VL-3B (151936 rows) drafting for -7B (152064): same tokenizer, other head size."""
    target, _, full, _ = pair
    padded = load_adapter(str(build_tiny_checkpoint(FAMILY, tmp_path / "padded", role="draft", lm_head_pad=40)))
    assert padded.model.lm_head.weight.shape[0] == padded.vocab_size + 40 != target.model.lm_head.weight.shape[0]
    check_pair(target, padded)
    features = target.build_inputs(video, "Describe the video.", num_frames=8)
    got = speculative_decode(
        target,
        padded,
        full,
        padded.prepare(features),
        max_new_tokens=16,
        config=SpecConfig(tree=DraftTree.default()),
    )
    assert got.token_ids == decode_target(target, full, max_new_tokens=16).token_ids
    assert max(got.token_ids) < target.vocab_size


def _exact_first_two(target, full, sampling):
    """The target-only joint distribution of the first two tokens, from its logits."""
    cache = target.new_cache(full.length + 1)
    p1 = probabilities(target.prefill(full, cache), sampling)[0]
    joint = {}
    for x1 in p1.nonzero().flatten().tolist():
        cache.rollback(full.length)
        logits = target.step(torch.tensor([[x1]]), torch.tensor([[full.next_position]]), cache)
        p2 = probabilities(logits[:, -1], sampling)[0]
        for x2 in p2.nonzero().flatten().tolist():
            joint[(x1, x2)] = float(p1[x1] * p2[x2])
    return joint


def _tv(counts: Counter, exact: dict) -> float:
    n = sum(counts.values())
    keys = set(counts) | set(exact)
    return 0.5 * sum(abs(counts.get(k, 0) / n - exact.get(k, 0.0)) for k in keys)


@pytest.mark.parametrize("tree, drafter", [(DraftTree.chain(2), "model"), (DraftTree(((0,), (1,), (2,), (0, 0), (1, 0))), "model"),
                                           (DraftTree(((0,), (1,), (2,), (0, 0), (1, 0))), "adaptive:1.0"),
                                           (DraftTree(((0,), (1,), (2,), (0, 0), (1, 0))), "overlap")],
                         ids=["chain", "tree", "tree-cut-by-the-adaptive-drafter", "tree-drafted-while-verifying"])  # fmt: skip
def test_sampled_tokens_follow_the_target_distribution(pair, tree, drafter):
    """The first two sampled tokens, over 800 runs, match the target-only joint distribution.

    The independent draft's own distribution is far from the target's (asserted), so a rule that
    let draft tokens through unchecked would fail the bound.
    """
    target, draft, full, draft_inputs = pair
    sampling = SamplingConfig(temperature=1.0, top_k=2)
    exact = _exact_first_two(target, full, sampling)
    draft_joint = _exact_first_two(draft, draft_inputs, sampling)
    assert _tv(Counter({k: round(v * 1e6) for k, v in draft_joint.items()}), exact) > 0.3
    generator = torch.Generator().manual_seed(1)  # seed 0's stream lands at TV 0.08 (a 5-sigma draw); seeds 1-8 pooled: 0.008
    counts = Counter()
    for _ in range(800):
        out = speculative_decode(
            target,
            draft,
            full,
            draft_inputs,
            max_new_tokens=2,
            generator=generator,
            config=SpecConfig(tree=tree, sampling=sampling, drafter=drafter),
        )
        counts[tuple(out.token_ids)] += 1
    assert _tv(counts, exact) < 0.07


def test_api_generate_and_stream(tiny_pairs, video):
    target_dir, draft_dir = tiny_pairs(FAMILY)
    vlm = SpeculativeVLM.from_pretrained(str(target_dir), str(draft_dir), dtype="float32", tree="chain:3")
    assert vlm.target.step_mode == vlm.draft.step_mode == (False, False)  # chosen at load: eager on a CPU
    baseline = vlm.generate(video, "Describe the video.", num_frames=8, max_new_tokens=12, speculative=False)
    fast = vlm.generate(video, "Describe the video.", num_frames=8, max_new_tokens=12)
    assert fast.token_ids == baseline.token_ids and fast.text == baseline.text
    assert fast.stats.target_passes >= 1 and fast.stats.tau >= 1
    seen = []
    pieces = list(vlm.stream(video, "Describe the video.", num_frames=8, max_new_tokens=12))
    assert "".join(pieces) == fast.text
    vlm.generate(video, "Describe the video.", num_frames=8, max_new_tokens=5, on_tokens=seen.extend)
    assert seen == fast.token_ids[:5]
    sampled = [vlm.generate(video, "Describe the video.", num_frames=8, max_new_tokens=6, temperature=1.0, seed=3).token_ids for _ in range(2)]
    assert sampled[0] == sampled[1]  # one seed, one answer
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        vlm.generate(video, "Describe the video.", num_frames=8, temperature=-1.0)


def test_api_refuses_bad_arguments_first_and_stays_usable(tiny_pairs, video):
    target_dir, draft_dir = tiny_pairs(FAMILY)
    vlm = SpeculativeVLM.from_pretrained(str(target_dir), str(draft_dir), dtype="float32", tree="chain:2")
    missing = "/nonexistent/clip.mp4"  # the arguments are refused before the video is looked at
    for kwargs, message in [
        ({"max_new_tokens": 1.5}, r"max_new_tokens must be an integer >= 1, got max_new_tokens=1.5"),
        ({"max_new_tokens": None}, r"max_new_tokens must be an integer >= 1, got max_new_tokens=None"),
        ({"max_new_tokens": 0}, r"max_new_tokens must be an integer >= 1"),
        ({"seed": 2**64, "temperature": 1.0}, r"seed must be an integer in \[-2\*\*63, 2\*\*64 - 1\]"),
        ({"stop_strings": ("",)}, "stop_strings must be a tuple of non-empty strings"),
        ({"stop_strings": None}, "stop_strings must be a tuple of non-empty strings"),
        ({"prune": "specvlm"}, "prune must be a PruneConfig, None"),
    ]:
        with pytest.raises(ValueError, match=message):
            vlm.generate(missing, "Describe the video.", **kwargs)
    # A float max_new_tokens once sized the pair's reused cache and broke every later call.
    with pytest.raises(ValueError, match="max_new_tokens"):
        vlm.generate(video, "Describe the video.", num_frames=4, max_new_tokens=2.0)
    assert len(vlm.generate(video, "Describe the video.", num_frames=4, max_new_tokens=3).token_ids) == 3


def test_api_refuses_bad_prompts_and_sampling_values_by_name(tiny_pairs, video):
    target_dir, draft_dir = tiny_pairs(FAMILY)
    vlm = SpeculativeVLM.from_pretrained(str(target_dir), str(draft_dir), dtype="float32", tree="chain:2")
    missing = "/nonexistent/clip.mp4"  # refused before the video is looked at
    for prompt, message in [
        (None, r"prompt must be a string or a list of chat messages, got prompt=None"),
        (3, r"prompt must be a string or a list of chat messages, got prompt=3"),
        ("", r"prompt must not be empty"),
        ("  \n", r"prompt must not be empty"),
        ([], r"prompt must not be empty"),
        (["Describe the video."], r"prompt as a list must hold chat messages"),
        ("bad \udcff byte", r"prompt must be valid text: it holds a lone surrogate"),  # a TypeError in the tokenizer
    ]:
        with pytest.raises(ValueError, match=message):
            vlm.generate(missing, prompt)
    for kwargs, message in [
        ({"temperature": float("inf")}, r"temperature must be >= 0 and finite \(0 = greedy\), got temperature=inf"),
        ({"temperature": float("nan")}, r"temperature must be >= 0 and finite .*temperature=nan"),
        ({"temperature": -1.0}, r"temperature must be >= 0"),  # SamplingConfig's words
        ({"temperature": "0.7"}, r"temperature must be >= 0 .*temperature='0.7'"),
        ({"temperature": 1e-300}, r"temperature must be 0 \(greedy\) or at least 1e-06"),
        ({"temperature": 1.0, "top_k": 0}, r"top_k must be >= 1"),
        ({"temperature": 1.0, "top_k": 2.5}, r"top_k must be >= 1 \(an integer\) or None, got top_k=2.5"),
        ({"temperature": 1.0, "top_p": 0.0}, r"top_p must lie in \(0, 1\]"),
        ({"temperature": 1.0, "top_p": float("nan")}, r"top_p must lie in \(0, 1\] or be None, got top_p=nan"),
        ({"temperature": 1.0, "top_p": 1e-46}, r"top_p must be at least 1e-06 .*got top_p=1e-46"),  # crashed sampling
    ]:
        with pytest.raises(ValueError, match=message):
            vlm.generate(missing, "Describe the video.", **kwargs)
    # a text-only chat (no video) still answers, from a string or from chat messages
    assert len(vlm.generate(None, "Say something.", max_new_tokens=3).token_ids) == 3
    chat = [{"role": "user", "content": [{"type": "text", "text": "Say something."}]}]
    assert len(vlm.generate(None, chat, max_new_tokens=3, temperature=1.0, top_k=5, seed=0).token_ids) == 3


def test_api_refuses_arguments_of_the_wrong_kind_before_any_work(tiny_pairs, video, tmp_path):
    from transformers import Qwen3VLConfig

    from specvlm.pruning import PruneConfig
    from specvlm.video import VideoInputError

    target_dir, draft_dir = tiny_pairs(FAMILY)
    vlm = SpeculativeVLM.from_pretrained(str(target_dir), str(draft_dir), dtype="float32", tree="chain:2")
    missing = "/nonexistent/clip.mp4"  # refused before the video is looked at (each failed after the prefill,
    for kwargs, message in [  # or, for speculative="no", ran speculative decoding)
        ({"temperature": 1.0, "generator": 5}, r"generator must be a torch.Generator or None, got generator=5"),
        ({"speculative": "no"}, r"speculative must be True or False, got speculative='no'"),
        ({"on_tokens": 5}, r"on_tokens must be a callable"),
    ]:
        with pytest.raises(ValueError, match=message):
            vlm.generate(missing, "Describe the video.", **kwargs)
    with pytest.raises(VideoInputError, match="frames of 402x2 pixels: an aspect ratio of 201:1"):  # not transformers'
        vlm.generate(np.zeros((2, 2, 402, 3), np.uint8), "Describe the video.", max_new_tokens=2)
    with pytest.raises(ValueError, match="prune must be a PruneConfig or None"):  # not an AttributeError at generate
        SpeculativeVLM(vlm.target, vlm.draft, prune="uniform")
    assert len(vlm.generate(video, "Describe the video.", num_frames=4, max_new_tokens=2).token_ids) == 2

    # Configs without weights: every refusal below comes before a weight is read (loading would fail otherwise).
    configs = {}
    for role, source in (("target", target_dir), ("draft", draft_dir)):
        (tmp_path / role).mkdir()
        (tmp_path / role / "config.json").write_bytes((Path(source) / "config.json").read_bytes())
        configs[role] = str(tmp_path / role)
    Qwen3VLConfig().save_pretrained(tmp_path / "qwen3")
    for args, kwargs, error, message in [
        ((configs["target"], str(tmp_path / "qwen3")), {}, PairMismatchError, "one family: target is qwen2_5_vl"),
        (("/nonexistent/ckpt", configs["draft"]), {}, FileNotFoundError, "/nonexistent/ckpt: no such checkpoint folder"),
        ((str(tmp_path), configs["draft"]), {}, FileNotFoundError, "the folder has no config.json"),
        ((None, configs["draft"]), {}, ValueError, "a checkpoint is a hub id or a folder, got None"),
        ((configs["target"], configs["draft"]), {"tree": "chain:0"}, ValueError, "a chain needs 1 to 1023"),
        ((configs["target"], configs["draft"]), {"drafter": "zzz"}, ValueError, "unknown drafter 'zzz'"),
        ((configs["target"], configs["draft"]), {"prune": "uniform"}, ValueError, "prune must be a PruneConfig"),
        ((configs["target"], configs["draft"]), {"dtype": "float8"}, ValueError, "dtype must be 'auto'"),
        ((configs["target"], configs["draft"]), {"device": "gpu"}, ValueError, "device must be a torch device"),
        ((configs["target"], configs["draft"]), {"draft_device": "gpu"}, ValueError, "draft_device must be a torch"),
    ]:
        with pytest.raises(error, match=message):
            SpeculativeVLM.from_pretrained(*args, **kwargs)
    assert isinstance(SpeculativeVLM.from_pretrained(str(target_dir), str(draft_dir), prune=PruneConfig()), SpeculativeVLM)


def test_api_bounds_the_decoded_pixels_of_a_video_by_default(tiny_pairs, video):
    import inspect

    from specvlm.video import DEFAULT_MAX_VIDEO_PIXELS, VideoBudgetError

    target_dir, draft_dir = tiny_pairs(FAMILY)
    vlm = SpeculativeVLM.from_pretrained(str(target_dir), str(draft_dir), dtype="float32", tree="chain:2")
    assert inspect.signature(vlm.generate).parameters["max_video_pixels"].default == DEFAULT_MAX_VIDEO_PIXELS == 2**31
    # 4 frames of 64x64 are 16,384 pixels
    with pytest.raises(VideoBudgetError, match="4 frames of 64x64 .* 16,384 pixels, more than the limit of 16,383"):
        vlm.generate(video, "Describe the video.", num_frames=4, max_video_pixels=16383, max_new_tokens=2)
    with pytest.raises(VideoBudgetError, match="more than the limit of 16,383"):
        list(vlm.stream(video, "Describe the video.", num_frames=4, max_video_pixels=16383, max_new_tokens=2))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=rf"max_video_pixels must be an integer >= 1 .*got max_video_pixels={bad}"):
            vlm.generate("/nonexistent/clip.mp4", "Describe the video.", max_video_pixels=bad)
    for bound in (16384, None):  # at the bound, and unbounded
        out = vlm.generate(video, "Describe the video.", num_frames=4, max_video_pixels=bound, max_new_tokens=2)
        assert len(out.token_ids) == 2
    with pytest.raises(VideoBudgetError, match="more than the limit of 16,383"):  # the adapter's loader too
        vlm.target.build_inputs(video, "Describe the video.", num_frames=4, max_pixels=16383)


def test_api_prunes_by_default_and_draws_the_selection(tiny_pairs, video, tmp_path):
    from PIL import Image

    from specvlm.pruning import PruneConfig, keep_budget

    target_dir, draft_dir = tiny_pairs(FAMILY)
    vlm = SpeculativeVLM.from_pretrained(str(target_dir), str(draft_dir), dtype="float32")
    out = vlm.generate(video, "Describe the video.", num_frames=8, max_new_tokens=8)
    n = len(out.layout)
    assert out.stats.draft_video_tokens == keep_budget(n, 0.9) == len(out.selection.kept)
    assert out.scores is not None and out.scores.shape == (n,)
    png = out.save_picture(tmp_path / "kept.png")
    assert Image.open(png).size[0] >= 480
    plain = vlm.generate(video, "Describe the video.", num_frames=8, max_new_tokens=8, prune=None)
    assert plain.token_ids == out.token_ids and plain.stats.draft_video_tokens == n
    with pytest.raises(ValueError, match="without pruning"):
        plain.save_picture(tmp_path / "none.png")
    uniform = vlm.generate(video, "Describe the video.", num_frames=8, max_new_tokens=8, prune=PruneConfig("uniform", 0.5))
    assert uniform.scores is None and uniform.stats.draft_video_tokens == keep_budget(n, 0.5)


def _engine_site() -> tuple[str, str]:
    """(file name, function) of the innermost engine frame on the stack, ("?", "?") outside it."""
    frames = [f for f in traceback.extract_stack() if "/specvlm/" in f.filename]
    return (Path(frames[-1].filename).name, frames[-1].name) if frames else ("?", "?")


class _HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value on the host (``item()``, ``int(t)``, indexing with a 0-d
    tensor: on a GPU each waits for the device), by the innermost engine function that made them."""

    def __init__(self):
        super().__init__()
        self.sites = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.sites[_engine_site()] += 1
        return func(*args, **(kwargs or {}))


# where the engine may read values on the host: the tree's own host tensors, the attention's CPU
# reference (GPUs run the kernel), the first token, and the overlapped drafter's pinned guess
HOST_READS_ALLOWED = {("tree.py", "*"), ("tree_attention.py", "tree_attention"), ("speculative.py", "prefill_pair"),
                      ("overlap.py", "accept")}  # fmt: skip


@pytest.mark.parametrize("drafter", ["model", "overlap"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_cycle_never_waits_for_the_device_but_to_read_its_verdict(pair, drafter, temperature):
    """Drafting, verifying and deciding queue their work without reading device values on the host
    (the verdict comes back in one transfer, ``tolist``): a hidden read would make the host wait for
    the verification, and an overlapped drafter would start only after it."""
    target, draft, full, draft_inputs = pair
    config = SpecConfig(tree=DraftTree.default(), drafter=drafter, sampling=SamplingConfig(temperature=temperature))
    speculative_decode(target, draft, full, draft_inputs, max_new_tokens=12, static=True, config=config)
    with _HostReads() as reads:
        speculative_decode(target, draft, full, draft_inputs, max_new_tokens=12, static=True, config=config)
    bad = {site: n for site, n in reads.sites.items() if site not in HOST_READS_ALLOWED and (site[0], "*") not in HOST_READS_ALLOWED}
    assert not bad


class _Ops(TorchDispatchMode):
    """Every operation queued, with its non-tensor arguments, outside the attention's CPU reference
    (which slices the filled part on the host; a GPU runs the kernel, whose length is a device value)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _engine_site()[0] != "tree_attention.py":
            flat = torch.utils._pytree.tree_leaves((args, kwargs or {}))
            self.ops.append((str(func), tuple(repr(a) for a in flat if not isinstance(a, torch.Tensor))))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("pending", [1, 2])
def test_a_proposal_reads_its_inputs_from_the_device_only(pair, temperature, pending):
    """Drafting from device buffers (a static cache, pending tokens and root position on the device)
    queues the same operations, with every non-tensor argument, at every cache length, root position
    and pending token, so a proposal can be captured once as a CUDA graph and replayed (a host value
    among them would be frozen into the graph); its tokens are those of drafting from host values."""
    from specvlm.engine.drafters.model import ModelDrafter, draw_noise, finish

    _, draft, _, draft_inputs = pair
    tree, sampling = DraftTree.default(), SamplingConfig(temperature=temperature)
    drafter = ModelDrafter(draft)
    drafter.start(draft_inputs, 64, static=True, compile=False)
    cache = drafter.workspace.cache
    noise = None if sampling.greedy else draw_noise(torch.empty(tree.num_nodes, draft.vocab_size), torch.Generator().manual_seed(0))
    finish(drafter.drafting(tree, [5] * pending, draft_inputs.next_position, sampling, None, noise=noise))  # steps made
    runs = []
    for extra, tokens in ((0, [11, 12]), (3, [40, 7])):  # two states: other lengths, positions, tokens
        cache.rollback(draft_inputs.length)
        cache.commit(extra)
        root_position = draft_inputs.next_position + extra + pending - 1
        buffers = torch.tensor(tokens[:pending]), torch.tensor(root_position)
        with _Ops() as ops:
            device = finish(drafter.drafting(tree, *buffers, sampling, None, noise=noise))
        after = cache.length
        cache.rollback(draft_inputs.length + extra)
        host = finish(drafter.drafting(tree, tokens[:pending], root_position, sampling, None, noise=noise))
        assert torch.equal(device.tokens, host.tokens) and after == cache.length
        runs.append(ops.ops)
    assert runs[0] == runs[1]


def test_tree_schedule_picks_a_tree_by_prompt_length(pair, tmp_path):
    """schedule:FILE: the tree of the longest threshold the prompt reaches (relative tree files
    from the schedule's folder); any tree keeps the output the target's."""
    from specvlm.engine.tree import TreeSchedule, parse_tree

    target, draft, full, draft_full = pair
    (tmp_path / "trees").mkdir()
    (tmp_path / "trees" / "wide.txt").write_text("0\n1\n2\n0 0\n")
    schedule = tmp_path / "schedule.txt"
    reference = decode_target(target, full, max_new_tokens=16).token_ids
    for start, depth in ((full.length, 2), (full.length + 1, 3)):  # the prompt reaches the threshold, or not
        schedule.write_text(f"# by prompt length\n0 chain:3\n{start} trees/wide.txt\n")
        config = SpecConfig(tree=f"schedule:{schedule}")
        assert isinstance(config.tree, TreeSchedule)
        got = speculative_decode(target, draft, full, draft_full, max_new_tokens=16, config=config)
        assert got.token_ids == reference and got.stats.tree_depth == depth
    assert parse_tree("chain:2") == DraftTree.chain(2)
    for text, message in [("100 default\n", "starts at prompt length 0"), ("0 default\n0 chain:2\n", "ascend"),
                          ("zero default\n", "LENGTH TREE"), ("0\n", "LENGTH TREE"), ("0 missing.txt\n", "bad tree spec")]:  # fmt: skip
        schedule.write_text(text)
        with pytest.raises(ValueError, match=message):
            parse_tree(f"schedule:{schedule}")
    with pytest.raises(ValueError, match="no such file"):
        parse_tree(f"schedule:{tmp_path / 'none.txt'}")
