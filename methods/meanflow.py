"""MeanFlow (Geng, Deng, Bai, Kolter, He; arXiv 2505.13447), trained from scratch, no teacher.

u(t, s, x) is the AVERAGE velocity over [t, s]: x_s = x_t + (s - t) u(t, s, x_t) along the flow, so one network
evaluation maps noise (t = 0) to data (t = 1). It is chargen's two-time network g(t, s, x) = x + (s - t) u(t, s, x)
(:class:`FlowMapNet`), so this row differs from chargen's by its objective alone. In this repo's time direction
(noise at t = 0, data at t = 1, x_t = (1 - t) x0 + t x1, v = x1 - x0), differentiating
(s - t) u(t, s, x_t) = int_t^s v(x_r, r) dr in t along the trajectory gives the MeanFlow identity

    u(t, s, x_t) = v(x_t, t) + (s - t) d/dt u(t, s, x_t),     d/dt u = d_t u + v . grad_x u,

(the paper's MeanFlow identity u = v - (t - r) du/dt, noise at t = 1 and r < t, written as endpoint minus current).
Loss (the paper's, with its adaptive weight):  sg(w) || u(t, s, x_t) - sg(v + (s - t) d/dt u) ||^2,
w = 1 / (||delta||^2 + c)^p, with d/dt u from ONE Jacobian-vector product with tangent (1, 0, v) for (t, s, x).
Sampling: x = z + u(0, 1, z) (NFE 1); k uniform steps x <- x + (1/k) u(j/k, (j+1)/k, x) (NFE k).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from bench.methods.base import Batch, EvalPoint, Method, ema_copy
from bench.methods.chargen import CharNet
from bench.methods.interpolants import bc
from bench.methods.nets import NetConfig, build_net
from bench.methods.timefeat import as_batch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.errors import BenchError
from bench.registry import register_method

UFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class FlowMapNet(CharNet):
    """chargen's g(t, s, x) = x + (s - t) u(t, s, x) (same parameters, same state-dict keys), whose call can also
    return u itself (``velocity=True``). Losses that regress u (at s = t, g is the identity whatever u is) call the
    network through ``__call__`` this way, so the engine's pass counter, DDP and torch.compile wrappers see them."""

    def forward(self, t: Tensor, s: Tensor, x: Tensor, velocity: bool = False) -> Tensor:
        if velocity:
            return self.u(as_batch(t, x), as_batch(s, x), x)
        return super().forward(t, s, x)


def bare(module: nn.Module) -> nn.Module:
    """The network under the engine's wrappers (DDP ``.module``, torch.compile ``._orig_mod``)."""
    for attr in ("_orig_mod", "module"):  # the engine wraps as torch.compile(DDP(net))
        inner = getattr(module, attr, None)
        if isinstance(inner, nn.Module):
            module = inner
    return module


@torch.no_grad()
def meanflow_target(u_fn: UFn, t: Tensor, s: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """sg[v + (s - t) d/dt u(t, s, x)] with d/dt u = d_t u + v . grad_x u from one forward-mode JVP of
    ``u_fn(t, s, x)`` with tangent (1, 0, v); run under no_grad and in full precision (the target is a constant).
    Attention runs on the math kernel: the fused SDPA kernels (CPU flash, CUDA flash / memory-efficient) have
    no forward-mode derivative."""
    with torch.autocast(x.device.type, enabled=False), sdpa_kernel(SDPBackend.MATH):
        _, dudt = torch.func.jvp(u_fn, (t, s, x), (torch.ones_like(t), torch.zeros_like(s), v))
    return v + bc(s - t, x) * dudt


def adaptive_l2(delta_sq: Tensor, p: float, c: float) -> Tensor:
    """MeanFlow's adaptively weighted loss sg(w) * ||delta||^2, w = 1 / (||delta||^2 + c)^p (p = 0: plain L2)."""
    return (delta_sq.detach() + c).pow(-p) * delta_sq


class FlowMapMethod(Method):
    """Shared parts of the methods that learn chargen's two-time map g(t, s, x) from scratch (MeanFlow, shortcut):
    the network and its EMA, one training stage at ``train.lr`` (the default), and k-step uniform sampling."""

    kinds = ("points", "image")

    def __init__(self, cfg: Any, spec, train, workdir=None) -> None:
        super().__init__(cfg, spec, train, workdir)
        self.g = FlowMapNet(build_net(spec, cfg.net, n_times=2))
        self.g_ema = ema_copy(self.g)

    def trained_nets(self) -> tuple[str, ...]:
        return ("g",)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.g_ema, self.g)]

    def sampling_nets(self) -> tuple[str, ...]:
        return ("g_ema",)

    def eval_points(self, nfes: list[int], solvers: list[str]) -> list[EvalPoint]:
        """Rows at ``method.nfe`` (k uniform steps of the learned map; eval.nfe is the flow rows' list)."""
        return [EvalPoint(self.label(), "onestep" if k == 1 else "compose", k) for k in self.cfg.nfe]

    @torch.no_grad()
    def sample(self, noise: Tensor, point: EvalPoint) -> tuple[Tensor, int]:
        k = int(point.nfe)
        x = noise
        for j in range(k):
            x = self.g_ema(j / k, (j + 1) / k, x)
        return x, k

    def forward_reference(self) -> Callable[[Tensor], Tensor]:
        return lambda x: self.g_ema(0.0, 1.0, x)


