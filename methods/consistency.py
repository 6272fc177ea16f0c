"""Consistency models (Song, Dhariwal, Chen, Sutskever, arXiv 2303.01469, "CM") with the improved recipe of
Song & Dhariwal (arXiv 2310.14189, "iCT") as options, on chargen's two-time network.

The consistency function is f(x, t) = g(t, 1, x) with g(t, s, x) = x + (s - t) u(t, s, x) (chargen's ``CharNet``),
so the boundary condition f(x, 1) = x holds exactly (CM eq. 5 with c_skip(eps) = 1, c_out(eps) = 0). On a grid
0 = t_0 < t_1 < ... < t_{N-1} = 1 (time runs noise -> data), pair index n ~ p(n) on {0, .., N-2}:

  L(k) = E[ lambda(n) d( f(x_{t_n}, t_n), sg f^-(x^_{t_{n+1}}, t_{n+1}) ) ],  x_{t_n} = (1 - t_n) x0 + t_n x1
  CD (CM eq. 7):  x^_{t_{n+1}} = one teacher step (Euler or Heun of the frozen EMA velocity) from x_{t_n}
  CT (CM eq. 10): x^_{t_{n+1}} = (1 - t_{n+1}) x0 + t_{n+1} x1 from the same (x0, x1); no teacher

with f^- the target network: an EMA of f (decay mu, CM Alg. 2/3) or f itself (iCT, ``target: online``).
  N(k) (k = step of the fit stage, K = fit_steps):  fixed N (CM, CD);  CM: ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2)
  - 1) + 1;  iCT: min(s0 2^floor(k/K'), s1) + 1 with K' = floor(K / (log2 floor(s1/s0) + 1)).
  mu(k) (CT with the CM schedule, CM Alg. 3): exp(s0 ln mu0 / N(k)); otherwise the fixed ``mu``.
  d: squared L2 (CM), or pseudo-Huber sqrt(||a - b||^2 + c^2) - c with c = 0.00054 sqrt(dim) (iCT sec. 3.3).
  lambda: 1 (CM) or 1 / (sigma_n - sigma_{n+1}) (iCT sec. 3.2); p(n): uniform (CM) or iCT's discretised
  lognormal, p(n) ~ erf((ln sigma_n - P_mean) / (sqrt 2 P_std)) - erf((ln sigma_{n+1} - P_mean) / (sqrt 2 P_std)).

The grid. CM and iCT place N Karras points sigma_max = sigma_0 > ... > sigma_{N-1} = sigma_min,
sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (EDM eq. 5), on the VE path
x1 + sigma z. Our linear path divided by t is exactly that path: x_t / t = x1 + ((1 - t) / t) x0, so sigma = (1 - t) / t
and t = 1 / (1 + sigma) (``grid: karras``, default). The two ends are snapped: t_0 = 0 stands for sigma_max
(1 / (1 + 80) = 0.012; CM samples from x_T = T z, ignoring the data's share of x_T, the same approximation) and
t_{N-1} = 1 for sigma_min (CM's boundary f(x, eps) = x). lambda and p(n) use the papers' unsnapped sigmas, so no
weight is 0 or infinite. ``grid: uniform`` (t_i = i / (N-1), chargen's grid) is available with lambda = 1 and
uniform p(n). sigma is in units of the unit-variance noise x0, as in the papers' sigma relative to their data.

Sampling (CM Alg. 1): x = f(z, 0) (NFE 1); for each further step, re-noise to an intermediate time tau,
x_tau = (1 - tau) z' + tau x, and x = f(x_tau, tau). The fresh noise z' of sample i comes with its own seed:
``noise_shape`` is (max(sample_steps), *data shape) and sample i's row j is the noise of step j.

Defaults and their sources (CM = arXiv 2303.01469 Table 3 and openai/consistency_models(_cifar10); iCT = arXiv
2310.14189): see the comment on each field of :class:`ConsistencyConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from bench.methods.base import Batch, EvalPoint, Method, Stage, Update, ema_copy, ema_update
from bench.methods.chargen import CharNet, grid_step
from bench.methods.interpolants import bc
from bench.methods.nets import NetConfig, build_net, can_start_from
from bench.methods.teacher import TeacherConfig, TeacherMixin
from torch import Tensor, nn

from bench.errors import BenchError
from bench.registry import register_method

LPIPS_REFUSED = "needs local LPIPS/VGG weights, which this suite does not load; use l2"

# iCT's lognormal proposal over noise levels (arXiv 2310.14189 sec. 3.5, from EDM's training distribution)
P_MEAN, P_STD = -1.1, 2.0


RECIPES = {  # what each "auto" field takes under method.recipe
    "cm": {"schedule": "cm", "target": "ema", "distance": "l2", "weighting": "uniform", "pairs": "uniform"},
    "ict": {
        "schedule": "ict",
        "target": "online",
        "distance": "pseudo_huber",
        "weighting": "ict",
        "pairs": "lognormal",
    },
}


def resolve_recipe(cfg: ConsistencyConfig) -> ConsistencyConfig:
    """The config with every "auto" replaced by its recipe's value (CD's schedule: CM's fixed N; on the
    uniform grid lambda and p(n) stay uniform, the only choice defined there)."""
    import dataclasses

    recipe = cfg.recipe if cfg.recipe != "auto" else ("cm" if cfg.mode == "cd" else "ict")
    vals = dict(RECIPES[recipe])
    if cfg.mode == "cd":
        vals["schedule"] = "fixed"
    if cfg.grid == "uniform":
        vals.update(weighting="uniform", pairs="uniform")
    return dataclasses.replace(cfg, recipe=recipe, **{k: v for k, v in vals.items() if getattr(cfg, k) == "auto"})


@dataclass
class ConsistencyConfig:
    mode: Literal["cd", "ct"] = "cd"  # consistency distillation (from a flow teacher) or training (no teacher)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # CD's teacher: reused flow run, or trained here
    net: NetConfig | None = None  # network of u(t, s, x); None = the teacher's (chargen's network, same size)
    # auto: start from the teacher when the run has one (CD; CM's cm_train.py copies the teacher into the student),
    # so f(x, t) = x + (1 - t) v(t, x) is the teacher's denoiser at step 0; from scratch otherwise (CT, as in CM/iCT)
    init: Literal["auto", "teacher", "scratch"] = "auto"
    solver: Literal["euler", "heun"] = "heun"  # CD teacher step (CM Table 3: Heun)
    grid: Literal["karras", "uniform"] = "karras"  # Karras sigmas mapped by t = 1/(1+sigma) (CM, iCT), or uniform t
    sigma_min: float = 0.002  # Karras grid ends and curvature (CM, iCT, EDM)
    sigma_max: float = 80.0
    rho: float = 7.0
    # the recipe every "auto" below takes: cm = CM (arXiv 2303.01469 Table 3); ict = iCT (arXiv 2310.14189 sec. 3:
    # ict schedule, online target, pseudo-Huber, lambda = 1/(sigma_n - sigma_{n+1}), lognormal pairs). auto = cm for
    # CD and ict for CT: on checkerboard (7,000 steps, 3 repeats) CT reaches W2 0.37 with ict and stays near the
    # identity map (1.9) with cm; CD at cm's fixed N = 18 is CM's own CD setting
    recipe: Literal["auto", "cm", "ict"] = "auto"
    schedule: Literal["auto", "fixed", "cm", "ict"] = "auto"  # N(k); auto: CD fixed N (CM), else the recipe's
    n_points: int = 18  # fixed N: grid points (CM Table 3, CIFAR-10 CD: N = 18)
    s0: int = 0  # N(k) bounds; 0 = the schedule's paper value: cm s0 = 2, s1 = 150 (CM CIFAR-10 CT);
    s1: int = 0  # ict s0 = 10, s1 = 1280 (iCT)
    target: Literal["auto", "ema", "online"] = (
        "auto"  # f^-: EMA of f (CM) or stop-grad f itself (iCT; = CM CIFAR-10 CD mu 0)
    )
    mu: float = 0.95  # fixed target EMA decay (CM launch.sh, ImageNet-64 / LSUN CD: --start_ema 0.95)
    mu0: float = 0.9  # CT's adaptive mu(k) = exp(s0 ln mu0 / N(k)) with the cm schedule (CM Table 3 CIFAR-10 CT)
    distance: Literal["auto", "l2", "pseudo_huber", "lpips"] = "auto"  # CM: squared L2 (and LPIPS); iCT: pseudo-Huber
    huber_c: float = 0.0  # pseudo-Huber c; 0 = 0.00054 sqrt(dim) (iCT)
    weighting: Literal["auto", "uniform", "ict"] = "auto"  # lambda(n): 1 (CM) or 1/(sigma_n - sigma_{n+1}) (iCT)
    pairs: Literal["auto", "uniform", "lognormal"] = "auto"  # p(n): uniform (CM) or iCT's discretised lognormal
    fit_steps: int = 6000  # K; chargen's fit budget, so the two rows train the same network as long
    fit_lr: float = 1e-3  # chargen's fit_lr (CM: 4e-4 RAdam on a U-Net; this suite's MLPs use 1e-3 throughout)
    fit_batch: int = 0  # 0 = train.batch_size
    sample_steps: list[int] = field(default_factory=lambda: [1, 2])  # rows: NFE 1 and multistep NFE k
    # intermediate times of multistep sampling, increasing; default: CM's two-step ImageNet-64 CD choice (launch.sh
    # --ts 0,22,39 of 40 Karras steps: sigma = 1.382) mapped by t = 1/(1+sigma)
    mid_times: list[float] = field(default_factory=lambda: [0.4198])

    def validate(self) -> None:
        if self.distance == "lpips":
            raise BenchError(f"method.distance=lpips {LPIPS_REFUSED} or pseudo_huber")
        if self.mode == "ct" and self.teacher.run and self.init == "scratch":
            raise BenchError("method.teacher.run is unused by mode=ct with init=scratch; unset it")
        if self.mode == "ct" and self.init == "teacher" and not self.teacher.run:
            raise BenchError("method.init=teacher with mode=ct needs method.teacher.run (CT trains no teacher)")
        if self.n_points < 2 or self.s0 < 0 or self.s1 < 0 or (self.s0 and self.s1 and self.s1 < self.s0):
            raise BenchError("method: need n_points >= 2, s0 >= 0, s1 >= 0 and s1 >= s0 (0 = the paper's value)")
        if not (0 < self.sigma_min < self.sigma_max) or self.rho <= 0:
            raise BenchError("method: need 0 < sigma_min < sigma_max and rho > 0")
        if not (0 <= self.mu < 1 and 0 < self.mu0 < 1) or self.huber_c < 0:
            raise BenchError("method: need 0 <= mu < 1, 0 < mu0 < 1 and huber_c >= 0")
        if self.grid == "uniform" and (self.weighting == "ict" or self.pairs == "lognormal"):
            raise BenchError("method.weighting=ict and method.pairs=lognormal are defined on the karras grid")
        if self.fit_steps < 0 or self.fit_lr <= 0 or self.fit_batch < 0:
            raise BenchError("method: need fit_steps >= 0, fit_lr > 0, fit_batch >= 0")
        if not self.sample_steps or any(k < 1 for k in self.sample_steps):
            raise BenchError(f"method.sample_steps must be NFEs >= 1 (got {self.sample_steps})")
        if max(self.sample_steps) - 1 > len(self.mid_times):
            raise BenchError(f"method.sample_steps up to {max(self.sample_steps)} need that many - 1 mid_times")
        m = self.mid_times
        if any(not 0 < t < 1 for t in m) or any(b <= a for a, b in zip(m, m[1:], strict=False)):
            raise BenchError(f"method.mid_times must increase strictly inside (0, 1) (got {m})")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """EDM's n noise levels from sigma_max down to sigma_min (float64)."""
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + i * (lo - hi)) ** rho


