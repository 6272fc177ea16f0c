"""A method's networks by dotted name, and swapping them for wrappers (DDP, torch.compile) while a loss or a
sampler runs: shared by the training engine and sampling (neither imports the other)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from bench.errors import BenchError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_net(method: nn.Module, path: str) -> tuple[nn.Module, str]:
    """(parent module, attribute) of the network ``path`` (e.g. ``"g"``, ``"teacher.ema"``) of ``method``."""
    parent = method
    *head, last = path.split(".")
    for p in head:
        parent = getattr(parent, p)
    if not isinstance(getattr(parent, last, None), nn.Module):
        raise BenchError(f"update names {path!r}, which is not a network of {type(method).__name__}")
    return parent, last


@contextlib.contextmanager
def swapped(method: nn.Module, wrapped: dict[str, nn.Module]):
    """Let the method's attributes point at the engine's wrappers (DDP, compiled) while its loss runs."""
    saved = []
    for path, w in wrapped.items():
        parent, last = resolve_net(method, path)
        saved.append((parent, last, parent._modules[last]))
        parent._modules[last] = w
    try:
        yield
    finally:
        for parent, last, m in reversed(saved):
            parent._modules[last] = m
