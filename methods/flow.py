"""Flow matching (rectified flow, I-CFM, OT-CFM): the multi-step baseline and chargen's teacher.

Loss: E || v(t, X_t) - (a'(t) X0 + b'(t) X1) ||^2, X0 ~ N(0, I), X1 ~ data, t ~ U[eps0, 1 - eps1];
with minibatch optimal-transport coupling, (X0, X1) are paired by an exact OT plan within the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from bench.methods.base import Batch, EvalPoint, Method, ema_copy
from bench.methods.interpolants import INTERPOLANTS, Interpolant, bc
from bench.methods.nets import NetConfig, build_net
from torch import Tensor

from bench.core import solvers
from bench.errors import BenchError
from bench.registry import register_method


@dataclass
class FlowConfig:
    net: NetConfig = field(default_factory=NetConfig)
    interpolant: Literal["linear", "follmer"] = "linear"
    coupling: Literal["independent", "ot"] = "independent"  # I-CFM or minibatch OT-CFM
    predict: Literal["velocity", "data"] = "velocity"  # network output; "data" = clean-sample D(t, x)
    t_eps0: float = -1.0  # training/sampling time bounds; -1 = the interpolant's default
    t_eps1: float = -1.0

    def validate(self) -> None:
        if not (-1.0 <= self.t_eps0 < 0.5 and -1.0 <= self.t_eps1 < 0.5):
            raise BenchError("method.t_eps0/t_eps1 must lie in [0, 0.5) (or -1 for the default)")
        eps1 = INTERPOLANTS[self.interpolant].eps1 if self.t_eps1 < 0 else self.t_eps1
        if self.interpolant == "follmer" and eps1 <= 0:
            raise BenchError("method.t_eps1 must be > 0 with the follmer interpolant (a'(1) is singular)")
        if self.predict == "data" and eps1 <= 0:
            raise BenchError("method.predict=data needs t_eps1 > 0 (the weight 1/a(t)^2 is infinite at t=1)")


def ot_pair(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """Re-pair a minibatch by the exact OT plan (squared Euclidean), as in OT-CFM."""
    import ot

    a = x0.reshape(len(x0), -1).detach().double().cpu().numpy()
    b = x1.reshape(len(x1), -1).detach().double().cpu().numpy()
    plan = ot.emd(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), ot.dist(a, b))
    j = torch.as_tensor(plan.argmax(axis=1), device=x1.device)
    return x0, x1[j]


class VelocityModel:
    """A trained network seen as a velocity field v(t, x) on [0, 1] (time clamped to the training range)."""

    def __init__(self, net: torch.nn.Module, interp: Interpolant, predict: str, eps0: float, eps1: float):
        self.net, self.interp, self.predict, self.eps0, self.eps1 = net, interp, predict, eps0, eps1

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).clamp(self.eps0, 1 - self.eps1)
        tb = t.expand(x.shape[0]) if t.ndim == 0 else t
        out = self.net(tb, x)
        return out if self.predict == "velocity" else self.interp.velocity_from_data(tb, x, out)

    def denoise(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, x1_hat) implied by the prediction at (t, x)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).clamp(self.eps0, 1 - self.eps1)
        tb = t.expand(x.shape[0]) if t.ndim == 0 else t
        out = self.net(tb, x)
        x1 = out if self.predict == "data" else self.interp.data_from_velocity(tb, x, out)
        x0 = (x - bc(self.interp.b(tb), x) * x1) / bc(self.interp.a(tb), x)
        return x0, x1

    @torch.no_grad()
    def step(self, method: str, t: float, s: float, x: Tensor) -> Tensor:
        """One step t -> s of 'euler', 'heun' or 'ei' (first-order exponential integrator / DDIM:
        x_s = a(s) x0_hat + b(s) x1_hat; equals Euler for the linear interpolant)."""
        tt = torch.tensor(t, dtype=x.dtype, device=x.device)
        ss = torch.tensor(s, dtype=x.dtype, device=x.device)
        if method == "euler":
            return x + (s - t) * self(tt, x)
        if method == "heun":
            d1 = self(tt, x)
            xe = x + (s - t) * d1
            return x + 0.5 * (s - t) * (d1 + self(ss, xe))
        if method == "ei":
            x0, x1 = self.denoise(tt, x)
            return self.interp.a(ss) * x0 + self.interp.b(ss) * x1
        raise BenchError(f"unknown step method {method!r}; valid: euler, heun, ei")

    def step_nfe(self, method: str) -> int:
        return 2 if method == "heun" else 1


@register_method("flow")
class Flow(Method):
    """Flow matching / rectified flow (I-CFM, OT-CFM): the multi-step baseline and chargen's teacher."""

    Config = FlowConfig
    kinds = ("points", "image")

    def __init__(self, cfg: FlowConfig, spec, train, workdir=None) -> None:
        super().__init__(cfg, spec, train, workdir)
        self.interp = INTERPOLANTS[cfg.interpolant]
        self.eps0 = self.interp.eps0 if cfg.t_eps0 < 0 else cfg.t_eps0
        self.eps1 = self.interp.eps1 if cfg.t_eps1 < 0 else cfg.t_eps1
        self.net = build_net(spec, cfg.net, n_times=1)
        self.ema = ema_copy(self.net)

    def label(self) -> str:
        c = self.cfg
        tags = ["icfm" if c.coupling == "independent" else "otcfm"]
        if c.interpolant != "linear":
            tags.append(c.interpolant)
        if c.predict != "velocity":
            tags.append("D-param")
        return f"flow[{','.join(tags)}]"

    def loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Flow matching on this process's slice; OT coupling pairs the whole global batch first."""
        if self.cfg.coupling == "ot":
            x0_all = torch.randn(b.global_size, *b.full.shape[1:], generator=b.gen, device=b.device)
            x0, x1 = (b.local(t) for t in ot_pair(x0_all, b.full))
        else:
            x1 = b.x
            x0 = b.randn_like(x1)
        t = self.eps0 + (1 - self.eps1 - self.eps0) * b.rand()
        xt = self.interp.x_t(t, x0, x1)
        out = self.net(t, xt)
        if self.cfg.predict == "velocity":
            err = out - self.interp.target(t, x0, x1)
            return err.pow(2).flatten(1).sum(1).mean(), {}
        w = self.interp.data_loss_weight(t)
        return (w * (out - x1).pow(2).flatten(1).sum(1)).mean(), {}

    def trained_nets(self) -> tuple[str, ...]:
        return ("net",)

    def ema_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.ema, self.net)]

    def sampling_nets(self) -> tuple[str, ...]:
        return ("ema",)

    def velocity(self, ema: bool = True) -> VelocityModel:
        return VelocityModel(self.ema if ema else self.net, self.interp, self.cfg.predict, self.eps0, self.eps1)

    def eval_points(self, nfes: list[int], solvers_: list[str]) -> list[EvalPoint]:
        return flow_eval_points(self.label(), nfes, solvers_ or ["euler", "heun", "dopri5"])

    def sample(self, noise: Tensor, point: EvalPoint) -> tuple[Tensor, int]:
        return sample_flow(self.velocity(), noise, point)

    def forward_reference(self) -> Callable[[Tensor], Tensor]:
        v = self.velocity()
        return lambda x: v(torch.tensor(0.5, device=x.device), x)


DEFAULT_NFE = [1, 2, 4, 8, 16, 32, 64, 128]  # a flow's rows when eval.nfe is empty (BASELINES.md)


def flow_eval_points(label: str, nfes: list[int], solver_names: list[str]) -> list[EvalPoint]:
    """Rows of a flow: every fixed-step solver at each NFE (empty = DEFAULT_NFE), adaptive solvers once."""
    nfes = nfes or DEFAULT_NFE
    pts = []
    for s in solver_names:
        solvers.get_solver(s)
        if s in solvers.ADAPTIVE:
            pts.append(EvalPoint(label, s, None))
        else:
            pts += [EvalPoint(label, s, n) for n in nfes if not (s == "heun" and n < 2)]
    return pts


def sample_flow(v: VelocityModel, noise: Tensor, point: EvalPoint) -> tuple[Tensor, int]:
    return solvers.get_solver(point.solver)(v, noise, point.nfe)
