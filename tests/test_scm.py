"""sCM (arXiv 2410.11081): the TrigFlow time map, the boundary f(x, 1) = x, the tangent against finite differences
along the sCT path and along the teacher's ODE (sCD), a zero tangent at the exact consistency function, the
gradient's direction, the pass count, smoke runs of sCT and sCD and one DDP check."""

import math

import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods.base import Batch
from bench.methods.flow import FlowConfig
from bench.methods.interpolants import gaussian_flow
from bench.methods.meanflow import FlowMapNet
from bench.methods.nets import NetConfig, TimeMLP
from bench.methods.scm import SCM, SCMConfig, consistency_fn, tangent, tau_to_t, trig_output
from bench.methods.teacher import TeacherConfig
from test_meanflow import MEAN, STD, _Exact, gaussian_average_velocity, two_processes_match_one

from bench.core.config import TrainConfig

SPEC = DataSpec("toy", "points", (2,), True)
SMALL = NetConfig(hidden=32, depth=2)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _net(seed: int = 0) -> FlowMapNet:
    torch.manual_seed(seed)
    return FlowMapNet(TimeMLP(2, 32, 2, n_times=2, time_max_freq=0.0)).double()  # the default net: raw time


def _taus(n: int = 32, seed: int = 0) -> torch.Tensor:
    return 0.05 + 1.45 * torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_time_map_ends_and_path():
    tau = torch.tensor([0.0, math.pi / 4, math.pi / 2], dtype=torch.float64)
    torch.testing.assert_close(tau_to_t(tau), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    x1, z = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    x_tau = torch.cos(tau)[:, None] * x1 + torch.sin(tau)[:, None] * z
    t = tau_to_t(tau)[:, None]  # x_tau / (cos + sin) is this repo's x_t
    torch.testing.assert_close(x_tau / (torch.cos(tau) + torch.sin(tau))[:, None], t * x1 + (1 - t) * z)


def test_boundary_and_the_trigflow_parameterisation():
    net, x = _net(), torch.randn(32, 2, dtype=torch.float64)
    zero = torch.zeros(32, dtype=torch.float64)
    torch.testing.assert_close(consistency_fn(net, zero, x), x)  # f(x, tau = 0) = f(x, t = 1) = x, any weights
    tau = _taus()
    c, s = torch.cos(tau)[:, None], torch.sin(tau)[:, None]
    torch.testing.assert_close(c * x - s * trig_output(net, tau, x), consistency_fn(net, tau, x))  # f = cos x - sin F


def _fd_tangent(net, tau, x1, z, h=1e-5):
    """cos(tau) df/dtau by central differences along the sCT path x_tau = cos x1 + sin z (x1, z fixed)."""

    def f_at(a):
        return consistency_fn(net, a, torch.cos(a)[:, None] * x1 + torch.sin(a)[:, None] * z)

    return torch.cos(tau)[:, None] * (f_at(tau + h) - f_at(tau - h)) / (2 * h)


@pytest.mark.parametrize("sd", [1.0, 2.3])
def test_tangent_is_cos_times_df_dtau_along_the_sct_path(sd):
    """x_tau = cos x1 + sin sigma_d z: g = cos df/dtau for f = cos x - sin sigma_d F, any sigma_d."""
    net, tau = _net(), _taus()
    x1, z = torch.randn(32, 2, dtype=torch.float64), sd * torch.randn(32, 2, dtype=torch.float64)
    c, s = torch.cos(tau)[:, None], torch.sin(tau)[:, None]
    x_tau, dx = c * x1 + s * z, c * z - s * x1
    f_minus, g = tangent(net, tau, x_tau, dx, r=1.0, sigma_d=sd)
    torch.testing.assert_close(f_minus, trig_output(net, tau, x_tau, sd))
    torch.testing.assert_close(c * x_tau - s * sd * f_minus, consistency_fn(net, tau, x_tau))
    torch.testing.assert_close(g, _fd_tangent(net, tau, x1, z), atol=1e-7, rtol=1e-6)
    _, g0 = tangent(net, tau, x_tau, dx, r=0.0, sigma_d=sd)  # warm-up drops the second term only
    torch.testing.assert_close(g0, -c * c * (sd * f_minus - dx))


def test_sigma_d_is_the_data_std_for_sct_and_one_for_scd(bench_cli):
    spec = DataSpec("toy", "points", (2,), True, data_std=2.5)
    assert SCM(SCMConfig(net=SMALL), spec, TrainConfig()).sigma_d == 2.5
    assert SCM(SCMConfig(net=SMALL, sigma_d=0.7), spec, TrainConfig()).sigma_d == 0.7
    m = SCM(SCMConfig(mode="scd", teacher=TeacherConfig(flow=FlowConfig(net=SMALL))), spec, TrainConfig())
    assert m.sigma_d == 1.0
    code, _, err = bench_cli("run", "--method", "scm", "--dataset", "moons", "--smoke", "--set", "method.mode=scd",
                             "--set", "method.sigma_d=2")  # fmt: skip
    assert code == 2 and "sCD keeps its teacher's unit noise" in err


def test_tangent_vanishes_at_the_exact_consistency_function_along_the_teacher_ode():
    """Gaussian data: f(x_t, t) = flow_map(t, 1, x_t) is constant along the probability-flow ODE, so the sCD
    tangent (teacher = the exact velocity, in TrigFlow time) is zero; a perturbed map's is not."""
    vel, _ = gaussian_flow(MEAN, STD)
    u = gaussian_average_velocity(MEAN, STD)

    class Exact(torch.nn.Module):
        def __init__(self, scale=1.0):
            super().__init__()
            self.scale = scale

        def forward(self, t, s, x, velocity=False):
            out = self.scale * u(t, s, x)
            return out if velocity else x + (s - t)[:, None] * out

    tau = _taus()
    x_tau = torch.randn(32, 2, dtype=torch.float64) * 1.3
    c, s = torch.cos(tau)[:, None], torch.sin(tau)[:, None]
    xt = x_tau / (c + s)
    dx = (c - s) * xt - vel(tau_to_t(tau), xt) / (c + s)  # the method's sCD dx/dtau
    _, g = tangent(Exact(), tau, x_tau, dx, r=1.0)
    assert float(g.abs().max()) < 1e-10
    _, g_off = tangent(Exact(1.1), tau, x_tau, dx, r=1.0)
    assert float(g_off.abs().max()) > 1e-3
    # and dx/dtau is the time derivative of x_tau = (cos + sin) x_t along the ODE: central difference
    h = 1e-5

    def x_at(a):
        t0, t1 = tau_to_t(tau), tau_to_t(a)
        _, fm = gaussian_flow(MEAN, STD)
        return (torch.cos(a) + torch.sin(a))[:, None] * fm(t0, t1, xt)

    torch.testing.assert_close(dx, (x_at(tau + h) - x_at(tau - h)) / (2 * h), atol=1e-7, rtol=1e-6)


def test_loss_is_zero_at_the_exact_map_for_point_data_and_its_gradient_points_back():
    for mode in ("sct",):
        m = SCM(SCMConfig(net=SMALL, mode=mode, tangent_warmup=0), SPEC, TrainConfig(batch_size=64))
        point = torch.tensor([0.7, -1.2])
        m.g = _Exact(point)  # f = x + scale (m - x): the exact consistency function at scale 1
        b = Batch(point.expand(256, 2).clone(), 256, 0, 256, 3, torch.device("cpu"), 0)
        loss, logs = m.loss(b, 0)
        assert float(logs["mse"]) < 1e-12 and abs(float(loss.detach())) < 1e-10
        with torch.no_grad():
            m.g.scale.fill_(1.1)
        loss, logs = m.loss(Batch(point.expand(256, 2).clone(), 256, 0, 256, 3, torch.device("cpu"), 0), 0)
        (g,) = torch.autograd.grad(loss, m.g.scale)
        assert float(g) > 0  # descent moves the scale back toward 1


def test_time_sampler_and_warmup():
    m = SCM(SCMConfig(net=SMALL, tangent_warmup=100), SPEC, TrainConfig(batch_size=64))
    tau = m.sample_tau(Batch(torch.zeros(20000, 2), 20000, 0, 20000, 0, torch.device("cpu"), 0))
    assert ((tau > 0) & (tau < math.pi / 2)).all()
    assert abs(float(tau.median()) - math.atan(math.exp(-1.0))) < 0.01  # arctan(e^N(-1, 1.4^2)): median atan(e^-1)
    assert m.tangent_r(0) == 0.01 and m.tangent_r(49) == 0.5 and m.tangent_r(500) == 1.0


def test_sampling_uses_one_and_two_steps():
    m = SCM(SCMConfig(net=SMALL), SPEC, TrainConfig(batch_size=64))
    noise = torch.randn(8, *m.noise_shape)
    assert m.noise_shape == (2, 2)
    x1, n1 = m.sample(noise, m.eval_points([], [])[0])
    x2, n2 = m.sample(noise, m.eval_points([], [])[1])
    assert (n1, n2) == (1, 2) and x1.shape == x2.shape == (8, 2)
    torch.testing.assert_close(x1, m.g_ema(0.0, 1.0, noise[:, 0]))


@pytest.mark.parametrize(
    ("sets", "msg"),
    [
        (["method.mid_tau=[1.7]"], "mid_tau must decrease"),
        (["method.sample_steps=[3]"], "need that many - 1 mid_tau"),
        (["method.init=teacher"], "needs method.teacher.run"),
        (["method.p_std=0"], "p_std > 0"),
    ],
)
def test_bad_config_exits_2(bench_cli, sets, msg):
    args = ["run", "--method", "scm", "--dataset", "moons", "--smoke"]
    for s in sets:
        args += ["--set", s]
    code, _, err = bench_cli(*args)
    assert code == 2 and msg in " ".join(err.split()), err
    assert not bench_cli.records()


@pytest.mark.parametrize("mode", ["sct", "scd"])
def test_smoke_run_through_cli(bench_cli, mode):
    code, _, err = bench_cli("run", "--method", "scm", "--dataset", "moons", "--smoke", "--set", f"method.mode={mode}")
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert rec["method_label"] == f"scm[{ {'sct': 'sCT', 'scd': 'sCD'}[mode] }]"
    assert [(r["solver"], r["nfe"]) for r in rec["rows"]] == [("onestep", 1), ("multistep", 2)]
    assert all(r["metrics"]["w2"]["mean"] > 0 for r in rec["rows"])
    cfg = rec["config"]
    fit, batch = cfg["method"]["fit_steps"], cfg["train"]["batch_size"]
    # per sample and fit step: F_theta 3, the JVP 2 (+1 teacher for sCD); the weight MLP is not a pass
    fit_passes = (5 if mode == "sct" else 6) * fit * batch
    teacher = 3 * cfg["train"]["steps"] * batch if mode == "scd" else 0
    assert rec["train"]["cost"]["network_passes"] == fit_passes + teacher


@pytest.mark.distributed
def test_two_processes_train_like_one(tmp_path):
    """Two trained nets in one update (the generator and the weight MLP): both synced by DDP."""
    two_processes_match_one(tmp_path, "scm", "method.fit_steps=20")


def test_sct_on_images_defaults_to_raw_time_and_scd_keeps_its_teachers_net():
    img = DataSpec("img", "image", (1, 8, 8), False)
    tiny = NetConfig(unet="tiny")
    assert all(e.raw for e in SCM(SCMConfig(), img, TrainConfig()).g.u.times)  # the paper's smooth time embedding
    m = SCM(SCMConfig(mode="scd", teacher=TeacherConfig(flow=FlowConfig(net=tiny))), img, TrainConfig())
    assert not any(e.raw for e in m.g.u.times) and m.g.u.times[0].freqs.max() == pytest.approx(1000)
