"""Improved MeanFlow (arXiv 2512.02012): the compound velocity equals the marginal velocity at the closed-form
Gaussian average velocity (so it is the regression's minimiser), the loss vanishes at the exact map for point
data, the v-head term, the pass count, a smoke run and one DDP check."""

import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods.base import Batch
from bench.methods.imeanflow import IMeanFlow, IMeanFlowConfig, compound_velocity, total_derivative
from bench.methods.interpolants import gaussian_flow
from bench.methods.nets import NetConfig
from test_meanflow import MEAN, STD, _Exact, _points, gaussian_average_velocity, two_processes_match_one

from bench.core.config import TrainConfig

SPEC = DataSpec("toy", "points", (2,), True)
SMALL = NetConfig(hidden=32, depth=2)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def test_compound_velocity_of_the_exact_map_is_the_marginal_velocity():
    """V = u - (s - t) d/dt u with the tangent u(t, t, x) (the net's own velocity): at the exact Gaussian average
    velocity V = v(x_t, t) for every s, the minimiser of E||V - (x1 - x0)||^2; a wrong sign or tangent is not."""
    vel, _ = gaussian_flow(MEAN, STD)
    u = gaussian_average_velocity(MEAN, STD)
    t, s, x = _points()
    v_theta = u(t, t, x)
    torch.testing.assert_close(v_theta, vel(t, x))
    dudt = total_derivative(u, t, s, x, v_theta)
    torch.testing.assert_close(compound_velocity(u(t, s, x), dudt, t, s), vel(t, x), atol=1e-10, rtol=1e-10)
    flipped = u(t, s, x) + (s - t)[:, None] * dudt
    assert float((flipped - vel(t, x)).pow(2).sum(1).mean()) > 1e-2
    noisy = total_derivative(u, t, s, x, v_theta + torch.randn_like(x))  # MeanFlow's kind of tangent: off
    assert float((compound_velocity(u(t, s, x), noisy, t, s) - vel(t, x)).pow(2).sum(1).mean()) > 1e-3


def test_loss_is_zero_at_the_exact_map_for_point_data_and_grows_off_it():
    m = IMeanFlow(IMeanFlowConfig(net=SMALL), SPEC, TrainConfig(batch_size=64))
    point = torch.tensor([0.7, -1.2])
    m.g = _Exact(point)
    b = Batch(point.expand(256, 2).clone(), 256, 0, 256, 3, torch.device("cpu"), 0)
    loss, logs = m.loss(b, 0)
    assert float(logs["mse_u"]) < 1e-8 and float(logs["mse_v"]) < 1e-8 and float(loss.detach()) < 1e-6
    with torch.no_grad():
        m.g.scale.fill_(1.1)
    loss, logs = m.loss(Batch(point.expand(256, 2).clone(), 256, 0, 256, 3, torch.device("cpu"), 0), 0)
    assert float(logs["mse_u"]) > 1e-3 and float(logs["mse_v"]) > 1e-3
    (g,) = torch.autograd.grad(loss, m.g.scale)
    assert float(g) > 0


def test_half_the_pairs_have_equal_times_and_v_weight_zero_drops_the_v_head_term():
    m = IMeanFlow(IMeanFlowConfig(net=SMALL), SPEC, TrainConfig(batch_size=64))
    b = Batch(torch.zeros(20000, 2), 20000, 0, 20000, 0, torch.device("cpu"), 0)
    t, s = m.sample_times(b)
    assert (t <= s).all() and 0.47 < float((t == s).double().mean()) < 0.53
    point = torch.tensor([0.7, -1.2])
    out = {}
    for w in (0.0, 1.0):  # same draws (same batch seed and step), with and without the v-head's term
        m = IMeanFlow(IMeanFlowConfig(net=SMALL, v_weight=w), SPEC, TrainConfig(batch_size=64))
        m.g = _Exact(point)
        with torch.no_grad():
            m.g.scale.fill_(1.1)
        loss, logs = m.loss(Batch(point.expand(64, 2).clone(), 64, 0, 64, 3, torch.device("cpu"), 0), 0)
        out[w] = float(loss.detach()), float(logs["mse_u"]), float(logs["mse_v"])
    assert out[0.0][1:] == out[1.0][1:] and out[0.0][2] > 1e-3
    # the v term is the mean of sg(w) ||v_theta - v||^2 with p = 1: in (0, 1) per sample
    assert 0 < out[1.0][0] - out[0.0][0] < 1
    assert m.label() == "imeanflow"


def test_smoke_run_through_cli(bench_cli):
    code, _, err = bench_cli("run", "--method", "imeanflow", "--dataset", "moons", "--smoke")
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert rec["method"] == "imeanflow" and rec["method_label"] == "imeanflow"
    assert [(r["solver"], r["nfe"]) for r in rec["rows"]] == [("onestep", 1), ("compose", 2)]
    assert all(r["metrics"]["w2"]["mean"] > 0 for r in rec["rows"])
    steps, batch = rec["config"]["train"]["steps"], rec["config"]["train"]["batch_size"]
    # per sample and step, as record_extra says: u 3, the v-head 3, the JVP 2
    assert rec["train"]["cost"]["network_passes"] == 8 * steps * batch


@pytest.mark.distributed
def test_two_processes_train_like_one(tmp_path):
    two_processes_match_one(tmp_path, "imeanflow")
