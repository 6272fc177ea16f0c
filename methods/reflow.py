"""Rectified flow: reflow and distillation (Liu, Gong, Liu, "Flow Straight and Fast", arXiv 2209.03003).

Given a flow (the 1-rectified flow: the teacher, trained here or reused from a `flow` run), couple noise with its
endpoints, (Z0, Z1) = (z, X_1(z)) with X the teacher's ODE solution from z at t = 0, and fit a new flow on the
straight paths between coupled pairs (Liu et al. eq. 1 on the coupling; Algorithm 1 "Reflow"):

  min_v  E_{t ~ U[0,1]} || (Z1 - Z0) - v(t, t Z1 + (1 - t) Z0) ||^2                     -> (k+1)-rectified flow

``reflows`` = k repetitions, the j-th coupling taken from the (j-1)-th reflowed flow (k = 1: the 2-rectified flow).
Then distil the last flow into one step (Liu et al. sec. 2.3, "k-step distillation" with k = 1):

  min_g  E || g(0, 1, Z0) - Z1 ||^2   on pairs (Z0, Z1) of the last flow,  g(0, 1, z) = z + u(0, 1, z)

with chargen's two-time network ``CharNet`` (so the one-step row differs from chargen's by its objective alone);
LPIPS (the paper's image distance) is refused: the suite loads no VGG weights.

Stages: [teacher] -> pairs-1 -> reflow-1 -> ... -> pairs-k -> reflow-k -> pairs-(k+1) -> distill. Pair i starts from
the noise of seed TRAJ_SEED + i (chargen's trajectory seeds). With Euler (default) the coupling does not depend on
the chunk size or on the number of processes (up to float rounding); dopri5 picks its adaptive steps from the error
of a whole chunk, so its pairs move with the chunking (by ~1e-3 on a small untrained net: deterministic for a fixed
``chunk`` and process count, not beyond). Couplings live in memory and are regenerated from the saved weights on
resume (a resumed run also regenerates the couplings of finished reflow stages: correct, not free).
Rows: the last reflowed flow at eval.nfe (Euler by default; the suite's flow samplers) and the one-step map (NFE 1).

Defaults and their sources (gnobitab/RectifiedFlow, the paper's code): see the comment on each field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from bench.methods.base import Batch, EvalPoint, Method, Shard, Stage, Update, ema_copy
from bench.methods.chargen import CharNet
from bench.methods.consistency import LPIPS_REFUSED
from bench.methods.flow import Flow, FlowConfig, flow_eval_points, sample_flow
from bench.methods.interpolants import bc
from bench.methods.nets import NetConfig, build_net
from bench.methods.teacher import TeacherConfig, TeacherMixin
from bench.methods.trajectories import TRAJ_SEED
from torch import Tensor

from bench.core import solvers
from bench.core.noise import seeded_noise
from bench.core.resources import forward_batch
from bench.errors import BenchError
from bench.registry import register_method


@dataclass
class ReflowConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # the 1-rectified flow: reused run, or trained here
    reflows: int = 1  # k: reflow repetitions; 1 = the 2-rectified flow (CM Table 1: "2-rectified flow + distill")
    net: NetConfig | None = None  # network of the reflowed flows and of u(t, s, x); None = the teacher's
    n_pairs: int = 20000  # coupled pairs per reflow (chargen's n_traj: the same number of teacher solves)
    # ODE solver of the coupling. euler: per-sample, so pairs do not depend on chunks or processes, with chargen's
    # K = 100 steps (the same teacher solves as chargen's trajectories); dopri5 (rtol = atol = 1e-5) is the paper
    # code's scipy RK45 at its tolerance 1e-5, but its adaptive steps are shared by a chunk (see the module docstring)
    pair_solver: Literal["euler", "dopri5"] = "euler"
    pair_steps: int = 100  # Euler steps when pair_solver = euler (chargen's euler_steps)
    chunk: int = 4096  # pairs solved per chunk
    # each new network starts from the previous one (RectifiedFlow: reflow fine-tunes `last_flow_ckpt`, and the
    # distillation starts from the flow it distils, so g(0, 1, z) = z + v(0, z) is its one Euler step at step 0)
    init_from_previous: bool = True
    reflow_steps: int = 4000  # per reflow: the teacher's own budget (train.steps default)
    reflow_lr: float = 1e-3  # the suite's flow lr (train.lr)
    reflow_batch: int = 0  # 0 = train.batch_size
    distill_steps: int = 6000  # chargen's fit_steps, so the one-step rows train as long
    distill_lr: float = 1e-3  # chargen's fit_lr
    distill_batch: int = 0  # 0 = train.batch_size
    distance: Literal["l2", "lpips"] = "l2"  # distillation distance (the paper: LPIPS on images; refused here)
    flow_solvers: list[str] = field(default_factory=lambda: ["euler"])  # rows of the reflowed flow (eval.solvers wins)

    def validate(self) -> None:
        if self.distance == "lpips":
            raise BenchError(f"method.distance=lpips {LPIPS_REFUSED}")
        if self.reflows < 0 or self.n_pairs < 1 or self.pair_steps < 1 or self.chunk < 1:
            raise BenchError("method: need reflows >= 0, n_pairs >= 1, pair_steps >= 1, chunk >= 1")
        if min(self.reflow_steps, self.distill_steps, self.reflow_batch, self.distill_batch) < 0:
            raise BenchError("method: need reflow_steps, distill_steps, reflow_batch, distill_batch >= 0")
        if self.reflow_lr <= 0 or self.distill_lr <= 0:
            raise BenchError("method: need reflow_lr > 0 and distill_lr > 0")
        for s in self.flow_solvers:
            solvers.get_solver(s)


@torch.no_grad()
def couple(v: Callable[[Tensor, Tensor], Tensor], z: Tensor, solver: str, steps: int) -> tuple[Tensor, int]:
    """X_1(z): the flow's ODE from z at t = 0 to t = 1; returns (endpoints, NFE used)."""
    return solvers.get_solver(solver)(v, z, steps if solver != "dopri5" else None)


