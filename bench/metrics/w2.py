"""Wasserstein-2 distances between sample sets, and the Gaussian closed form used as a test oracle."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import scipy.linalg
import torch
from torch import Tensor

from bench.metrics.registry import MetricContext, metric
from bench.sampling import Samples

EMD_MAX_ITER = 10_000_000
EXACT_MAX_N = 10_000


def w2_exact(x: Tensor, y: Tensor, num_itermax: int = EMD_MAX_ITER) -> tuple[float, dict]:
    """Exact W2 between empirical measures: sqrt of POT ``emd2`` on squared Euclidean costs."""
    if max(len(x), len(y)) > EXACT_MAX_N:
        raise ValueError(f"exact W2 is limited to {EXACT_MAX_N} samples per side (got {len(x)}, {len(y)})")
    a = x.detach().reshape(len(x), -1).double().cpu().numpy()
    b = y.detach().reshape(len(y), -1).double().cpu().numpy()
    cost = ot.dist(a, b, metric="sqeuclidean")
    wa = np.full(len(a), 1.0 / len(a))
    wb = np.full(len(b), 1.0 / len(b))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value, log = ot.emd2(wa, wb, cost, numItermax=num_itermax, log=True)
    hit_cap = bool(log.get("warning")) or any("numItermax" in str(w.message) for w in caught)
    if hit_cap:
        warnings.warn("POT emd2 hit its iteration cap: the W2 value is an upper bound", stacklevel=2)
    proto = {"solver": "POT emd2 (exact, squared Euclidean)", "num_itermax": num_itermax, "hit_cap": hit_cap}
    return float(np.sqrt(max(float(value), 0.0))), proto


def w2_sliced(x: Tensor, y: Tensor, n_proj: int = 512, seed: int = 0) -> float:
    """Sliced W2: sqrt of the mean over random unit directions of the 1-D squared W2 (equal n)."""
    if len(x) != len(y):
        raise ValueError("sliced W2 here needs equal sample counts")
    a = x.detach().reshape(len(x), -1).double().cpu()
    b = y.detach().reshape(len(y), -1).double().cpu()
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(a.shape[1], n_proj, generator=g, dtype=torch.float64)
    theta /= theta.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ theta, dim=0)
    pb, _ = torch.sort(b @ theta, dim=0)
    return float(((pa - pb) ** 2).mean().sqrt())


def gaussian_w2(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> float:
    """Closed-form W2 between N(m1, s1) and N(m2, s2) (Bures-Wasserstein)."""
    r1 = scipy.linalg.sqrtm(s1)
    cross = scipy.linalg.sqrtm(r1 @ s2 @ r1)
    val = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(cross))
    return float(np.sqrt(max(val, 0.0)))


@metric("w2", kinds=("points",), applies=lambda spec, ev: spec.dim <= ev.exact_w2_max_dim)
def _w2_metric(gen: Samples, ctx: MetricContext) -> tuple[float, dict]:
    return w2_exact(gen.tensor(), ctx.ref)


@metric("sw2", kinds=("points",))
def _sw2_metric(gen: Samples, ctx: MetricContext) -> tuple[float, dict]:
    x = gen.tensor()
    n = min(len(x), len(ctx.ref))
    k = ctx.eval_cfg.sliced_projections
    value = w2_sliced(x[:n], ctx.ref[:n], k, seed=0)
    return value, {"solver": "sliced W2, sorted 1-D projections", "projections": k, "projection_seed": 0}
