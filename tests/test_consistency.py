import json
import math

import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods.base import EvalPoint
from bench.methods.chargen import grid_step
from bench.methods.consistency import Consistency, ConsistencyConfig, cm_points, ict_points, karras_sigmas
from bench.methods.interpolants import gaussian_flow
from bench.methods.nets import NetConfig
from helpers import FnNet as _Exact
from helpers import cpu_batch as _batch

from bench.core.config import TrainConfig

SPEC = DataSpec("toy", "points", (2,), True)
SMALL = NetConfig(hidden=32, depth=2)


def _model(**kw) -> Consistency:
    torch.manual_seed(0)
    cfg = ConsistencyConfig(**kw)
    cfg.teacher.flow.net = SMALL
    return Consistency(cfg, SPEC, TrainConfig(batch_size=64))


def _exact_map(flow_map):
    """g(t, s, x) of an exact flow map (the identity at s = t, where the closed form may be 0/0)."""
    return _Exact(lambda t, s, x: torch.where((s == t)[:, None], x, flow_map(t, s, x)))


def test_boundary_f_x_1_is_x_exactly():
    m = _model()
    x = torch.randn(32, 2) * 3
    one = torch.ones(32)
    assert torch.equal(m.f(m.g, one, x), x)
    assert not torch.allclose(m.f(m.g, one * 0.3, x), x)


def test_init_from_teacher_is_the_teachers_denoiser():
    m = _model(mode="cd")
    m.stages()[-1].setup(False)
    x, t = torch.randn(16, 2), torch.rand(16)
    v = m.v()(t, x)
    assert torch.allclose(m.f(m.g, t, x), x + (1 - t)[:, None] * v, atol=1e-6)
    assert torch.equal(m.g_target.u.out.weight, m.g.u.out.weight) and torch.equal(
        m.g_ema.u.out.weight, m.g.u.out.weight
    )
    assert not _model(mode="ct").init_from_teacher  # CT starts from scratch and has no teacher
    assert not _model(mode="ct").has_teacher()


def test_a_wider_image_student_starts_as_the_teachers_denoiser():
    """CD with method.net.unet=tiny-wide under a `tiny` teacher: f(x, t) = x + (1 - t) v(t, x) at step 0."""
    spec = DataSpec("img", "image", (1, 8, 8), False)
    torch.manual_seed(0)
    m = Consistency(ConsistencyConfig(mode="cd", net=NetConfig(unet="tiny-wide")), spec, TrainConfig(batch_size=8))
    with torch.no_grad():
        for p in m.teacher.ema.parameters():  # a 'trained' teacher
            p.add_(0.05 * torch.randn_like(p))
    m.stages()[-1].setup(False)
    m.eval()
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    with torch.no_grad():
        want = x + (1 - t)[:, None, None, None] * m.v()(t, x)
        torch.testing.assert_close(m.f(m.g, t, x), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.f(m.g_target, t, x), want, rtol=1e-4, atol=1e-5)


def test_karras_grid_mapped_to_suite_time():
    m = _model(n_points=18)
    t, sigma = m.time_grid(18)
    assert sigma[0] == pytest.approx(80.0) and sigma[-1] == pytest.approx(0.002)
    assert torch.all(sigma[1:] < sigma[:-1]) and torch.all(t[1:] > t[:-1])
    assert t[0] == 0.0 and t[-1] == 1.0  # the ends snapped: pure noise, and the boundary f(x, 1) = x
    assert torch.allclose(t[1:-1], 1 / (1 + sigma[1:-1]))
    # EDM eq. 5 at i = 1 of 18
    s1 = (80 ** (1 / 7) + (0.002 ** (1 / 7) - 80 ** (1 / 7)) / 17) ** 7
    assert float(karras_sigmas(18, 0.002, 80.0, 7.0)[1]) == pytest.approx(s1)
    tu, _ = _model(grid="uniform").time_grid(5)
    assert torch.allclose(tu, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))


