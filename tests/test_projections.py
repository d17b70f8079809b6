"""Shared-input projections: q/k/v and gate/up as one matmul each in compiled steps, unchanged eagerly."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2Model

from specvlm.models.projections import SHARED_MATMULS, SharedInputLinear, fuse_projections

MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)


def small_model(layers: int = 1) -> Qwen2Model:
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)  # fmt: skip
    return Qwen2Model(config).eval()


def test_fusing_changes_no_value_name_or_memory_of_the_parameters():
    model = small_model(2)
    ids = torch.randint(0, 100, (1, 7))
    with torch.no_grad():
        before = model(ids).last_hidden_state
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert fuse_projections(model) == 4 and fuse_projections(model) == 0  # two groups a layer, once
    after_state = model.state_dict()
    assert list(after_state) == list(state) and all(torch.equal(after_state[k], v) for k, v in state.items())
    attn = model.layers[0].self_attn
    assert isinstance(attn.k_proj, SharedInputLinear)
    # the parameters are views of the one buffer: no copy kept beside it
    assert attn.k_proj.weight.untyped_storage().data_ptr() == attn.q_proj.fused_weight.untyped_storage().data_ptr()
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, before)


def test_linears_that_are_not_plain_are_left_alone():
    model = small_model()
    mlp = model.layers[0].mlp
    mlp.up_proj.register_forward_hook(lambda *a: None)  # an adapter's hook, say
    assert fuse_projections(model) == 1 and type(mlp.up_proj) is torch.nn.Linear


def test_compiled_the_shared_input_projections_are_one_matmul_each():
    """One layer: q/k/v, o, gate/up and down are four matmuls (seven unfused), and the output is
    the eager one's."""
    pytest.importorskip("torch._inductor")
    model = small_model()
    ids = torch.randint(0, 100, (1, 5))
    with torch.no_grad():
        reference = model(ids).last_hidden_state
    fuse_projections(model)
    counts = []

    class Counting(type(SHARED_MATMULS)):
        def __call__(self, graph):
            super().__call__(graph)
            counts.append(sum(n.target in MATMULS for n in graph.nodes))

        def uuid(self):
            return None  # never from inductor's cache: the pass must run to be counted

    compiled = torch.compile(model, dynamic=False, options={"post_grad_custom_pre_pass": Counting()})
    with torch.no_grad():
        out = compiled(ids).last_hidden_state
    assert counts == [4]
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)


def test_a_compiled_step_mode_fuses_its_model(tiny_pairs):
    """The compiled language model (made lazily for the compiled step mode) runs on fused
    projections; the eager model is the same modules, with the same outputs."""
    from specvlm.engine.static import compiled_language_model
    from specvlm.models import load_adapter

    target_dir, _ = tiny_pairs("qwen2_5_vl")
    adapter = load_adapter(str(target_dir), dtype="float32")
    ids = torch.arange(10)[None]
    with torch.no_grad():
        before = adapter.language_model(input_ids=ids).last_hidden_state
    compiled = compiled_language_model(adapter)  # compiling waits for the first call
    assert compiled_language_model(adapter) is compiled
    layer = adapter.language_model.layers[0]
    assert all(isinstance(m, SharedInputLinear) for m in (layer.self_attn.v_proj, layer.mlp.gate_proj))
    with torch.no_grad():
        assert torch.equal(adapter.language_model(input_ids=ids).last_hidden_state, before)
