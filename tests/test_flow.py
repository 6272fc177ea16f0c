import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods.base import EvalPoint
from bench.methods.flow import Flow, FlowConfig, VelocityModel, ot_pair
from bench.methods.interpolants import INTERPOLANTS, gaussian_flow

from bench.core import solvers
from bench.core.noise import seeded_noise
from bench.eval.sampling import Samples

SPEC = DataSpec("toy", "points", (2,), True)


@pytest.mark.parametrize("name", ["linear", "follmer"])
def test_target_is_time_derivative_of_interpolant(name):
    it = INTERPOLANTS[name]
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.9 + 0.05
    h = 1e-6
    fd = (it.x_t(t + h, x0, x1) - it.x_t(t - h, x0, x1)) / (2 * h)
    assert torch.allclose(fd, it.target(t, x0, x1), atol=1e-6)
    assert torch.allclose(it.x_t(torch.zeros(16, dtype=torch.float64), x0, x1), x0)
    assert torch.allclose(it.x_t(torch.ones(16, dtype=torch.float64), x0, x1), x1)


def test_linear_target_is_x1_minus_x0():
    it = INTERPOLANTS["linear"]
    x0, x1, t = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8)
    assert torch.allclose(it.target(t, x0, x1), x1 - x0)


@pytest.mark.parametrize("name", ["linear", "follmer"])
def test_data_and_velocity_parameterisations_agree(name):
    """velocity <-> clean-data conversions are inverse, and the weighted data loss equals the velocity loss."""
    it = INTERPOLANTS[name]
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(32, 2, generator=g, dtype=torch.float64), torch.randn(32, 2, generator=g, dtype=torch.float64)
    t = torch.rand(32, generator=g, dtype=torch.float64) * 0.98 + 0.01
    xt = it.x_t(t, x0, x1)
    d = torch.randn(32, 2, generator=g, dtype=torch.float64)  # an arbitrary clean-data prediction
    v = it.velocity_from_data(t, xt, d)
    assert torch.allclose(it.data_from_velocity(t, xt, v), d, atol=1e-9)
    vel_loss = (v - it.target(t, x0, x1)).pow(2).sum(1)
    data_loss = it.data_loss_weight(t) * (d - x1).pow(2).sum(1)
    assert torch.allclose(vel_loss, data_loss, rtol=1e-8)
    # the true clean sample maps to the true conditional velocity
    assert torch.allclose(it.velocity_from_data(t, xt, x1), it.target(t, x0, x1), atol=1e-9)


def test_ot_coupling_lowers_transport_cost():
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g) + 3
    a, b = ot_pair(x0, x1)
    assert (a - b).pow(2).sum() < (x0 - x1).pow(2).sum()
    assert torch.equal(torch.sort(b, 0).values, torch.sort(x1, 0).values)  # a permutation of the batch


def _closed_form_model(mean, std):
    v, flow_map = gaussian_flow(mean, std)

    class Net(torch.nn.Module):
        def forward(self, t, x):
            return v(t, x)

    return VelocityModel(Net(), INTERPOLANTS["linear"], "velocity", 0.0, 0.0), flow_map


def test_solvers_converge_at_their_order():
    mean, std = torch.tensor([2.0, -1.0], dtype=torch.float64), 0.3
    vm, flow_map = _closed_form_model(mean, std)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = flow_map(0.0, 1.0, z)
    err = {}
    for name in ["euler", "heun"]:
        err[name] = [float((solvers.get_solver(name)(vm, z, n)[0] - exact).abs().max()) for n in (16, 32)]
    assert err["euler"][0] / err["euler"][1] == pytest.approx(2.0, rel=0.15)  # first order
    assert err["heun"][0] / err["heun"][1] == pytest.approx(4.0, rel=0.2)  # second order
    x, nfe = solvers.dopri5(vm, z)
    assert float((x - exact).abs().max()) < 1e-4 and nfe > 6


def test_solver_nfe_reporting_and_bad_nfe():
    vm, _ = _closed_form_model(torch.zeros(2), 1.0)
    z = torch.randn(4, 2)
    assert solvers.euler(vm, z, 5)[1] == 5
    assert solvers.heun(vm, z, 8)[1] == 8
    with pytest.raises(Exception, match="NFE must be >= 1"):
        solvers.euler(vm, z, 0)


def test_sampling_is_independent_of_batch_size():
    from bench.core.config import TrainConfig

    torch.manual_seed(0)
    m = Flow(FlowConfig(), SPEC, TrainConfig())
    p = EvalPoint("flow", "euler", 4)
    a = Samples(m, p, 37, 100, batch=37, device=torch.device("cpu")).tensor()
    b = Samples(m, p, 37, 100, batch=5, device=torch.device("cpu")).tensor()
    assert torch.allclose(a, b, atol=1e-6)
    # sample i depends only on its seed: a shifted range reproduces the overlapping samples
    c = Samples(m, p, 10, 110, batch=3, device=torch.device("cpu")).tensor()
    assert torch.allclose(a[10:20], c, atol=1e-6)


def test_sampling_in_host_forward_blocks_gives_the_same_samples_and_nfe(monkeypatch):
    from bench.core import resources
    from bench.core.config import TrainConfig

    torch.manual_seed(0)
    m = Flow(FlowConfig(), SPEC, TrainConfig())
    p = EvalPoint("flow", "euler", 4)
    a = Samples(m, p, 37, 100, batch=37, device=torch.device("cpu"))
    one_call, nfe = a.tensor(), a.nfe
    monkeypatch.setattr(resources, "CPU_FORWARD_ELEMENTS", 2 * 8)  # blocks of 8 points per network call
    calls = []
    sample = m.sample
    monkeypatch.setattr(m, "sample", lambda z, pt: calls.append(len(z)) or sample(z, pt))
    b = Samples(m, p, 37, 100, batch=37, device=torch.device("cpu"))
    assert torch.allclose(b.tensor(), one_call, atol=1e-6) and b.nfe == nfe == 4
    assert calls == [8, 8, 8, 8, 5]


def test_seeded_noise_rows_depend_only_on_seed():
    a = seeded_noise((3,), [5, 6, 7])
    b = seeded_noise((3,), [7])
    assert torch.equal(a[2], b[0])
