import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods.base import EvalPoint
from bench.methods.chargen import Chargen, ChargenConfig, CharNet, characteristics, semigroup_penalty
from bench.methods.flow import VelocityModel
from bench.methods.interpolants import INTERPOLANTS, gaussian_flow
from bench.methods.nets import NetConfig, TimeMLP
from helpers import FnNet as _Exact
from helpers import cpu_batch as _batch

from bench.core.config import TrainConfig

SPEC = DataSpec("toy", "points", (2,), True)
SMALL = NetConfig(hidden=32, depth=2)


def _chargen(**kw) -> Chargen:
    torch.manual_seed(0)
    cfg = ChargenConfig(**kw)
    cfg.teacher.flow.net = SMALL
    return Chargen(cfg, SPEC, TrainConfig(batch_size=64))


def test_g_is_identity_at_equal_times():
    g = CharNet(TimeMLP(2, 32, 2, n_times=2))
    x = torch.randn(16, 2)
    t = torch.rand(16)
    assert torch.equal(g(t, t, x), x)


def test_init_from_teacher_is_one_euler_step():
    m = _chargen(euler_steps=4)
    m.stages()[-1].setup(False)  # the fit stage's setup copies the teacher
    x, t, s = torch.randn(8, 2), torch.rand(8) * 0.5, torch.rand(8) * 0.5 + 0.5
    v = m.v()(t, x)
    assert torch.allclose(m.g(t, s, x), x + (s - t)[:, None] * v, atol=1e-6)


def test_a_wider_image_student_starts_as_its_narrow_teacher_and_a_mismatched_one_is_refused():
    """method.net.unet=tiny-wide under a `tiny` teacher: g(t, s, x) = x + (s - t) v(t, x) at initialisation."""
    from bench.errors import BenchError

    spec = DataSpec("img", "image", (1, 8, 8), False)

    def make(unet: str) -> Chargen:
        torch.manual_seed(0)
        cfg = ChargenConfig(euler_steps=2, n_traj=8, net=NetConfig(unet=unet))
        return Chargen(cfg, spec, TrainConfig(batch_size=8))

    m = make("tiny-wide")
    with torch.no_grad():  # a 'trained' teacher
        for p in m.teacher.ema.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.stages()[-1].setup(False)
    m.eval()
    x, t, s = torch.randn(4, 1, 8, 8), torch.rand(4) * 0.5, torch.rand(4) * 0.5 + 0.5
    with torch.no_grad():
        want = x + (s - t)[:, None, None, None] * m.v()(t, x)
        torch.testing.assert_close(m.g(t, s, x), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.g_ema(t, s, x), want, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in m.g.parameters()) > 3.5 * sum(p.numel() for p in m.teacher.ema.parameters())
    with pytest.raises(BenchError, match="multiple of its width"):
        make("small")


def test_euler_characteristics_against_closed_form_flow():
    """Gaussian data under the linear interpolant: Euler trajectories converge to the exact flow map at order 1."""
    mean, std = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.4
    vel, flow_map = gaussian_flow(mean, std)
    vm = VelocityModel(_Exact(vel), INTERPOLANTS["linear"], "velocity", 0.0, 0.0)
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errs = []
    for k in (10, 20, 40):
        grid = torch.linspace(0, 1, k + 1, dtype=torch.float64)
        traj = characteristics(vm, z, grid, "euler")
        assert traj.shape == (32, k + 1, 2) and torch.equal(traj[:, 0], z)
        exact = torch.stack([flow_map(0.0, float(t), z) for t in grid], 1)
        errs.append(float((traj - exact).abs().max()))
    assert errs[0] / errs[1] == pytest.approx(2, rel=0.15) and errs[1] / errs[2] == pytest.approx(2, rel=0.15)
    heun = characteristics(vm, z, torch.linspace(0, 1, 11, dtype=torch.float64), "heun")
    assert float((heun[:, -1] - flow_map(0.0, 1.0, z)).abs().max()) < errs[0] / 10


def test_semigroup_penalty_vanishes_on_exact_flow_map_only():
    mean, std = torch.tensor([0.5, 2.0], dtype=torch.float64), 0.7
    _, flow_map = gaussian_flow(mean, std)
    x = torch.randn(64, 2, dtype=torch.float64)
    t, u, s = torch.full((64,), 0.1), torch.full((64,), 0.45), torch.full((64,), 0.9)
    t, u, s = t.double(), u.double(), s.double()
    assert float(semigroup_penalty(flow_map, t, u, s, x)) < 1e-20

    def wrong(t, s, x):  # not a flow map: g(t, s, x) = x + (s - t)^2
        return x + ((s - t) ** 2)[:, None]

    assert float(semigroup_penalty(wrong, t, u, s, x)) > 1e-3


