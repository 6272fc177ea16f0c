"""Data on a d-dimensional manifold embedded in R^D by a fixed random isometry (intrinsic-dimension studies).

Each sampler draws y on a manifold in a small coordinate space R^k (k = d + 1 for the sphere, 2d for the
torus and the curved graph, d for the subspace) and maps it to R^D with x = scale * Q y, Q a fixed
D x k matrix with orthonormal columns (seeded by ``embed_seed``). The reference sampler is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from bench.datasets.base import Dataset, DataSpec
from torch import Tensor

from bench.errors import BenchError
from bench.registry import register_dataset


@dataclass
class ManifoldConfig:
    d: int = 2  # intrinsic dimension
    D: int = 8  # ambient dimension
    scale: float = 1.0  # radius / side scale of the manifold
    embed_seed: int = 0  # seed of the random isometry R^k -> R^D
    n_train: int = 0  # 0 = fresh samples every batch; N > 0 = a fixed training set of N points

    def validate(self) -> None:
        if self.d < 1 or self.D < 1 or self.scale <= 0 or self.n_train < 0:
            raise BenchError("data: need d >= 1, D >= 1, scale > 0, n_train >= 0")


class _Embedded(Dataset):
    Config = ManifoldConfig
    name = "manifold"

    def coord_dim(self, d: int) -> int:  # k
        raise NotImplementedError

    def coords(self, n: int, d: int, g: torch.Generator) -> Tensor:  # (n, k)
        raise NotImplementedError

    def __init__(self, cfg: ManifoldConfig, seed: int = 0) -> None:
        k = self.coord_dim(cfg.d)
        if k > cfg.D:
            raise BenchError(f"data: a {self.name} of intrinsic dimension d={cfg.d} needs D >= {k} (got D={cfg.D})")
        self.cfg = cfg
        a = torch.randn(cfg.D, k, generator=torch.Generator().manual_seed(cfg.embed_seed), dtype=torch.float64)
        q, r = torch.linalg.qr(a)
        self.Q = (q * torch.sign(torch.diagonal(r))).float()  # (D, k), orthonormal columns
        super().__init__(DataSpec(self.name, "points", (cfg.D,), exact_reference=True), cfg.n_train, seed)

    def draw(self, n: int, gen: torch.Generator) -> Tensor:
        return self.cfg.scale * self.coords(n, self.cfg.d, gen) @ self.Q.T


@register_dataset("sphere")
class Sphere(_Embedded):
    """Uniform on the unit d-sphere S^d (in R^{d+1}), isometrically embedded in R^D."""

    name = "sphere"

    def coord_dim(self, d: int) -> int:
        return d + 1

    def coords(self, n: int, d: int, g: torch.Generator) -> Tensor:
        y = torch.randn(n, d + 1, generator=g)
        return y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)


@register_dataset("torus")
class Torus(_Embedded):
    """Uniform on the flat torus T^d = (S^1)^d in R^{2d}, embedded in R^D."""

    name = "torus"

    def coord_dim(self, d: int) -> int:
        return 2 * d

    def coords(self, n: int, d: int, g: torch.Generator) -> Tensor:
        th = 2 * math.pi * torch.rand(n, d, generator=g)
        return torch.stack([torch.cos(th), torch.sin(th)], 2).reshape(n, 2 * d) / math.sqrt(d)


@register_dataset("subspace")
class Subspace(_Embedded):
    """Uniform on the cube [-1, 1]^d in a d-dimensional linear subspace of R^D."""

    name = "subspace"

    def coord_dim(self, d: int) -> int:
        return d

    def coords(self, n: int, d: int, g: torch.Generator) -> Tensor:
        return 2 * torch.rand(n, d, generator=g) - 1


@register_dataset("curved")
class Curved(_Embedded):
    """A curved d-manifold: the graph (u, sin(pi u)) of u ~ U[-1, 1]^d, in R^{2d}, embedded in R^D."""

    name = "curved"

    def coord_dim(self, d: int) -> int:
        return 2 * d

    def coords(self, n: int, d: int, g: torch.Generator) -> Tensor:
        u = 2 * torch.rand(n, d, generator=g) - 1
        return torch.cat([u, torch.sin(math.pi * u)], 1)