def cm_points(k: int, K: int, s0: int, s1: int) -> int:
    """CM's N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 (grid points at step k of K)."""
    return math.ceil(math.sqrt(k / max(K, 1) * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def ict_points(k: int, K: int, s0: int, s1: int) -> int:
    """iCT's N(k) = min(s0 2^floor(k/K'), s1) + 1, K' = floor(K / (log2 floor(s1/s0) + 1))."""
    kp = max(math.floor(max(K, 1) / (math.log2(math.floor(s1 / s0)) + 1)), 1)
    return min(s0 * 2 ** (k // kp), s1) + 1


@register_method("consistency")
class Consistency(TeacherMixin, Method):
    """Consistency distillation / training (CM, iCT options) on chargen's two-time network."""

    Config = ConsistencyConfig
    kinds = ("points", "image")
    smoke = {"fit_steps": 150}

    def __init__(self, cfg: ConsistencyConfig, spec, train, workdir=None) -> None:
        cfg = resolve_recipe(cfg)
        super().__init__(cfg, spec, train, workdir)
        self.teacher_run = None
        if cfg.mode == "cd" or cfg.teacher.run:
            self._init_teacher(cfg.teacher, spec, train, workdir)
        self.init_from_teacher = cfg.init == "teacher" or (cfg.init == "auto" and self.has_teacher())
        net_cfg = cfg.net or (self.teacher_cfg.net if self.has_teacher() else cfg.teacher.flow.net)
        if self.init_from_teacher:
            if not can_start_from(spec, net_cfg, self.teacher_cfg.net):
                raise BenchError(
                    "starting from the teacher (method.init=auto|teacher) needs method.net equal to the teacher's "
                    "net (or unset), or on images its U-Net preset at a multiple of its width; "
                    "or set method.init=scratch"
                )
            if self.teacher_cfg.predict != "velocity":
                raise BenchError(
                    "starting from the teacher (method.init=auto|teacher) needs a velocity-parameterised teacher "
                    "(predict=velocity); or set method.init=scratch"
                )
        self.g = CharNet(build_net(spec, net_cfg, n_times=2))
        self.g_ema = ema_copy(self.g)  # sampling EMA (train.ema_decay)
        if cfg.target == "ema":
            self.g_target = ema_copy(self.g)  # f^- (decay mu or mu(k)), updated by the loss itself
        self.schedule = cfg.schedule
        paper = {"cm": (2, 150), "ict": (10, 1280)}.get(self.schedule, (0, 0))
        self.s0, self.s1 = cfg.s0 or paper[0], cfg.s1 or paper[1]
        if self.schedule != "fixed" and self.s1 < self.s0:
            raise BenchError(f"method: the {self.schedule} schedule needs s1 >= s0 (got s0={self.s0}, s1={self.s1})")
        self.dim = math.prod(spec.shape)
        self.huber_c = cfg.huber_c or 0.00054 * math.sqrt(self.dim)

    # -- discretisation ----------------------------------------------------------------------------
    def n_points(self, k: int) -> int:
        """N(k): grid points at step k of the fit stage."""
        if self.schedule == "fixed":
            return self.cfg.n_points
        fn = cm_points if self.schedule == "cm" else ict_points
        return fn(k, self.cfg.fit_steps, self.s0, self.s1)

    def target_mu(self, k: int) -> float:
        """Target EMA decay after step k: CM's adaptive mu(k) for CT on the cm schedule, else the fixed mu."""
        if self.cfg.mode == "ct" and self.schedule == "cm":
            return math.exp(self.s0 * math.log(self.cfg.mu0) / self.n_points(k))
        return self.cfg.mu

    def time_grid(self, n: int) -> tuple[Tensor, Tensor]:
        """(t, sigma), float64, N points each: t increasing from 0 to 1; sigma the papers' (unsnapped) levels."""
        c = self.cfg
        if c.grid == "uniform":
            t = torch.linspace(0, 1, n, dtype=torch.float64)
            return t, (1 - t) / t
        sigma = karras_sigmas(n, c.sigma_min, c.sigma_max, c.rho)
        t = 1 / (1 + sigma)
        t[0], t[-1] = 0.0, 1.0
        return t, sigma

    def pair_probs(self, sigma: Tensor) -> Tensor:
        """p(n) over pairs n = 0..N-2 (uniform, or iCT's discretised lognormal)."""
        if self.cfg.pairs == "uniform":
            return torch.full((len(sigma) - 1,), 1.0 / (len(sigma) - 1), dtype=torch.float64)
        e = torch.erf((sigma.log() - P_MEAN) / (math.sqrt(2) * P_STD))
        p = e[:-1] - e[1:]
        return p / p.sum()

    def pair_weights(self, sigma: Tensor) -> Tensor:
        """lambda(n) for pairs n = 0..N-2."""
        if self.cfg.weighting == "uniform":
            return torch.ones(len(sigma) - 1, dtype=torch.float64)
        return 1 / (sigma[:-1] - sigma[1:])

    # -- loss ---------------------------------------------------------------------------------------
    def f(self, net: nn.Module, t: Tensor, x: Tensor) -> Tensor:
        """The consistency function f(x, t) = g(t, 1, x) of ``net`` (exactly x at t = 1)."""
        return net(t, torch.ones_like(t), x)

    def pairs(self, b: Batch, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(n, t_n, t_{n+1}, x_{t_n}, x^_{t_{n+1}}) of this step: one teacher step (CD) or the same (x0, x1) (CT)."""
        x1 = b.x
        dev, dt = x1.device, x1.dtype
        t, sigma = self.time_grid(self.n_points(step))
        if self.cfg.pairs == "uniform":
            n = b.randint(0, len(t) - 1).to(dev)
        else:
            cdf = self.pair_probs(sigma).cumsum(0).to(dev)
            n = torch.searchsorted(cdf, b.rand().to(dev, torch.float64), right=True).clamp_max(len(t) - 2)
        tg = t.to(dev, dt)
        tn, tn1 = tg[n], tg[n + 1]
        x0 = b.randn_like(x1)
        xn = bc(1 - tn, x1) * x0 + bc(tn, x1) * x1
        if self.cfg.mode == "cd":
            xn1 = grid_step(self.v(), self.cfg.solver, tn, tn1, xn)
        else:
            xn1 = bc(1 - tn1, x1) * x0 + bc(tn1, x1) * x1
        return n, tn, tn1, xn, xn1

    def distance(self, diff: Tensor) -> Tensor:
        """Per-sample d: squared L2 or pseudo-Huber."""
        sq = diff.pow(2).flatten(1).sum(1)
        if self.cfg.distance == "l2":
            return sq
        c = self.huber_c
        return torch.sqrt(sq + c * c) - c

    def consistency_loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        target_net = self.g
        if self.cfg.target == "ema":
            if step > 0:  # CM: theta^- <- mu theta^- + (1 - mu) theta after each update (here: before the next)
                ema_update([(self.g_target, self.g)], self.target_mu(step - 1))
            target_net = self.g_target
        n, tn, tn1, xn, xn1 = self.pairs(b, step)
        with torch.no_grad():
            target = self.f(target_net, tn1, xn1)
        pred = self.f(self.g, tn, xn)
        _, sigma = self.time_grid(self.n_points(step))
        w = self.pair_weights(sigma).to(xn.device, xn.dtype)[n]
        d = self.distance(pred - target)
        return (w * d).mean(), {"N": torch.tensor(float(len(sigma)), device=d.device)}

    # -- stages -------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c, tc = self.cfg, self.train_cfg

        def setup(resumed: bool) -> None:
            if resumed:
                return
            if self.init_from_teacher:
                self.g.u.load_from_single_time(self.teacher.ema)
            self.g_ema.load_state_dict(self.g.state_dict())
            if c.target == "ema":
                self.g_target.load_state_dict(self.g.state_dict())

        fit = Update(("g",), self.consistency_loss, lr=c.fit_lr, batch_size=c.fit_batch)
        ema = [(self.g_ema, self.g)]
        return [*self._teacher_stages(), Stage("fit", c.fit_steps, [fit], setup=setup, ema=ema, ema_decay=tc.ema_decay)]

    # -- sampling -----------------------------------------------------------------------------------
    @property
    def noise_shape(self) -> tuple[int, ...]:
        """One noise per sampling step: row j of a sample's noise is z (j = 0) or the re-noising of step j."""
        return (max(self.cfg.sample_steps), *self.spec.shape)

    def label(self) -> str:
        c = self.cfg
        tags = [c.mode.upper(), f"N={c.n_points}" if self.schedule == "fixed" else self.schedule]
        if c.mode == "cd":
            tags.append(c.solver)
        if c.grid != "karras":
            tags.append(f"{c.grid}-grid")
        if c.target == "online":
            tags.append("online")
        if c.distance != "l2":
            tags.append("huber")
        if c.weighting != "uniform":
            tags.append("w=ict")
        if c.pairs != "uniform":
            tags.append(c.pairs)
        if self.init_from_teacher and c.mode == "ct":
            tags.append("teacher-init")
        return f"consistency[{','.join(tags)}]"

    def eval_points(self, nfes: list[int], solvers: list[str]) -> list[EvalPoint]:
        return [EvalPoint(self.label(), "onestep" if k == 1 else "multistep", k) for k in self.cfg.sample_steps]

    @torch.no_grad()
    def sample(self, noise: Tensor, point: EvalPoint) -> tuple[Tensor, int]:
        """CM Algorithm 1: x = f(z, 0), then re-noise to each mid time tau and map again."""
        k = int(point.nfe)
        zero = torch.zeros(noise.shape[0], dtype=noise.dtype, device=noise.device)
        x = self.f(self.g_ema, zero, noise[:, 0])
        for j, tau in enumerate(self.cfg.mid_times[: k - 1], start=1):
            xt = (1 - tau) * noise[:, j] + tau * x
            x = self.f(self.g_ema, zero + tau, xt)
        return x, k

    def forward_reference(self) -> Callable[[Tensor], Tensor]:
        return lambda x: self.g_ema(0.0, 1.0, x[:, 0])

    def sampling_nets(self) -> tuple[str, ...]:
        return ("g_ema",)

    def record_extra(self) -> dict:
        c = self.cfg
        K = c.fit_steps
        return {
            **self.teacher_extra(),
            "init": "teacher" if self.init_from_teacher else "scratch",
            "grid": {
                "kind": c.grid,
                "time_map": "t = 1/(1+sigma), ends snapped to 0 and 1" if c.grid == "karras" else "uniform in t",
                "schedule": self.schedule,
                "n_points_first_last": [self.n_points(0), self.n_points(max(K - 1, 0))],
                "s0_s1": [self.s0, self.s1] if self.schedule != "fixed" else None,
            },
            "target_mu_first_last": None
            if c.target == "online"
            else [self.target_mu(0), self.target_mu(max(K - 1, 0))],
            "huber_c": self.huber_c if c.distance == "pseudo_huber" else None,
            "mid_times": c.mid_times[: max(c.sample_steps) - 1],
        }
