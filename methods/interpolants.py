"""Interpolants X_t = a(t) X0 + b(t) X1 (X0 noise at t=0, X1 data at t=1) and conversions between
velocity and clean-data predictions. Shared by every flow-type method."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Interpolant:
    name: str
    eps0: float  # default lower time bound used in training
    eps1: float  # default distance of the upper time bound from 1 (a'(t) may be singular at 1)

    def a(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def da(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def b(self, t: Tensor) -> Tensor:
        return t

    def db(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def x_t(self, t: Tensor, x0: Tensor, x1: Tensor) -> Tensor:
        return bc(self.a(t), x0) * x0 + bc(self.b(t), x1) * x1

    def target(self, t: Tensor, x0: Tensor, x1: Tensor) -> Tensor:
        """The conditional velocity d/dt X_t = a'(t) X0 + b'(t) X1."""
        return bc(self.da(t), x0) * x0 + bc(self.db(t), x1) * x1

    def velocity_from_data(self, t: Tensor, x: Tensor, d: Tensor) -> Tensor:
        """v = a'/a (x - b D) + b' D for a clean-data prediction D(t, x)."""
        a, da, b, db = (bc(f(t), x) for f in (self.a, self.da, self.b, self.db))
        return da / a * (x - b * d) + db * d

    def data_from_velocity(self, t: Tensor, x: Tensor, v: Tensor) -> Tensor:
        """Inverse of :meth:`velocity_from_data`: D = (v - a'/a x) / (b' - a' b / a)."""
        a, da, b, db = (bc(f(t), x) for f in (self.a, self.da, self.b, self.db))
        return (v - da / a * x) / (db - da * b / a)

    def data_loss_weight(self, t: Tensor) -> Tensor:
        """(b' - a' b / a)^2: velocity MSE = this weight x clean-data MSE (1/a^2 for both interpolants)."""
        return (self.db(t) - self.da(t) * self.b(t) / self.a(t)) ** 2


class Linear(Interpolant):
    """Rectified flow / flow matching: a = 1 - t, b = t."""

    def a(self, t: Tensor) -> Tensor:
        return 1 - t

    def da(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)


class Follmer(Interpolant):
    """Föllmer flow (the reference code's, in this time direction): a = sqrt(1 - t^2), b = t."""

    def a(self, t: Tensor) -> Tensor:
        return torch.sqrt((1 - t * t).clamp_min(0))

    def da(self, t: Tensor) -> Tensor:
        return -t / torch.sqrt((1 - t * t).clamp_min(1e-30))


INTERPOLANTS: dict[str, Interpolant] = {
    "linear": Linear("linear", 0.0, 0.0),
    "follmer": Follmer("follmer", 1e-3, 1e-5),
}


def bc(s: Tensor, x: Tensor) -> Tensor:
    """Broadcast a per-sample (or scalar) time quantity against a batch ``x``."""
    s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
    return s.reshape(-1, *([1] * (x.ndim - 1))) if s.ndim == 1 else s


def uniform_grid(k: int, t0: float = 0.0, t1: float = 1.0) -> list[float]:
    return [t0 + (t1 - t0) * i / k for i in range(k + 1)]


def gaussian_flow(mean: Tensor, std: float):
    """Closed-form objects for data N(mean, std^2 I) under the linear interpolant (a test oracle).

    X_t ~ N(t m, sigma_t^2 I) with sigma_t^2 = (1 - t)^2 + t^2 std^2; the probability-flow ODE is affine,
    v(t, x) = m + sigma_t'/sigma_t (x - t m), with flow map x_s = s m + sigma_s / sigma_t (x_t - t m).
    Times may be floats, 0-d tensors or per-sample (B,) tensors. Returns (velocity, flow_map).
    """

    def sigma(t: Tensor) -> Tensor:
        return torch.sqrt((1 - t) ** 2 + (t * std) ** 2)

    def col(t, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim == 1 else t

    def velocity(t, x: Tensor) -> Tensor:
        t = col(t, x)
        dsig = (-(1 - t) + t * std**2) / sigma(t)
        return mean + dsig / sigma(t) * (x - t * mean)

    def flow_map(t, s, x: Tensor) -> Tensor:
        t, s = col(t, x), col(s, x)
        return s * mean + sigma(s) / sigma(t) * (x - t * mean)

    return velocity, flow_map