def test_noise_pairs_come_from_teacher_trajectories():
    m = _chargen(euler_steps=6, n_traj=50)
    m.traj.make()
    k, l, xk, xl = m.noise_pairs(_batch(None, 200))
    assert torch.all(k < l) and torch.all(l <= 6) and torch.all(k >= 0)
    rows, k2, l2, _ = m.pair_indices(_batch(None, 200))  # the same seeded draws
    traj = m.traj.all()
    assert torch.equal(k, k2) and torch.equal(l, l2)
    assert torch.equal(xk, traj[rows, k]) and torch.equal(xl, traj[rows, l])
    # consecutive trajectory points are exactly one teacher Euler step apart
    v = m.v()
    step = traj[:, 0] + (m.grid[1] - m.grid[0]) * v(m.grid[0], traj[:, 0])
    assert torch.allclose(traj[:, 1], step, atol=1e-6)


def test_host_forward_blocks_leave_trajectories_unchanged(monkeypatch):
    from bench.core import resources

    a = _chargen(euler_steps=6, n_traj=30, solver="heun")
    a.traj.make()
    monkeypatch.setattr(resources, "CPU_FORWARD_ELEMENTS", 2 * 7)  # teacher calls of 7 trajectories
    b = _chargen(euler_steps=6, n_traj=30, solver="heun")
    b.traj.make()
    assert torch.allclose(a.traj.all(), b.traj.all(), atol=1e-6)


def test_data_pairs_follow_reference_code_rules():
    m = _chargen(euler_steps=8, pairs_from="data")
    x1 = torch.randn(4000, 2)
    i, j, xt, xu = m.data_pairs(_batch(x1))
    n = j - i
    assert torch.all(n >= 1) and torch.all(n <= 7) and torch.all(j <= 8)
    counts = torch.bincount(n, minlength=8)[1:].float()
    # P(n) ~ n: the frequency of n = 7 is about 7 times that of n = 1
    assert 4 < float(counts[6] / counts[0]) < 12
    # one-step pairs equal one teacher Euler step from x_t
    one = n == 1
    v = m.v()
    ti, tj = m.grid[i[one]], m.grid[j[one]]
    assert torch.allclose(xu[one], xt[one] + (tj - ti)[:, None] * v(ti, xt[one]), atol=1e-5)


def test_disk_cache_equals_memory_cache(tmp_path):
    a = _chargen(euler_steps=4, n_traj=300, chunk=128)
    a.traj.make()
    torch.manual_seed(0)
    cfg = ChargenConfig(euler_steps=4, n_traj=300, chunk=128, cache="disk")
    cfg.teacher.flow.net = SMALL
    b = Chargen(cfg, SPEC, TrainConfig(batch_size=64), workdir=tmp_path)
    b.traj.make()
    assert (tmp_path / "trajectories-K4-m300.npy").exists()
    assert torch.allclose(b.traj.all(), a.traj.all(), atol=1e-6)
    # the fit reads the same pair states from the file as from memory (positional reads, no memory map)
    pa, pb = a.noise_pairs(_batch(None, 500, seed=3)), b.noise_pairs(_batch(None, 500, seed=3))
    for u, v in zip(pa, pb, strict=True):
        assert torch.allclose(u.float(), v.float(), atol=1e-6)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other-shape"])
def test_a_damaged_disk_cache_is_named_and_regenerated_exactly(tmp_path, damage):
    cfg = ChargenConfig(euler_steps=4, n_traj=64, chunk=32, cache="disk")
    cfg.teacher.flow.net = SMALL
    m = Chargen(cfg, SPEC, TrainConfig(batch_size=16), workdir=tmp_path)
    m.traj.make()
    npy = tmp_path / "trajectories-K4-m64.npy"
    good = np.array(np.load(npy))
    if damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:300])
    elif damage == "garbage":
        npy.write_bytes(b"not a numpy file at all")
    else:
        np.save(npy, good[:10])
    m2 = Chargen(cfg, SPEC, TrainConfig(batch_size=16), workdir=tmp_path)
    m2.load_state_dict(m.state_dict())
    with pytest.warns(UserWarning, match="unusable trajectory cache"):
        m2.traj.ensure()
    assert np.array_equal(m2.traj.all().numpy(), good)


