"""A compact U-Net in the style of EDM's "DDPM++" (Song et al. 2021; Karras et al. 2022, ``SongUNet``).

Residual blocks GroupNorm -> SiLU -> conv, the time embedding added per block, optional self-attention at
given feature-map sizes, one skip connection per encoder block, dropout, average-pool down- and
nearest up-sampling, residuals scaled by sqrt(1/2), last convolutions initialised near zero.
Inputs whose sides are not a multiple of 2^(levels-1) are zero-padded and the output cropped back.

``net(t, x)`` (``n_times=1``) or ``net(t, s, x)`` (``n_times=2``), times (B,) in [0, 1]. The second time
embedding's last layer starts at exactly zero, so :meth:`UNet.load_from_single_time` gives a two-time net
that computes exactly its one-time source at initialisation (chargen's teacher initialisation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from bench.methods.nets import FourierTime, _as_batch
from torch import Tensor, nn
from torch.nn import functional as F

from bench.errors import BenchError


@dataclass(frozen=True)
class UNetPreset:
    channels: int  # base width
    mults: tuple[int, ...]  # width multiplier per level (level i works at resolution / 2^i)
    blocks: int  # residual blocks per level
    attn: tuple[int, ...] = ()  # feature-map sizes (after padding) that get self-attention
    dropout: float = 0.0
    emb_mult: int = 4  # time-embedding width = channels * emb_mult


PRESETS: dict[str, UNetPreset] = {
    # ~10k params; tests and memory benchmarks only (fast at any size, not a model)
    "micro": UNetPreset(8, (1, 2), 1),
    # ~0.7M params on 8x8 digits (0.72M one time input, 0.74M two); trains in minutes on a CPU
    "tiny": UNetPreset(32, (1, 2), 1),
    # ~2M params; CPU-friendly at 28/32 px (attention at the 7/8 px level)
    "small": UNetPreset(32, (1, 2, 2), 2, attn=(7, 8)),
    # the chargen reference code's MNIST net: 32 channels, mults [1,2,2], 4 blocks/level, dropout 0.1
    "mnist": UNetPreset(32, (1, 2, 2), 4, dropout=0.1),
    # the chargen reference code's CIFAR-10 net: 128 channels, mults [1,2,2,2], attention at 16x16, dropout 0.1
    "cifar10": UNetPreset(128, (1, 2, 2, 2), 4, attn=(16,), dropout=0.1),
}
AUTO_SMALL_MAX = 16  # "auto": "tiny" up to this image side, "small" above


def _groups(ch: int) -> int:
    return min(32, max(1, ch // 4))


def _conv(cin: int, cout: int, k: int = 3, scale: float = 1.0) -> nn.Conv2d:
    c = nn.Conv2d(cin, cout, k, padding=k // 2)
    if scale != 1.0:
        with torch.no_grad():
            c.weight.mul_(scale)
            c.bias.zero_()
    return c


class ResBlock(nn.Module):
    """GroupNorm-SiLU-(resample)-conv, + time embedding, GroupNorm-SiLU-dropout-conv, skip, x sqrt(1/2)."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float, resample: str = "", attn: bool = False):
        super().__init__()
        self.resample = resample
        self.norm0 = nn.GroupNorm(_groups(cin), cin)
        self.conv0 = _conv(cin, cout)
        self.affine = nn.Linear(emb, cout)
        self.norm1 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv1 = _conv(cout, cout, scale=1e-5)
        self.skip = nn.Conv2d(cin, cout, 1) if (cin != cout or resample) else None
        self.attn = SelfAttention(cout) if attn else None

    def _rs(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(self._rs(F.silu(self.norm0(x))))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))
        h = self.conv1(self.drop(h))
        skip = self._rs(x)
        if self.skip is not None:
            skip = self.skip(skip)
        x = (h + skip) * math.sqrt(0.5)
        return self.attn(x) if self.attn is not None else x


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual (projection initialised near zero)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _conv(ch, ch, 1, scale=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (x + self.proj(a.transpose(1, 2).reshape(b, c, h, w))) * math.sqrt(0.5)


class UNet(nn.Module):
    """The U-Net; see the module docstring for the conventions."""

    def __init__(self, in_ch: int, preset: UNetPreset, n_times: int = 1, side: int = 32) -> None:
        super().__init__()
        p = preset
        self.preset, self.n_times, self.factor = p, n_times, 2 ** (len(p.mults) - 1)
        padded = side + (-side) % self.factor
        attn_levels = {lv for lv in range(len(p.mults)) if padded // 2**lv in p.attn}
        emb = p.channels * p.emb_mult
        self.times = nn.ModuleList([FourierTime(emb, n_freq=max(16, p.channels // 2)) for _ in range(n_times)])
        for e in list(self.times)[1:]:
            e.zero_()
        self.inp = _conv(in_ch, p.channels)
        self.enc = nn.ModuleList()
        skips, cin = [p.channels], p.channels
        for level, mult in enumerate(p.mults):
            cout = p.channels * mult
            if level > 0:
                self.enc.append(ResBlock(cin, cin, emb, p.dropout, resample="down"))
                skips.append(cin)
            for _ in range(p.blocks):
                self.enc.append(ResBlock(cin, cout, emb, p.dropout, attn=level in attn_levels))
                cin = cout
                skips.append(cin)
        self.mid = nn.ModuleList([ResBlock(cin, cin, emb, p.dropout, attn=True), ResBlock(cin, cin, emb, p.dropout)])
        self.dec = nn.ModuleList()
        for level in reversed(range(len(p.mults))):
            cout = p.channels * p.mults[level]
            if level < len(p.mults) - 1:
                self.dec.append(ResBlock(cin, cin, emb, p.dropout, resample="up"))
            for _ in range(p.blocks + 1):
                self.dec.append(ResBlock(cin + skips.pop(), cout, emb, p.dropout, attn=level in attn_levels))
                cin = cout
        self.out_norm = nn.GroupNorm(_groups(cin), cin)
        self.out = _conv(cin, in_ch, scale=1e-5)

    def forward(self, *args: Tensor) -> Tensor:
        *ts, x = args
        if len(ts) != self.n_times:
            raise TypeError(f"expected {self.n_times} time input(s), got {len(ts)}")
        emb = F.silu(sum(e(_as_batch(t, x)) for e, t in zip(self.times, ts, strict=True)))
        H, W = x.shape[-2:]
        ph, pw = (-H) % self.factor, (-W) % self.factor
        h = F.pad(x, (0, pw, 0, ph)) if ph or pw else x
        h = self.inp(h)
        skips = [h]
        for blk in self.enc:
            h = blk(h, emb)
            skips.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for blk in self.dec:
            h = blk(h, emb) if blk.resample == "up" else blk(torch.cat([h, skips.pop()], 1), emb)
        h = self.out(F.silu(self.out_norm(h)))
        return h[..., :H, :W]

    def load_from_single_time(self, other: UNet) -> None:
        """Copy a one-time net into this one; extra time embeddings stay zero (so outputs coincide)."""
        own = self.state_dict()
        for k, v in other.state_dict().items():
            if k not in own or own[k].shape != v.shape:
                raise ValueError(f"incompatible U-Net: parameter {k!r}")
            own[k] = v.clone()
        self.load_state_dict(own)


def build_unet(spec, preset: str, n_times: int = 1) -> UNet:
    """The U-Net for image spec ``(C, H, W)`` from a preset name in :data:`PRESETS` (or ``"auto"``)."""
    c, h, w = spec.shape
    if preset == "auto":
        preset = "tiny" if max(h, w) <= AUTO_SMALL_MAX else "small"
    if preset not in PRESETS:
        raise BenchError(f"unknown U-Net preset {preset!r}; valid: auto, {', '.join(PRESETS)}")
    return UNet(c, PRESETS[preset], n_times, side=max(h, w))
