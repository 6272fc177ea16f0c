"""The characteristic generator (Ding et al., arXiv 2405.05512): fit g(t, s, x) to the discrete
characteristics of a flow's velocity field and sample in ONE network evaluation, x = g(0, 1, z).

Stages: teacher (flow matching, or reused from a `flow` run) -> trajectories (K Euler steps of the
frozen EMA teacher) -> fit, with g(t, s, x) = x + (s - t) u(t, s, x) so that g(t, t, x) = x exactly.
  paper loss      E || g(t_k, t_l, z_k) - z_l ||^2 over pairs k < l of a trajectory
                  + lambda_sg E || g(t_k, t_l, z_k) - sg g(t_m, t_l, g(t_k, t_m, z_k)) ||^2   (semigroup)
  reference loss  || G(s, 1, g(t, s, x_t)) - G(s, 1, sg g(u, s, x_u)) ||^2  with G the EMA net
                  + w * || g(t, t', x_t) - (x_t + (t' - t) v(t, x_t)) ||^2, w = adaptive grad-norm ratio
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from bench.methods.base import Batch, EvalPoint, Method, Shard, Stage, Update, ema_copy
from bench.methods.flow import VelocityModel, flow_eval_points, sample_flow
from bench.methods.interpolants import uniform_grid
from bench.methods.nets import NetConfig, build_net, can_start_from
from bench.methods.teacher import TeacherConfig, TeacherMixin
from bench.methods.timefeat import as_batch
from bench.methods.trajectories import TrajectoryCache, resolve_source
from torch import Tensor, nn

from bench.core.resources import forward_batch, split_calls
from bench.errors import BenchError
from bench.registry import register_method


@dataclass
class ChargenConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    net: NetConfig | None = None  # network of u(t, s, x); None = the teacher's (init_from_teacher: or a wider U-Net)
    euler_steps: int = 40  # K: Euler steps (checkerboard: K=20 leaves W2 at 1.9x teacher@128; 40 and 100: 1.04x)
    grid: list[float] = field(default_factory=list)  # custom grid 0 = t_0 < ... < t_K = 1; empty = uniform
    solver: Literal["euler", "heun", "ei"] = "euler"  # teacher step along the grid (ei = exponential integrator)
    pairs_from: Literal["noise", "data"] = "noise"  # paper: teacher trajectories from N(0, I); reference code: data
    n_traj: int = 20000  # m: cached trajectories (pairs_from=noise)
    # memory | disk (written and read by file offset, host memory flat in n_traj) | none (fresh every step)
    # | auto = memory up to trajectories.MEMORY_CACHE_MAX bytes, else disk
    cache: Literal["auto", "memory", "disk", "none"] = "auto"
    chunk: int = 4096  # trajectories generated (and written to disk) per chunk, at most trajectories.CHUNK_BYTES
    # reuse the disk cache of a finished chargen run (id or folder) with the same teacher weights, grid and solver:
    # its first n_traj trajectories (trajectory i is seeded by i, so they are the set this run would make) and
    # their cost, pro rata; "" = generate them here
    trajectories_from: str = ""
    loss: Literal["pairwise", "reference"] = "pairwise"  # paper's regression or the reference code's loss
    distance: Literal["l2", "lpips"] = "l2"  # reference loss distance; lpips needs local VGG weights
    end_pairs: float = 0.5  # share of pairs (k, K) ending at t = 1; 0 = pairs uniform over all k < l (paper)
    lambda_sg: float = 1.0  # weight of the semigroup (consistency) penalty (pairwise loss); 0 disables
    sg_fraction: float = 0.25  # share of each batch (a seeded random subset) the semigroup penalty is computed on
    adaptive_max: float = 1e4  # clamp of the reference loss' adaptive weight
    fit_steps: int = 3000  # checkerboard, end_pairs 0.5: W2 1.04x teacher@128 (6000 uniform pairs: 1.06x)
    fit_lr: float = 1e-3
    fit_batch: int = 0  # 0 = train.batch_size
    init_from_teacher: bool = True  # start u(t, s, x) from the teacher's v(t, x) (s-embedding zero)
    compose: list[int] = field(default_factory=lambda: [1, 2])  # k-step composition NFEs reported
    teacher_solvers: list[str] = field(default_factory=lambda: ["euler"])  # teacher rows in the same run
    teacher_nfe: list[int] = field(default_factory=lambda: [1, 8, 32, 128])  # its NFEs when eval.nfe is empty

    def validate(self) -> None:
        if self.euler_steps < 1:
            raise BenchError(f"method.euler_steps must be >= 1 (got {self.euler_steps})")
        if self.grid:
            g = self.grid
            if any(not (0.0 <= t <= 1.0) for t in g):
                raise BenchError(f"method.grid must lie in [0, 1] (got {g})")
            if g[0] != 0.0 or g[-1] != 1.0 or any(b <= a for a, b in zip(g, g[1:], strict=False)):
                raise BenchError("method.grid must increase strictly from 0 to 1")
        if self.n_traj < 1 or self.fit_steps < 0 or self.fit_lr <= 0 or self.chunk < 1 or self.fit_batch < 0:
            raise BenchError("method: need n_traj >= 1, fit_steps >= 0, fit_lr > 0, chunk >= 1, fit_batch >= 0")
        if not 0.0 <= self.end_pairs <= 1.0:
            raise BenchError("method.end_pairs must lie in [0, 1]")
        if not 0.0 < self.sg_fraction <= 1.0:
            raise BenchError("method.sg_fraction must lie in (0, 1]")
        if any(k < 1 for k in self.teacher_nfe):
            raise BenchError(f"method.teacher_nfe values must be >= 1 (got {self.teacher_nfe})")
        if self.lambda_sg < 0 or self.adaptive_max < 0:
            raise BenchError("method.lambda_sg and method.adaptive_max must be >= 0")
        if any(k < 1 for k in self.compose):
            raise BenchError(f"method.compose NFEs must be >= 1 (got {self.compose})")
        if self.trajectories_from and (self.pairs_from != "noise" or self.cache not in ("auto", "disk")):
            raise BenchError("method.trajectories_from needs pairs_from=noise and cache auto or disk")
        if self.trajectories_from and not self.teacher.run:
            raise BenchError("method.trajectories_from needs a reused teacher (method.teacher.run), to check it")


class CharNet(nn.Module):
    """g(t, s, x) = x + (s - t) u(t, s, x): the identity at s = t by construction."""

    def __init__(self, u: nn.Module) -> None:
        super().__init__()
        self.u = u

    def forward(self, t: Tensor, s: Tensor, x: Tensor) -> Tensor:
        t, s = as_batch(t, x), as_batch(s, x)
        return x + (s - t).reshape(-1, *([1] * (x.ndim - 1))) * self.u(t, s, x)


@torch.no_grad()
def grid_step(v: VelocityModel, solver: str, t: Tensor, s: Tensor, x: Tensor) -> Tensor:
    """One teacher step from per-sample times t to s (shape (B,)): Euler, Heun or exponential integrator."""
    h = (s - t).reshape(-1, *([1] * (x.ndim - 1)))
    if solver == "euler":
        return x + h * v(t, x)
    if solver == "heun":
        d1 = v(t, x)
        return x + 0.5 * h * (d1 + v(s, x + h * d1))
    x0, x1 = v.denoise(t, x)
    it = v.interp
    return it.a(s).reshape(h.shape) * x0 + it.b(s).reshape(h.shape) * x1


@torch.no_grad()
def characteristics(v: VelocityModel, z: Tensor, grid: Tensor, solver: str = "euler") -> Tensor:
    """Discrete characteristics z_0 .. z_K from z_0 = z along ``grid``; returns (B, K+1, *shape)."""
    out = [z]
    for k in range(len(grid) - 1):
        t = grid[k].expand(z.shape[0])
        s = grid[k + 1].expand(z.shape[0])
        out.append(grid_step(v, solver, t, s, out[-1]))
    return torch.stack(out, 1)


def semigroup_penalty(
    g: Callable[[Tensor, Tensor, Tensor], Tensor],
    t: Tensor,
    u: Tensor,
    s: Tensor,
    x: Tensor,
    pred: Tensor | None = None,
) -> Tensor:
    """E || g(t, s, x) - sg g(u, s, g(t, u, x)) ||^2: zero iff g composes like a flow map (t <= u <= s).
    ``pred`` = g(t, s, x) when the caller already has it (one forward pass fewer)."""
    with torch.no_grad():
        target = g(u, s, g(t, u, x))
    return ((g(t, s, x) if pred is None else pred) - target).pow(2).flatten(1).sum(1).mean()


@register_method("chargen")
class Chargen(TeacherMixin, Method):
    """Characteristic generator (arXiv 2405.05512): one-step sampling from fitted flow characteristics."""

    Config = ChargenConfig
    kinds = ("points", "image")
    smoke = {"fit_steps": 150, "n_traj": 2000, "euler_steps": 8}

    def __init__(self, cfg: ChargenConfig, spec, train, workdir=None) -> None:
        super().__init__(cfg, spec, train, workdir)
        self._init_teacher(cfg.teacher, spec, train, workdir)
        tcfg = self.teacher_cfg
        net_cfg = cfg.net or tcfg.net
        if cfg.init_from_teacher:
            if not can_start_from(spec, net_cfg, tcfg.net):
                raise BenchError(
                    "method.init_from_teacher needs method.net equal to the teacher's net (or unset), or on images "
                    "the teacher's U-Net preset at a multiple of its width (tiny -> tiny-wide)"
                )
            if tcfg.predict != "velocity":
                raise BenchError("method.init_from_teacher needs a velocity-parameterised teacher (predict=velocity)")
        self.g = CharNet(build_net(spec, net_cfg, n_times=2))
        self.g_ema = ema_copy(self.g)
        grid = cfg.grid or uniform_grid(cfg.euler_steps)
        self.register_buffer("grid", torch.tensor(grid, dtype=torch.float32))
        K, shape = len(grid) - 1, tuple(spec.shape)
        src = None
        if cfg.trajectories_from:
            src = resolve_source(cfg.trajectories_from, workdir, "chargen", self.grid, cfg.solver,
                                 self.teacher.state_dict(), K, shape)  # fmt: skip
        mode = "none" if cfg.pairs_from != "noise" else cfg.cache
        self.traj = TrajectoryCache(
            cfg.n_traj, K, shape, mode, cfg.chunk, Path(workdir or "."), self._characteristics, src
        )

    @property
    def K(self) -> int:
        return len(self.grid) - 1

    @torch.no_grad()
    def _characteristics(self, z: Tensor) -> Tensor:
        dev = self.grid.device

        def solve(part: Tensor) -> Tensor:
            return characteristics(self.v(), part.to(dev), self.grid, self.cfg.solver)

        return split_calls(solve, z, forward_batch(dev, self.spec.shape))

    def _trajectory_stage(self, shard: Shard) -> dict:
        c = self.cfg
        return {
            **self.traj.make(shard),
            "solver": c.solver,
            "teacher_nfe_per_traj": self.K * (2 if c.solver == "heun" else 1),
        }

    # -- pairs -------------------------------------------------------------------------------------
    def pair_indices(self, b: Batch) -> tuple[Tensor | None, Tensor, Tensor, Tensor | None]:
        """(trajectory rows, k, l, fresh trajectories): grid pairs k < l, uniform over all pairs, a share
        ``end_pairs`` of them (k, K); rows index the cache, or fresh trajectories are drawn (cache none)."""
        dev = self.grid.device
        if self.traj.mode == "none":
            rows, fresh = None, characteristics(self.v(), b.randn(*self.spec.shape), self.grid, self.cfg.solver)
        else:
            rows, fresh = b.randint(0, self.cfg.n_traj).cpu(), None
        a = b.randint(0, self.K + 1).to(dev)
        c = b.randint(0, self.K).to(dev)
        c = c + (c >= a).long()  # c != a, uniform over the other K indices
        k, l = torch.minimum(a, c), torch.maximum(a, c)
        if self.cfg.end_pairs > 0:  # a share of pairs (k, K) ending at the data: the maps sampling uses last
            end = (b.rand() < self.cfg.end_pairs).to(dev)
            k = torch.where(end, b.randint(0, self.K).to(dev), k)
            l = torch.where(end, torch.full_like(l, self.K), l)
        return rows, k, l, fresh

    def noise_pairs(self, b: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(k, l, x_k, x_l) from this process's share of the batch; only the two states of each pair are read
        from the cache (from disk: two positional reads per pair, never whole trajectories)."""
        rows, k, l, fresh = self.pair_indices(b)
        if fresh is not None:
            ar = torch.arange(len(fresh), device=k.device)
            return k, l, fresh[ar, k], fresh[ar, l]
        return k, l, *self.traj.pair_states(rows, k, l)

    @torch.no_grad()
    def data_pairs(self, b: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Reference-code pairs: x_t = a x0 + b x1 at grid index i, then n teacher steps (P(n) ~ n) to u."""
        x1, K = b.x, self.K
        dev = x1.device
        if K < 2:
            raise BenchError("pairs_from=data needs euler_steps >= 2")
        cdf = torch.arange(1, K, device=dev, dtype=torch.float32).cumsum(0)
        nstep = torch.searchsorted(cdf / cdf[-1], b.rand().to(dev), right=True).clamp_max(K - 2) + 1  # P(n) ~ n
        i = (b.rand().to(dev) * (K - nstep + 1)).long().clamp_max(K - nstep)  # i + n <= K
        t = self.grid[i]
        it = self.teacher.interp
        x = it.x_t(t, b.randn_like(x1), x1)
        xt = x.clone()
        for j in range(int(nstep.max())):
            active = j < nstep
            ta, sa = self.grid[(i + j).clamp_max(K)], self.grid[(i + j + 1).clamp_max(K)]
            stepped = grid_step(self.v(), self.cfg.solver, ta, sa, x)
            x = torch.where(active.reshape(-1, *([1] * (x.ndim - 1))), stepped, x)
        return i, i + nstep, xt, x

    # -- losses ------------------------------------------------------------------------------------
    def pairwise_loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if self.cfg.pairs_from == "noise":
            k, l, xk, xl = self.noise_pairs(b)
        else:
            k, l, xk, xl = self.data_pairs(b)
        gk, gl = self.grid[k], self.grid[l]
        pred = self.g(gk, gl, xk)
        fit = (pred - xl).pow(2).flatten(1).sum(1).mean()
        if self.cfg.lambda_sg == 0:
            return fit, {"fit": fit}
        # intermediate grid index m with k <= m <= l; the penalty on an evenly spaced share sg_fraction of the
        # global batch's rows (the pairs are random already), chosen from row indices alone: no host sync
        m = k + (b.rand().to(k.device) * (l - k + 1)).long().clamp_max(l - k)
        i, f = torch.arange(b.lo, b.hi, dtype=torch.float64), self.cfg.sg_fraction
        sel = torch.nonzero(torch.floor((i + 1) * f) > torch.floor(i * f)).squeeze(1).to(k.device)
        if len(sel) == 0:
            return fit, {"fit": fit}
        sg = semigroup_penalty(self.g, gk[sel], self.grid[m[sel]], gl[sel], xk[sel], pred=pred[sel])
        return fit + self.cfg.lambda_sg * sg, {"fit": fit, "semigroup": sg}

    def reference_loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if self.cfg.distance == "lpips":
            raise BenchError("distance=lpips needs local LPIPS/VGG weights, which this suite does not load yet; use l2")
        i, j, xt, xu = self.data_pairs(b)
        t, u = self.grid[i], self.grid[j]
        # a random target time s on the grid with u <= s <= K
        s_idx = j + (b.rand().to(xt.device) * (self.K - j + 1)).long().clamp_max(self.K - j)
        s, one = self.grid[s_idx], torch.ones_like(t)
        with torch.no_grad():  # stop-gradient target: the online net from (u, x_u), mapped to data by the EMA net
            target = self.g_ema(s, one, self.g(u, s, xu))
        main = (self.g_ema_graph(s, one, self.g(t, s, xt)) - target).pow(2).flatten(1).sum(1).mean()
        t1 = self.grid[(i + 1).clamp_max(self.K)]
        with torch.no_grad():
            local_target = grid_step(self.v(), "euler", t, t1, xt)
        local = (self.g(t, t1, xt) - local_target).pow(2).flatten(1).sum(1).mean()
        w = self.adaptive_weight(main, local)
        return main + w * local, {"main": main, "local": local, "adaptive_w": w}

    def g_ema_graph(self, t: Tensor, s: Tensor, x: Tensor) -> Tensor:
        """The EMA net applied with gradients flowing to its input (not to its weights)."""
        return self.g_ema(t, s, x)

    def adaptive_weight(self, main: Tensor, local: Tensor) -> Tensor:
        """||d main / d W_last|| / ||d local / d W_last|| at the last layer, clamped to [0, adaptive_max]."""
        last = [p for p in self.g.parameters() if p.requires_grad][-2]
        gm = torch.autograd.grad(main, last, retain_graph=True, allow_unused=True)[0]
        gl = torch.autograd.grad(local, last, retain_graph=True, allow_unused=True)[0]
        if gm is None or gl is None:
            return torch.ones((), device=main.device)
        return (gm.norm() / (gl.norm() + 1e-8)).clamp(0, self.cfg.adaptive_max).detach()

    # -- stages ------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c, tc = self.cfg, self.train_cfg
        stages = self._teacher_stages()

        def setup(resumed: bool) -> None:
            if not resumed and c.init_from_teacher:
                self.g.u.load_from_single_time(self.teacher.ema)
                self.g_ema.load_state_dict(self.g.state_dict())
            self.traj.ensure()

        if self.traj.needs_making():
            stages.append(Stage("trajectories", run=self._trajectory_stage))
        loss = self.pairwise_loss if c.loss == "pairwise" else self.reference_loss
        fit = Update(("g",), loss, lr=c.fit_lr, batch_size=c.fit_batch, data=c.pairs_from == "data")
        stages.append(Stage("fit", c.fit_steps, [fit], setup=setup, ema=[(self.g_ema, self.g)], ema_decay=tc.ema_decay))
        return stages

    # -- sampling ----------------------------------------------------------------------------------
    def label(self) -> str:
        c, tags = self.cfg, [f"K={self.K}"]
        if c.pairs_from != "noise":
            tags.append("data-pairs")
        if c.loss != "pairwise":
            tags.append("ref-loss")
        elif c.lambda_sg == 0:
            tags.append("no-sg")
        if c.solver != "euler":
            tags.append(c.solver)
        return f"chargen[{','.join(tags)}]"

    def teacher_label(self) -> str:
        return f"{self.teacher.label()} (teacher)"

    def eval_points(self, nfes: list[int], solvers: list[str]) -> list[EvalPoint]:
        pts = [EvalPoint(self.label(), "onestep" if k == 1 else "compose", k) for k in self.cfg.compose]
        nfes = nfes or self.cfg.teacher_nfe
        return pts + flow_eval_points(self.teacher_label(), nfes, solvers or self.cfg.teacher_solvers)

    @torch.no_grad()
    def sample(self, noise: Tensor, point: EvalPoint) -> tuple[Tensor, int]:
        if point.label == self.teacher_label():
            return sample_flow(self.v(), noise, point)
        k = int(point.nfe)
        idx = [round(j * self.K / k) for j in range(k + 1)]  # coarse grid snapped to the fitted grid
        x = noise
        for a, b in zip(idx, idx[1:], strict=False):
            x = self.g_ema(self.grid[a], self.grid[b], x)
        return x, k

    def forward_reference(self) -> Callable[[Tensor], Tensor]:
        zero, one = self.grid[0], self.grid[-1]
        return lambda x: self.g_ema(zero, one, x)

    def sampling_nets(self) -> tuple[str, ...]:
        return ("g_ema",)

    def prior_cost(self) -> dict:
        """The reused teacher's cost, plus the reused trajectories' (pro rata of the rows used)."""
        return self.traj.prior_cost(super().prior_cost())

    def record_extra(self) -> dict:
        return {**self.teacher_extra(), "grid": [round(float(t), 6) for t in self.grid], **self.traj.record_extra()}