@register_method("reflow")
class Reflow(TeacherMixin, Method):
    """k-rectified flow (reflow) and its one-step distillation (Liu et al. 2022)."""

    Config = ReflowConfig
    kinds = ("points", "image")
    smoke = {"n_pairs": 1000, "pair_steps": 8, "reflow_steps": 100, "distill_steps": 100}

    def __init__(self, cfg: ReflowConfig, spec, train, workdir=None) -> None:
        super().__init__(cfg, spec, train, workdir)
        self._init_teacher(cfg.teacher, spec, train, workdir)
        net_cfg = cfg.net or self.teacher_cfg.net
        if cfg.init_from_previous:
            if net_cfg != self.teacher_cfg.net:
                raise BenchError("method.init_from_previous needs method.net equal to the teacher's net (or unset)")
            if self.teacher_cfg.predict != "velocity":
                raise BenchError("method.init_from_previous needs a velocity-parameterised teacher (predict=velocity)")
        for k in range(1, cfg.reflows + 1):  # rf1..rfk: linear interpolant, velocity output, one time input
            self.add_module(f"rf{k}", Flow(FlowConfig(net=net_cfg), spec, train, workdir))
        self.g = CharNet(build_net(spec, net_cfg, n_times=2))
        self.g_ema = ema_copy(self.g)
        self._z: Tensor | None = None
        self._x1: Tensor | None = None
        self._level = 0  # which coupling (_z, _x1) holds: level j comes from flow j - 1 (0 = the teacher)

    def flow(self, j: int) -> Flow:
        """Flow j: the teacher (j = 0) or the j-th reflowed flow."""
        return self.teacher if j == 0 else getattr(self, f"rf{j}")

    # -- couplings ----------------------------------------------------------------------------------
    @torch.no_grad()
    def make_pairs(self, level: int, shard: Shard | None = None) -> dict:
        """Coupling ``level``: (z_i, X_1(z_i)) for i < n_pairs under flow level - 1, z_i from seed TRAJ_SEED + i;
        each process solves its share of the seeds, in chunks, and the shares are gathered."""
        c, shape, shard = self.cfg, tuple(self.spec.shape), shard or Shard()
        v, dev = self.flow(level - 1).velocity(ema=True), self.device
        mine = shard.range(c.n_pairs)
        z_all, x1_all, nfe = torch.empty(len(mine), *shape), torch.empty(len(mine), *shape), 0
        for start in range(mine.start, mine.stop, c.chunk):
            n = min(c.chunk, mine.stop - start)
            z = seeded_noise(shape, range(TRAJ_SEED + start, TRAJ_SEED + start + n))
            step = forward_batch(dev, shape) or n
            for i in range(0, n, step):  # host: network calls of at most forward_batch samples
                x1, used = couple(v, z[i : i + step].to(dev), c.pair_solver, c.pair_steps)
                x1_all[start - mine.start + i : start - mine.start + i + len(x1)] = x1.cpu()
                nfe += used * len(x1)
            z_all[start - mine.start : start - mine.start + n] = z
        self._z, self._x1 = shard.gather(z_all, c.n_pairs), shard.gather(x1_all, c.n_pairs)
        self._level = level
        nfe_sum = shard.sum(torch.tensor(float(nfe)))
        return {
            "n_pairs": c.n_pairs,
            "from": "teacher" if level == 1 else f"rf{level - 1}",
            "solver": c.pair_solver,
            "nfe_per_pair": float(nfe_sum) / c.n_pairs,
        }

    def _ensure_pairs(self, level: int) -> None:
        if self._level != level or self._z is None:
            self.make_pairs(level)

    def pair_batch(self, b: Batch) -> tuple[Tensor, Tensor]:
        """This process's share of a global batch of coupled pairs (z, X_1(z)), drawn with replacement."""
        idx = b.randint(0, self.cfg.n_pairs).cpu()
        dev = self.device
        return self._z[idx].to(dev), self._x1[idx].to(dev)

    # -- losses -------------------------------------------------------------------------------------
    def reflow_loss(self, k: int, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """E || (x1 - z) - v_k(t, t x1 + (1 - t) z) ||^2 on coupling k, t ~ U[0, 1]."""
        z, x1 = self.pair_batch(b)
        t = b.rand().to(z.device, z.dtype)
        xt = bc(1 - t, z) * z + bc(t, z) * x1
        err = getattr(self, f"rf{k}").net(t, xt) - (x1 - z)
        return err.pow(2).flatten(1).sum(1).mean(), {}

    def distill_loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """E || g(0, 1, z) - X_1(z) ||^2 on the last flow's coupling."""
        z, x1 = self.pair_batch(b)
        zero = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        return (self.g(zero, zero + 1, z) - x1).pow(2).flatten(1).sum(1).mean(), {}

    # -- stages -------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c, tc = self.cfg, self.train_cfg
        stages = self._teacher_stages()

        def setup_reflow(k: int, resumed: bool) -> None:
            self._ensure_pairs(k)
            if not resumed and c.init_from_previous:
                rf, prev = self.flow(k), self.flow(k - 1)
                rf.net.load_state_dict(prev.ema.state_dict())
                rf.ema.load_state_dict(prev.ema.state_dict())

        def setup_distill(resumed: bool) -> None:
            self._ensure_pairs(c.reflows + 1)
            if not resumed:
                if c.init_from_previous:
                    self.g.u.load_from_single_time(self.flow(c.reflows).ema)
                self.g_ema.load_state_dict(self.g.state_dict())

        for k in range(1, c.reflows + 1):
            rf = self.flow(k)
            loss = partial(self.reflow_loss, k)
            upd = Update((f"rf{k}.net",), loss, lr=c.reflow_lr, batch_size=c.reflow_batch, data=False)
            stages.append(Stage(f"pairs-{k}", run=partial(self.make_pairs, k)))
            stages.append(
                Stage(
                    f"reflow-{k}",
                    c.reflow_steps,
                    [upd],
                    setup=partial(setup_reflow, k),
                    ema=rf.ema_pairs(),
                    ema_decay=tc.ema_decay,
                )
            )
        last = c.reflows + 1
        stages.append(Stage(f"pairs-{last}", run=partial(self.make_pairs, last)))
        upd = Update(("g",), self.distill_loss, lr=c.distill_lr, batch_size=c.distill_batch, data=False)
        ema = [(self.g_ema, self.g)]
        stages.append(Stage("distill", c.distill_steps, [upd], setup=setup_distill, ema=ema, ema_decay=tc.ema_decay))
        return stages

    # -- sampling -----------------------------------------------------------------------------------
    def flow_label(self) -> str:
        return f"reflow[{self.cfg.reflows + 1}-RF]"

    def label(self) -> str:
        return f"reflow[{self.cfg.reflows + 1}-RF,distill]"

    def eval_points(self, nfes: list[int], solvers_: list[str]) -> list[EvalPoint]:
        pts = [EvalPoint(self.label(), "onestep", 1)]
        if self.cfg.reflows > 0:
            pts += flow_eval_points(self.flow_label(), nfes, solvers_ or self.cfg.flow_solvers)
        return pts

    @torch.no_grad()
    def sample(self, noise: Tensor, point: EvalPoint) -> tuple[Tensor, int]:
        if point.label == self.flow_label():
            return sample_flow(self.flow(self.cfg.reflows).velocity(), noise, point)
        return self.g_ema(0.0, 1.0, noise), 1

    def forward_reference(self) -> Callable[[Tensor], Tensor]:
        return lambda x: self.g_ema(0.0, 1.0, x)

    def sampling_nets(self) -> tuple[str, ...]:
        return ("g_ema",)

    def record_extra(self) -> dict:
        c = self.cfg
        return {
            **self.teacher_extra(),
            "reflows": c.reflows,
            "coupling": {"n_pairs": c.n_pairs, "solver": c.pair_solver, "seeds": f"{TRAJ_SEED} + i"},
            "init_from_previous": c.init_from_previous,
        }
