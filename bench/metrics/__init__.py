"""Metrics: pure functions of sample tensors (or features/statistics), registered by name."""

from bench.metrics import fid, modes, w2  # noqa: F401,E402  (registers)
from bench.metrics.registry import MetricContext, MetricSpec, applicable_metrics  # noqa: F401
