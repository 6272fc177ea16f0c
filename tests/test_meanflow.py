"""MeanFlow: the identity's sign in this time direction (closed-form Gaussian flow), the JVP on the shared
networks, the time sampler, sampling, and a smoke run through the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods.base import Batch
from bench.methods.chargen import CharNet
from bench.methods.interpolants import gaussian_flow
from bench.methods.meanflow import FlowMapNet, MeanFlow, MeanFlowConfig, adaptive_l2, meanflow_target
from bench.methods.nets import NetConfig, TimeMLP
from bench.methods.unet import build_unet

from bench.core.config import TrainConfig

SPEC = DataSpec("toy", "points", (2,), True)
SMALL = NetConfig(hidden=32, depth=2)
MEAN, STD = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.4


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny nets, many small ops: one intra-op thread (2 threads on a loaded 2-core machine: ~15x slower)."""
    torch.set_num_threads(1)
    yield


def gaussian_average_velocity(mean: torch.Tensor, std: float):
    """Exact u(t, s, x) = (phi_{t->s}(x) - x) / (s - t) for data N(mean, std^2 I) under x_t = (1 - t) x0 + t x1.
    With sigma_r^2 = (1 - r)^2 + r^2 std^2, phi_{t->s}(x) = s m + sigma_s / sigma_t (x - t m) and
    (sigma_s - sigma_t) / (s - t) = ((s + t)(1 + std^2) - 2) / (sigma_s + sigma_t), finite at s = t."""

    def sigma(r):
        return torch.sqrt((1 - r) ** 2 + (r * std) ** 2)

    def u(t, s, x):
        t, s = t[:, None], s[:, None]
        slope = ((s + t) * (1 + std**2) - 2) / ((sigma(s) + sigma(t)) * sigma(t))
        return mean + slope * (x - t * mean)

    return u


def _points(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * 1.3
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.9
    s = t + (1 - t) * torch.rand(n, generator=g, dtype=torch.float64)
    return t, s, x


def test_closed_form_average_velocity_is_the_flow_map():
    vel, flow_map = gaussian_flow(MEAN, STD)
    u = gaussian_average_velocity(MEAN, STD)
    t, s, x = _points()
    assert torch.allclose(x + (s - t)[:, None] * u(t, s, x), flow_map(t, s, x), atol=1e-12)
    assert torch.allclose(u(t, t, x), vel(t, x), atol=1e-12)  # s = t: the instantaneous velocity


def test_target_equals_exact_average_velocity_and_the_flipped_sign_does_not():
    """At the truth the MeanFlow target (marginal velocity, one JVP) reproduces u, so the loss is zero there;
    the identity with the paper's sign taken literally in this direction (v - (s - t) du/dt) does not."""
    vel, _ = gaussian_flow(MEAN, STD)
    u = gaussian_average_velocity(MEAN, STD)
    t, s, x = _points()
    v = vel(t, x)
    target = meanflow_target(u, t, s, x, v)
    exact = u(t, s, x)
    assert torch.allclose(target, exact, atol=1e-10)
    flipped = 2 * v - target  # v - (s - t) du/dt
    assert float((flipped - exact).pow(2).sum(1).mean()) > 1e-2
    # the JVP's total derivative agrees with a central finite difference along the trajectory
    h = 1e-5
    dudt = (meanflow_target(u, t, s, x, v) - v) / (s - t)[:, None]
    fd = (u(t + h, s, x + h * v) - u(t - h, s, x - h * v)) / (2 * h)
    assert torch.allclose(dudt, fd, atol=1e-6)
    loss = adaptive_l2((exact - target).pow(2).sum(1), p=1.0, c=1e-3)
    assert float(loss.max()) < 1e-16


def test_target_is_instantaneous_velocity_at_equal_times():
    u = gaussian_average_velocity(MEAN, STD)
    t, _, x = _points()
    v = torch.randn_like(x)  # any velocity: at s = t the target is v itself
    assert torch.equal(meanflow_target(u, t, t, x, v), v)


class _Exact(torch.nn.Module):
    """A 'network' that is the exact average velocity: u(t, s, x) = (m - x) / (1 - t) for data at the point m."""

    def __init__(self, m: torch.Tensor) -> None:
        super().__init__()
        self.m = m
        self.scale = torch.nn.Parameter(torch.ones(()))  # one parameter, so the loss has a graph

    def forward(self, t, s, x, velocity=False):
        u = self.scale * (self.m - x) / (1 - t)[:, None]
        return u if velocity else x + (s - t)[:, None] * u


def test_method_loss_is_zero_at_the_exact_map_for_point_data():
    """Through the method's own loss (sampled times, x_t, v = x1 - x0, the JVP): data at one point m makes the
    conditional velocity the marginal one, so the exact u has loss 0 and a perturbed u does not."""
    m = MeanFlow(MeanFlowConfig(net=SMALL, ratio_neq=0.5), SPEC, TrainConfig(batch_size=64))
    point = torch.tensor([0.7, -1.2])
    m.g = _Exact(point)
    b = Batch(point.expand(256, 2).clone(), 256, 0, 256, 3, torch.device("cpu"), 0)
    loss, logs = m.loss(b, 0)
    assert float(logs["mse"]) < 1e-8 and float(loss.detach()) < 1e-6
    with torch.no_grad():
        m.g.scale.fill_(1.1)
    b = Batch(point.expand(256, 2).clone(), 256, 0, 256, 3, torch.device("cpu"), 0)
    assert float(m.loss(b, 0)[1]["mse"]) > 1e-3


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_jvp_through_shared_networks_matches_finite_differences(kind):
    """torch.func.jvp runs through chargen's two-time nets (TimeMLP; U-Net with GroupNorm, attention)."""
    torch.manual_seed(0)
    if kind == "mlp":
        u, shape = TimeMLP(2, 32, 2, n_times=2), (2,)
    else:
        u, shape = build_unet(DataSpec("img", "image", (1, 8, 8), False), "small", n_times=2), (1, 8, 8)
        assert u.mid[0].attn is not None  # the attention path is exercised
    net = FlowMapNet(u).double()
    g = torch.Generator().manual_seed(1)
    n = 4
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    v = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.5
    s = t + 0.3

    def fn(a, b, c):
        return net(a, b, c, velocity=True)

    target = meanflow_target(fn, t, s, x, v)
    h = 1e-6
    with torch.no_grad():
        fd = (fn(t + h, s, x + h * v) - fn(t - h, s, x - h * v)) / (2 * h)
        expected = v + (s - t).reshape(-1, *[1] * len(shape)) * fd
    assert not target.requires_grad
    assert torch.allclose(target, expected, rtol=1e-5, atol=1e-7)


class _Attention(torch.nn.Module):
    """u(t, s, x) through scaled_dot_product_attention on shapes whose fused CPU kernel has no forward AD."""

    def forward(self, t, s, x):
        q = x.reshape(x.shape[0], 4, 2) * (1 + t + s).reshape(-1, 1, 1)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q).reshape(x.shape)


