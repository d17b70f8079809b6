"""Ranks that run one engine loop together (a tensor-parallel target under torchrun) take the same
decisions: every choice the host makes from a model's output (the first token, the draft's
proposal, the accepted path and next token) is rank 0's, broadcast to the others. Independent
samplers, or logits that differ in the last bit, never get to disagree.

With no process group (or a world of one) every function here is the identity, at no cost.
"""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on the rank that prints, streams and writes files (rank 0, or the only process)."""
    return rank() == 0


def agree(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as rank 0 holds it, on every rank (in place; the identity without a group)."""
    if world_size() == 1:
        return tensor
    import torch.distributed as dist

    backend = dist.get_backend()
    # gloo broadcasts host tensors, NCCL device tensors
    staged = tensor.cpu() if backend == "gloo" and tensor.device.type != "cpu" else tensor
    if backend != "gloo" and staged.device.type == "cpu":
        staged = staged.to(torch.device("cuda", torch.cuda.current_device()))
    dist.broadcast(staged, src=0)
    if staged is not tensor:
        tensor.copy_(staged)
    return tensor