def test_one_step_and_composition_nfe():
    m = _chargen(euler_steps=4, compose=[1, 2, 4])
    pts = m.eval_points([1, 8], [])
    assert [(p.solver, p.nfe) for p in pts[:3]] == [("onestep", 1), ("compose", 2), ("compose", 4)]
    assert any(p.label.endswith("(teacher)") and p.nfe == 8 for p in pts)
    z = torch.randn(5, 2)
    for p in pts[:3]:
        x, nfe = m.sample(z, p)
        assert x.shape == z.shape and nfe == p.nfe
    # a 4-step composition of an exact Euler-step net equals 4 teacher Euler steps
    m.stages()[-1].setup(False)
    x4, _ = m.sample(z, EvalPoint(m.label(), "compose", 4))
    xt, _ = m.sample(z, EvalPoint(m.teacher_label(), "euler", 4))
    assert torch.allclose(x4, xt, atol=1e-5)


@pytest.mark.parametrize("loss", ["pairwise", "reference"])
@pytest.mark.parametrize("pairs", ["noise", "data"])
def test_losses_run_and_decrease(loss, pairs):
    if loss == "reference" and pairs == "noise":
        pytest.skip("the reference-code loss draws its own data-started pairs")
    from bench.methods.base import Batch

    m = _chargen(euler_steps=4, n_traj=256, pairs_from=pairs, loss=loss, init_from_teacher=False)
    fit = m.stages()[-1]
    fit.setup(False)
    (upd,) = fit.updates
    opt = upd.build_optimizer(list(m.g.parameters()))
    gen = torch.Generator().manual_seed(0)
    losses = []
    for i in range(60):
        b = Batch(torch.randn(64, 2, generator=gen) * 0.5 + 1.0, 64, 0, 64, i, torch.device("cpu"), i)
        value, _ = upd.loss(b, i)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert all(map(lambda v: v == v, losses))
    assert sum(losses[-10:]) < sum(losses[:10])


@pytest.mark.parametrize(
    ("sets", "msg"),
    [
        (["method.euler_steps=0"], "euler_steps must be >= 1"),
        (["method.grid=[0.0, 0.5, 1.5]"], r"grid must lie in \[0, 1\]"),
        (["method.grid=[0.0, 0.7, 0.5, 1.0]"], "increase strictly"),
        (["method.compose=[0]"], "compose"),
    ],
)
def test_bad_chargen_config_exits_2(bench_cli, sets, msg):
    args = ["run", "--method", "chargen", "--dataset", "moons", "--smoke"]
    for s in sets:
        args += ["--set", s]
    code, _, err = bench_cli(*args)
    assert code == 2 and msg.split("\\")[0][:12] in err.replace("\\", ""), err
    assert not list(bench_cli.results.glob("runs/**/*.json"))


def test_smoke_run_and_teacher_reuse(bench_cli, tmp_path):
    code, _, err = bench_cli("run", "--method", "flow", "--dataset", "moons", "--smoke")
    assert code == 0, err
    (flow_rec,) = bench_cli.records()
    flow_run = flow_rec["run_id"]

    code, _, err = bench_cli(
        "run", "--method", "chargen", "--dataset", "moons", "--smoke", "--set", f"method.teacher.run={flow_run}"
    )
    assert code == 0, err
    rec = next(r for r in bench_cli.records() if r["method"] == "chargen")
    assert rec["extra"]["teacher"]["run"] == flow_run
    assert "teacher" not in rec["train"]["wall_clock_s"] and "fit" in rec["train"]["wall_clock_s"]
    assert {"trajectories", "fit"} <= set(rec["train"]["wall_clock_s"])
    one = next(r for r in rec["rows"] if r["solver"] == "onestep")
    assert one["nfe"] == 1 and one["metrics"]["w2"]["mean"] > 0
    # the teacher rows of the chargen run reproduce the flow run's rows (same weights, same seeds)
    t_row = next(r for r in rec["rows"] if r["label"].endswith("(teacher)") and r["nfe_requested"] == 4)
    f_row = next(r for r in flow_rec["rows"] if r["solver"] == "euler" and r["nfe_requested"] == 4)
    assert t_row["metrics"]["w2"]["values"] == pytest.approx(f_row["metrics"]["w2"]["values"], rel=1e-6)

    # a teacher trained on another data set, or a file that is not a checkpoint: exit 2, no record
    n_before = len(bench_cli.records())
    code, _, err = bench_cli(
        "run", "--method", "chargen", "--dataset", "8gaussians", "--smoke", "--set", f"method.teacher.run={flow_run}"
    )
    assert code == 2 and "trained on 'moons'" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint")
    code, _, err = bench_cli(
        "run", "--method", "chargen", "--dataset", "moons", "--smoke", "--set", f"method.teacher.run={junk}"
    )
    assert code == 2 and "not a loadable checkpoint" in err
    code, _, err = bench_cli(
        "run", "--method", "chargen", "--dataset", "moons", "--smoke", "--set", "method.teacher.run=no-such-run"
    )
    assert code == 2 and "not found" in err
    assert len(bench_cli.records()) == n_before
    json.dumps(rec)  # the record is plain JSON


