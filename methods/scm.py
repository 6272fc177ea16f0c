"""sCM: simplified, stabilised continuous-time consistency models (Lu & Song; arXiv 2410.11081), training (sCT,
from scratch) and distillation (sCD, from the suite's flow teacher), on chargen's two-time network.

TrigFlow in this repo's time. The paper's path is x_tau = cos(tau) x1 + sin(tau) sigma_d z, tau in [0, pi/2] from
data (0) to noise (pi/2), with the consistency function f(x_tau, tau) = cos(tau) x_tau - sin(tau) sigma_d F(x_tau, tau)
and sigma_d the data's std (the noise is scaled to the data: ``sigma_d`` 0 = DataSpec.data_std; sCD keeps the
suite's unit noise, its teacher's). It is this repo's linear path with noise sigma_d z, rescaled: x_tau = k x_t with
k = cos + sin and t = cos(tau) / k (noise t = 0 at tau = pi/2, data t = 1 at tau = 0). The network is
f(x_t, t) = g(t, 1, x_t) = x_t + (1 - t) u(t, 1, x_t), so f(x, 1) = x exactly, and the paper's output is

    F(x_tau, tau) = ((cos - sin) x_t - u(t, 1, x_t) / k) / sigma_d     (x_t = x_tau / k; no division by sin).

Loss (the paper's Algorithm 1 and eq. 8, with theta^- = sg theta):

    dx/dtau  = cos sigma_d z - sin x1 (sCT)  or  the teacher's velocity in TrigFlow time (sCD, sigma_d = 1),
               (cos - sin) x_t - v(x_t, t) / k
    g        = -cos^2 (sigma_d F^- - dx/dtau) - r cos sin (x_tau + sigma_d dF^-/dtau)   (= cos df^-/dtau at r = 1)
    g        <- g / (||g|| + c)                                          (tangent normalisation, c = 0.1)
    L        = e^{w(tau)} / D || F_theta - F^- - g ||^2 - w(tau)           (adaptive weighting, w learned)

with dF^-/dtau from one JVP of F^- in (tau, x_tau) along (1, dx/dtau), r rising linearly from 0 to 1 over
``tangent_warmup`` steps (tangent warm-up), tau = arctan(e^n / sigma_d), n ~ N(P_mean, P_std^2) (CIFAR-10: -1.0,
1.4). Sampling (the paper's 1- and 2-step): x = f(sigma_d z, pi/2) = g(0, 1, sigma_d z); then re-noise to tau_mid,
x_tau = cos x + sin sigma_d z', and map again (CIFAR-10 two-step: tau_mid = 1.1). Stabilisers of the paper that are
architectural (positional time embedding at a small scale, adaptive double normalisation, the JVP rearrangement for
attention) are covered by the suite's nets (raw time input: the MLP's default, the U-Net's for sCT; attention on
the math kernel) or left out. sCD inherits its teacher's net: a U-Net teacher at the flow's default 1,000-rad time
features (nets.py) breaks that stabiliser, so a faithful sCD on images needs a teacher with raw time
(``--set method.teacher.flow.net.unet_time_max_freq=0``, or a flow run trained so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from bench.methods.base import Batch, EvalPoint, Method, Stage, Update, ema_copy
from bench.methods.interpolants import bc
from bench.methods.meanflow import FlowMapNet, bare
from bench.methods.nets import NetConfig, build_net, can_start_from
from bench.methods.teacher import TeacherConfig, TeacherMixin
from bench.methods.timefeat import FourierTime
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.errors import BenchError
from bench.registry import register_method


def tau_to_t(tau: Tensor) -> Tensor:
    """This repo's time of TrigFlow's tau: t = cos / (cos + sin)."""
    return torch.cos(tau) / (torch.cos(tau) + torch.sin(tau))


def trig_output(net: nn.Module, tau: Tensor, x_tau: Tensor, sigma_d: float = 1.0) -> Tensor:
    """The paper's F(x_tau, tau) for f(x_t, t) = g(t, 1, x_t) of ``net`` (a :class:`FlowMapNet`)."""
    cos, sin = bc(torch.cos(tau), x_tau), bc(torch.sin(tau), x_tau)
    k = cos + sin
    xt = x_tau / k
    t = tau_to_t(tau)
    return ((cos - sin) * xt - net(t, torch.ones_like(t), xt, velocity=True) / k) / sigma_d


