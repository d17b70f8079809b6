"""Projections that read one input, run as one matmul in compiled steps: q/k/v and gate/up.

A decode step of a small model is bound by the number of kernels, not by bandwidth: the 0.5B
draft's pass runs seven matmuls a layer at 3.8-5.4 us each, tiles too small to draw bandwidth
(results/e2e.md). Here, once a model's step mode is chosen compiled, each attention's q/k/v
projections and each MLP's gate/up projections are given one weight (and bias) in one buffer, the
modules' own ``weight`` and ``bias`` becoming views of it (no memory is added; every parameter keeps
its name, shape and values). Eagerly each projection multiplies by its own view, as before, so
prefill is unchanged. Under ``torch.compile`` each multiplies by the whole buffer and keeps its
rows: the same matmul on the same input, which ``SHARED_MATMULS`` (below, an inductor post-grad
pass the compiled steps are built with) runs once. Inference graphs get no common-subexpression
elimination of their own: AOTAutograd's ``cse`` runs only when it partitions a training graph.

Only plain ``torch.nn.Linear`` projections of one dtype and device, with no hooks, are fused;
anything else (quantized or sharded linears, adapters, offloading hooks) is left as it is.
"""

from __future__ import annotations

import torch
from torch import nn

GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


class SharedInputLinear(nn.Linear):
    """A ``Linear`` whose weight and bias are rows ``start:stop`` of a buffer shared with its
    siblings (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            fused = self.fused_weight, self.fused_bias
            return nn.functional.linear(x, *fused)[..., self.start : self.stop]
        return nn.functional.linear(x, self.weight, self.bias)


def _fusable(linears: list) -> bool:
    if not all(type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook"))
               for m in linears):  # fmt: skip
        return False
    first = linears[0].weight
    same_bias = len({m.bias is None for m in linears}) == 1
    return same_bias and all(
        m.weight.dtype == first.dtype and m.weight.device == first.device and m.in_features == linears[0].in_features
        for m in linears
    )


def fuse_projections(language_model: nn.Module) -> int:
    """Give each layer's q/k/v and gate/up projections one shared weight; returns how many groups
    were fused (0 when the layers have none that qualify, or were fused already)."""
    fused, on_gpu = 0, False
    for layer in getattr(language_model, "layers", ()):
        for parent_name, names in GROUPS:
            parent = getattr(layer, parent_name, None)
            linears = [getattr(parent, n, None) for n in names]
            if parent is None or None in linears or not _fusable(linears):
                continue
            with torch.no_grad():
                weight = torch.cat([m.weight for m in linears])
                bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
            start = 0
            for name, old in zip(names, linears):
                new = SharedInputLinear(old.in_features, old.out_features, bias=bias is not None, device="meta")
                stop = start + old.out_features
                new.start, new.stop = start, stop
                new.weight = nn.Parameter(weight[start:stop], requires_grad=old.weight.requires_grad)
                new.bias = None if bias is None else nn.Parameter(bias[start:stop], requires_grad=old.bias.requires_grad)
                # not saved: the parameters above hold the same values under their usual names
                new.register_buffer("fused_weight", weight, persistent=False)
                new.register_buffer("fused_bias", bias, persistent=False)
                setattr(parent, name, new)
                start = stop
            fused += 1
            on_gpu = on_gpu or weight.is_cuda
    if on_gpu:
        torch.cuda.empty_cache()  # the separate weights' blocks, freed, do not fit the fused ones
    return fused


try:
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
except ImportError:  # pragma: no cover - torch without inductor's custom passes
    CustomGraphPass = object
    get_hash_for_files = None

_aten = torch.ops.aten
# pure, deterministic ops a linear decomposes into: the same op on the same inputs is the same value
_DEDUPED = {_aten.mm.default, _aten.addmm.default, _aten.permute.default, _aten.t.default, _aten.view.default,
            _aten._unsafe_view.default, _aten.reshape.default, _aten.expand.default}  # fmt: skip


def _key(value):
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    return value


class SharedMatmuls(CustomGraphPass):
    """Inductor post-grad pass: a matmul (and the views and transposes feeding it) that repeats an
    earlier one on the same inputs is replaced by it, so the shared-input projections above run as
    one matmul in a compiled step. Only the pure ops listed in ``_DEDUPED`` are merged."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        seen: dict = {}
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target not in _DEDUPED:
                continue
            key = (node.target, _key(node.args), _key(node.kwargs))
            if key in seen:
                node.replace_all_uses_with(seen[key])
                graph.erase_node(node)
            else:
                seen[key] = node

    def uuid(self):
        return get_hash_for_files((__file__,)) if get_hash_for_files is not None else None


SHARED_MATMULS = SharedMatmuls()