def test_jvp_runs_attention_on_a_kernel_with_forward_ad():
    t, s, x = torch.rand(3), torch.rand(3), torch.randn(3, 8)
    v = torch.randn_like(x)
    net = _Attention()
    with pytest.raises(NotImplementedError, match="forward AD"):  # the default kernel choice: no JVP
        torch.func.jvp(net, (t, s, x), (torch.ones_like(t), torch.zeros_like(s), v))
    target = meanflow_target(net, t, s, x, v)
    h = 1e-3
    fd = (net(t + h, s, x + h * v) - net(t - h, s, x - h * v)) / (2 * h)
    assert torch.allclose(target, v + (s - t)[:, None] * fd, atol=1e-3)


def test_flow_map_net_is_chargens_net():
    torch.manual_seed(0)
    u = TimeMLP(2, 16, 1, n_times=2)
    a, b = FlowMapNet(u), CharNet(u)
    x, t, s = torch.randn(8, 2), torch.rand(8), torch.rand(8)
    assert torch.equal(a(t, s, x), b(t, s, x)) and torch.equal(a(t, t, x), x)
    assert torch.equal(a(t, s, x, velocity=True), u(t, s, x))
    assert set(a.state_dict()) == set(b.state_dict())


@pytest.mark.parametrize("sampler", ["logit_normal", "uniform"])
def test_time_sampler_ordering_and_share_of_equal_times(sampler):
    m = MeanFlow(MeanFlowConfig(net=SMALL, time_sampler=sampler), SPEC, TrainConfig())
    b = Batch(None, 20000, 0, 20000, 5, torch.device("cpu"), 0)
    t, s = m.sample_times(b)
    assert torch.all((t >= 0) & (t <= s) & (s <= 1))
    assert float((s != t).float().mean()) == pytest.approx(0.25, abs=0.02)
    if sampler == "logit_normal":  # paper lognorm(-0.4, 1) with noise at 1: most times lie towards the data here
        neq = s != t
        tau = 1 - torch.cat([t[neq], s[neq]])  # the paper's (t, r) = (max, min) of two draws: mean logit = p_mean
        assert float(torch.logit(tau).mean()) == pytest.approx(-0.4, abs=0.1)
    # the global batch is drawn once and sliced: process 1 of 2 sees the second half of one process' draws
    b2 = Batch(None, 20000, 10000, 20000, 5, torch.device("cpu"), 0)
    t2, s2 = m.sample_times(b2)
    assert torch.equal(t2, t[10000:]) and torch.equal(s2, s[10000:])


