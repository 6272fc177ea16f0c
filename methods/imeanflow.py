"""Improved MeanFlow (iMF; Geng, Lu, Wu, Shechtman, Kolter, He; arXiv 2512.02012), from scratch, no teacher.

MeanFlow (methods/meanflow.py) regresses u on a target built from u itself, sg[v + (s - t) d/dt u], whose JVP uses
the CONDITIONAL velocity v = x1 - x0 as tangent: the target is noisy and moves with the network. iMF rewrites the
same identity as a prediction of the velocity (a "v-loss"): the compound function

    V(t, s, x_t) = u(t, s, x_t) - (s - t) sg[d/dt u(t, s, x_t)],   d/dt u = d_t u + v_theta . grad_x u,

(the paper's V = u + (t - r) sg(du/dt) with noise at 1, written in this repo's direction: noise t = 0, data
t = 1, s >= t the end time; d/dt flips sign with the time) is regressed on v = x1 - x0, and the JVP's tangent is the
network's OWN instantaneous velocity v_theta(x_t, t) = u(t, t, x_t) (the official code's auxiliary v-head; this
suite's two-time net already has it at s = t), not the conditional v. At the exact average velocity V equals the
marginal velocity E[v | x_t] (the regression's minimiser). Loss, each term adaptively weighted as in MeanFlow,
sg(w) ||.||^2 with w = 1 / (||.||^2 + c)^p:

    || V - v ||^2  +  v_weight || u(t, t, x_t) - v ||^2     (the second: the v-head's flow-matching loss)

Times as the official imf.py: t, s from two logit-normal(-0.4, 1) draws sorted, half of each batch with s = t
(data_proportion 0.5); p = 1, c = 0.01 (norm_p, norm_eps). Left out: classifier-free guidance and its scale and
interval inputs (unconditional data here) and the paper's DiT changes. Sampling as MeanFlow (k uniform steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from bench.methods.base import Batch
from bench.methods.interpolants import bc
from bench.methods.meanflow import MeanFlow, MeanFlowConfig, UFn, adaptive_l2, bare
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.errors import BenchError
from bench.registry import register_method


@torch.no_grad()
def total_derivative(u_fn: UFn, t: Tensor, s: Tensor, x: Tensor, tangent: Tensor) -> Tensor:
    """d/dt u(t, s, x) = d_t u + tangent . grad_x u along dx/dt = ``tangent``: one JVP with tangent (1, 0, tangent),
    without grad, in full precision, attention on the math kernel (the fused ones have no forward derivative)."""
    with torch.autocast(x.device.type, enabled=False), sdpa_kernel(SDPBackend.MATH):
        _, dudt = torch.func.jvp(u_fn, (t, s, x), (torch.ones_like(t), torch.zeros_like(s), tangent))
    return dudt


def compound_velocity(u: Tensor, dudt: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """iMF's V = u - (s - t) sg(d/dt u): a velocity at (x_t, t), exact when u is the exact average velocity."""
    return u - bc(s - t, u) * dudt.detach()


@dataclass
class IMeanFlowConfig(MeanFlowConfig):
    ratio_neq: float = 0.5  # official imf.py data_proportion 0.5: half the pairs have s = t
    adaptive_p: float = 1.0  # official norm_p 1.0
    adaptive_c: float = 0.01  # official norm_eps 0.01
    v_weight: float = 1.0  # weight of the v-head's flow-matching term (official: loss_u + loss_v); 0 drops it

    def validate(self) -> None:
        super().validate()
        if self.v_weight < 0:
            raise BenchError(f"method.v_weight must be >= 0 (got {self.v_weight})")


@register_method("imeanflow")
class IMeanFlow(MeanFlow):
    """Improved MeanFlow (arXiv 2512.02012): MeanFlow's identity as a velocity regression, the JVP along the
    network's own velocity u(t, t, x); one-step sampling."""

    Config = IMeanFlowConfig

    def label(self) -> str:
        c, d = self.cfg, IMeanFlowConfig()
        tags = [
            f"{k}={getattr(c, k):g}" for k in ("ratio_neq", "adaptive_p", "v_weight") if getattr(c, k) != getattr(d, k)
        ]
        if c.time_sampler != d.time_sampler:
            tags.append(f"{c.time_sampler}-t")
        return f"imeanflow[{','.join(tags)}]" if tags else "imeanflow"

    def loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        c, x1 = self.cfg, b.x
        x0 = b.randn_like(x1)
        t, s = (z.to(x1.dtype) for z in self.sample_times(b))
        xt = bc(1 - t, x1) * x0 + bc(t, x1) * x1
        v = x1 - x0
        if c.v_weight > 0:
            v_theta = self.g(t, t, xt, velocity=True)  # the v-head, trained by its own term below
        else:
            with torch.no_grad():
                v_theta = self.g(t, t, xt, velocity=True)
        net = bare(self.g)  # the JVP runs without grad, so bypassing DDP's gradient hooks is safe
        dudt = total_derivative(lambda t_, s_, x_: net(t_, s_, x_, velocity=True), t, s, xt, v_theta.detach())
        big_v = compound_velocity(self.g(t, s, xt, velocity=True), dudt, t, s)
        sq_u = (big_v - v).pow(2).flatten(1).sum(1)
        sq_v = (v_theta - v).pow(2).flatten(1).sum(1)
        loss = adaptive_l2(sq_u, c.adaptive_p, c.adaptive_c)
        if c.v_weight > 0:
            loss = loss + c.v_weight * adaptive_l2(sq_v, c.adaptive_p, c.adaptive_c)
        return loss.mean(), {"mse_u": sq_u.mean().detach(), "mse_v": sq_v.mean().detach()}

    def record_extra(self) -> dict[str, Any]:
        return {
            "network": "chargen's g(t, s, x) = x + (s - t) u(t, s, x); the v-head is u(t, t, x)",
            "jvp": "torch.func.jvp, tangent (1, 0, u(t, t, x_t)), under no_grad",
            "pass_count": (
                "per training sample and step: 3 for u(t, s, x_t) (forward + backward), 3 for the v-head u(t, t, x_t) "
                "(1 when method.v_weight=0: forward only, for the tangent), 2 for the JVP"
            ),
        }
