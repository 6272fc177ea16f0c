"""DCGAN-style convolutional generator and discriminator for images (Radford et al., 2016).

Images are ``(C, H, W)`` in [-1, 1]. Both nets share one resolution plan: halve (H, W) while both are even
and above 4 (32 -> 4 in 3 steps, 28 -> 7 in 2, 8 -> 4 in 1). G projects the latent to the coarsest grid and
up-samples with stride-2 transposed convolutions (batch norm + ReLU) to a tanh output; D mirrors it with
stride-2 convolutions and LeakyReLU(0.2), without batch norm so that per-sample gradient penalties are valid.
"""

from __future__ import annotations

from torch import Tensor, nn


def resolution_plan(h: int, w: int) -> tuple[int, int, int]:
    """(k, h0, w0): ``k`` stride-2 stages between the base grid (h0, w0) and the image size (h, w)."""
    k = 0
    while h % 2 == 0 and w % 2 == 0 and min(h, w) > 4:
        h, w, k = h // 2, w // 2, k + 1
    return k, h, w


class ConvGenerator(nn.Module):
    """z (n, latent) -> image (n, C, H, W) in [-1, 1]; widths ``channels * 2**(k-1)`` ... ``channels``."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], channels: int = 64) -> None:
        super().__init__()
        c, h, w = shape
        k, self.h0, self.w0 = resolution_plan(h, w)
        widths = [channels * 2 ** max(k - 1 - i, 0) for i in range(k + 1)]  # e.g. k=3: 4ch, 2ch, ch, ch
        self.c0 = widths[0]
        self.proj = nn.Sequential(
            nn.Linear(latent_dim, self.c0 * self.h0 * self.w0), nn.Unflatten(1, (self.c0, self.h0, self.w0))
        )
        layers: list[nn.Module] = [nn.BatchNorm2d(self.c0), nn.ReLU()]
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.Conv2d(widths[-1], c, 3, 1, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.proj(z))


class ConvDiscriminator(nn.Module):
    """image (n, C, H, W) -> score (n,); no batch norm (WGAN-GP's penalty is per sample)."""

    def __init__(self, shape: tuple[int, int, int], channels: int = 64) -> None:
        super().__init__()
        c, h, w = shape
        k, h0, w0 = resolution_plan(h, w)
        widths = [channels * 2**i for i in range(k + 1)]  # e.g. k=3: ch, 2ch, 4ch, 8ch
        layers: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, 1, 1), nn.LeakyReLU(0.2)]
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2)]
        layers += [nn.Flatten(), nn.Linear(widths[-1] * h0 * w0, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).squeeze(1)
