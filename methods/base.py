"""The method contract. A method owns its mathematics (networks, losses, sampler); the engine owns
everything generic (optimisers, LR warm-up, backward/clip/step, EMA, precision, DDP, torch.compile,
checkpoints, logging, divergence checks) and never looks at a method's name.

A plugin is a Config dataclass, its networks (attributes of the method), one :class:`Update` per
optimiser naming those networks and giving a ``loss(batch, step)``, and ``sample``::

    @register_method("my-flow")
    class MyFlow(Method):
        Config = MyConfig
        def __init__(self, cfg, spec, train, workdir=None):
            super().__init__(cfg, spec, train, workdir)
            self.net = build_net(spec, cfg.net, n_times=1)
        def loss(self, b: Batch, step: int):
            x0, t = b.randn_like(b.x), b.rand()
            xt = (1 - t[:, None]) * x0 + t[:, None] * b.x
            return (self.net(t, xt) - (b.x - x0)).pow(2).sum(1).mean(), {}
        def sample(self, noise, point):
            ...  # returns (samples, NFE used)

Everything else (one stage of ``train.steps`` steps, Adam at ``train.lr``, an EMA of every updated
network used for sampling, one NFE-1 eval point, the forward reference) has a default.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from bench.datasets.base import DataSpec
from bench.methods.nets import count_params
from torch import Tensor, nn

from bench.core.distributed import Shard


@dataclass(frozen=True)
class EvalPoint:
    """One leaderboard row of a run: which network (label), which sampler, requested NFE."""

    label: str  # row label, e.g. "chargen" or "flow (teacher)"
    solver: str  # e.g. "euler", "heun", "dopri5", "onestep", "compose"
    nfe: int | None  # requested NFE (None for adaptive solvers)


class Batch:
    """What a loss sees in one step: this process's slice of the step's global batch, and random numbers
    drawn for the whole global batch from a generator seeded by (run seed, stage, update, step) and then
    sliced the same way. So N processes compute the 1-process loss terms, and a resumed run draws what an
    uninterrupted one drew, with no RNG state to carry.
    """

    def __init__(
        self, full: Tensor | None, global_size: int, lo: int, hi: int, seed: int, device: torch.device, step: int
    ) -> None:
        self.full, self.global_size, self.lo, self.hi, self.device, self.step = full, global_size, lo, hi, device, step
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)

    @property
    def x(self) -> Tensor:
        """This process's data (rows lo:hi of the global batch)."""
        if self.full is None:
            raise RuntimeError("this update declared data=False; it has no data batch")
        return self.full[self.lo : self.hi]

    @property
    def n(self) -> int:
        return self.hi - self.lo

    def local(self, t: Tensor) -> Tensor:
        """The rows of a global-batch tensor that belong to this process."""
        return t[self.lo : self.hi]

    def rand(self, *shape: int) -> Tensor:
        """U[0, 1) of shape (n, *shape), drawn for the global batch."""
        return self.local(torch.rand(self.global_size, *shape, generator=self.gen, device=self.device))

    def randn(self, *shape: int) -> Tensor:
        """N(0, 1) of shape (n, *shape), drawn for the global batch."""
        return self.local(torch.randn(self.global_size, *shape, generator=self.gen, device=self.device))

    def randn_like(self, x: Tensor) -> Tensor:
        return self.randn(*x.shape[1:]).to(x.dtype)

    def randint(self, low: int, high: int, *shape: int) -> Tensor:
        """Integers in [low, high) of shape (n, *shape), drawn for the global batch."""
        g = torch.randint(low, high, (self.global_size, *shape), generator=self.gen, device=self.device)
        return self.local(g)


