"""Sample grids (PNG) for image runs: the first 64 samples of the fixed seed range, so that grids of
different methods (same ``eval.sample_seed``) show the same noise."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.core.checkpoint import atomic_path
from bench.pixels import to_uint8

GRID_SAMPLES = 64  # seeds eval.sample_seed .. eval.sample_seed + 63
MIN_TILE = 32  # small images are enlarged (nearest) to at least this side


def grid_image(images_u8: Tensor, nrow: int = 8, padding: int = 2, pad_value: int = 0, scale: int | None = None):
    """uint8 ``(N, C, H, W)`` with C in {1, 3} -> a PIL image, ``nrow`` images per row, row-major
    (``torchvision.utils.make_grid``).

    ``scale`` enlarges every image by an integer factor (nearest); ``None`` = enough for a side >= 32 px.
    """
    from PIL import Image
    from torchvision.utils import make_grid  # imported here: torchvision adds seconds to every CLI start

    x = images_u8
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise ValueError(f"expected non-empty uint8 (N, 1|3, H, W), got {x.dtype} {tuple(x.shape)}")
    c, h, w = x.shape[1:]
    scale = max(1, -(-MIN_TILE // max(h, w))) if scale is None else scale
    if scale > 1:
        x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    if len(x) == 1:  # make_grid returns a single image unpadded; frame it like every other grid
        grid = F.pad(x[0], (padding,) * 4, value=pad_value)
    else:
        grid = make_grid(x, nrow=nrow, padding=padding, pad_value=pad_value)  # 1 channel comes back as 3 equal
    arr = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr, mode="L" if c == 1 else "RGB")


def save_grid(images_u8: Tensor, path: str | Path, nrow: int = 8, padding: int = 2, scale: int | None = None) -> Path:
    """Write uint8 images ``(N, C, H, W)`` as one PNG grid (atomically); returns the path."""
    path = Path(path)
    img = grid_image(images_u8, nrow, padding, scale=scale)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


@dataclass(frozen=True)
class GridTarget:
    """Where an evaluation writes its grids: ``root / subdir`` (``root`` = the results folder)."""

    root: Path
    subdir: str  # e.g. "grids/<dataset>/<run_id>"


def grid_filename(point: Any) -> str:
    """``<label>_<solver>_<nfe>.png`` with the label reduced to file-name-safe characters."""
    label = re.sub(r"[^A-Za-z0-9.+-]+", "-", point.label).strip("-") or "method"
    return f"{label}_{point.solver}_{point.nfe if point.nfe is not None else 'adaptive'}.png"


@torch.no_grad()
def write_eval_grid(method: Any, point: Any, sample_seed: int, device: torch.device, target: GridTarget) -> str:
    """Sample seeds ``sample_seed .. +63`` at ``point``, save the grid; returns its path relative to ``root``."""
    from bench.eval.sampling import generate

    x, _ = generate(method, point, GRID_SAMPLES, sample_seed, GRID_SAMPLES, device)
    rel = f"{target.subdir}/{grid_filename(point)}"
    save_grid(to_uint8(x), Path(target.root) / rel)
    return rel
