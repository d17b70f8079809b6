"""The bundled trained pair: lossless with real acceptance, and its tau stays above a floor.

TAU_FLOOR is documented in the README; the shipped weights give about 4 on the sample clips'
description prompts (tree default, 90% of the draft's video tokens pruned). A regression in the
weights, the pruning or the engine that costs acceptance fails here deterministically.
"""

from __future__ import annotations

import json

import pytest

from specvlm import SpeculativeVLM
from specvlm.assets import default_pair, sample_videos
from specvlm.cli import main

TAU_FLOOR = 3.0


@pytest.fixture(scope="module")
def pair():
    target, draft = default_pair()
    return SpeculativeVLM.from_pretrained(str(target), str(draft), dtype="float32")


def test_sample_answers_are_lossless_and_accepted(pair):
    tokens = passes = 0
    for sample in sample_videos():
        for prompt in sample.prompts[:2]:
            fast = pair.generate(sample.path, prompt, max_new_tokens=64)
            base = pair.generate(sample.path, prompt, max_new_tokens=64, speculative=False)
            assert fast.token_ids == base.token_ids
            if prompt == sample.prompts[0]:  # the description
                tokens += fast.stats.cycle_tokens
                passes += fast.stats.target_passes
                assert fast.stats.draft_video_tokens < fast.stats.video_tokens / 5
    assert tokens / passes >= TAU_FLOOR


def test_the_main_job_runs_with_no_arguments(capsys):
    assert main(["generate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"].startswith("The video shows")
    assert out["stats"]["tau"] > 2.0