def test_sampling_steps_and_nfe():
    torch.manual_seed(0)
    m = MeanFlow(MeanFlowConfig(net=SMALL, nfe=[1, 2, 4]), SPEC, TrainConfig())
    pts = m.eval_points([1, 8], [])
    assert [(p.solver, p.nfe) for p in pts] == [("onestep", 1), ("compose", 2), ("compose", 4)]
    z = torch.randn(5, 2)
    x1, n1 = m.sample(z, pts[0])
    assert n1 == 1 and torch.allclose(x1, z + m.g_ema(0.0, 1.0, z, velocity=True))
    x2, n2 = m.sample(z, pts[1])
    mid = m.g_ema(0.0, 0.5, z)
    assert n2 == 2 and torch.allclose(x2, m.g_ema(0.5, 1.0, mid))
    assert torch.equal(m.forward_reference()(z), x1)


def test_training_moves_the_one_step_map_to_the_data():
    """The MSE against MeanFlow's self-referential target need not fall (the target moves with d/dt u), so check
    what training is for: the one-step map g(0, 1, z) of N(0, I) noise moves onto the data's mean."""
    torch.manual_seed(0)
    m = MeanFlow(MeanFlowConfig(net=SMALL), SPEC, TrainConfig(batch_size=64))
    (stage,) = m.stages()
    (upd,) = stage.updates
    assert upd.nets == ("g",) and stage.ema == [(m.g_ema, m.g)]
    opt = torch.optim.Adam(m.g.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([1.5, -1.0])
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = float((m.g(0.0, 1.0, z).mean(0) - mean).norm())
    for i in range(300):
        b = Batch(torch.randn(64, 2, generator=gen) * 0.5 + mean, 64, 0, 64, i, torch.device("cpu"), i)
        loss, logs = upd.loss(b, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss) and torch.isfinite(logs["mse"])
    with torch.no_grad():
        after = float((m.g(0.0, 1.0, z).mean(0) - mean).norm())
    assert before > 1.0 and after < 0.3


@pytest.mark.parametrize(
    ("sets", "msg"),
    [
        (["method.ratio_neq=1.5"], "ratio_neq must lie in [0, 1]"),
        (["method.p_std=0"], "p_std must be > 0"),
        (["method.adaptive_c=0"], "adaptive_c > 0"),
        (["method.nfe=[0]"], "method.nfe"),
        (["method.time_sampler=beta"], "time_sampler"),
    ],
)
def test_bad_config_exits_2(bench_cli, sets, msg):
    args = ["run", "--method", "meanflow", "--dataset", "moons", "--smoke"]
    for s in sets:
        args += ["--set", s]
    code, _, err = bench_cli(*args)
    assert code == 2 and msg in " ".join(err.split()), err
    assert not bench_cli.records()


def test_smoke_run_through_cli(bench_cli):
    code, _, err = bench_cli("run", "--method", "meanflow", "--dataset", "moons", "--smoke")
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert rec["method"] == "meanflow" and rec["method_label"] == "meanflow"
    assert [(r["solver"], r["nfe"]) for r in rec["rows"]] == [("onestep", 1), ("compose", 2)]
    assert all(r["metrics"]["w2"]["mean"] > 0 for r in rec["rows"])
    cost = rec["train"]["cost"]
    steps, batch = rec["config"]["train"]["steps"], rec["config"]["train"]["batch_size"]
    # as documented in record_extra: 3 (forward + backward of u) + 2 (the JVP: primal and tangent) per sample and step
    assert cost["network_passes"] == 5 * steps * batch > 0
    assert "pass_count" in rec["extra"]


def two_processes_match_one(tmp_path: Path, method: str, *sets: str) -> None:
    """Train a tiny run in 1 and in 2 gloo processes (same seed, same global batch): the same weights (up to the
    order of floating-point reductions) and the same pass count."""
    args = ["--method", method, "--dataset", "moons", "--device", "cpu", "--runs-dir", "runs"]
    for s in ("train.steps=20", "train.batch_size=64", "train.ckpt_every=10", "method.net.hidden=32", *sets):
        args += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_DIST_TIMEOUT_S="60")
    for run_id, head in [("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])]:
        cmd = [sys.executable, *head, "-m", "bench.cli", "train", *args, "--run-id", run_id]
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"runs/{r}/ckpt.pt", weights_only=True) for r in ("one", "two"))
    for k, v in a["method_state"].items():
        assert torch.allclose(v.float(), b["method_state"][k].float(), atol=2e-5, rtol=1e-4), k
    assert a["train_state"]["passes"] == b["train_state"]["passes"]


@pytest.mark.distributed
def test_two_processes_train_like_one(tmp_path):
    """The JVP runs on the network under DDP's wrapper (no grad flows through it), so DDP still syncs the grads."""
    two_processes_match_one(tmp_path, "meanflow")
