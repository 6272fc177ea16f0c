"""The data-set protocol every loader implements."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

STD_PROBE_SEED = 424_242  # the draw DataSpec.data_std is measured on (synthetic data)


@dataclass(frozen=True)
class DataSpec:
    """What a method needs to know about the data: kind, per-sample shape and scale."""

    name: str
    kind: Literal["points", "image"]
    shape: tuple[int, ...]
    exact_reference: bool  # True when reference samples come from the exact data law (synthetic)
    # the data's standard deviation, every coordinate pooled (:meth:`Dataset.measure_std`), for methods that scale
    # their noise to the data (sCM's sigma_d); None until the data set has measured it
    data_std: float | None = None

    @property
    def dim(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class Dataset:
    """Base class: training batches and reference samples, all float32 on the CPU.

    Points live in their natural coordinates; images in [-1, 1] (see ``bench.datasets.images``).
    Subclasses implement :meth:`draw` (exact sampler) or override :meth:`train_batch`/:meth:`reference`.
    """

    spec: DataSpec

    def __init__(self, spec: DataSpec, n_train: int = 0, seed: int = 0) -> None:
        self.spec = spec
        if spec.data_std is None:
            self.spec = dataclasses.replace(spec, data_std=self.measure_std())
        self.n_train = n_train
        self._train: Tensor | None = None
        if n_train > 0:  # a fixed finite training set (for sample-size studies)
            self._train = self.draw(n_train, torch.Generator().manual_seed(10_000 + seed))

    def draw(self, n: int, gen: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def measure_std(self) -> float:
        """The data's std, every coordinate pooled: here of a seeded 10,000-sample draw of the law."""
        return float(self.draw(10_000, torch.Generator().manual_seed(STD_PROBE_SEED)).double().std())

    def train_batch(self, n: int, gen: torch.Generator) -> Tensor:
        if self._train is None:
            return self.draw(n, gen)
        idx = torch.randint(0, self._train.shape[0], (n,), generator=gen)
        return self._train[idx]

    def reference(self, n: int, seed: int) -> Tensor:
        """``n`` reference samples for metrics, independent of the training draws."""
        return self.draw(n, torch.Generator().manual_seed(seed))

    def floor_reference(self, n: int, seed: int) -> tuple[Tensor, str]:
        """Real samples scored against the metric reference to give the table's *reference floor*, and one
        line saying what they are (stored with the floor). Here: fresh draws from the exact data law."""
        return self.reference(n, seed), f"fresh samples of the exact data law (n={n}), independent of the reference"


def build_dataset(name: str, cfg: object, seed: int = 0) -> Dataset:
    from bench.registry import DATASETS

    return DATASETS.get(name)(cfg, seed)
