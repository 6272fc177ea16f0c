"""GAN baselines: closed-form oracles for the penalty and spectral norm, loss signs, DCGAN shapes, mode
coverage, bad input, divergence, and a --smoke end-to-end run of every variant through the CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods import gan
from bench.methods.base import Batch
from bench.methods.dcgan import ConvDiscriminator, ConvGenerator, resolution_plan
from torch import nn

from bench.core.checkpoint import load_checkpoint
from bench.core.config import EvalConfig, TrainConfig, from_dict
from bench.errors import BenchError
from bench.eval.metrics import MetricContext
from bench.eval.metrics.modes import hit_radius, mode_coverage
from bench.eval.sampling import TensorSamples
from bench.registry import DATASETS, METHODS, METRICS, load_builtins

load_builtins()
VARIANTS = {"gan": "ns", "gan-ns": "ns", "wgan-gp": "wgan", "sngan": "hinge"}


def bench_main(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the console entry point in-process; returns its exit code."""
    from bench.cli import main

    monkeypatch.setattr(sys, "argv", ["bench", *args])
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").rglob("*.json"))]


# -- losses ------------------------------------------------------------------------------------------------


def test_gradient_penalty_closed_form_on_linear_critic():
    torch.manual_seed(0)
    critic = nn.Linear(5, 1)  # D(x) = w.x + b: grad norm is ||w|| everywhere
    real, fake = torch.randn(64, 5), torch.randn(64, 5) * 3
    gp = gan.gradient_penalty(lambda x: critic(x).squeeze(1), real, fake)
    expected = (critic.weight.norm() - 1) ** 2
    torch.testing.assert_close(gp, expected)
    with torch.no_grad():  # a unit-norm critic pays nothing
        critic.weight /= critic.weight.norm()
    assert gan.gradient_penalty(lambda x: critic(x).squeeze(1), real, fake).item() < 1e-10


def test_gradient_penalty_is_differentiable_in_critic_weights():
    critic = nn.Linear(3, 1)
    gp = gan.gradient_penalty(lambda x: critic(x).squeeze(1), torch.randn(8, 3), torch.randn(8, 3))
    (g,) = torch.autograd.grad(gp, critic.weight)
    w = critic.weight.detach()
    torch.testing.assert_close(g, 2 * (w.norm() - 1) * w / w.norm())  # d/dw (||w|| - 1)^2


@pytest.mark.parametrize("loss", sorted(gan.LOSSES))
def test_loss_sign_conventions(loss):
    d_loss, g_loss = gan.LOSSES[loss]
    d_real = torch.zeros(16, requires_grad=True)
    d_fake = torch.zeros(16, requires_grad=True)
    gr, gf = torch.autograd.grad(d_loss(d_real, d_fake), [d_real, d_fake])
    assert (gr < 0).all() and (gf > 0).all()  # D wants real scores up, fake scores down
    (gg,) = torch.autograd.grad(g_loss(d_fake), d_fake)
    assert (gg < 0).all()  # G wants its scores up
    hi, lo = torch.full((16,), 2.0), torch.full((16,), -2.0)
    assert d_loss(hi, lo) < d_loss(lo, hi)
    assert g_loss(hi) < g_loss(lo)


def test_loss_values():
    z, ones = torch.zeros(4), torch.ones(4)
    torch.testing.assert_close(gan.ns_d_loss(z, z), torch.tensor(2 * math.log(2)))
    torch.testing.assert_close(gan.ns_g_loss(z), torch.tensor(math.log(2)))
    torch.testing.assert_close(gan.wgan_d_loss(3 * ones, ones), torch.tensor(-2.0))
    assert gan.hinge_d_loss(ones, -ones).item() == 0.0  # margins satisfied
    assert gan.hinge_d_loss(5 * ones, -5 * ones).item() == 0.0
    torch.testing.assert_close(gan.hinge_d_loss(z, z), torch.tensor(2.0))