def consistency_fn(net: nn.Module, tau: Tensor, x_tau: Tensor) -> Tensor:
    """f(x_tau, tau) = cos x_tau - sin F = g(t, 1, x_tau / k)."""
    t = tau_to_t(tau)
    return net(t, torch.ones_like(t), x_tau / bc(torch.cos(tau) + torch.sin(tau), x_tau))


def tangent(
    net: nn.Module, tau: Tensor, x_tau: Tensor, dx: Tensor, r: float, sigma_d: float = 1.0
) -> tuple[Tensor, Tensor]:
    """(F^-, g) with g = -cos^2 (sigma_d F^- - dx) - r cos sin (x_tau + sigma_d dF^-/dtau) (unnormalised), dF^-/dtau
    from one JVP along (1, dx), without grad, in full precision, attention on the math kernel."""
    with torch.no_grad(), torch.autocast(x_tau.device.type, enabled=False), sdpa_kernel(SDPBackend.MATH):
        fn = lambda a, x: trig_output(net, a, x, sigma_d)  # noqa: E731
        f_minus, df = torch.func.jvp(fn, (tau, x_tau), (torch.ones_like(tau), dx))
        cos, sin = bc(torch.cos(tau), x_tau), bc(torch.sin(tau), x_tau)
        return f_minus, -cos * cos * (sigma_d * f_minus - dx) - r * cos * sin * (x_tau + sigma_d * df)


class AdaptiveWeight(nn.Module):
    """w(tau): the paper's learned per-time log-weight, an MLP on Fourier features of tau, zero at the start.
    Tiny next to the generator: not a network pass (the engine's pass counter skips it)."""

    pass_free = True

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.emb = FourierTime(width, n_freq=16, max_freq=16.0)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tau: Tensor) -> Tensor:
        return self.out(nn.functional.silu(self.emb(tau))).squeeze(1)


@dataclass
class SCMConfig:
    mode: Literal["sct", "scd"] = "sct"  # consistency training (no teacher) or distillation from a flow teacher
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # sCD's teacher: reused flow run, or trained here
    # network of u(t, s, x); None = the teacher's (sCD) / the default net with raw time on images (sCT; nets.py)
    net: NetConfig | None = None
    init: Literal["auto", "teacher", "scratch"] = "auto"  # auto: sCD starts from the teacher (the paper tunes a
    # pretrained TrigFlow model), sCT from scratch
    # the noise's std sigma_d (the paper: the data's, 0.5 on CIFAR-10); 0 = the data's (DataSpec.data_std) for sCT,
    # 1 for sCD (its teacher's unit noise; sCD accepts no other value)
    sigma_d: float = 0.0
    p_mean: float = -1.0  # tau = arctan(e^n / sigma_d), n ~ N(p_mean, p_std^2): the paper's CIFAR-10 values
    p_std: float = 1.4
    tangent_c: float = 0.1  # tangent normalisation g / (||g|| + c) (the paper's c = 0.1); 0 = off
    tangent_warmup: int = 1000  # r from 0 to 1 over these fit steps (paper: 10,000 of its runs); 0 = r = 1 throughout
    adaptive: bool = True  # learned weighting e^w / D ||.||^2 - w (paper eq. 8); False: ||.||^2 / D
    fit_steps: int = 6000  # chargen's and CD's fit budget
    fit_lr: float = 1e-3  # this suite's Adam rate for its MLPs (the paper: RAdam, 1e-4 class rates on U-Nets)
    fit_batch: int = 0  # 0 = train.batch_size
    sample_steps: list[int] = field(default_factory=lambda: [1, 2])  # rows: NFE 1 and 2
    mid_tau: list[float] = field(default_factory=lambda: [1.1])  # re-noising times of multistep sampling (CIFAR-10)

    def validate(self) -> None:
        if self.mode == "sct" and self.init == "teacher" and not self.teacher.run:
            raise BenchError("method.init=teacher with mode=sct needs method.teacher.run (sCT trains no teacher)")
        if self.p_std <= 0 or self.tangent_c < 0 or self.tangent_warmup < 0 or self.sigma_d < 0:
            raise BenchError("method: need p_std > 0, tangent_c >= 0, tangent_warmup >= 0 and sigma_d >= 0")
        if self.mode == "scd" and self.sigma_d not in (0.0, 1.0):
            raise BenchError("method.sigma_d: sCD keeps its teacher's unit noise (0 or 1)")
        if self.fit_steps < 0 or self.fit_lr <= 0 or self.fit_batch < 0:
            raise BenchError("method: need fit_steps >= 0, fit_lr > 0, fit_batch >= 0")
        if not self.sample_steps or any(k < 1 for k in self.sample_steps):
            raise BenchError(f"method.sample_steps must be NFEs >= 1 (got {self.sample_steps})")
        if max(self.sample_steps) - 1 > len(self.mid_tau):
            raise BenchError(f"method.sample_steps up to {max(self.sample_steps)} need that many - 1 mid_tau")
        m = self.mid_tau
        if any(not 0 < a < math.pi / 2 for a in m) or any(b >= a for a, b in zip(m, m[1:], strict=False)):
            raise BenchError(f"method.mid_tau must decrease strictly inside (0, pi/2) (got {m})")


