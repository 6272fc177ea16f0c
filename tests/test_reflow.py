import json

import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods.base import EvalPoint, Shard
from bench.methods.flow import sample_flow
from bench.methods.nets import NetConfig
from bench.methods.reflow import Reflow, ReflowConfig, couple
from bench.methods.trajectories import TRAJ_SEED
from helpers import FnNet as _Exact
from helpers import cpu_batch as _batch

from bench.core.config import TrainConfig
from bench.core.noise import seeded_noise

SPEC = DataSpec("toy", "points", (2,), True)
SMALL = NetConfig(hidden=32, depth=2)


def _model(**kw) -> Reflow:
    torch.manual_seed(0)
    cfg = ReflowConfig(**kw)
    cfg.teacher.flow.net = SMALL
    return Reflow(cfg, SPEC, TrainConfig(batch_size=64))


class _Half(Shard):
    """Rank ``rank`` of 2 processes; gather returns this rank's rows only (to compare the shares)."""

    def __init__(self, rank: int) -> None:
        self.rank, self.world = rank, 2


def test_euler_pairs_are_seeded_and_independent_of_chunks_and_processes():
    a = _model(n_pairs=50, chunk=7, pair_steps=6)
    b = _model(n_pairs=50, chunk=64, pair_steps=6)
    info = a.make_pairs(1)
    b.make_pairs(1)
    assert info == {"n_pairs": 50, "from": "teacher", "solver": "euler", "nfe_per_pair": 6.0}
    assert torch.equal(a._z, b._z) and torch.allclose(a._x1, b._x1, atol=1e-6)
    z = seeded_noise((2,), range(TRAJ_SEED + 20, TRAJ_SEED + 21))  # pair 20 alone, from its own seed
    assert torch.equal(a._z[20:21], z)
    x1, _ = couple(a.teacher.velocity(), z, "euler", 6)
    assert torch.allclose(a._x1[20:21], x1, atol=1e-6)
    halves = []
    for r in (0, 1):  # two processes, each solving its half of the seeds
        a.make_pairs(1, _Half(r))
        halves.append(a._x1)
    assert torch.allclose(torch.cat(halves), b._x1, atol=1e-6)


def test_host_forward_blocks_leave_euler_pairs_unchanged(monkeypatch):
    from bench.core import resources

    a = _model(n_pairs=30, chunk=64, pair_steps=6)
    a.make_pairs(1)
    monkeypatch.setattr(resources, "CPU_FORWARD_ELEMENTS", 2 * 7)  # network calls of 7 pairs
    b = _model(n_pairs=30, chunk=64, pair_steps=6)
    info = b.make_pairs(1)
    assert info["nfe_per_pair"] == 6.0 and torch.equal(a._z, b._z) and torch.allclose(a._x1, b._x1, atol=1e-6)


def test_dopri5_pairs_are_deterministic_per_chunking():
    a = _model(n_pairs=24, chunk=12, pair_solver="dopri5")
    b = _model(n_pairs=24, chunk=12, pair_solver="dopri5")
    info = a.make_pairs(1)
    b.make_pairs(1)
    assert info["solver"] == "dopri5" and info["nfe_per_pair"] > 6
    assert torch.equal(a._x1, b._x1)
    fine, _ = couple(a.teacher.velocity(), a._z, "euler", 400)
    assert torch.allclose(a._x1, fine, atol=1e-2)  # the same ODE solution, up to Euler's O(1/400)


def test_euler_pairs_are_the_teachers_euler_solution():
    m = _model(n_pairs=20, pair_solver="euler", pair_steps=4)
    m.make_pairs(1)
    x, _ = sample_flow(m.teacher.velocity(), m._z, EvalPoint("t", "euler", 4))
    assert torch.allclose(m._x1, x, atol=1e-6)


@pytest.mark.parametrize(("a", "c"), [(2.0, (1.0, -3.0)), (0.5, (0.0, 2.0))])
def test_reflow_loss_is_zero_at_the_velocity_of_straight_couplings(a, c):
    """Coupling x1 = a z + c (a > 0): the straight paths x_t = (1 - t + a t) z + t c never cross, and the flow along
    them is v(t, x) = (a - 1) (x - t c) / (1 + (a - 1) t) + c; reflow's loss is 0 there and > 0 elsewhere."""
    m = _model(n_pairs=400)
    c = torch.tensor(c, dtype=torch.float64)
    m._z = torch.randn(400, 2, dtype=torch.float64)
    m._x1, m._level = a * m._z + c, 1

    def v(t, x):
        t = t[:, None]
        return (a - 1) * (x - t * c) / (1 + (a - 1) * t) + c

    m.rf1.net = _Exact(v)
    loss, _ = m.reflow_loss(1, _batch(None, 256), 0)
    assert float(loss) < 1e-24
    m.rf1.net = _Exact(lambda t, x: v(t, x) + 0.05)
    assert float(m.reflow_loss(1, _batch(None, 256), 0)[0]) == pytest.approx(2 * 0.05**2)


