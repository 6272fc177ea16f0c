"""A compact U-Net in the style of EDM's "DDPM++" (Song et al. 2021; Karras et al. 2022, ``SongUNet``).

Residual blocks GroupNorm -> SiLU -> conv, the time embedding added per block, optional self-attention at
given feature-map sizes, one skip connection per encoder block, dropout, average-pool down- and
nearest up-sampling, residuals scaled by sqrt(1/2), last convolutions initialised near zero.
Inputs whose sides are not a multiple of 2^(levels-1) are zero-padded and the output cropped back.

``net(t, x)`` (``n_times=1``) or ``net(t, s, x)`` (``n_times=2``), times (B,) in [0, 1]. The second time
embedding's last layer starts at exactly zero, so :meth:`UNet.load_from_single_time` gives a two-time net
that computes exactly its one-time source at initialisation (chargen's teacher initialisation). The source
may also be the same preset at 1/k of the width (``tiny`` into ``tiny-wide``): every channel is then
replicated k times and every layer reading replicated channels splits its weights among the copies, so the
wider net computes its source exactly too (Net2Net, Chen et al. 2016, "Net2WiderNet"); the splits are
random around 1/k and sum to 1, so the copies compute the same values but receive different gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from bench.methods.timefeat import FourierTime, as_batch
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
    n_freq: int = 0  # Fourier frequencies of a time input; 0 = max(16, channels // 2)
    max_groups: int = 32  # GroupNorm: channels // 4 groups, at most this many


PRESETS: dict[str, UNetPreset] = {
    # ~10k params; tests and memory benchmarks only (fast at any size, not a model)
    "micro": UNetPreset(8, (1, 2), 1),
    # ~0.7M params on 8x8 digits (0.72M one time input, 0.74M two); trains in minutes on a CPU
    "tiny": UNetPreset(32, (1, 2), 1),
    # ``tiny`` at twice the width (2.9M params on digits), with tiny's time features: a student that can
    # start from a ``tiny`` teacher (channel replication, see the module docstring)
    "tiny-wide": UNetPreset(64, (1, 2), 1, n_freq=16, max_groups=64),
    # 0.69M params at 28 px: three levels 28 -> 14 -> 7 (24, 48, 48 channels), one block each, no attention; the
    # CPU preset ("auto" above 16 px): steps/s of every preset at 28 px are in results/bench/unet_presets_28px.json
    "compact": UNetPreset(24, (1, 2, 2), 1),
    # ~1.8M params at 28 px (attention at the 7/8 px level): 4 s per step at batch 256 on 2 CPU cores
    "small": UNetPreset(32, (1, 2, 2), 2, attn=(7, 8)),
    # the chargen reference code's MNIST net: 32 channels, mults [1,2,2], 4 blocks/level, dropout 0.1
    "mnist": UNetPreset(32, (1, 2, 2), 4, dropout=0.1),
    # the chargen reference code's CIFAR-10 net: 128 channels, mults [1,2,2,2], attention at 16x16, dropout 0.1
    "cifar10": UNetPreset(128, (1, 2, 2, 2), 4, attn=(16,), dropout=0.1),
}
AUTO_SMALL_MAX = 16  # "auto": "tiny" up to this image side, "compact" above


def _groups(ch: int, max_groups: int = 32) -> int:
    return min(max_groups, max(1, ch // 4))


def _conv(cin: int, cout: int, k: int = 3, scale: float = 1.0) -> nn.Conv2d:
    c = nn.Conv2d(cin, cout, k, padding=k // 2)
    if scale != 1.0:
        with torch.no_grad():
            c.weight.mul_(scale)
            c.bias.zero_()
    return c


class ResBlock(nn.Module):
    """GroupNorm-SiLU-(resample)-conv, + time embedding, GroupNorm-SiLU-dropout-conv, skip, x sqrt(1/2)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        emb: int,
        dropout: float,
        resample: str = "",
        attn: bool = False,
        max_groups: int = 32,
    ):
        super().__init__()
        self.resample = resample
        self.norm0 = nn.GroupNorm(_groups(cin, max_groups), cin)
        self.conv0 = _conv(cin, cout)
        self.affine = nn.Linear(emb, cout)
        self.norm1 = nn.GroupNorm(_groups(cout, max_groups), cout)
        self.drop = nn.Dropout(dropout)
        self.conv1 = _conv(cout, cout, scale=1e-5)
        self.skip = nn.Conv2d(cin, cout, 1) if (cin != cout or resample) else None
        self.attn = SelfAttention(cout, max_groups) if attn else None

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

    def __init__(self, ch: int, max_groups: int = 32) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch, max_groups), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _conv(ch, ch, 1, scale=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (x + self.proj(a.transpose(1, 2).reshape(b, c, h, w))) * math.sqrt(0.5)


class UNet(nn.Module):
    """The U-Net; see the module docstring for the conventions."""

    def __init__(
        self, in_ch: int, preset: UNetPreset, n_times: int = 1, side: int = 32, time_max_freq: float = 1000.0
    ) -> None:
        super().__init__()
        p = preset
        self.preset, self.n_times, self.factor = p, n_times, 2 ** (len(p.mults) - 1)
        padded = side + (-side) % self.factor
        attn_levels = {lv for lv in range(len(p.mults)) if padded // 2**lv in p.attn}
        emb = p.channels * p.emb_mult
        n_freq = p.n_freq or max(16, p.channels // 2)
        self.times = nn.ModuleList([FourierTime(emb, n_freq, time_max_freq) for _ in range(n_times)])
        for e in list(self.times)[1:]:
            e.zero_()
        self.inp = _conv(in_ch, p.channels)
        self.enc = nn.ModuleList()
        skips, cin = [p.channels], p.channels
        for level, mult in enumerate(p.mults):
            cout = p.channels * mult
            if level > 0:
                self.enc.append(ResBlock(cin, cin, emb, p.dropout, resample="down", max_groups=p.max_groups))
                skips.append(cin)
            for _ in range(p.blocks):
                self.enc.append(ResBlock(cin, cout, emb, p.dropout, attn=level in attn_levels, max_groups=p.max_groups))
                cin = cout
                skips.append(cin)
        self.mid = nn.ModuleList(
            [
                ResBlock(cin, cin, emb, p.dropout, attn=True, max_groups=p.max_groups),
                ResBlock(cin, cin, emb, p.dropout, max_groups=p.max_groups),
            ]
        )
        self.dec = nn.ModuleList()
        for level in reversed(range(len(p.mults))):
            cout = p.channels * p.mults[level]
            if level < len(p.mults) - 1:
                self.dec.append(ResBlock(cin, cin, emb, p.dropout, resample="up", max_groups=p.max_groups))
            for _ in range(p.blocks + 1):
                self.dec.append(
                    ResBlock(
                        cin + skips.pop(), cout, emb, p.dropout, attn=level in attn_levels, max_groups=p.max_groups
                    )
                )
                cin = cout
        self.out_norm = nn.GroupNorm(_groups(cin, p.max_groups), cin)
        self.out = _conv(cin, in_ch, scale=1e-5)

    def forward(self, *args: Tensor) -> Tensor:
        *ts, x = args
        if len(ts) != self.n_times:
            raise TypeError(f"expected {self.n_times} time input(s), got {len(ts)}")
        emb = F.silu(sum(e(as_batch(t, x)) for e, t in zip(self.times, ts, strict=True)))
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

    def load_from_single_time(self, other: UNet, seed: int = 0) -> None:
        """Copy a one-time net (this preset, or one k times narrower: see :func:`widening`) into this one;
        extra time embeddings stay zero, so the outputs coincide. ``seed`` draws a widening's weight shares
        (its own generator: every process of a distributed run draws the same)."""
        k = widening(self.preset, other.preset)
        if k > 1 and len(other.times) <= len(self.times):
            _widen(self, other, k, torch.Generator().manual_seed(seed))
            return
        own = self.state_dict()
        for key, v in other.state_dict().items():
            if key not in own or own[key].shape != v.shape:
                raise ValueError(f"incompatible U-Net: parameter {key!r}")
            own[key] = v.clone()
        self.load_state_dict(own)


def widening(wide: UNetPreset, narrow: UNetPreset) -> int:
    """k when ``wide`` is ``narrow`` with k times its channels and GroupNorm groups (group size kept) and
    everything else equal (time features included), 1 when they are equal, else 0."""
    if wide.channels % narrow.channels:
        return 0
    k = wide.channels // narrow.channels
    same = (wide.mults, wide.blocks, wide.attn, wide.dropout, wide.emb_mult) == (
        narrow.mults,
        narrow.blocks,
        narrow.attn,
        narrow.dropout,
        narrow.emb_mult,
    )
    n_freq = wide.n_freq or max(16, wide.channels // 2), narrow.n_freq or max(16, narrow.channels // 2)
    return k if same and n_freq[0] == n_freq[1] and wide.max_groups == k * narrow.max_groups else 0


SPLIT_NOISE = 0.1  # relative spread of a copy's share of a weight around 1/k (the shares sum to 1)


def _tiles(segments: list[int], k: int) -> Tensor:
    """Old channel of each new channel when every segment of a (concatenated) input is tiled k times."""
    out, off = [], 0
    for n in segments:
        out.append(torch.arange(n).repeat(k) + off)
        off += n
    return torch.cat(out)


def _copy_layer(
    new: nn.Module, old: nn.Module, rows: Tensor, cols: Tensor, used: set, gen: torch.Generator, row_scale=None
) -> None:
    """Linear/conv: output channel j is old output rows[j]; the k copies of an old input share its weight.
    Computed on the CPU in float64 whatever the nets' device and dtype, then copied into ``new``."""
    counts = torch.bincount(cols, minlength=old.weight.shape[1]).double()
    w = old.weight.detach().cpu().double()[rows][:, cols]
    z = torch.randn(w.shape, generator=gen, dtype=torch.float64)  # centred over each input's copies: shares sum to 1
    shape = (1, -1) + (1,) * (w.ndim - 2)
    mean = torch.zeros(w.shape[0], counts.numel(), *w.shape[2:], dtype=torch.float64).index_add_(1, cols, z)
    mean = mean / counts.view(shape)
    w = w * (1.0 / counts[cols]).view(shape) * (1 + SPLIT_NOISE * (z - mean[:, cols]))
    b = old.bias.detach().cpu().double()[rows]
    if row_scale is not None:
        w, b = w * row_scale.view((-1,) + (1,) * (w.ndim - 1)), b * row_scale
    if w.shape != new.weight.shape:
        raise ValueError(f"incompatible U-Net: {tuple(w.shape)} into {tuple(new.weight.shape)}")
    new.weight.copy_(w)
    new.bias.copy_(b)
    used.update((id(new.weight), id(new.bias)))


def _copy_norm(new: nn.GroupNorm, old: nn.GroupNorm, chans: Tensor, used: set) -> None:
    """GroupNorm: each new group must hold exactly the channels of one old group (same statistics)."""
    g = old.num_channels // old.num_groups
    groups = chans.reshape(new.num_groups, -1).sort(1).values
    if groups.shape[1] != g or not torch.equal(groups, groups[:, :1] + torch.arange(g)) or (groups[:, 0] % g).any():
        raise ValueError("incompatible U-Net: GroupNorm groups do not replicate under widening")
    new.weight.copy_(old.weight.detach()[chans.to(old.weight.device)])
    new.bias.copy_(old.bias.detach()[chans.to(old.bias.device)])
    used.update((id(new.weight), id(new.bias)))


@torch.no_grad()
def _widen(new: UNet, old: UNet, k: int, gen: torch.Generator) -> None:
    used: set = set()
    emb = _tiles([old.preset.channels * old.preset.emb_mult], k)
    for ne, oe in zip(new.times, old.times, strict=False):
        _copy_layer(ne.net[0], oe.net[0], emb, torch.arange(oe.net[0].in_features), used, gen)
        _copy_layer(ne.net[2], oe.net[2], emb, emb, used, gen)
    h = old.inp.out_channels
    _copy_layer(new.inp, old.inp, _tiles([h], k), torch.arange(old.inp.in_channels), used, gen)
    for nb, ob in zip([*new.enc, *new.mid, *new.dec], [*old.enc, *old.mid, *old.dec], strict=True):
        segs = [h] if ob.norm0.num_channels == h else [h, ob.norm0.num_channels - h]  # decoder: [h, skip]
        h = ob.conv0.out_channels
        cin, cout = _tiles(segs, k), _tiles([h], k)
        _copy_norm(nb.norm0, ob.norm0, cin, used)
        _copy_layer(nb.conv0, ob.conv0, cout, cin, used, gen)
        _copy_layer(nb.affine, ob.affine, cout, emb, used, gen)
        _copy_norm(nb.norm1, ob.norm1, cout, used)
        _copy_layer(nb.conv1, ob.conv1, cout, cout, used, gen)
        if ob.skip is not None:
            _copy_layer(nb.skip, ob.skip, cout, cin, used, gen)
        elif len(segs) > 1:
            raise ValueError("incompatible U-Net: an identity skip over a concatenated input")
        if ob.attn is not None:  # q and k replicated k times: q scaled by 1/sqrt(k) keeps q.k / sqrt(width)
            qkv = _tiles([h, h, h], k)
            scale = torch.ones(len(qkv), dtype=torch.float64)
            scale[: k * h] = k**-0.5
            _copy_norm(nb.attn.norm, ob.attn.norm, cout, used)
            _copy_layer(nb.attn.qkv, ob.attn.qkv, qkv, cout, used, gen, row_scale=scale)
            _copy_layer(nb.attn.proj, ob.attn.proj, cout, cout, used, gen)
    _copy_norm(new.out_norm, old.out_norm, _tiles([h], k), used)
    _copy_layer(new.out, old.out, torch.arange(old.out.out_channels), _tiles([h], k), used, gen)
    extra = {id(p) for e in list(new.times)[len(old.times) :] for p in e.parameters()}
    missed = [n for n, p in new.named_parameters() if id(p) not in used | extra]
    if missed:
        raise ValueError(f"incompatible U-Net: parameters not initialised by widening: {missed[:3]}")


def resolve_preset(spec, preset: str) -> str:
    """The preset name ``"auto"`` stands for at this image size (others unchanged)."""
    if preset != "auto":
        return preset
    return "tiny" if max(spec.shape[1:]) <= AUTO_SMALL_MAX else "compact"


def build_unet(spec, preset: str, n_times: int = 1, time_max_freq: float = 1000.0) -> UNet:
    """The U-Net for image spec ``(C, H, W)`` from a preset name in :data:`PRESETS` (or ``"auto"``), its time
    features up to ``time_max_freq`` rad per unit time (0: the raw time)."""
    c, h, w = spec.shape
    preset = resolve_preset(spec, preset)
    if preset not in PRESETS:
        raise BenchError(f"unknown U-Net preset {preset!r}; valid: auto, {', '.join(PRESETS)}")
    return UNet(c, PRESETS[preset], n_times, side=max(h, w), time_max_freq=time_max_freq)