def test_discretisation_schedules_and_target_decay_follow_the_papers():
    K = 8000
    n = [cm_points(k, K, 2, 150) for k in range(0, K + 1, 100)]
    assert n[0] == 2 and n[-1] == 151 and all(b >= a for a, b in zip(n, n[1:], strict=False))
    # iCT: 10 -> 1280 intervals, doubling every K' = floor(K / (log2 128 + 1)) = 1000 steps
    assert [ict_points(k, K, 10, 1280) for k in (0, 999, 1000, 2000, 6999, 7000, 7999)] == [
        11,
        11,
        21,
        41,
        641,
        1281,
        1281,
    ]
    ct = _model(mode="ct", recipe="cm", fit_steps=K)
    assert ct.schedule == "cm" and ct.n_points(0) == 2
    for k in (0, 10, 4000):  # CM: mu(k) = exp(s0 ln mu0 / N(k))
        assert ct.target_mu(k) == pytest.approx(math.exp(2 * math.log(0.9) / ct.n_points(k)))
    cd = _model(mode="cd")
    assert cd.schedule == "fixed" and cd.n_points(0) == cd.n_points(5000) == 18 and cd.target_mu(3) == 0.95
    ict = _model(mode="ct", schedule="ict", fit_steps=K)
    assert (ict.s0, ict.s1, ict.n_points(0), ict.n_points(K)) == (10, 1280, 11, 1281)


def test_target_ema_is_updated_with_mu_before_each_step():
    m = _model(mode="ct", recipe="cm", fit_steps=100)
    m.stages()[-1].setup(False)
    with torch.no_grad():
        for p in m.g.parameters():
            p.add_(0.1)
    old = [p.clone() for p in m.g_target.parameters()]
    m.consistency_loss(_batch(torch.randn(8, 2), step=5), 5)
    mu = m.target_mu(4)
    for p_t, p_old, p in zip(m.g_target.parameters(), old, m.g.parameters(), strict=True):
        assert torch.allclose(p_t, mu * p_old + (1 - mu) * p, atol=1e-6)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_cd_target_is_exactly_one_teacher_step(solver):
    m = _model(mode="cd", solver=solver)
    t_grid, _ = m.time_grid(18)
    n, tn, tn1, xn, xn1 = m.pairs(_batch(torch.randn(256, 2)), 0)
    assert torch.all(n >= 0) and torch.all(n <= 16)
    assert torch.equal(tn, t_grid.float()[n]) and torch.equal(tn1, t_grid.float()[n + 1])  # consecutive points
    assert torch.equal(xn1, grid_step(m.v(), solver, tn, tn1, xn))


def test_ct_pairs_share_noise_and_data():
    m = _model(mode="ct", fit_steps=10)
    x1 = torch.randn(256, 2, dtype=torch.float64)
    n, tn, tn1, xn, xn1 = m.pairs(_batch(x1), 9)
    # both points lie on the straight line from the same x0 to x1: (x1 - x_{n+1}) (1 - t_n) = (x1 - x_n) (1 - t_{n+1})
    assert torch.allclose((x1 - xn1) * (1 - tn)[:, None], (x1 - xn) * (1 - tn1)[:, None], atol=1e-12)
    assert torch.all(tn1 > tn)


@pytest.mark.parametrize("mode", ["cd", "ct"])
@pytest.mark.parametrize("target", ["ema", "online"])
def test_losses_vanish_at_the_exact_flow_map_of_a_straight_flow(mode, target):
    """Point-mass data: the flow is straight, one Euler step is exact, and CT's pairs lie on one trajectory, so
    the exact consistency function has loss 0; a perturbed one does not."""
    mean = torch.tensor([1.5, -0.5], dtype=torch.float64)
    vel, flow_map = gaussian_flow(mean, 0.0)
    m = _model(mode=mode, solver="euler", target=target)
    if mode == "cd":
        m.teacher.ema = _Exact(vel)
    m.g = _exact_map(flow_map)
    if target == "ema":
        m.g_target = _exact_map(flow_map)
    x1 = mean.expand(512, 2).clone()
    loss, _ = m.consistency_loss(_batch(x1), 0)
    assert float(loss) < 1e-20
    m.g = _Exact(lambda t, s, x: torch.where((s == t)[:, None], x, flow_map(t, s, x) + 0.1 * (s - t)[:, None]))
    assert float(m.consistency_loss(_batch(x1), 0)[0]) > 1e-4


