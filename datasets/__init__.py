"""Shared data loaders (installed as ``bench.datasets``). Importing this package registers them all."""

from bench.datasets import images, manifolds, synthetic  # noqa: F401,E402  (registers)
from bench.datasets.base import Dataset, DataSpec, build_dataset  # noqa: F401