def test_spectral_norm_keeps_top_singular_value_near_one():
    torch.manual_seed(0)
    d = gan.spectral_normalise(gan.MLPCritic(2, gan.GANNetConfig(hidden=64, depth=2)))
    for _ in range(30):  # one power iteration per forward pass in training mode
        d(torch.randn(32, 2))
    layers = [m for m in d.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 4
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach(), ord=2).item()
        assert abs(sigma - 1) < 0.05, sigma


# -- networks and the method ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,plan", [((1, 8, 8), (1, 4, 4)), ((1, 28, 28), (2, 7, 7)), ((3, 32, 32), (3, 4, 4)), ((3, 64, 64), (4, 4, 4))]
)
def test_dcgan_shapes_and_range(shape, plan):
    torch.manual_seed(0)
    assert resolution_plan(*shape[1:]) == plan
    g, d = ConvGenerator(32, shape, channels=8), ConvDiscriminator(shape, channels=8)
    x = g(torch.randn(4, 32) * 100)
    assert x.shape == (4, *shape) and x.abs().max() <= 1
    assert d(torch.rand(4, *shape) * 2 - 1).shape == (4,)


@pytest.mark.parametrize(
    "name,shape", [(n, (2,)) for n in sorted(VARIANTS)] + [(n, (1, 8, 8)) for n in VARIANTS] + [("sngan", (3, 32, 32))]
)
def test_method_step_and_sample(name, shape):
    torch.manual_seed(0)
    kind = "points" if len(shape) == 1 else "image"
    cls = METHODS.get(name)
    cfg = from_dict(cls.Config, {**cls.smoke, "n_critic": 2})
    assert cfg.loss == VARIANTS[name]
    train = from_dict(TrainConfig, {"batch_size": 8})
    m = cls(cfg, DataSpec("x", kind, shape, True), train)
    (stage,) = m.stages()
    upd_d, upd_g = stage.updates
    assert upd_d.nets == ("d",) and upd_g.nets == ("g",) and upd_d.repeats == 2 and not upd_g.data
    b = Batch(torch.rand(8, *shape) * 2 - 1, 8, 0, 8, 0, torch.device("cpu"), 0)
    loss_d, logs = upd_d.loss(b, 0)
    loss_g, _ = upd_g.loss(b, 0)
    loss_d.backward()
    loss_g.backward()
    vals = [loss_d.item(), loss_g.item(), *(v.item() for v in logs.values())]
    assert {"d_real", "d_fake"} <= set(logs) and all(math.isfinite(v) for v in vals)
    assert ("gp" in logs) == (cfg.gp_weight > 0)
    assert all(p.grad is not None for p in m.d.parameters())
    m.eval()
    z = torch.randn(3, *m.noise_shape)
    (point,) = m.eval_points([1, 2, 4], [])
    x, nfe = m.sample(z, point)
    assert nfe == 1 and point.nfe == 1 and x.shape == (3, *shape)
    assert m.forward_reference()(z).shape == x.shape
    assert m.sampling_params() == sum(p.numel() for p in m.g.parameters())


def test_r1_enters_the_critic_loss_and_the_label():
    torch.manual_seed(0)
    cls = METHODS.get("gan-ns")
    train = from_dict(TrainConfig, {"batch_size": 8})
    spec = DataSpec("x", "points", (2,), True)
    x = torch.randn(8, 2)
    losses = {}
    for w in (0.0, 2.0):
        b = Batch(x, 8, 0, 8, 0, torch.device("cpu"), 0)  # fresh: its noise stream restarts
        torch.manual_seed(0)
        m = cls(from_dict(cls.Config, {**cls.smoke, "r1_weight": w}), spec, train)
        loss, logs = m.critic_loss(b, 0)
        losses[w] = (loss, logs)
    assert "r1" not in losses[0.0][1] and m.label() == "gan[ns,r1=2]"
    torch.testing.assert_close(losses[2.0][0], losses[0.0][0] + losses[2.0][1]["r1"])  # + gamma / 2 * R1


