"""Terminal Velocity Matching (TVM; Zhou et al., Luma AI; arXiv 2511.19797), trained from scratch, no teacher.

The flow map g(t, s, x) = x + (s - t) u(t, s, x) (chargen's two-time network, :class:`FlowMapNet`) is exact iff
g(t, t, x) = x (built in) and its derivative in the TERMINAL time equals the velocity field at the terminal point,
d/ds g(t, s, x) = v(g(t, s, x), s). TVM regresses both halves of that on one network, with u(s, s, .) playing v:

    terminal   || d/ds g(t, s, x_t) - sg u^-(s, s, g(t, s, x_t)) ||^2,   d/ds g = u + (s - t) d_s u
    flow match || u(s', s', x_s') - (x1 - x0) ||^2                          (at an independent time s')

d_s u from one forward-mode JVP of u with tangent (0, 1, 0) for (t, s, x), differentiated through (the official
code's ``detach_jvp: false``); u^- is a fast EMA of the network (official ``ema_target_beta`` 0.99), evaluated
without grad. Squares are means over dimensions and the terminal term is zero where s = t (official
``training/wrapper.py``). Times (official ``training/loss.py``, its noise-at-1 time tau mapped here by 1 - tau):
the gap s - t ~ sigmoid(N(-0.8, 1)), the end s from logit-normal(-0.4, 1) restricted to leave room for the gap,
s' ~ logit-normal(-0.4, 1). Sampling as MeanFlow: x = z + u(0, 1, z), k uniform steps for NFE k.
Left out: classifier-free guidance and its scale input (unconditional data here) and the paper's DiT changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from bench.methods.base import Batch, ema_copy, ema_update
from bench.methods.interpolants import bc
from bench.methods.meanflow import FlowMapMethod, bare, check_nfe
from bench.methods.nets import NetConfig
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.errors import BenchError
from bench.registry import register_method


def terminal_derivative(u_fn, t: Tensor, s: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(g(t, s, x), d/ds g(t, s, x)) for g = x + (s - t) u(t, s, x), from one JVP of ``u_fn`` with tangent (0, 1, 0);
    differentiable in u's parameters. Attention on the math kernel (the fused ones have no forward derivative)."""
    with sdpa_kernel(SDPBackend.MATH):
        u, du_ds = torch.func.jvp(u_fn, (t, s, x), (torch.zeros_like(t), torch.ones_like(s), torch.zeros_like(x)))
    gap = bc(s - t, x)
    return x + gap * u, u + gap * du_ds


def logit_normal(b: Batch, mean: float, std: float) -> Tensor:
    return torch.sigmoid(mean + std * b.randn())


@dataclass
class TVMConfig:
    # u(t, s, x): chargen's two-time MLP / U-Net, the U-Net with raw time (its JVP differentiates in t; nets.py)
    net: NetConfig = field(default_factory=lambda: NetConfig(unet_time_max_freq=0.0))
    s_p_mean: float = -0.4  # logit-normal of the terminal time (official configs: s_P_mean -0.4, s_P_std 1.0)
    s_p_std: float = 1.0
    gap_p_mean: float = -0.8  # logit-normal of the gap s - t (official: gap_P_mean -0.8, gap_P_std 1.0)
    gap_p_std: float = 1.0
    target_mu: float = 0.99  # EMA decay of u^- in the terminal target (official ema_target_beta 0.99); 0 = online
    nfe: list[int] = field(default_factory=lambda: [1, 2])  # rows: 1 and 2 uniform steps (the paper's 1/2-step)

    def validate(self) -> None:
        if self.s_p_std <= 0 or self.gap_p_std <= 0:
            raise BenchError("method: need s_p_std > 0 and gap_p_std > 0")
        if not 0.0 <= self.target_mu < 1.0:
            raise BenchError(f"method.target_mu must lie in [0, 1) (got {self.target_mu})")
        check_nfe(self.nfe)


@register_method("tvm")
class TVM(FlowMapMethod):
    """Terminal velocity matching (arXiv 2511.19797): the flow map's terminal derivative regressed on its own
    instantaneous velocity, plus flow matching; one-step sampling."""

    Config = TVMConfig
    smoke = {"net": {"hidden": 128, "depth": 2}}  # a smaller net for --smoke's 150 steps

    def __init__(self, cfg: TVMConfig, spec, train, workdir=None) -> None:
        super().__init__(cfg, spec, train, workdir)
        if cfg.target_mu > 0:
            self.g_target = ema_copy(self.g)  # u^-, updated by the loss itself (before each step's use)

    def label(self) -> str:
        return "tvm" if self.cfg.target_mu == TVMConfig().target_mu else f"tvm[mu={self.cfg.target_mu:g}]"

    def sample_times(self, b: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """(t, s, s'), t <= s: the official sampler in its time tau = 1 - time (noise at tau = 1): gap ~ sigmoid
        N(gap), tau_s ~ logit-normal(s) truncated to [0, 1 - gap] (inverse-cdf), tau_t = min(tau_s + gap, 1)."""
        c = self.cfg
        gap = logit_normal(b, c.gap_p_mean, c.gap_p_std)
        normal = torch.distributions.Normal(torch.zeros_like(gap) + c.s_p_mean, torch.zeros_like(gap) + c.s_p_std)
        top = normal.cdf(torch.logit((1 - gap).clamp(1e-6, 1 - 1e-6)))
        tau_s = torch.sigmoid(normal.icdf((b.rand() * top).clamp(1e-12, 1 - 1e-7)))
        tau_t = (tau_s + gap).clamp(max=1.0)
        return 1 - tau_t, 1 - tau_s, 1 - logit_normal(b, c.s_p_mean, c.s_p_std)

    def loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        target_net = self.g
        if self.cfg.target_mu > 0:
            if step > 0:  # u^- <- mu u^- + (1 - mu) u after each update (here: before the next one's use)
                ema_update([(self.g_target, self.g)], self.cfg.target_mu)
            target_net = self.g_target
        x1 = b.x
        x0, x0b = b.randn_like(x1), b.randn_like(x1)
        t, s, s2 = (z.to(x1.dtype) for z in self.sample_times(b))
        xt = bc(1 - t, x1) * x0 + bc(t, x1) * x1
        net = bare(self.g)  # the JVP's graph reaches the parameters directly; the flow-matching call below goes
        # through the engine's wrappers (pass counter, DDP), so every parameter still gets its reduced gradient
        g, dg_ds = terminal_derivative(lambda t_, s_, x_: net(t_, s_, x_, velocity=True), t, s, xt)
        with torch.no_grad():
            v_end = target_net(s, s, g, velocity=True)
        term = (dg_ds - v_end).pow(2).flatten(1).mean(1) * (~torch.isclose(s, t)).to(x1.dtype)
        xs2 = bc(1 - s2, x1) * x0b + bc(s2, x1) * x1
        fm = (self.g(s2, s2, xs2, velocity=True) - (x1 - x0b)).pow(2).flatten(1).mean(1)
        return (term + fm).mean(), {"terminal": term.mean().detach(), "fm": fm.mean().detach()}

    def record_extra(self) -> dict[str, Any]:
        return {
            "network": "chargen's g(t, s, x) = x + (s - t) u(t, s, x)",
            "jvp": "torch.func.jvp, tangent (0, 1, 0) for (t, s, x), differentiated through (detach_jvp false)",
            "target": f"EMA {self.cfg.target_mu:g} of the network, no grad" if self.cfg.target_mu else "online",
        }
