"""Two-dimensional toy distributions (FFJORD conventions) and a Gaussian mixture in d dimensions.

Each is an exact sampler: ``reference`` draws fresh samples from the true law.
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
class PointsConfig:
    n_train: int = 0  # 0 = a fresh sample every batch; N > 0 = a fixed training set of N points

    def validate(self) -> None:
        if self.n_train < 0:
            raise BenchError("data.n_train must be >= 0")


def _randn(n: int, d: int, g: torch.Generator) -> Tensor:
    return torch.randn(n, d, generator=g)


def _rand(n: int, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g)


_S2 = 1.0 / math.sqrt(2)
# the eight mode centres on the circle of radius 4 (before the FFJORD rescaling by 1 / 1.414)
EIGHT_GAUSSIANS_CENTRES = 4.0 * torch.tensor(
    [(1, 0), (-1, 0), (0, 1), (0, -1), (_S2, _S2), (_S2, -_S2), (-_S2, _S2), (-_S2, -_S2)]
)
EIGHT_GAUSSIANS_STD = 0.5
EIGHT_GAUSSIANS_SCALE = 1.414


def eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    """Eight Gaussians (std 0.5) on a circle of radius 2, scaled by 1/1.414 (FFJORD, torchcfm)."""
    k = torch.randint(0, 8, (n,), generator=g)
    x = EIGHT_GAUSSIANS_CENTRES[k] + EIGHT_GAUSSIANS_STD * _randn(n, 2, g)
    return x / EIGHT_GAUSSIANS_SCALE


def checkerboard(n: int, g: torch.Generator) -> Tensor:
    """Uniform on the black squares of a 4x4 checkerboard on [-4, 4]^2 (FFJORD)."""
    x1 = _rand(n, g) * 4 - 2
    x2 = _rand(n, g) - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


def moons(n: int, g: torch.Generator, noise: float = 0.1) -> Tensor:
    """Two interleaving half circles with Gaussian noise 0.1 (scikit-learn make_moons), scaled by 2."""
    k = torch.randint(0, 2, (n,), generator=g)
    theta = _rand(n, g) * math.pi
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    lower = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], 1)
    x = torch.where(k[:, None] == 0, upper, lower) + noise * _randn(n, 2, g)
    return x * 2 + torch.tensor([-1.0, -0.2])


def circles(n: int, g: torch.Generator, factor: float = 0.5, noise: float = 0.08) -> Tensor:
    """Two concentric circles (radii 3 and 1.5) with Gaussian noise (scikit-learn make_circles)."""
    k = torch.randint(0, 2, (n,), generator=g)
    theta = _rand(n, g) * 2 * math.pi
    r = torch.where(k == 0, torch.ones(n), torch.full((n,), factor))
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1) + noise * _randn(n, 2, g)
    return x * 3


def swissroll(n: int, g: torch.Generator, noise: float = 1.0) -> Tensor:
    """A 2-D Swiss roll with Gaussian noise, scaled by 1/5 (FFJORD)."""
    t = 1.5 * math.pi * (1 + 2 * _rand(n, g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + noise * _randn(n, 2, g)
    return x / 5


def pinwheel(n: int, g: torch.Generator) -> Tensor:
    """Five curved arms of a pinwheel (FFJORD)."""
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    rads = torch.linspace(0, 2 * math.pi, num_classes + 1)[:-1]
    labels = torch.randint(0, num_classes, (n,), generator=g)
    feats = _randn(n, 2, g) * torch.tensor([radial_std, tangential_std]) + torch.tensor([1.0, 0.0])
    angles = rads[labels] + rate * torch.exp(feats[:, 0])
    rot = torch.stack([torch.cos(angles), -torch.sin(angles), torch.sin(angles), torch.cos(angles)], 1)
    rot = rot.view(n, 2, 2)
    return 2 * torch.einsum("ti,tij->tj", feats, rot)


def two_spirals(n: int, g: torch.Generator) -> Tensor:
    """Two interleaved spirals with Gaussian noise 0.1 (FFJORD)."""
    m = torch.sqrt(_rand(n, g)) * 540 * (2 * math.pi) / 360
    sign = torch.where(torch.randint(0, 2, (n,), generator=g) == 0, -1.0, 1.0)
    x = torch.stack([-torch.cos(m) * m, torch.sin(m) * m], 1) * sign[:, None]
    return x / 3 + 0.1 * _randn(n, 2, g)


class _Toy2D(Dataset):
    Config = PointsConfig
    sampler = staticmethod(checkerboard)
    name = "toy"

    def __init__(self, cfg: PointsConfig, seed: int = 0) -> None:
        super().__init__(DataSpec(self.name, "points", (2,), exact_reference=True), cfg.n_train, seed)

    def draw(self, n: int, gen: torch.Generator) -> Tensor:
        return type(self).sampler(n, gen).float()


def _toy(name: str, fn, **attrs) -> type[_Toy2D]:
    body = {"sampler": staticmethod(fn), "name": name, "__doc__": fn.__doc__, **attrs}
    return register_dataset(name)(type(f"Toy_{name}", (_Toy2D,), body))


# mode centres and per-mode std of the mixtures, for the mode-coverage metrics (bench.eval.metrics.modes)
_MODES = {
    "8gaussians": {
        "modes": EIGHT_GAUSSIANS_CENTRES / EIGHT_GAUSSIANS_SCALE,
        "mode_std": EIGHT_GAUSSIANS_STD / EIGHT_GAUSSIANS_SCALE,
    }
}


for _name, _fn in {
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "moons": moons,
    "circles": circles,
    "swissroll": swissroll,
    "pinwheel": pinwheel,
    "2spirals": two_spirals,
}.items():
    _toy(_name, _fn, **_MODES.get(_name, {}))


@dataclass
class GMMConfig(PointsConfig):
    dim: int = 8
    components: int = 8
    radius: float = 4.0  # component means drawn uniformly on the sphere of this radius (seeded)
    std: float = 0.5
    mean_seed: int = 0

    def validate(self) -> None:
        super().validate()
        if self.dim < 1 or self.components < 1 or self.std <= 0:
            raise BenchError("data: gmm needs dim >= 1, components >= 1, std > 0")


@register_dataset("gmm")
class GaussianMixture(Dataset):
    """Equal-weight isotropic Gaussian mixture in ``dim`` dimensions."""

    Config = GMMConfig

    def __init__(self, cfg: GMMConfig, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(cfg.mean_seed)
        mu = torch.randn(cfg.components, cfg.dim, generator=g)
        self.means = cfg.radius * mu / mu.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.std = cfg.std
        super().__init__(DataSpec("gmm", "points", (cfg.dim,), exact_reference=True), cfg.n_train, seed)

    @property
    def modes(self) -> Tensor:
        """Mode centres, for the mode-coverage metrics (bench.eval.metrics.modes)."""
        return self.means

    @property
    def mode_std(self) -> float:
        return self.std

    def draw(self, n: int, gen: torch.Generator) -> Tensor:
        k = torch.randint(0, self.means.shape[0], (n,), generator=gen)
        return self.means[k] + self.std * torch.randn(n, self.means.shape[1], generator=gen)