def test_mlp_sizes_match_flow_options():
    cfg = from_dict(gan.GANConfig, {"g": {"hidden": 32, "depth": 2}})
    g = gan.mlp(16, 2, cfg.g.hidden, cfg.g.depth, nn.ReLU)
    assert sum(p.numel() for p in g.parameters()) == (16 * 32 + 32) + 2 * (32 * 32 + 32) + (32 * 2 + 2)


def test_r1_penalty_closed_form_and_gradient():
    """Linear critic: ||grad_x D||^2 = ||w||^2 at every x, so R1 = ||w||^2 and d R1 / dw = 2 w."""
    torch.manual_seed(0)
    critic = nn.Linear(4, 1)
    r1 = gan.r1_penalty(lambda x: critic(x).squeeze(1), torch.randn(32, 4))
    torch.testing.assert_close(r1, critic.weight.pow(2).sum())
    (g,) = torch.autograd.grad(r1, critic.weight)
    torch.testing.assert_close(g, 2 * critic.weight.detach())
    quad = lambda x: 0.5 * x.pow(2).sum(1)  # noqa: E731 - grad = x: R1 = E||x||^2
    x = torch.randn(64, 3)
    torch.testing.assert_close(gan.r1_penalty(quad, x), x.pow(2).sum(1).mean())


@pytest.mark.parametrize(
    "override,match",
    [
        ({"n_critic": 0}, "n_critic"),
        ({"lr_g": -1}, "lr_g"),
        ({"lr_d": 0}, "lr_d"),
        ({"gp_weight": -1}, "gp_weight"),
        ({"r1_weight": -0.1}, "r1_weight"),
        ({"betas": [0.5]}, "betas"),
        ({"loss": "wgan", "gp_weight": 0}, "Lipschitz"),
        ({"g": {"hidden": 0}}, "hidden"),
    ],
)
def test_config_validation(override, match):
    with pytest.raises(BenchError, match=match):
        from_dict(METHODS.get("wgan-gp").Config, override)


# -- mode coverage ------------------------------------------------------------------------------------------


def _modes_metrics(ds, x: torch.Tensor) -> dict[str, float]:
    ctx = MetricContext(None, ds, EvalConfig())
    return {k: METRICS.get(k)(TensorSamples(x), ctx)[0] for k in ("modes", "hq")}


def test_modes_metric_perfect_vs_collapsed():
    cls = DATASETS.get("8gaussians")
    ds = cls(cls.Config())
    perfect = _modes_metrics(ds, ds.reference(5000, 1))
    assert perfect["modes"] == 1.0 and perfect["hq"] > 0.98
    collapsed = cls.modes[3] + cls.mode_std * torch.randn(5000, 2, generator=torch.Generator().manual_seed(0))
    col = _modes_metrics(ds, collapsed)
    assert col["modes"] == 1 / 8 and col["hq"] > 0.98
    spread = _modes_metrics(ds, torch.rand(5000, 2) * 40 - 20)
    assert spread["hq"] < 0.1


def test_modes_metric_threshold_and_radius():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    x = torch.cat([torch.zeros(2480, 2), torch.full((20, 2), 0.0) + torch.tensor([10.0, 0.0])])
    assert mode_coverage(x, centres, 1.0)[0] == 1.0  # 20 of 2,500 is enough (PacGAN)
    assert mode_coverage(x[1:], centres[[1, 0]], 1.0)[0] == 1.0
    assert mode_coverage(torch.cat([torch.zeros(2481, 2), x[-19:]]), centres, 1.0)[0] == 0.5
    assert hit_radius(1.0, 2) == pytest.approx(3.0)
    assert hit_radius(1.0, 8) > 3.0


