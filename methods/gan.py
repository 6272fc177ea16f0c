"""GAN baselines, one-step by nature: non-saturating GAN, WGAN-GP and hinge loss + spectral norm (SNGAN).

D step (``n_critic`` times per G step), with x ~ data, z ~ N(0, I), D(.) a real-valued score:
  ns     L_D = E softplus(-D(x)) + E softplus(D(G(z))),   L_G = E softplus(-D(G(z)))    Goodfellow et al. 2014
  wgan   L_D = E D(G(z)) - E D(x),                         L_G = -E D(G(z))              Arjovsky et al. 2017
  hinge  L_D = E relu(1 - D(x)) + E relu(1 + D(G(z))),     L_G = -E D(G(z))              Lim & Ye 2017
plus ``gp_weight`` * E (||grad D(x_hat)||_2 - 1)^2 on random interpolates x_hat (Gulrajani et al. 2017, eq. 3)
and/or ``r1_weight``/2 * E ||grad D(x)||^2 on real data (R1, Mescheder et al. 2018 eq. 9: the penalty under
which their analysis shows the non-saturating GAN converges locally; StyleGAN's regulariser), and optional
spectral normalisation of every D layer (Miyato et al. 2018). Samples come from the generator
EMA (train.ema_decay; 0 = the online generator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from bench.methods.base import Batch, Method, Stage, Update, count_params, ema_copy
from bench.methods.dcgan import ConvDiscriminator, ConvGenerator
from torch import Tensor, nn

from bench.errors import BenchError
from bench.registry import register_method

# -- losses: pure functions of the critic's scores ---------------------------------------------------------


def ns_d_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """-log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))): the original minimax D loss."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def ns_g_loss(d_fake: Tensor) -> Tensor:
    """-log sigmoid(D(G(z))): the non-saturating generator loss."""
    return F.softplus(-d_fake).mean()


def wgan_d_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """Negative Kantorovich-Rubinstein dual estimate, E D(G(z)) - E D(x)."""
    return d_fake.mean() - d_real.mean()


def hinge_d_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """Zero once D(x) >= 1 and D(G(z)) <= -1."""
    return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()


def mean_score_g_loss(d_fake: Tensor) -> Tensor:
    """-E D(G(z)) (generator loss of WGAN and hinge GAN)."""
    return -d_fake.mean()


LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "ns": (ns_d_loss, ns_g_loss),
    "wgan": (wgan_d_loss, mean_score_g_loss),
    "hinge": (hinge_d_loss, mean_score_g_loss),
}


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, u: Tensor | None = None) -> Tensor:
    """E (||grad_x D(x_hat)||_2 - 1)^2, x_hat = u x + (1 - u) x_fake, u ~ U[0, 1] per sample (WGAN-GP, eq. 3)."""
    if u is None:
        u = torch.rand(len(real), device=real.device)
    u = u.to(real.dtype).reshape(len(real), *[1] * (real.ndim - 1))
    x_hat = (u * real.detach() + (1 - u) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def r1_penalty(critic: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """E ||grad_x D(x)||_2^2 on real samples x (R1 of Mescheder et al. 2018; the loss adds r1_weight / 2 x this)."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


# -- networks ----------------------------------------------------------------------------------------------


@dataclass
class GANNetConfig:
    hidden: int = 256  # MLP width (points); same meaning as flow's method.net.hidden
    depth: int = 3  # MLP hidden-to-hidden layers (points); same meaning as flow's method.net.depth
    channels: int = 64  # DCGAN base width (images)

    def validate(self) -> None:
        if self.hidden < 1 or self.depth < 0 or self.channels < 1:
            raise BenchError("method.g/d: need hidden >= 1, depth >= 0, channels >= 1")


def mlp(d_in: int, d_out: int, hidden: int, depth: int, act: Callable[[], nn.Module]) -> nn.Sequential:
    """Linear(d_in, h) -> depth x Linear(h, h) -> Linear(h, d_out), ``act`` between (flow's TimeMLP layout)."""
    layers: list[nn.Module] = [nn.Linear(d_in, hidden), act()]
    for _ in range(depth):
        layers += [nn.Linear(hidden, hidden), act()]
    return nn.Sequential(*layers, nn.Linear(hidden, d_out))


class MLPCritic(nn.Module):
    """D on points: (n, *shape) -> (n,) with LeakyReLU(0.2)."""

    def __init__(self, dim: int, cfg: GANNetConfig) -> None:
        super().__init__()
        self.net = mlp(dim, 1, cfg.hidden, cfg.depth, lambda: nn.LeakyReLU(0.2))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(1)


def spectral_normalise(net: nn.Module) -> nn.Module:
    """Divide every Linear/Conv weight by its largest singular value (one power iteration per forward)."""
    for m in [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]:
        nn.utils.parametrizations.spectral_norm(m)
    return net


# -- config and method -------------------------------------------------------------------------------------


@dataclass
class GANConfig:
    loss: Literal["ns", "wgan", "hinge"] = "ns"  # ns: non-saturating; wgan: Wasserstein critic; hinge
    gp_weight: float = 0.0  # weight of the gradient penalty on random interpolates; 0 = off (WGAN-GP: 10)
    r1_weight: float = 0.0  # gamma of the R1 penalty gamma/2 E||grad D(x_real)||^2; 0 = off
    spectral_norm: bool = False  # spectral normalisation of every D layer (SNGAN)
    n_critic: int = 1  # D updates per G update; train.steps counts G updates
    lr_g: float = 2e-4  # generator Adam learning rate (train.lr is not used)
    lr_d: float = 2e-4  # discriminator Adam learning rate
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam (beta1, beta2) of both optimisers
    latent_dim: int = 0  # generator input size; 0 = 16 for points, 128 for images
    g: GANNetConfig = field(default_factory=GANNetConfig)  # generator size
    d: GANNetConfig = field(default_factory=GANNetConfig)  # discriminator size

    def validate(self) -> None:
        if self.n_critic < 1:
            raise BenchError(f"method.n_critic must be >= 1 (got {self.n_critic})")
        if not (self.lr_g > 0 and self.lr_d > 0):
            raise BenchError(f"method.lr_g and method.lr_d must be > 0 (got {self.lr_g}, {self.lr_d})")
        if not self.gp_weight >= 0:
            raise BenchError(f"method.gp_weight must be >= 0 (got {self.gp_weight})")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise BenchError(f"method.betas must be two numbers in [0, 1) (got {self.betas})")
        if not self.r1_weight >= 0:
            raise BenchError(f"method.r1_weight must be >= 0 (got {self.r1_weight})")
        if self.latent_dim < 0:
            raise BenchError(f"method.latent_dim must be >= 0 (got {self.latent_dim})")
        if self.loss == "wgan" and self.gp_weight == 0 and not self.spectral_norm:
            raise BenchError("method.loss=wgan needs a Lipschitz constraint: gp_weight > 0 or spectral_norm=true")


@register_method("gan")
class GAN(Method):
    """GAN (loss chosen by method.loss), MLP nets on points, DCGAN nets on images; NFE 1."""

    Config = GANConfig
    kinds = ("points", "image")
    smoke = {"g": {"hidden": 64, "depth": 2, "channels": 16}, "d": {"hidden": 64, "depth": 2, "channels": 16}}

    def __init__(self, cfg: GANConfig, spec, train, workdir=None) -> None:
        super().__init__(cfg, spec, train, workdir)
        self.latent_dim = cfg.latent_dim or (16 if spec.kind == "points" else 128)
        if spec.kind == "points":
            self.g = nn.Sequential(
                mlp(self.latent_dim, spec.dim, cfg.g.hidden, cfg.g.depth, nn.ReLU), nn.Unflatten(1, tuple(spec.shape))
            )
            self.d = MLPCritic(spec.dim, cfg.d)
        else:
            self.g = ConvGenerator(self.latent_dim, tuple(spec.shape), cfg.g.channels)
            self.d = ConvDiscriminator(tuple(spec.shape), cfg.d.channels)
        if cfg.spectral_norm:
            spectral_normalise(self.d)
        self.g_ema = ema_copy(self.g)
        self.d_loss, self.g_loss = LOSSES[cfg.loss]

    def label(self) -> str:
        c = self.cfg
        tags = [c.loss] + ([f"gp{c.gp_weight:g}"] if c.gp_weight > 0 else []) + (["sn"] if c.spectral_norm else [])
        tags += [f"r1={c.r1_weight:g}"] if c.r1_weight > 0 else []
        return f"gan[{','.join(tags)}]"

    def critic_loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        real = b.x
        with torch.no_grad():
            fake = self.g(b.randn(self.latent_dim))
        scores = self.d(torch.cat([real, fake]))  # one pass of D over real and fake
        d_real, d_fake = scores[: len(real)], scores[len(real) :]
        loss = self.d_loss(d_real, d_fake)
        logs = {"d_real": d_real.mean(), "d_fake": d_fake.mean()}
        if self.cfg.gp_weight > 0:
            gp = gradient_penalty(self.d, real, fake, b.rand())
            loss = loss + self.cfg.gp_weight * gp
            logs["gp"] = gp
        if self.cfg.r1_weight > 0:
            r1 = r1_penalty(self.d, real)
            loss = loss + 0.5 * self.cfg.r1_weight * r1
            logs["r1"] = r1
        return loss, logs

    def generator_loss(self, b: Batch, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.g_loss(self.d(self.g(b.randn(self.latent_dim)))), {}

    def stages(self) -> list[Stage]:
        c = self.cfg
        betas = tuple(c.betas)
        upd_d = Update(("d",), self.critic_loss, lr=c.lr_d, betas=betas, repeats=c.n_critic, name="d")
        upd_g = Update(("g",), self.generator_loss, lr=c.lr_g, betas=betas, data=False, name="g")
        tc = self.train_cfg
        return [Stage("gan", tc.steps, [upd_d, upd_g], ema=[(self.g_ema, self.g)], ema_decay=tc.ema_decay)]

    def generator(self) -> nn.Module:
        """The sampling network: the generator EMA, or the online generator when train.ema_decay = 0."""
        return self.g_ema if self.train_cfg.ema_decay > 0 else self.g

    @torch.no_grad()
    def sample(self, noise: Tensor, point) -> tuple[Tensor, int]:
        return self.generator()(noise), 1

    def forward_reference(self) -> Callable[[Tensor], Tensor]:
        return self.generator()

    def sampling_nets(self) -> tuple[str, ...]:
        return ("g_ema",) if self.train_cfg.ema_decay > 0 else ("g",)

    def record_extra(self) -> dict:
        return {
            "latent_dim": self.latent_dim,
            "params_g": count_params(self.g),
            "params_d": count_params(self.d),
            "sampling_net": "generator EMA" if self.train_cfg.ema_decay > 0 else "online generator",
        }

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.latent_dim,)


# -- aliases: the same method with the defaults of each paper ----------------------------------------------


@dataclass
class GANNSConfig(GANConfig):
    loss: Literal["ns", "wgan", "hinge"] = "ns"  # non-saturating loss (Goodfellow et al. 2014)


@dataclass
class WGANGPConfig(GANConfig):
    loss: Literal["ns", "wgan", "hinge"] = "wgan"  # Wasserstein critic
    gp_weight: float = 10.0  # lambda of Gulrajani et al. 2017
    n_critic: int = 5  # critic iterations per generator step (ibid.)
    lr_g: float = 1e-4  # ibid.
    lr_d: float = 1e-4  # ibid.
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])  # ibid. (toy experiments)


@dataclass
class SNGANConfig(GANConfig):
    loss: Literal["ns", "wgan", "hinge"] = "hinge"  # hinge loss (Miyato et al. 2018)
    spectral_norm: bool = True  # spectral normalisation of D (ibid.)


@register_method("gan-ns")
class GANNS(GAN):
    """Non-saturating GAN (Goodfellow et al. 2014); NFE 1."""

    Config = GANNSConfig


@register_method("wgan-gp")
class WGANGP(GAN):
    """WGAN with gradient penalty (Gulrajani et al. 2017); NFE 1."""

    Config = WGANGPConfig


@register_method("sngan")
class SNGAN(GAN):
    """Hinge loss + spectral normalisation of D (Miyato et al. 2018); NFE 1."""

    Config = SNGANConfig