def check_nfe(nfe: list[int]) -> None:
    if not nfe or any(k < 1 for k in nfe):
        raise BenchError(f"method.nfe must be a non-empty list of integers >= 1 (got {nfe})")


@dataclass
class MeanFlowConfig:
    # u(t, s, x): chargen's two-time MLP / U-Net, the U-Net with raw time (its JVP differentiates in t; nets.py)
    net: NetConfig = field(default_factory=lambda: NetConfig(unet_time_max_freq=0.0))
    # share of pairs with s != t (the rest have s = t: plain flow matching, target v). Paper ablation (Table 1,
    # ImageNet, FID at NFE 1): 0% 328.9, 25% 61.1, 50% 63.1, 100% 67.3 -> 25%; its CIFAR-10 config uses 75%
    ratio_neq: float = 0.25
    # (t, s) sampler: two independent draws, sorted; logit-normal as in the paper (Table 1: lognorm(-0.4, 1.0)
    # best, uniform 65.9 vs 61.1), or uniform on [0, 1]
    time_sampler: Literal["logit_normal", "uniform"] = "logit_normal"
    # logit-normal sigmoid(N(p_mean, p_std^2)) in the PAPER's convention (noise at 1, data at 0); a draw tau is
    # used here as time 1 - tau. Paper ImageNet: lognorm(-0.4, 1.0); CIFAR-10: lognorm(-2.0, 2.0)
    p_mean: float = -0.4
    p_std: float = 1.0
    adaptive_p: float = 1.0  # w = 1 / (||delta||^2 + c)^p; paper Table 1: p = 1 best (0 = plain L2); CIFAR-10 0.75
    adaptive_c: float = 1e-3  # paper (adaptive loss weighting): c = 1e-3; also the official PyTorch code's norm_eps
    nfe: list[int] = field(default_factory=lambda: [1, 2])  # rows: NFE 1 (the paper's headline) and 2 (its 2-NFE)

    def validate(self) -> None:
        if not 0.0 <= self.ratio_neq <= 1.0:
            raise BenchError(f"method.ratio_neq must lie in [0, 1] (got {self.ratio_neq})")
        if self.p_std <= 0:
            raise BenchError(f"method.p_std must be > 0 (got {self.p_std})")
        if self.adaptive_p < 0 or self.adaptive_c <= 0:
            raise BenchError("method: need adaptive_p >= 0 and adaptive_c > 0")
        check_nfe(self.nfe)


@register_method("meanflow")
class MeanFlow(FlowMapMethod):
    """MeanFlow (arXiv 2505.13447): average-velocity regression on the MeanFlow identity, one-step sampling."""

    Config = MeanFlowConfig
    smoke = {"net": {"hidden": 128, "depth": 2}}  # a smaller net for --smoke's 150 steps

    def label(self) -> str:
        c, d, tags = self.cfg, MeanFlowConfig(), []
        if c.ratio_neq != d.ratio_neq:
            tags.append(f"neq={c.ratio_neq:g}")
        if c.time_sampler != d.time_sampler:
            tags.append(f"{c.time_sampler}-t")
        elif (c.p_mean, c.p_std) != (d.p_mean, d.p_std):
            tags.append(f"lognorm({c.p_mean:g},{c.p_std:g})")
        if c.adaptive_p != d.adaptive_p:
            tags.append(f"p={c.adaptive_p:g}")
        return f"meanflow[{','.join(tags)}]" if tags else "meanflow"

    def sample_times(self, b: Batch) -> tuple[Tensor, Tensor]:
        """(t, s), t <= s, in this repo's convention: the paper's (t, r), r <= t, with noise at 1, mapped by 1 - time;
        s = t with probability 1 - ratio_neq."""
        c = self.cfg
        if c.time_sampler == "logit_normal":
            a, d = (torch.sigmoid(c.p_mean + c.p_std * b.randn()) for _ in range(2))
        else:
            a, d = b.rand(), b.rand()
        t_paper, r_paper = torch.maximum(a, d), torch.minimum(a, d)
        r_paper = torch.where(b.rand() < c.ratio_neq, r_paper, t_paper)
        return 1 - t_paper, 1 - r_paper

    def loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x1 = b.x
        x0 = b.randn_like(x1)
        t, s = (z.to(x1.dtype) for z in self.sample_times(b))
        xt = bc(1 - t, x1) * x0 + bc(t, x1) * x1
        v = x1 - x0
        u = self.g(t, s, xt, velocity=True)
        net = bare(self.g)  # the JVP runs without grad, so bypassing DDP's gradient hooks is safe
        target = meanflow_target(lambda t_, s_, x_: net(t_, s_, x_, velocity=True), t, s, xt, v)
        sq = (u - target).pow(2).flatten(1).sum(1)
        loss = adaptive_l2(sq, self.cfg.adaptive_p, self.cfg.adaptive_c).mean()
        return loss, {"mse": sq.mean().detach()}

    def record_extra(self) -> dict[str, Any]:
        return {
            "network": "chargen's g(t, s, x) = x + (s - t) u(t, s, x), u = average velocity",
            "jvp": "torch.func.jvp, tangent (1, 0, v), under no_grad, separate from the graded forward of u",
            "pass_count": (
                "per training sample and step the engine counts 5: 3 for the forward+backward of u and 2 for the JVP "
                "(primal and tangent: its output is a dual tensor). Wall-clock of one JVP call was measured at about "
                "4 plain forwards (MLP 256x3, batch 512, one CPU thread): functorch's overhead, not counted as passes"
            ),
        }
