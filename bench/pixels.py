"""The one pixel convention: training tensors in [-1, 1] float; metrics and image files get uint8."""

from __future__ import annotations

import torch
from torch import Tensor


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float images (N, C, H, W) -> uint8 in [0, 255] (round half up, clamped)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).floor().clamp(0, 255).to(torch.uint8)


def from_uint8(x: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1]."""
    return x.float() / 127.5 - 1.0
