"""What the minimal re-implementations share: the data, the scoring, a plain MLP and the run loop's seeding.
Scoring is the suite's protocol for points (exact W2, POT emd2, 5,000 generated vs 5,000 fresh reference
samples, 3 repeats with independent seeds), so a minimal number and a suite number are directly comparable."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.datasets.synthetic import checkerboard, eight_gaussians, moons
from bench.eval.metrics.w2 import w2_exact_many

DATA = {"checkerboard": checkerboard, "8gaussians": eight_gaussians, "moons": moons}
BATCH, LR, N_EVAL, REPEATS = 512, 1e-3, 5000, 3


NET = "mlp"  # "suite": the architecture probe (``--net suite``) builds the suite's TimeMLP instead, see ``MLP``


def MLP(d_in: int, d_out: int, width: int = 256, act: type[nn.Module] = nn.SiLU) -> nn.Module:  # noqa: N802
    """The minimal versions' network: ``PlainMLP`` (concatenated inputs), or with ``NET = "suite"`` the suite's
    own point network on the same inputs (the architecture probe: it isolates the network from the method)."""
    if NET == "mlp":
        return PlainMLP(d_in, d_out, width, act)
    return SuiteNet(d_in, d_out)


class SuiteNet(nn.Module):
    """The suite's ``TimeMLP`` (3 hidden layers of 256, raw times through learned embeddings added to every hidden
    layer, the benchmark's ``method.net`` defaults) behind the minimal versions' call ``net(x, t_1, ..)``."""

    def __init__(self, d_in: int, d_out: int, x_dim: int = 2) -> None:
        super().__init__()
        from bench.methods.nets import TimeMLP

        if d_out != x_dim or d_in <= x_dim:
            raise ValueError(f"--net suite: needs (x, times) -> a vector of x's size, not {d_in} -> {d_out} columns")
        self.u = TimeMLP(x_dim, 256, 3, n_times=d_in - x_dim, time_max_freq=0.0)

    def forward(self, x: Tensor, *times: Tensor) -> Tensor:
        return self.u(*(t.reshape(-1) for t in times), x)


class PlainMLP(nn.Module):
    """4 hidden layers of 256 SiLU units on the concatenation of its inputs (raw times as extra columns)."""

    def __init__(self, d_in: int, d_out: int, width: int = 256, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        dims = [d_in, width, width, width, width]
        layers: list[nn.Module] = []
        for a, b in zip(dims, dims[1:], strict=False):
            layers += [nn.Linear(a, b), act()]
        self.f = nn.Sequential(*layers, nn.Linear(width, d_out))

    def forward(self, *cols: Tensor) -> Tensor:
        return self.f(torch.cat([c if c.ndim == 2 else c[:, None] for c in cols], 1))


class Data:
    """Training batches of a 2-D data set from a seeded generator."""

    def __init__(self, name: str, seed: int) -> None:
        self.draw, self.gen = DATA[name], torch.Generator().manual_seed(seed + 1)

    def __call__(self, n: int = BATCH) -> Tensor:
        return self.draw(n, self.gen).float()


def score(name: str, sample: callable, seed: int) -> list[float]:
    """Exact W2 of ``sample(z)`` (z: (5000, latent) noise) against 3 fresh reference sets, one per repeat."""
    pairs = []
    for r in range(REPEATS):
        z_gen = torch.Generator().manual_seed(50_000 + 97 * seed + r)
        ref = DATA[name](N_EVAL, torch.Generator().manual_seed(90_000 + 97 * seed + r)).float()
        with torch.no_grad():
            pairs.append((sample(z_gen)[:N_EVAL], ref))  # the test's smaller N_EVAL: a prefix
    return [v for v, _ in w2_exact_many(pairs)]


def ema_(ema: nn.Module, net: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), net.parameters(), strict=True):
            e.lerp_(p, 1 - decay)


def average_velocity_sampler(u: nn.Module, k: int):
    """NFE k from an average-velocity net u(x, a, b) (MeanFlow, TVM): k uniform steps x <- x + (1/k) u(x, j/k, (j+1)/k)
    from N(0, I) noise, as ``score`` wants it."""

    def draw(gen: torch.Generator) -> Tensor:
        x = torch.randn(N_EVAL, 2, generator=gen)
        for j in range(k):
            a, b = torch.full((N_EVAL,), j / k), torch.full((N_EVAL,), (j + 1) / k)
            x = x + (1 / k) * u(x, a, b)
        return x

    return draw