def test_auto_cache_keeps_small_sets_in_memory_and_puts_large_ones_on_disk(tmp_path, monkeypatch):
    import bench.methods.trajectories as cg

    m = _chargen(euler_steps=4, n_traj=100)
    assert m.cfg.cache == "auto" and m.traj.mode == "memory"
    m.traj.make()  # in memory, before the threshold is lowered below
    monkeypatch.setattr(cg, "MEMORY_CACHE_MAX", 100 * m.traj.bytes_per() - 1)
    cfg = ChargenConfig(euler_steps=4, n_traj=100, chunk=1000)
    cfg.teacher.flow.net = SMALL
    d = Chargen(cfg, SPEC, TrainConfig(batch_size=16), workdir=tmp_path)
    d.load_state_dict(m.state_dict())  # the same teacher
    monkeypatch.setattr(cg, "CHUNK_BYTES", 7 * d.traj.bytes_per())  # chunks capped by bytes: 7 trajectories each
    info = d.traj.make()
    assert info["cache"] == "disk" and info["chunk"] == 7
    assert torch.allclose(d.traj.all(), m.traj.all(), atol=1e-6)


def test_fit_gap_compares_cached_and_fresh_trajectories(bench_cli):
    from bench.studies.fit_gap import fit_gap

    sets = ["--set", "method.cache=disk", "--set", "method.n_traj=64", "--set", "method.fit_steps=20"]
    code, _, err = bench_cli("train", "--method", "chargen", "--dataset", "moons", "--smoke", "--run-id", "g", *sets)
    assert code == 0, err
    res = fit_gap(bench_cli.runs / "g", n=16)
    assert res["n_traj"] == 64 and res["K"] == 8
    for key in ("online", "ema"):
        assert res[f"{key}_cached_from_0"] >= 0 and res[f"{key}_fresh_from_0"] >= 0
        assert res[f"{key}_fresh_over_cached_from_0"] > 0
    # the "cached" set is regenerated exactly: the first rows of the run's own trajectory file
    from bench.methods.chargen import characteristics
    from bench.methods.trajectories import TRAJ_SEED

    from bench.core.noise import seeded_noise
    from bench.core.rowfile import RowFile
    from bench.run.runner import load_run

    _, _, m, _ = load_run(bench_cli.runs / "g", torch.device("cpu"))
    cached = RowFile.open(bench_cli.runs / "g" / "trajectories-K8-m64.npy").read_all()[:16]
    again = characteristics(m.v(), seeded_noise((2,), range(TRAJ_SEED, TRAJ_SEED + 16)), m.grid, m.cfg.solver)
    assert torch.allclose(again, torch.from_numpy(cached), atol=1e-6)