def test_modes_metric_applies_only_to_mixtures():
    from bench.eval.metrics import applicable_metrics

    def names(ds: str, dim: int = 2) -> set[str]:
        return {m.name for m in applicable_metrics(DataSpec(ds, "points", (dim,), True), EvalConfig())}

    assert {"modes", "hq"} <= names("8gaussians") and {"modes", "hq"} <= names("gmm", 8)
    assert not {"modes", "hq"} & names("checkerboard")
    ds = DATASETS.get("gmm")(DATASETS.get("gmm").Config())
    assert _modes_metrics(ds, ds.reference(5000, 3))["modes"] == 1.0


# -- CLI: smoke, bad input, divergence ------------------------------------------------------------------------

FAST = ["--set", "train.steps=40", "--set", "eval.timing_repeats=1"]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_smoke_end_to_end(name, tmp_path, monkeypatch):
    out, runs = tmp_path / "results", tmp_path / "runs"
    args = ["run", "--method", name, "--dataset", "8gaussians", "--smoke", "--device", "cpu", *FAST]
    assert bench_main([*args, "--out", str(out), "--runs-dir", str(runs)], monkeypatch) == 0
    (rec,) = records(out)
    assert rec["status"] == "ok" and rec["method"] == name and rec["params"] > 0
    (row,) = rec["rows"]
    assert row["solver"] == "onestep" and row["nfe"] == 1 and row["label"].startswith(f"gan[{VARIANTS[name]}")
    assert {"w2", "sw2", "modes", "hq"} <= set(row["metrics"])
    assert {"loss_d", "loss_g"} <= set(rec["train"]["final_logs"]["gan"])
    assert (out / "LEADERBOARD.md").is_file()


@pytest.mark.parametrize("bad", ["method.n_critic=0", "method.lr_g=-1", "method.gp_weight=-1"])
def test_bad_input_exits_2_and_writes_nothing(bad, tmp_path, monkeypatch, capsys):
    out, runs = tmp_path / "results", tmp_path / "runs"
    args = ["run", "--method", "wgan-gp", "--dataset", "8gaussians", "--smoke", "--set", bad]
    assert bench_main([*args, "--out", str(out), "--runs-dir", str(runs)], monkeypatch) == 2
    assert bad.split("=")[0] in capsys.readouterr().err
    assert not out.exists() and not runs.exists()


def test_divergence_keeps_checkpoint_and_records_it(tmp_path, monkeypatch):
    calls = {"n": 0}

    def nan_after_25(d_real, d_fake):
        calls["n"] += 1
        loss = gan.ns_d_loss(d_real, d_fake)
        return loss * float("nan") if calls["n"] > 25 else loss

    monkeypatch.setitem(gan.LOSSES, "ns", (nan_after_25, gan.ns_g_loss))
    out, runs = tmp_path / "results", tmp_path / "runs"
    args = ["run", "--method", "gan-ns", "--dataset", "8gaussians", "--smoke", "--set", "train.ckpt_every=10"]
    assert bench_main([*args, "--out", str(out), "--runs-dir", str(runs)], monkeypatch) == 2
    (rec,) = records(out)
    assert rec["status"] == "diverged" and "loss_d" in rec["message"] and "step 25" in rec["message"]
    (workdir,) = runs.iterdir()
    ck = load_checkpoint(workdir / "ckpt.pt")
    assert ck["train_state"]["step"] == 20  # the last good checkpoint
    assert all(torch.isfinite(v).all() for v in ck["method_state"].values() if v.is_floating_point())


def test_absurd_learning_rate_diverges(tmp_path, monkeypatch):
    out, runs = tmp_path / "results", tmp_path / "runs"
    args = ["run", "--method", "wgan-gp", "--dataset", "8gaussians", "--smoke"]
    sets = ["--set", "method.lr_d=1e30", "--set", "method.lr_g=1e30", "--set", "train.grad_clip=0"]
    assert bench_main([*args, *sets, "--out", str(out), "--runs-dir", str(runs)], monkeypatch) == 2
    (rec,) = records(out)
    assert rec["status"] == "diverged" and "diverged" in rec["message"]
