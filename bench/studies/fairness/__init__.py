"""Minimal independent re-implementations of the rivals, and their comparison with the suite's methods.

Each ``minimal_*.py`` is one paper's method written from the paper alone in about 50 lines of plain PyTorch:
its own MLP (raw (x, t[, s]) concatenated, 4 x 256 SiLU), loss and sampler, no code shared with ``methods/``.
They share only :mod:`bench.studies.fairness.harness` (the suite's data samplers and its exact W2, so both sides are
scored alike). ``python -m bench.studies.fairness`` runs them at the benchmark's step counts and writes
``results/fairness.{json,md}`` beside the suite's benchmark rows (``results/benchmark.yaml``).
"""
