"""The method protocol the engine talks to. A method never sees the training loop, and vice versa."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from bench.datasets.base import DataSpec
from torch import Tensor, nn


@dataclass(frozen=True)
class EvalPoint:
    """One leaderboard row of a run: which network (label), which sampler, requested NFE."""

    label: str  # row label, e.g. "chargen" or "flow (teacher)"
    solver: str  # e.g. "euler", "heun", "dopri5", "onestep", "compose"
    nfe: int | None  # requested NFE (None for adaptive solvers)


class StepContext:
    """What a training step may use: fresh data batches and one shared optimiser update."""

    def __init__(self, batch_fn: Callable[[int | None], Tensor], grad_clip: float) -> None:
        self._batch_fn = batch_fn
        self.grad_clip = grad_clip
        self.step = 0

    def batch(self, n: int | None = None) -> Tensor:
        """The next training batch (on the method's device); ``n`` defaults to train.batch_size."""
        return self._batch_fn(n)

    def update(self, opt: torch.optim.Optimizer, loss: Tensor) -> float:
        """zero_grad, backward, clip the global grad norm (train.grad_clip), step; returns the grad norm."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))
        opt.step()
        return float(norm)


@dataclass
class Stage:
    """A training stage. Either ``steps`` optimisation steps of ``step`` or a one-shot ``run``.

    ``setup(resumed)`` runs before the stage (also when resuming inside or after it, so derived
    artefacts such as cached trajectories can be restored). ``ema`` pairs (ema_copy, online) are
    updated by the engine after every step with ``ema_decay``.
    """

    name: str
    steps: int = 0
    step: Callable[[StepContext], dict[str, float]] | None = None
    run: Callable[[], dict[str, Any]] | None = None
    setup: Callable[[bool], None] | None = None
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    ema: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)
    ema_decay: float = 0.999


class Method(nn.Module):
    """Base class for a registered method.

    Subclasses set ``Config`` (a dataclass), ``smoke`` (overrides of its config applied by ``--smoke``),
    and implement :meth:`stages`, :meth:`eval_points`, :meth:`sample` and :meth:`forward_reference`.
    """

    Config: ClassVar[type]
    smoke: ClassVar[dict[str, Any]] = {}
    kinds: ClassVar[tuple[str, ...]] = ("points",)

    def __init__(self, cfg: Any, spec: DataSpec, train: Any, workdir: Any = None) -> None:
        super().__init__()
        self.cfg, self.spec, self.train_cfg, self.workdir = cfg, spec, train, workdir

    # -- training ---------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        raise NotImplementedError

    # -- sampling ---------------------------------------------------------------------------------
    def eval_points(self, nfes: list[int], solvers: list[str]) -> list[EvalPoint]:
        """The rows this method reports, given the requested NFEs and solvers (empty = defaults)."""
        raise NotImplementedError

    def sample(self, noise: Tensor, point: EvalPoint) -> tuple[Tensor, int]:
        """Map noise (shape ``(n, *spec.shape)``) to samples; returns (samples, NFE actually used)."""
        raise NotImplementedError

    def forward_reference(self) -> Callable[[Tensor], Tensor]:
        """One bare forward pass of the network used to sample (the unit of the time ratio column)."""
        raise NotImplementedError

    def label(self) -> str:
        return type(self).__name__.lower()

    def sampling_params(self) -> int:
        """Parameter count of what is needed to sample (the leaderboard's params column)."""
        return sum(p.numel() for p in self.parameters())

    def record_extra(self) -> dict[str, Any]:
        """Method-specific facts for the run record (diagnostics, teacher provenance...)."""
        return {}

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Shape of one latent sample fed to :meth:`sample` (the data shape for flows; GANs override)."""
        return tuple(self.spec.shape)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


def ema_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` for EMA weights."""
    m = copy.deepcopy(module)
    m.requires_grad_(False)
    m.eval()
    return m


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, decay: float) -> None:
    for pe, po in zip(ema.parameters(), online.parameters(), strict=True):
        pe.lerp_(po.detach(), 1.0 - decay)
    for be, bo in zip(ema.buffers(), online.buffers(), strict=True):
        be.copy_(bo)
