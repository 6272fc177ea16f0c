"""Small builders shared by the method tests (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch
from bench.methods.base import Batch


def cpu_batch(x, n: int = 0, seed: int = 0, step: int = 0, lo: int = 0, hi: int | None = None) -> Batch:
    """A one-process CPU batch of global size ``n`` (default len(x)); this process holds rows lo..hi."""
    n = n or len(x)
    return Batch(x, n, lo, n if hi is None else hi, seed, torch.device("cpu"), step)


class FnNet(torch.nn.Module):
    """A closed-form function dressed as a network (so hooks, wrappers and ``__call__`` see it)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)
