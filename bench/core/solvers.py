"""ODE samplers with one signature: ``solver(velocity, x0, nfe, t0=0, t1=1) -> (x1, nfe_used)``.

``velocity(t, x)`` takes a scalar time tensor (suite convention: noise at t=0, data at t=1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bench.errors import BenchError

Velocity = Callable[[Tensor, Tensor], Tensor]


def _grid(x: Tensor, steps: int, t0: float, t1: float) -> Tensor:
    return torch.linspace(t0, t1, steps + 1, device=x.device, dtype=x.dtype)


@torch.no_grad()
def euler(v: Velocity, x: Tensor, nfe: int, t0: float = 0.0, t1: float = 1.0) -> tuple[Tensor, int]:
    """Explicit Euler on a uniform grid; NFE = steps."""
    if nfe < 1:
        raise BenchError(f"NFE must be >= 1 (got {nfe})")
    ts = _grid(x, nfe, t0, t1)
    for k in range(nfe):
        x = x + (ts[k + 1] - ts[k]) * v(ts[k], x)
    return x, nfe


@torch.no_grad()
def heun(v: Velocity, x: Tensor, nfe: int, t0: float = 0.0, t1: float = 1.0) -> tuple[Tensor, int]:
    """Heun's 2nd-order method (explicit trapezoid) on a uniform grid; NFE = 2 x steps (nfe // 2 steps)."""
    if nfe < 2:
        raise BenchError(f"Heun needs NFE >= 2 (got {nfe})")
    steps = nfe // 2
    ts = _grid(x, steps, t0, t1)
    for k in range(steps):
        h = ts[k + 1] - ts[k]
        d1 = v(ts[k], x)
        xe = x + h * d1
        x = x + 0.5 * h * (d1 + v(ts[k + 1], xe))
    return x, 2 * steps


@torch.no_grad()
def dopri5(
    v: Velocity,
    x: Tensor,
    nfe: int | None = None,
    t0: float = 0.0,
    t1: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[Tensor, int]:
    """Adaptive Dormand-Prince 5(4) via torchdiffeq; ``nfe`` is ignored and the NFE used is returned."""
    from torchdiffeq import odeint

    count = [0]

    def f(t: Tensor, y: Tensor) -> Tensor:
        count[0] += 1
        return v(t, y)

    ts = torch.tensor([t0, t1], device=x.device, dtype=x.dtype)
    out = odeint(f, x, ts, method="dopri5", rtol=rtol, atol=atol)
    return out[-1], count[0]


SOLVERS: dict[str, Callable[..., tuple[Tensor, int]]] = {"euler": euler, "heun": heun, "dopri5": dopri5}
ADAPTIVE = {"dopri5"}


def get_solver(name: str) -> Callable[..., tuple[Tensor, int]]:
    if name not in SOLVERS:
        raise BenchError(f"unknown solver {name!r}; valid: {', '.join(SOLVERS)}")
    return SOLVERS[name]