def step_seed(*parts: int | str) -> int:
    """A 63-bit seed from (run seed, stage, update, step...), stable across processes and versions."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


LossFn = Callable[[Batch, int], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class Update:
    """One optimiser and the loss that drives it. ``nets`` names the method's attributes holding the
    trained networks (the engine wraps exactly these in DDP / torch.compile while the loss runs, and
    freezes the other updates' networks of the stage meanwhile). ``loss(batch, step)`` returns the scalar
    loss and a dict of tensors to log (never converted to Python numbers inside the step)."""

    nets: tuple[str, ...]
    loss: LossFn
    lr: float
    optimizer: str = "adam"  # adam | adamw | radam
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    repeats: int = 1  # consecutive optimiser steps per training step, each on a fresh batch (GAN n_critic)
    batch_size: int = 0  # global batch size; 0 = train.batch_size
    data: bool = True  # draw a data batch (False: the loss only uses the batch's size and random numbers)
    name: str = ""  # suffix of its logged loss and grad norm (loss_<name>); "" = none

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        opts = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
        if self.optimizer not in opts:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(opts)}")
        return opts[self.optimizer](params, lr=self.lr, betas=tuple(self.betas), weight_decay=self.weight_decay)


@dataclass
class Stage:
    """A training stage: ``steps`` steps of its ``updates`` (in order), or a one-shot ``run(shard)``.

    ``setup(resumed)`` runs before the stage (also when resuming inside or after it, so derived artefacts
    such as cached trajectories are restored). ``ema`` pairs (ema_copy, online) are updated by the engine
    after every step with ``ema_decay`` (warm-up min(decay, (1 + step) / (10 + step)); 0 copies).
    """

    name: str
    steps: int = 0
    updates: list[Update] = field(default_factory=list)
    run: Callable[[Shard], dict[str, Any]] | None = None
    setup: Callable[[bool], None] | None = None
    ema: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)
    ema_decay: float = 0.999


class Method(nn.Module):
    """Base class for a registered method.

    Subclasses set ``Config`` (a dataclass) and ``smoke`` (overrides of its config applied by ``--smoke``),
    build their networks in ``__init__`` and give either ``loss`` (one stage, one optimiser over
    :meth:`trained_nets`) or their own :meth:`stages`; and :meth:`sample`.
    """

    Config: ClassVar[type]
    smoke: ClassVar[dict[str, Any]] = {}
    kinds: ClassVar[tuple[str, ...]] = ("points",)

    def __init__(self, cfg: Any, spec: DataSpec, train: Any, workdir: Any = None) -> None:
        super().__init__()
        self.cfg, self.spec, self.train_cfg, self.workdir = cfg, spec, train, workdir

    # -- training ---------------------------------------------------------------------------------
    def trained_nets(self) -> tuple[str, ...]:
        """Names of the networks the default stage trains (every child module that is not an EMA copy)."""
        return tuple(n for n, m in self.named_children() if not getattr(m, "_is_ema", False))

    def loss(self, batch: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} defines neither loss() nor stages()")

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(ema, online) pairs of the default stage; default: a frozen copy ``<name>_ema`` of every trained
        network, made on first use (the engine calls :meth:`stages` before loading or training weights)."""
        for n in self.trained_nets():
            if f"{n}_ema" not in self._modules:
                self.add_module(f"{n}_ema", ema_copy(getattr(self, n)))
        return [(getattr(self, f"{n}_ema"), getattr(self, n)) for n in self.trained_nets()]

    def stages(self) -> list[Stage]:
        """Default: one stage of train.steps steps, Adam(train.lr) on :meth:`trained_nets`, EMA pairs."""
        ema = self.ema_pairs()
        return [
            Stage(
                "train",
                self.train_cfg.steps,
                updates=[Update(self.trained_nets(), self.loss, lr=self.train_cfg.lr)],
                ema=ema,
                ema_decay=self.train_cfg.ema_decay,
            )
        ]

    # -- sampling ---------------------------------------------------------------------------------
    def eval_points(self, nfes: list[int], solvers: list[str]) -> list[EvalPoint]:
        """The rows this method reports, given the requested NFEs and solvers (empty = defaults)."""
        return [EvalPoint(self.label(), "onestep", 1)]

    def sample(self, noise: Tensor, point: EvalPoint) -> tuple[Tensor, int]:
        """Map noise (shape ``(n, *noise_shape)``) to samples; returns (samples, NFE actually used)."""
        raise NotImplementedError

    def forward_reference(self) -> Callable[[Tensor], Tensor]:
        """One bare forward pass of the network used to sample (the unit of the ``× fwd`` column).
        Default: a one-step sample."""
        pt = self.eval_points([1], [])[0]
        return lambda x: self.sample(x, pt)[0]

    def sampling_nets(self) -> tuple[str, ...]:
        """Names of the networks sampling uses (what ``eval.compile`` compiles); default: the EMA copies."""
        return tuple(n for n, m in self.named_children() if getattr(m, "_is_ema", False))

    def label(self) -> str:
        """Row label; default: the name the method was registered (and run) under."""
        return getattr(self, "registered_name", "") or type(self).__name__.lower()

    def sampling_params(self) -> int:
        """Parameter count of what is needed to sample (the leaderboard's params column)."""
        nets = self.sampling_nets()
        mods = [getattr(self, n) for n in nets] if nets else [self]
        return sum(count_params(m) for m in mods)

    def record_extra(self) -> dict[str, Any]:
        """Method-specific facts for the run record (diagnostics, teacher provenance...)."""
        return {}

    def prior_cost(self) -> dict[str, Any]:
        """Training cost of artefacts this run reuses but did not train (a teacher from another run):
        ``{"wall_clock_s": {...}, "network_passes": int, "device": str, "run": id}``; {} when none."""
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
    """A frozen copy of ``module`` for EMA weights (marked so the defaults know it is not trained)."""
    m = copy.deepcopy(module)
    m.requires_grad_(False)
    m.eval()
    m._is_ema = True
    return m


@torch.no_grad()
def ema_update(pairs: list[tuple[nn.Module, nn.Module]], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * online for every pair, one fused foreach op; buffers copied."""
    if not pairs:
        return
    pe = [p for e, _ in pairs for p in e.parameters()]
    po = [p.detach() for _, o in pairs for p in o.parameters()]
    torch._foreach_lerp_(pe, po, 1.0 - decay)
    be = [b for e, _ in pairs for b in e.buffers()]
    if be:
        torch._foreach_copy_(be, [b for _, o in pairs for b in o.buffers()])
