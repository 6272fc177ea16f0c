"""Mode coverage on Gaussian mixtures with known centres (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018).

A sample is *high quality* when it lies within 3 std of its nearest mode centre; a mode is *hit* when at least
20 of every 2,500 generated samples (0.8%) are high-quality samples registered to it. In d > 2 dimensions the
radius is the one that keeps the 2-D coverage of a component, P(||N(0, std^2 I_d)|| <= r) = 1 - exp(-9/2),
so both numbers mean the same in any dimension (r = 3 std when d = 2). They apply to data sets whose class
defines ``modes`` (a (K, d) tensor of centres) and ``mode_std``; higher is better.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bench.errors import BenchError
from bench.eval.metrics.registry import MetricContext, metric
from bench.registry import DATASETS

MIN_HITS, PER_SAMPLES = 20, 2500  # VEEGAN / PacGAN: a mode with fewer than 20 of 2,500 samples is lost
COVERAGE_2D = 1 - math.exp(-4.5)  # mass of a 2-D Gaussian within 3 std of its centre


def _has_modes(spec: Any, eval_cfg: Any = None) -> bool:
    try:
        return hasattr(DATASETS.get(spec.name), "modes")
    except BenchError:
        return False


def _check(dataset: Any, eval_cfg: Any) -> None:
    if getattr(dataset, "modes", None) is None:
        raise BenchError(f"metrics 'modes'/'hq' need a mixture with known centres; {dataset.spec.name} has none")


def hit_radius(std: float, dim: int) -> float:
    """3 std in 2-D; in d dimensions the radius with the same per-component coverage."""
    from scipy.stats import chi2  # here: `bench list` must not pay for scipy

    return std * math.sqrt(chi2.ppf(COVERAGE_2D, dim))


def min_count(n: int) -> int:
    """High-quality samples a mode needs to count as hit: 20 per 2,500, rounded up."""
    return -(-MIN_HITS * n // PER_SAMPLES)


def mode_coverage(x: Tensor, centres: Tensor, std: float) -> tuple[float, float, list[int]]:
    """(fraction of modes hit, fraction of high-quality samples, high-quality count per mode)."""
    x = x.reshape(len(x), -1).double()
    c = centres.reshape(len(centres), -1).double()
    dist, nearest = torch.cdist(x, c).min(dim=1)
    good = dist <= hit_radius(std, c.shape[1])
    counts = torch.bincount(nearest[good], minlength=len(c))
    need = min_count(len(x))
    return float((counts >= need).double().mean()), float(good.double().mean()), counts.tolist()


def _coverage(gen: Any, ctx: MetricContext) -> tuple[float, float, dict]:
    _check(ctx.dataset, ctx.eval_cfg)
    x = gen.tensor()
    modes, hq, counts = mode_coverage(x, ctx.dataset.modes, float(ctx.dataset.mode_std))
    proto = {
        "definition": "VEEGAN/PacGAN: high quality = within r of the nearest centre; mode hit = "
        ">= 20 per 2,500 samples (0.8%) high-quality there",
        "radius": hit_radius(float(ctx.dataset.mode_std), x[0].numel()),
        "radius_in_std": hit_radius(1.0, x[0].numel()),
        "min_count": min_count(len(x)),
        "n_modes": len(counts),
    }
    return modes, hq, proto


@metric("modes", kinds=("points",), applies=_has_modes, lower_is_better=False, check=_check)
def _modes_metric(gen: Any, ctx: MetricContext) -> tuple[float, dict]:
    modes, _, proto = _coverage(gen, ctx)
    return modes, proto


@metric("hq", kinds=("points",), applies=_has_modes, lower_is_better=False, check=_check)
def _hq_metric(gen: Any, ctx: MetricContext) -> tuple[float, dict]:
    _, hq, proto = _coverage(gen, ctx)
    return hq, proto
