"""Summary statistics of repeated measurements: the suite's one mean ± std."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of a single value is 0."""
    vals = [float(v) for v in values]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summary(values: Sequence[float]) -> dict:
    """``{"mean", "std", "values"}`` of repeated measurements, as stored in run records."""
    m, s = mean_std(values)
    return {"mean": m, "std": s, "values": list(values)}