def test_trajectories_from_reuses_a_runs_disk_cache_checks_it_and_charges_its_cost(bench_cli):
    from bench.core.rowfile import RowFile
    from bench.run.runner import load_run

    smoke = ["--dataset", "moons", "--smoke"]
    assert bench_cli("train", "--method", "flow", *smoke, "--run-id", "t")[0] == 0
    assert bench_cli("train", "--method", "flow", *smoke, "--run-id", "t2", "--seed", "1")[0] == 0
    teach = ["--set", f"method.teacher.run={bench_cli.runs / 't'}"]
    src = [*teach, "--set", "method.cache=disk", "--set", "method.n_traj=64", "--set", "method.fit_steps=10"]
    code, _, err = bench_cli("train", "--method", "chargen", *smoke, "--run-id", "a", *src)
    assert code == 0, err
    a = bench_cli.runs / "a"
    reuse = [*teach, "--set", f"method.trajectories_from={a}", "--set", "method.n_traj=32"]
    code, _, err = bench_cli("run", "--method", "chargen", *smoke, *reuse, "--set", "method.lambda_sg=0")
    assert code == 0, err
    (rec,) = bench_cli.records()
    cost = rec["train"]["cost"]
    assert "trajectories" not in cost["network_passes_by_stage"] and "fit" in cost["network_passes_by_stage"]
    assert (
        "reused: trajectories" in cost["wall_clock_s"]
        and "first 32 of 64 trajectories of run a" in cost["reused"]["what"]
    )
    ck_a = torch.load(a / "ckpt.pt", weights_only=True)["train_state"]["passes"]
    ck_t = torch.load(bench_cli.runs / "t" / "ckpt.pt", weights_only=True)["train_state"]["passes"]
    assert cost["reused"]["network_passes"] == sum(ck_t.values()) + ck_a["trajectories"] // 2
    assert cost["network_passes"] == cost["reused"]["network_passes"] + cost["network_passes_by_stage"]["fit"]
    assert rec["extra"]["trajectories_from"] == {"run": "a", "rows": 32, "of": 64}
    _, _, m, _ = load_run(Path(rec["workdir"]), torch.device("cpu"))
    m.traj.ensure()
    first = RowFile.open(a / "trajectories-K8-m64.npy").read_all()[:32]
    assert torch.equal(m.traj.all(), torch.from_numpy(first))

    n_records = len(bench_cli.records())
    bad = [  # (overrides, message): each exits 2 without a record
        (["--set", f"method.trajectories_from={a}", "--set", "method.n_traj=32"], "needs a reused teacher"),
        ([*reuse[:2], "--set", f"method.trajectories_from={bench_cli.runs / 't'}"], "no finished disk trajectory"),
        ([*reuse, "--set", "method.solver=heun"], "grid or solver differ"),
        (["--set", f"method.teacher.run={bench_cli.runs / 't2'}", *reuse[2:]], "another teacher"),
        ([*reuse, "--set", "method.cache=memory"], "cache auto or disk"),
    ]
    for sets, msg in bad:
        code, _, err = bench_cli("run", "--method", "chargen", *smoke, *sets)
        assert code == 2 and msg in err, (sets, err)
    assert len(bench_cli.records()) == n_records


def test_trajectories_from_with_fewer_rows_copies_them_and_makes_only_the_rest(bench_cli):
    """Extending a 64-trajectory set to 96: rows 0..63 are the source's bytes, rows 64..95 are what a fresh run
    makes (trajectory i from seed TRAJ_SEED + i), and the record charges 64 rows as reused, 32 as made here."""
    from bench.methods.chargen import characteristics
    from bench.methods.trajectories import TRAJ_SEED

    from bench.core.noise import seeded_noise
    from bench.core.rowfile import RowFile
    from bench.run.runner import load_run

    smoke = ["--dataset", "moons", "--smoke"]
    assert bench_cli("train", "--method", "flow", *smoke, "--run-id", "t")[0] == 0
    teach = ["--set", f"method.teacher.run={bench_cli.runs / 't'}", "--set", "method.cache=disk"]
    a = bench_cli.runs / "a"
    made = ["--set", "method.n_traj=64", "--set", "method.fit_steps=10"]
    assert bench_cli("train", "--method", "chargen", *smoke, "--run-id", "a", *teach, *made)[0] == 0
    extend = ["--set", f"method.trajectories_from={a}", "--set", "method.n_traj=96", "--set", "method.fit_steps=10"]
    code, _, err = bench_cli("run", "--method", "chargen", *smoke, *teach, *extend)
    assert code == 0, err
    (rec,) = bench_cli.records()
    cost, work = rec["train"]["cost"], Path(rec["workdir"])
    assert "all 64 trajectories of run a (the other 32 made here)" in cost["reused"]["what"]
    ck_a = torch.load(a / "ckpt.pt", weights_only=True)["train_state"]["passes"]
    assert cost["network_passes_by_stage"]["trajectories"] == ck_a["trajectories"] // 2  # 32 rows, not 96
    assert rec["train"]["stage_info"]["trajectories"]["copied"] == 64
    assert rec["extra"]["trajectories_from"] == {"run": "a", "rows": 64, "of": 64}
    mine = RowFile.open(work / "trajectories-K8-m96.npy").read_all()
    assert np.array_equal(mine[:64], RowFile.open(a / "trajectories-K8-m64.npy").read_all())
    _, _, m, _ = load_run(work, torch.device("cpu"))
    fresh = characteristics(m.v(), seeded_noise((2,), range(TRAJ_SEED + 64, TRAJ_SEED + 96)), m.grid, m.cfg.solver)
    assert torch.allclose(torch.from_numpy(mine[64:]), fresh, atol=1e-6)
