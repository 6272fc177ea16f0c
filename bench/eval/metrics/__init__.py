"""Metrics: pure functions of sample tensors (or features/statistics), registered by name.

The metric modules pull in scipy and POT, so they are imported on the first look-up of ``METRICS``
(``bench list``, pre-flight, evaluation), not by ``import bench.eval.metrics``.
"""

from bench.eval.metrics.registry import MetricContext, MetricSpec, applicable_metrics  # noqa: F401
from bench.registry import METRICS

METRICS.load_from("bench.eval.metrics.fid", "bench.eval.metrics.modes", "bench.eval.metrics.w2")
