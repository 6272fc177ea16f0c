"""Summary statistics of repeated measurements: the suite's one mean ± std."""

from __future__ import annotations

import math
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


def equal_cost(table: list[dict], reference: str = "chargen") -> list[dict]:
    """Each method's quality at the passes ``reference`` spent at each of its budgets: log-log interpolation
    between the method's two measured budgets around that cost (None outside its measured range), and ranks."""
    methods = list(dict.fromkeys(t["method"] for t in table))
    if reference not in methods:
        reference = methods[0] if methods else reference
    out = []
    for target in sorted(t["passes"] for t in table if t["method"] == reference):
        values: dict[str, float | None] = {}
        for m in methods:
            pts = sorted((t["passes"], t["mean"]) for t in table if t["method"] == m)
            values[m] = None
            for (p0, q0), (p1, q1) in zip(pts, pts[1:] or pts, strict=False):
                if p0 <= target <= p1:
                    w = 0.0 if p1 == p0 else (math.log(target) - math.log(p0)) / (math.log(p1) - math.log(p0))
                    values[m] = math.exp((1 - w) * math.log(q0) + w * math.log(q1))
                    break
        order = sorted((v, m) for m, v in values.items() if v is not None)
        ranks = {m: i for i, (_, m) in enumerate(order, 1)}
        out.append({"reference": reference, "passes": target, "values": values, "ranks": ranks})
    return out