@register_method("scm")
class SCM(TeacherMixin, Method):
    """Continuous-time consistency models (arXiv 2410.11081): sCT and sCD in TrigFlow time."""

    Config = SCMConfig
    kinds = ("points", "image")
    smoke = {"fit_steps": 150, "tangent_warmup": 50}

    def __init__(self, cfg: SCMConfig, spec, train, workdir=None) -> None:
        super().__init__(cfg, spec, train, workdir)
        self.teacher_run = None
        if cfg.mode == "scd" or cfg.teacher.run:
            self._init_teacher(cfg.teacher, spec, train, workdir)
        self.init_from_teacher = cfg.init == "teacher" or (cfg.init == "auto" and cfg.mode == "scd")
        net_cfg = cfg.net or (self.teacher_cfg.net if self.has_teacher() else NetConfig(unet_time_max_freq=0.0))
        if self.init_from_teacher and not can_start_from(spec, net_cfg, self.teacher_cfg.net):
            raise BenchError(
                "starting from the teacher needs method.net equal to the teacher's (or unset); "
                "or set method.init=scratch"
            )
        self.g = FlowMapNet(build_net(spec, net_cfg, n_times=2))
        self.g_ema = ema_copy(self.g)
        self.w_phi = AdaptiveWeight()
        self.sigma_d = cfg.sigma_d or (1.0 if cfg.mode == "scd" or spec.data_std is None else float(spec.data_std))

    def tangent_r(self, step: int) -> float:
        w = self.cfg.tangent_warmup
        return 1.0 if w == 0 else min(1.0, (step + 1) / w)

    def sample_tau(self, b: Batch) -> Tensor:
        return torch.atan(torch.exp(self.cfg.p_mean + self.cfg.p_std * b.randn()) / self.sigma_d)

    def loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        c, x1 = self.cfg, b.x
        sd = self.sigma_d
        z = b.randn_like(x1) * sd
        tau = self.sample_tau(b).to(x1.dtype)
        cos, sin = bc(torch.cos(tau), x1), bc(torch.sin(tau), x1)
        x_tau = cos * x1 + sin * z
        if c.mode == "sct":
            dx = cos * z - sin * x1
        else:
            xt = x_tau / (cos + sin)
            with torch.no_grad():
                dx = (cos - sin) * xt - self.v()(tau_to_t(tau), xt) / (cos + sin)
        f_minus, g = tangent(bare(self.g), tau, x_tau, dx, self.tangent_r(step), sd)
        if c.tangent_c > 0:
            g = g / (bc(g.flatten(1).norm(dim=1), g) + c.tangent_c)
        sq = (trig_output(self.g, tau, x_tau, sd) - f_minus - g).pow(2).flatten(1).mean(1)
        if not c.adaptive:
            return sq.mean(), {"mse": sq.mean().detach()}
        w = self.w_phi(tau)
        return (torch.exp(w) * sq - w).mean(), {"mse": sq.mean().detach(), "w_mean": w.mean().detach()}

    def stages(self) -> list[Stage]:
        c = self.cfg

        def setup(resumed: bool) -> None:
            if resumed:
                return
            if self.init_from_teacher:
                self.g.u.load_from_single_time(self.teacher.ema)
            self.g_ema.load_state_dict(self.g.state_dict())

        fit = Update(("g", "w_phi"), self.loss, lr=c.fit_lr, batch_size=c.fit_batch)
        ema = [(self.g_ema, self.g)]
        fit_stage = Stage("fit", c.fit_steps, [fit], setup=setup, ema=ema, ema_decay=self.train_cfg.ema_decay)
        return [*self._teacher_stages(), fit_stage]

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """One noise per sampling step: row j of a sample's noise is z (j = 0) or the re-noising of step j."""
        return (max(self.cfg.sample_steps), *self.spec.shape)

    def label(self) -> str:
        c, d = self.cfg, SCMConfig()
        tags = [{"sct": "sCT", "scd": "sCD"}[c.mode]]
        tags += [f"tangent_c={c.tangent_c:g}"] if c.tangent_c != d.tangent_c else []  # the warm-up: in record_extra
        tags += [] if c.adaptive else ["no-adaptive"]
        if self.init_from_teacher and c.mode == "sct":
            tags.append("teacher-init")
        return f"scm[{','.join(tags)}]"

    def eval_points(self, nfes: list[int], solvers: list[str]) -> list[EvalPoint]:
        return [EvalPoint(self.label(), "onestep" if k == 1 else "multistep", k) for k in self.cfg.sample_steps]

    @torch.no_grad()
    def sample(self, noise: Tensor, point: EvalPoint) -> tuple[Tensor, int]:
        k = int(point.nfe)
        zero = torch.zeros(noise.shape[0], dtype=noise.dtype, device=noise.device)
        sd = self.sigma_d
        x = consistency_fn(self.g_ema, zero + math.pi / 2, sd * noise[:, 0])
        for j, tau in enumerate(self.cfg.mid_tau[: k - 1], start=1):
            x = consistency_fn(self.g_ema, zero + tau, math.cos(tau) * x + math.sin(tau) * sd * noise[:, j])
        return x, k

    def forward_reference(self) -> Callable[[Tensor], Tensor]:
        return lambda x: self.g_ema(0.0, 1.0, x[:, 0])

    def sampling_nets(self) -> tuple[str, ...]:
        return ("g_ema",)

    def record_extra(self) -> dict[str, Any]:
        c = self.cfg
        return {
            **self.teacher_extra(),
            "init": "teacher" if self.init_from_teacher else "scratch",
            "time_map": "TrigFlow tau -> t = cos / (cos + sin), x_tau = (cos + sin) x_t",
            "sigma_d": self.sigma_d,
            "tau": f"arctan(exp(N({c.p_mean}, {c.p_std}^2)) / sigma_d)",
            "tangent": {"normalisation_c": c.tangent_c, "warmup_steps": c.tangent_warmup},
            "weighting": "learned e^w / D ||.||^2 - w" if c.adaptive else "1 / D",
            "mid_tau": c.mid_tau[: max(c.sample_steps) - 1],
            "pass_count": "per sample and step: 3 (F_theta forward + backward), 2 (the JVP), 1 more for sCD's teacher",
        }