def test_networks_start_from_the_previous_flow_and_distil_its_euler_step():
    m = _model(n_pairs=64, pair_solver="euler", pair_steps=3, reflows=1)
    stages = {s.name: s for s in m.stages()}
    assert list(stages) == ["teacher", "pairs-1", "reflow-1", "pairs-2", "distill"]
    stages["pairs-1"].run(Shard())
    stages["reflow-1"].setup(False)
    x, t = torch.randn(8, 2), torch.rand(8)
    assert torch.equal(m.rf1.net(t, x), m.teacher.ema(t, x)) and torch.equal(m.rf1.ema(t, x), m.teacher.ema(t, x))
    with torch.no_grad():  # the reflowed flow has moved away from the teacher
        m.rf1.ema.out.bias.add_(0.3)
    info = stages["pairs-2"].run(Shard())
    assert info["from"] == "rf1"
    stages["distill"].setup(False)
    z = torch.randn(16, 2)
    one, nfe = m.sample(z, EvalPoint(m.label(), "onestep", 1))
    euler1, _ = m.sample(z, EvalPoint(m.flow_label(), "euler", 1))
    assert nfe == 1 and torch.allclose(one, euler1, atol=1e-6)
    # the distillation targets are the reflowed flow's endpoints, not the teacher's
    x1, _ = couple(m.rf1.velocity(), m._z, "euler", 3)
    assert torch.allclose(m._x1, x1, atol=1e-6)


def test_losses_decrease():
    m = _model(n_pairs=512, pair_solver="euler", pair_steps=4, init_from_previous=False)
    stages = {s.name: s for s in m.stages()}
    stages["pairs-1"].run(Shard())
    for name in ("reflow-1", "distill"):
        if name == "distill":
            stages["pairs-2"].run(Shard())
        stages[name].setup(False)
        (upd,) = stages[name].updates
        params = [p for n in upd.nets for p in m.get_submodule(n).parameters()]
        opt = upd.build_optimizer(params)
        losses = []
        for i in range(60):
            value, _ = upd.loss(_batch(None, 64, seed=i), i)
            opt.zero_grad()
            value.backward()
            opt.step()
            losses.append(value.item())
        assert sum(losses[-10:]) < sum(losses[:10]), name


def test_stages_and_rows_for_k_reflows():
    m = _model(reflows=2, n_pairs=10)
    assert [s.name for s in m.stages()] == [
        "teacher",
        "pairs-1",
        "reflow-1",
        "pairs-2",
        "reflow-2",
        "pairs-3",
        "distill",
    ]
    pts = m.eval_points([1, 8], [])
    assert pts[0] == EvalPoint("reflow[3-RF,distill]", "onestep", 1)
    assert [(p.label, p.nfe) for p in pts[1:]] == [("reflow[3-RF]", 1), ("reflow[3-RF]", 8)]
    m0 = _model(reflows=0, n_pairs=10)
    assert [s.name for s in m0.stages()] == ["teacher", "pairs-1", "distill"]
    assert [p.label for p in m0.eval_points([1, 8], [])] == ["reflow[1-RF,distill]"]


@pytest.mark.parametrize(
    ("sets", "msg"),
    [(["method.distance=lpips"], "LPIPS/VGG weights"), (["method.reflows=-1"], "reflows >= 0")],
)
def test_bad_reflow_config_exits_2(bench_cli, sets, msg):
    args = ["run", "--method", "reflow", "--dataset", "moons", "--smoke"]
    for s in sets:
        args += ["--set", s]
    code, _, err = bench_cli(*args)
    assert code == 2 and msg in " ".join(err.split()), err
    assert not list(bench_cli.results.glob("runs/**/*.json"))


def test_smoke_run_and_teacher_reuse(bench_cli):
    code, _, err = bench_cli("run", "--method", "reflow", "--dataset", "moons", "--smoke")
    assert code == 0, err
    (rec,) = bench_cli.records()
    rows = [(r["label"], r["solver"], r["nfe"]) for r in rec["rows"]]
    assert rows == [("reflow[2-RF,distill]", "onestep", 1), ("reflow[2-RF]", "euler", 1), ("reflow[2-RF]", "euler", 4)]
    assert all(r["metrics"]["w2"]["mean"] > 0 for r in rec["rows"])
    cost = rec["train"]["cost"]
    assert list(cost["network_passes_by_stage"]) == ["teacher", "pairs-1", "reflow-1", "pairs-2", "distill"]
    assert cost["network_passes_by_stage"]["pairs-1"] == 1000 * 8  # n_pairs x Euler steps, forward only
    assert cost["network_passes"] > 0 and cost["reused"] is None

    fast = ["--set", "eval.timing=false"]
    code, _, err = bench_cli("run", "--method", "flow", "--dataset", "moons", "--smoke", *fast)
    assert code == 0, err
    flow_rec = next(r for r in bench_cli.records() if r["method"] == "flow")
    flow_run, flow_passes = flow_rec["run_id"], flow_rec["train"]["cost"]["network_passes"]
    code, _, err = bench_cli(
        "run", "--method", "reflow", "--dataset", "moons", "--smoke", "--set", f"method.teacher.run={flow_run}", *fast
    )
    assert code == 0, err
    rec = next(r for r in bench_cli.records() if r["method"] == "reflow" and r["run_id"] != rec["run_id"])
    cost = rec["train"]["cost"]
    assert "teacher" not in cost["network_passes_by_stage"] and rec["extra"]["teacher"]["run"] == flow_run
    assert cost["reused"]["what"] == f"teacher run {flow_run}" and cost["reused"]["network_passes"] == flow_passes
    assert cost["network_passes"] == sum(cost["network_passes_by_stage"].values()) + flow_passes
    json.dumps(rec)
