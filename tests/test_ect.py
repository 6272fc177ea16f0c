"""ECT (arXiv 2406.14548): the curriculum's r moves toward t stage by stage, pairs share (noise, data), the
student starts as the teacher, the loss vanishes at the exact consistency map of a straight flow, smoke run."""

from __future__ import annotations

import torch
from bench.datasets.base import DataSpec
from bench.methods.base import Batch
from bench.methods.ect import ECT, ECTConfig
from bench.methods.nets import NetConfig
from helpers import FnNet

from bench.core.config import TrainConfig

SPEC = DataSpec("toy", "points", (2,), True)
SMALL = NetConfig(hidden=32, depth=1)


def _model(**kw) -> ECT:
    torch.manual_seed(0)
    cfg = ECTConfig(**kw)
    cfg.teacher.flow.net = SMALL
    return ECT(cfg, SPEC, TrainConfig(batch_size=64))


def _batch(x: torch.Tensor, seed: int = 0, step: int = 0) -> Batch:
    return Batch(x, len(x), 0, len(x), seed, torch.device("cpu"), step)


def test_curriculum_moves_r_toward_t():
    m = _model(fit_steps=800, stages=8)
    b = _batch(torch.zeros(20000, 2))
    gaps = []
    for step in (0, 100, 400, 799):
        st, sr = m.sigma_pair(b, step)
        assert (sr <= st).all() and (sr >= 0).all()
        gaps.append(float(((st - sr) / st).mean()))
    assert gaps[0] > 0.8  # stage 0: dt / sigma_t = n / 2 in [1/2, 5/2]: most r clamp to the data (sigma_r = 0)
    assert all(a > b_ for a, b_ in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] < 0.02  # last stage: dt / sigma_t = n / 2^8 <= 5 / 256


def test_student_starts_as_teacher_and_boundary_is_exact():
    m = _model()
    assert m.init_from_teacher and m.has_teacher()
    (setup_stage,) = [s for s in m.stages() if s.name == "fit"]
    setup_stage.setup(False)
    x, t = torch.randn(5, 2), torch.rand(5)
    v = m.teacher.velocity(ema=False)
    # f(x, t) = g(t, 1, x) = x + (1 - t) u(t, 1, x), u(t, s, x) = v(t, x) at initialisation
    assert torch.allclose(m.f(m.g, t, x), x + (1 - t)[:, None] * v(t, x), atol=1e-5)
    assert torch.equal(m.f(m.g, torch.ones(5), x), x)


def test_loss_vanishes_at_the_exact_map_of_point_mass_data():
    """Point-mass data at c: every path is straight, f*(x, t) = c exactly; CT pairs then give loss 0."""
    m = _model()
    c = torch.tensor([1.0, -2.0])
    m.g = FnNet(lambda t, s, x: torch.where((t == 1)[:, None], x, c.expand_as(x)))  # f(x, t) = c for t < 1
    loss, _ = m.consistency_loss(_batch(c.repeat(256, 1), step=5), 5)
    assert float(loss) < 1e-4


def test_smoke_run(bench_cli):
    code, _, err = bench_cli("run", "--method", "ect", "--dataset", "moons", "--smoke", "--set", "eval.timing=false")
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert [(r["solver"], r["nfe"]) for r in rec["rows"]] == [("onestep", 1), ("multistep", 2)]
    assert rec["train"]["cost"]["network_passes"] > 0
    code, _, err = bench_cli("run", "--method", "ect", "--dataset", "moons", "--smoke", "--set", "method.init=scratch")
    assert code == 2 and "tunes its teacher" in err
