"""A metric = a function (generated samples, MetricContext) -> (value, protocol dict).

Points metrics compare against ``ctx.ref`` (fresh reference samples); image metrics may instead use
``ctx.dataset`` (e.g. cached training-split statistics). Either way the protocol dict says how.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from bench.registry import METRICS


@dataclass
class MetricContext:
    ref: Tensor | None  # fresh reference samples of this repeat (points); may be None for images
    dataset: Any  # the Dataset object
    eval_cfg: Any  # EvalConfig
    repeat: int = 0
    cache_dir: Any = None  # where metrics may cache reference statistics
    shared: dict = field(default_factory=dict)  # per (point, repeat) scratch space, e.g. features reused by FID/KID/PR


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kinds: tuple[str, ...]  # data kinds it applies to ("points", "image")
    fn: Callable[[Any, MetricContext], tuple[float, dict]]  # (bench.eval.sampling.Samples, ctx)
    lower_is_better: bool = True
    applies: Callable[[Any, Any], bool] | None = None  # (DataSpec, EvalConfig) -> bool, for the automatic choice
    check: Callable[[Any, Any], None] | None = None  # (Dataset, EvalConfig) pre-flight; raises BenchError

    def __call__(self, gen: Any, ctx: MetricContext) -> tuple[float, dict]:
        return self.fn(gen, ctx)


def metric(name: str, kinds: tuple[str, ...], applies=None, lower_is_better: bool = True, check=None):
    def deco(fn):
        METRICS.register(name, MetricSpec(name, kinds, fn, lower_is_better, applies, check))
        return fn

    return deco


def applicable_metrics(spec: Any, eval_cfg: Any) -> list[MetricSpec]:
    """``eval.metrics`` if given (each must support the data kind), else every metric that applies."""
    from bench.errors import BenchError

    if eval_cfg.metrics:
        chosen = [METRICS.get(n) for n in eval_cfg.metrics]
        for m in chosen:
            if spec.kind not in m.kinds:
                raise BenchError(f"metric {m.name!r} does not apply to {spec.kind} data")
        return chosen
    out = []
    for _, m in METRICS.items():
        if spec.kind in m.kinds and (m.applies is None or m.applies(spec, eval_cfg)):
            out.append(m)
    return out


def preflight(dataset: Any, eval_cfg: Any) -> list[MetricSpec]:
    """The metrics a run will use, each checked up front (missing weights fail before any training)."""
    chosen = applicable_metrics(dataset.spec, eval_cfg)
    if not chosen:
        from bench.errors import BenchError

        name = getattr(dataset.spec, "name", "this data set")
        raise BenchError(
            f"no metric applies to {name} on this machine (FID, KID, precision/recall need the Inception weights, "
            "which are not installed); --set 'eval.metrics=[fid]' says which file goes where"
        )
    for m in chosen:
        if m.check is not None:
            m.check(dataset, eval_cfg)
    return chosen