@pytest.mark.parametrize(("mode", "solver", "order"), [("cd", "euler", 4), ("cd", "heun", 6), ("ct", "euler", 2)])
def test_targets_converge_to_the_exact_flow_map_as_n_grows(mode, solver, order):
    """Gaussian data: the loss of the exact consistency function is O(h^4) for CD with Euler (local error h^2),
    O(h^6) with Heun, and O(h^2) for CT (its target uses x1 - x0 for the velocity) on the paper's grid."""
    mean, std = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5
    vel, flow_map = gaussian_flow(mean, std)
    x1 = mean + std * torch.randn(20000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    losses = []
    for n in (41, 81):
        m = _model(mode=mode, solver=solver, schedule="fixed", n_points=n, target="online", recipe="cm")
        if mode == "cd":
            m.teacher.ema = _Exact(vel)
        m.g = _exact_map(flow_map)
        losses.append(float(m.consistency_loss(_batch(x1, seed=3), 0)[0]))
    assert losses[0] / losses[1] == pytest.approx(2**order, rel=0.2)


def test_lognormal_pairs_and_ict_weights():
    m = _model(mode="ct", schedule="ict", pairs="lognormal", weighting="ict", fit_steps=100)
    t, sigma = m.time_grid(11)
    p = m.pair_probs(sigma)
    n, *_ = m.pairs(_batch(torch.randn(40000, 2)), 0)
    freq = torch.bincount(n, minlength=10).double() / len(n)
    assert torch.allclose(freq, p, atol=0.01) and p.sum() == pytest.approx(1.0)
    w = m.pair_weights(sigma)
    assert torch.allclose(w, 1 / (sigma[:-1] - sigma[1:])) and torch.all(w > 0)


def test_pseudo_huber_distance():
    m = _model(distance="pseudo_huber")
    c = 0.00054 * math.sqrt(2)
    assert m.huber_c == pytest.approx(c)
    d = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.allclose(m.distance(d), torch.tensor([math.sqrt(25 + c * c) - c, 0.0]))
    assert torch.allclose(_model().distance(d), torch.tensor([25.0, 0.0]))


def test_multistep_sampling_renoises_with_its_own_noise():
    m = _model(sample_steps=[1, 2, 3], mid_times=[0.3, 0.7])
    assert m.noise_shape == (3, 2)
    pts = m.eval_points([1, 8], [])
    assert [(p.solver, p.nfe) for p in pts] == [("onestep", 1), ("multistep", 2), ("multistep", 3)]
    z = torch.randn(6, 3, 2)
    f = lambda t, x: m.f(m.g_ema, torch.full((6,), t), x)  # noqa: E731
    x1, nfe1 = m.sample(z, pts[0])
    x3, nfe3 = m.sample(z, pts[2])
    expect = f(0.0, z[:, 0])
    assert nfe1 == 1 and torch.allclose(x1, expect)
    expect = f(0.3, 0.7 * z[:, 1] + 0.3 * expect)
    expect = f(0.7, 0.3 * z[:, 2] + 0.7 * expect)
    assert nfe3 == 3 and torch.allclose(x3, expect, atol=1e-6)
    assert torch.allclose(m.forward_reference()(z), x1)
    assert m.sample(z, EvalPoint(m.label(), "multistep", 2))[1] == 2


@pytest.mark.parametrize(
    ("sets", "msg"),
    [
        (["method.distance=lpips"], "LPIPS/VGG weights"),
        (["method.mode=ct", "method.init=teacher"], "needs method.teacher.run"),
        (["method.mid_times=[0.6, 0.4]", "method.sample_steps=[1, 3]"], "mid_times must increase"),
        (["method.sample_steps=[1, 3]"], "need that many - 1 mid_times"),
        (["method.grid=uniform", "method.weighting=ict"], "karras grid"),
        (["method.mode=ct", "method.s0=2000"], "needs s1 >= s0"),
        (["method.net.hidden=64"], "method.init=scratch"),
    ],
)
def test_bad_consistency_config_exits_2(bench_cli, sets, msg):
    args = ["run", "--method", "consistency", "--dataset", "moons", "--smoke"]
    for s in sets:
        args += ["--set", s]
    code, _, err = bench_cli(*args)
    assert code == 2 and msg in " ".join(err.split()), err
    assert not list(bench_cli.results.glob("runs/**/*.json"))


def test_smoke_runs_cd_ct_and_teacher_reuse(bench_cli):
    fast = ["--set", "eval.timing=false"]
    code, _, err = bench_cli("run", "--method", "consistency", "--dataset", "moons", "--smoke")
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert [(r["solver"], r["nfe"]) for r in rec["rows"]] == [("onestep", 1), ("multistep", 2)]
    assert all(r["metrics"]["w2"]["mean"] > 0 for r in rec["rows"])
    cost = rec["train"]["cost"]
    assert set(cost["network_passes_by_stage"]) == {"teacher", "fit"} and cost["network_passes"] > 0
    # fit: 150 steps x 256 samples x (Heun teacher 2 + student fwd/bwd 3 + target 1)
    assert cost["network_passes_by_stage"]["fit"] == 150 * 256 * 6 and cost["reused"] is None
    assert rec["extra"]["teacher"]["run"] == "trained in this run"

    code, _, err = bench_cli("run", "--method", "flow", "--dataset", "moons", "--smoke", *fast)
    assert code == 0, err
    flow_rec = next(r for r in bench_cli.records() if r["method"] == "flow")
    flow_run, flow_passes = flow_rec["run_id"], flow_rec["train"]["cost"]["network_passes"]
    code, _, err = bench_cli(
        "run",
        "--method",
        "consistency",
        "--dataset",
        "moons",
        "--smoke",
        "--set",
        f"method.teacher.run={flow_run}",
        *fast,
    )
    assert code == 0, err
    rec = [r for r in bench_cli.records() if r["method"] == "consistency" and r["extra"]["teacher"]["run"] == flow_run]
    cost = rec[0]["train"]["cost"]
    assert "teacher" not in cost["network_passes_by_stage"]
    assert cost["reused"]["what"] == f"teacher run {flow_run}" and cost["reused"]["network_passes"] == flow_passes
    assert cost["network_passes"] == cost["network_passes_by_stage"]["fit"] + flow_passes and cost["complete"]
    assert rec[0]["extra"]["teacher"]["train_wall_clock_s"]

    code, _, err = bench_cli(
        "run", "--method", "consistency", "--dataset", "moons", "--smoke", "--set", "method.mode=ct", *fast
    )
    assert code == 0, err
    ct = next(r for r in bench_cli.records() if r["method_label"].startswith("consistency[CT"))
    assert ct["train"]["cost"]["reused"] is None and list(ct["train"]["cost"]["network_passes_by_stage"]) == ["fit"]
    assert "teacher" not in ct["extra"] and ct["train"]["cost"]["network_passes"] > 0
    json.dumps(ct)


def test_recipe_auto_is_cm_for_cd_and_ict_for_ct_and_explicit_fields_win():
    cd, ct = _model(mode="cd").cfg, _model(mode="ct").cfg
    assert (cd.recipe, cd.schedule, cd.target, cd.distance, cd.weighting, cd.pairs) == (
        "cm",
        "fixed",
        "ema",
        "l2",
        "uniform",
        "uniform",
    )
    assert (ct.recipe, ct.schedule, ct.target, ct.distance, ct.weighting, ct.pairs) == (
        "ict",
        "ict",
        "online",
        "pseudo_huber",
        "ict",
        "lognormal",
    )
    mixed = _model(mode="ct", distance="l2", recipe="ict").cfg
    assert mixed.distance == "l2" and mixed.schedule == "ict"
    uni = _model(mode="ct", grid="uniform").cfg
    assert (uni.weighting, uni.pairs) == ("uniform", "uniform")
