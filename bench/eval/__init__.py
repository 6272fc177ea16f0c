"""Evaluation: sampling, timing, metrics (bench.eval.metrics) and the sample grids of a run."""
