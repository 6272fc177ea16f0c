"""TVM (arXiv 2511.19797): the terminal derivative from the JVP against the closed-form Gaussian flow map and
finite differences, the loss vanishing at the exact map, the official time sampler's ranges, gradients through
the JVP, a smoke run through the CLI, and one DDP check."""

import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods.base import Batch
from bench.methods.interpolants import gaussian_flow
from bench.methods.nets import NetConfig
from bench.methods.tvm import TVM, TVMConfig, terminal_derivative
from test_meanflow import MEAN, STD, _Exact, _points, gaussian_average_velocity, two_processes_match_one

from bench.core.config import TrainConfig

SPEC = DataSpec("toy", "points", (2,), True)
SMALL = NetConfig(hidden=32, depth=2)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def test_terminal_derivative_is_the_velocity_at_the_terminal_point():
    """For the exact Gaussian flow map, d/ds g(t, s, x) = v(g(t, s, x), s) (what TVM's terminal term asks)."""
    vel, flow_map = gaussian_flow(MEAN, STD)
    u = gaussian_average_velocity(MEAN, STD)
    t, s, x = _points()
    g, dg_ds = terminal_derivative(u, t, s, x)
    torch.testing.assert_close(g, flow_map(t, s, x))
    torch.testing.assert_close(dg_ds, vel(s, g))
    h = 1e-6  # and the JVP equals a central finite difference in s
    fd = (x + (s + h - t)[:, None] * u(t, s + h, x) - x - (s - h - t)[:, None] * u(t, s - h, x)) / (2 * h)
    torch.testing.assert_close(dg_ds, fd, atol=1e-6, rtol=1e-6)


def test_loss_is_zero_at_the_exact_map_for_point_data_and_has_grad_through_the_jvp():
    m = TVM(TVMConfig(net=SMALL, target_mu=0.0), SPEC, TrainConfig(batch_size=64))
    point = torch.tensor([0.7, -1.2])
    m.g = _Exact(point)  # u(t, s, x) = (m - x) / (1 - t): exact for data at m, at every s
    b = Batch(point.expand(256, 2).clone(), 256, 0, 256, 3, torch.device("cpu"), 0)
    loss, logs = m.loss(b, 0)
    assert float(logs["terminal"]) < 1e-10 and float(logs["fm"]) < 1e-10
    with torch.no_grad():
        m.g.scale.fill_(1.1)
    b = Batch(point.expand(256, 2).clone(), 256, 0, 256, 3, torch.device("cpu"), 0)
    loss, logs = m.loss(b, 0)
    assert float(logs["terminal"]) > 1e-4 and float(logs["fm"]) > 1e-4
    (g,) = torch.autograd.grad(loss, m.g.scale)
    assert float(g) > 0  # the loss grows with the wrong scale: the gradient points back to 1


def test_time_sampler_follows_the_official_ranges():
    m = TVM(TVMConfig(net=SMALL), SPEC, TrainConfig(batch_size=64))
    b = Batch(torch.zeros(20000, 2), 20000, 0, 20000, 0, torch.device("cpu"), 0)
    t, s, s2 = m.sample_times(b)
    assert ((t >= 0) & (t <= s) & (s <= 1) & (s2 >= 0) & (s2 <= 1)).all()
    gap = s - t  # sigmoid(N(-0.8, 1)) where tau_s + gap < 1, the median sigmoid(-0.8) = 0.31
    assert 0.25 < float(gap.median()) < 0.36
    assert 0.55 < float(s2.median()) < 0.65  # logit-normal(-0.4, 1) in tau = 1 - time: median 1 - 0.40


def test_target_ema_moves_slowly_toward_the_network():
    torch.manual_seed(0)
    m = TVM(TVMConfig(net=SMALL), SPEC, TrainConfig(batch_size=64))
    with torch.no_grad():
        for p in m.g.parameters():
            p.add_(1.0)
    b = Batch(torch.randn(64, 2), 64, 0, 64, 0, torch.device("cpu"), 1)
    before = [p.clone() for p in m.g_target.parameters()]
    m.loss(b, 1)
    for p0, p1, q in zip(before, m.g_target.parameters(), m.g.parameters(), strict=True):
        torch.testing.assert_close(p1, 0.99 * p0 + 0.01 * q)


def test_smoke_run_through_cli(bench_cli):
    code, _, err = bench_cli("run", "--method", "tvm", "--dataset", "moons", "--smoke")
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert rec["method"] == "tvm" and rec["method_label"] == "tvm"
    assert [(r["solver"], r["nfe"]) for r in rec["rows"]] == [("onestep", 1), ("compose", 2)]
    assert all(r["metrics"]["w2"]["mean"] > 0 for r in rec["rows"])
    steps, batch = rec["config"]["train"]["steps"], rec["config"]["train"]["batch_size"]
    # per sample and step: the JVP differentiated through 6 (primal + tangent, and their backward), the target
    # 1, flow matching 3 (forward + backward)
    assert rec["train"]["cost"]["network_passes"] == 10 * steps * batch


@pytest.mark.distributed
def test_two_processes_train_like_one(tmp_path):
    """The JVP's graph bypasses DDP's wrapper; the flow-matching call goes through it, so gradients still sync."""
    two_processes_match_one(tmp_path, "tvm")
