"""Shortcut models: d = 0 is flow matching (against methods/flow.py's loss), the self-consistency target of an
exact flow map is its own average velocity, step/time sampling, batch split, sampling and a CLI smoke run."""

import math

import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods.base import Batch
from bench.methods.flow import Flow, FlowConfig
from bench.methods.interpolants import gaussian_flow
from bench.methods.nets import NetConfig
from bench.methods.shortcut import Shortcut, ShortcutConfig, shortcut_target
from helpers import cpu_batch as _batch
from test_meanflow import gaussian_average_velocity, two_processes_match_one

from bench.core.config import TrainConfig

SPEC = DataSpec("toy", "points", (2,), True)
SMALL = NetConfig(hidden=32, depth=2)
MEAN, STD = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.4


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny nets, many small ops: one intra-op thread (2 threads on a loaded 2-core machine: ~15x slower)."""
    torch.set_num_threads(1)
    yield


def _shortcut(**kw) -> Shortcut:
    torch.manual_seed(0)
    return Shortcut(ShortcutConfig(net=SMALL, **kw), SPEC, TrainConfig(batch_size=64))


def test_zero_step_is_exactly_flow_matching():
    """sc_fraction = 0: the loss is flow.py's loss on the same batch and random numbers, for the same network
    (the two-time net loaded from the flow net, whose s-embedding is zero, computes v(t, x))."""
    torch.manual_seed(0)
    flow = Flow(FlowConfig(net=SMALL), SPEC, TrainConfig(batch_size=64))
    m = _shortcut(sc_fraction=0.0)
    m.g.u.load_from_single_time(flow.net)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) + 1.0
    ours, logs = m.loss(_batch(x, seed=11), 0)
    ref, _ = flow.loss(_batch(x, seed=11), 0)
    assert torch.equal(ours, ref) and float(logs["loss_sc"]) == 0.0
    ours.backward()
    ref.backward()
    g_ours = dict(m.g.u.named_parameters())
    for k, p in flow.net.named_parameters():
        assert torch.allclose(g_ours[k].grad, p.grad, atol=1e-6)


def test_self_consistency_target_of_an_exact_flow_map_is_its_average_velocity():
    """Gaussian data: the exact average velocity composes (two d-steps = one 2d-step), so the target for
    s(x_t, t, 2d) is exactly u(t, t + 2d, x_t); the instantaneous velocity used as a shortcut is not."""
    vel, _ = gaussian_flow(MEAN, STD)
    u = gaussian_average_velocity(MEAN, STD)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    d = 2.0 ** -torch.randint(1, 8, (64,), generator=g).double()  # d in {1/2, ..., 1/128}
    t = torch.floor(torch.rand(64, generator=g, dtype=torch.float64) / (2 * d)) * 2 * d
    assert torch.all(t + 2 * d <= 1)
    target = shortcut_target(u, t, d, x)
    assert torch.allclose(target, u(t, t + 2 * d, x), atol=1e-12)

    def euler(t_, s_, x_):  # s(x, t, d) = v(t, x) for every d: not a flow map
        return vel(t_, x_)

    big = d >= 0.25
    wrong = shortcut_target(euler, t, d, x)
    assert float((wrong - u(t, t + 2 * d, x))[big].abs().max()) > 1e-2


def test_self_consistency_target_of_a_linear_field_is_the_field():
    """Point data m: every trajectory is straight, u(t, s, x) = (m - x) / (1 - t) for all s (a field linear in x),
    and two chained d-steps return the same velocity."""
    m = torch.tensor([0.3, -2.0], dtype=torch.float64)

    def u(t, s, x):
        return (m - x) / (1 - t)[:, None]

    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 2, generator=g, dtype=torch.float64)
    d = torch.full((32,), 0.125, dtype=torch.float64)
    t = torch.floor(torch.rand(32, generator=g, dtype=torch.float64) * 4) * 0.25  # on the 2d = 1/4 grid
    assert torch.allclose(shortcut_target(u, t, d, x), u(t, t + 2 * d, x), atol=1e-12)
    # at the finest level the two sub-steps are queried at d = 0 (the flow-matching level): two Euler steps
    dq = torch.zeros_like(d)
    x2 = x + 0.125 * u(t, t, x)
    expected = (u(t, t, x) + u(t + 0.125, t + 0.125, x2)) / 2
    assert torch.allclose(shortcut_target(u, t, d, x, dq), expected, atol=1e-12)


def test_step_levels_and_grid_times():
    m = _shortcut(m_steps=128)
    b = _batch(torch.zeros(14000, 2))
    t, two_d, k = m.self_consistency_times(b)
    levels = torch.bincount(k, minlength=7)
    assert len(levels) == 7 and int(levels.min()) > 1700  # uniform over 2d in {1, ..., 1/64}
    assert torch.equal(two_d, 2.0 ** -k.float())
    assert torch.all(t + two_d <= 1) and torch.all(t >= 0)
    assert torch.equal(torch.remainder(t / two_d, 1.0), torch.zeros_like(t))  # t on the 2d grid
    # at 2d = 1/2 both grid points occur
    assert set(t[k == 1].tolist()) == {0.0, 0.5}


class _Exact(torch.nn.Module):
    """The exact average velocity of the Gaussian flow as a two-time 'network' (float64)."""

    def __init__(self, bias: float = 0.0) -> None:
        super().__init__()
        self.u = gaussian_average_velocity(MEAN, STD)
        self.bias = torch.nn.Parameter(torch.tensor(bias, dtype=torch.float64))

    def forward(self, t, s, x, velocity=False):
        out = self.u(t, s, x) + self.bias
        return out if velocity else x + (s - t)[:, None] * out


def test_method_self_consistency_loss_vanishes_at_the_exact_map():
    """All rows self-consistency: with the exact map as both online and target net the loss is zero at every level
    but the finest (d = 1/M), whose target is two Euler steps (Heun's velocity, error O(1/M^2): ~1e-5 here);
    with a wrong target net it is not."""
    m = _shortcut(sc_fraction=1.0)
    m.g, m.g_ema = _Exact(), _Exact()
    x = (MEAN + STD * torch.randn(512, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))).clone()
    _, logs = m.loss(_batch(x, seed=5), 0)
    assert float(logs["loss_sc"]) < 1e-4 and float(logs["loss_fm"]) == 0.0
    m.g_ema = _Exact(bias=0.5)  # EMA targets (the default) now disagree with the online map
    assert float(m.loss(_batch(x, seed=5), 0)[1]["loss_sc"]) > 0.1
    m.cfg.sc_target = "online"  # the online net's own targets: zero again
    assert float(m.loss(_batch(x, seed=5), 0)[1]["loss_sc"]) < 1e-4


def test_batch_split_and_processes_reproduce_one():
    m = _shortcut(sc_fraction=0.25)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(4))
    full, logs = m.loss(_batch(x, seed=9), 0)
    assert m.n_sc(64) == 16 and float(logs["loss_sc"]) > 0 and float(logs["loss_fm"]) > 0
    # two processes, each with half of the global batch (rank 0 holds all 16 self-consistency rows)
    halves = [m.loss(_batch(x, seed=9, lo=lo, hi=lo + 32), 0)[0] for lo in (0, 32)]
    assert torch.allclose((halves[0] + halves[1]) / 2, full, atol=1e-6)


def test_sampling_uses_uniform_steps():
    m = _shortcut()
    pts = m.eval_points([1, 8], [])
    assert [(p.solver, p.nfe) for p in pts] == [("onestep", 1), ("compose", 2), ("compose", 4)]
    z = torch.randn(6, 2)
    x4, n4 = m.sample(z, pts[2])
    x = z
    for j in range(4):
        x = x + 0.25 * m.g_ema(torch.full((6,), j / 4), torch.full((6,), (j + 1) / 4), x, velocity=True)
    assert n4 == 4 and torch.allclose(x4, x, atol=1e-6)


def test_training_reduces_loss():
    m = _shortcut()
    (stage,) = m.stages()
    (upd,) = stage.updates
    opt = upd.build_optimizer(list(m.g.parameters()))
    gen = torch.Generator().manual_seed(0)
    losses = []
    for i in range(150):
        b = Batch(torch.randn(64, 2, generator=gen) * 0.5 + 1.0, 64, 0, 64, i, torch.device("cpu"), i)
        loss, _ = upd.loss(b, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and sum(losses[-10:]) < 0.7 * sum(losses[:10])


@pytest.mark.parametrize(
    ("sets", "msg"),
    [
        (["method.m_steps=100"], "m_steps must be a power of two"),
        (["method.sc_fraction=-0.1"], "sc_fraction must lie in [0, 1]"),
        (["method.nfe=[]"], "method.nfe"),
        (["method.sc_target=teacher"], "sc_target"),
    ],
)
def test_bad_config_exits_2(bench_cli, sets, msg):
    args = ["run", "--method", "shortcut", "--dataset", "moons", "--smoke"]
    for s in sets:
        args += ["--set", s]
    code, _, err = bench_cli(*args)
    assert code == 2 and msg in " ".join(err.split()), err
    assert not bench_cli.records()


def test_smoke_run_through_cli(bench_cli):
    code, _, err = bench_cli("run", "--method", "shortcut", "--dataset", "moons", "--smoke")
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert rec["method"] == "shortcut" and rec["method_label"] == "shortcut"
    assert [(r["solver"], r["nfe"]) for r in rec["rows"]] == [("onestep", 1), ("compose", 2), ("compose", 4)]
    assert all(r["metrics"]["w2"]["mean"] > 0 for r in rec["rows"])
    steps, batch = rec["config"]["train"]["steps"], rec["config"]["train"]["batch_size"]
    n_sc = rec["extra"]["sc_rows_per_step"]
    assert n_sc == round(0.25 * batch)
    # 3 per row (forward + backward) + 2 per self-consistency row (two target forwards), every step
    assert rec["train"]["cost"]["network_passes"] == steps * (3 * batch + 2 * n_sc) > 0


@pytest.mark.distributed
def test_two_processes_train_like_one(tmp_path):
    """Rank 0 holds every self-consistency row and rank 1 none: their extra target passes must not run through
    DDP's wrapper (a collective only one rank enters would hang), and the counts still add up."""
    two_processes_match_one(tmp_path, "shortcut", "method.sc_target=online")
