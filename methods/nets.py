"""Shared network blocks: an MLP with one or two time inputs for points."""

from __future__ import annotations

from dataclasses import dataclass

from bench.methods.timefeat import FourierTime, as_batch
from torch import Tensor, nn

from bench.errors import BenchError


class TimeMLP(nn.Module):
    """u(t_1..t_m, x): an MLP on points whose hidden layers receive the sum of the time embeddings.

    With ``n_times=2`` the second embedding starts at zero, so a net initialised from a one-time teacher
    computes exactly the teacher at initialisation (chargen's teacher initialisation).
    """

    def __init__(
        self, dim: int, hidden: int = 256, depth: int = 3, n_times: int = 1, time_max_freq: float = 1000.0
    ) -> None:
        super().__init__()
        self.dim, self.hidden, self.depth, self.n_times = dim, hidden, depth, n_times
        self.inp = nn.Linear(dim, hidden)
        self.times = nn.ModuleList([FourierTime(hidden, max_freq=time_max_freq) for _ in range(n_times)])
        for emb in list(self.times)[1:]:
            emb.zero_()
        self.layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)

    def forward(self, *args: Tensor) -> Tensor:
        *ts, x = args
        if len(ts) != self.n_times:
            raise TypeError(f"expected {self.n_times} time input(s), got {len(ts)}")
        flat = x.reshape(x.shape[0], -1)
        emb = sum(e(as_batch(t, flat)) for e, t in zip(self.times, ts, strict=True))
        h = self.inp(flat)
        for layer in self.layers:
            h = layer(nn.functional.silu(h + emb))
        return self.out(nn.functional.silu(h)).reshape(x.shape)

    def load_from_single_time(self, other: TimeMLP) -> None:
        """Copy a one-time net into this one; extra time embeddings stay zero (so outputs coincide)."""
        own = self.state_dict()
        for k, v in other.state_dict().items():
            own[k] = v.clone()
        self.load_state_dict(own)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class NetConfig:
    hidden: int = 256  # MLP width (points)
    depth: int = 3  # MLP hidden layers (points)
    # time features of the MLP (points): sin/cos at 32 frequencies from 1 to time_max_freq, or 0 = the raw time.
    # 0 (default): MeanFlow's JVP target differentiates the net in t, and high frequencies make it explode
    # (checkerboard, 4,000 steps, W2 at NFE 1: 0.38 raw vs 1.76 at 1,000); flow / chargen do not move (0.22 both)
    time_max_freq: float = 0.0
    unet: str = (
        "auto"  # U-Net preset for images: auto (tiny up to 16 px, else compact), tiny, tiny-wide, compact, small,
        # mnist, cifar10
    )
    # time features of the U-Net (images): sin/cos at the preset's n_freq frequencies from 1 to this (rad per unit
    # time), or 0 = the raw time. 1,000 (default): the DDPM-style bandwidth of every flow / chargen / CD / GAN
    # record on images. The JVP-in-time methods (meanflow, imeanflow, tvm, scm's sCT) default to 0 for the reason
    # above: MeanFlow on Fashion-MNIST at 1,000 had a regression target of squared norm 4e5 per image at step 200
    # (670 with raw time); the official EDM-style embeddings of t in [0, 1] have frequencies <= 1
    unet_time_max_freq: float = 1000.0

    def validate(self) -> None:
        if self.hidden < 1 or self.depth < 0 or self.time_max_freq < 0 or self.unet_time_max_freq < 0:
            raise BenchError("method.net: need hidden >= 1, depth >= 0 and time_max_freq, unet_time_max_freq >= 0")


def build_net(spec, cfg: NetConfig, n_times: int = 1) -> nn.Module:
    """The network for a data kind: an MLP on points, a U-Net on images; ``n_times`` time inputs."""
    if spec.kind == "points":
        return TimeMLP(spec.dim, cfg.hidden, cfg.depth, n_times, cfg.time_max_freq)
    from bench.methods.unet import build_unet

    return build_unet(spec, cfg.unet, n_times, cfg.unet_time_max_freq)


def can_start_from(spec, student: NetConfig, teacher: NetConfig) -> bool:
    """Whether a student with net ``student`` can start as an exact copy of a teacher with net ``teacher``:
    the same net, or on images the teacher's U-Net preset at an integer multiple of its width."""
    if student == teacher:
        return True
    if spec.kind == "points":
        return False
    from bench.methods.unet import PRESETS, resolve_preset, widening

    s, t = resolve_preset(spec, student.unet), resolve_preset(spec, teacher.unet)
    same_time = student.unet_time_max_freq == teacher.unet_time_max_freq
    return same_time and s in PRESETS and t in PRESETS and widening(PRESETS[s], PRESETS[t]) >= 1
