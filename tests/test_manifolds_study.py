import math

import pytest
import torch

from bench.core.config import from_dict
from bench.errors import BenchError
from bench.registry import DATASETS, load_builtins
from bench.studies.study import STUDIES, loglog_fit, render_study

load_builtins()


def _make(name, **kw):
    cls = DATASETS.get(name)
    return cls(from_dict(cls.Config, kw), seed=0)


@pytest.mark.parametrize("d", [1, 3])
def test_sphere_points_have_unit_norm_in_ambient_space(d):
    ds = _make("sphere", d=d, D=10, scale=2.0)
    x = ds.reference(500, seed=1)
    assert x.shape == (500, 10)
    assert torch.allclose(x.norm(dim=1), torch.full((500,), 2.0), atol=1e-5)
    # the data span exactly d + 1 ambient directions
    s = torch.linalg.svdvals(x - 0 * x.mean(0))
    assert int((s > 1e-3 * s[0]).sum()) == d + 1


def test_embedding_is_an_isometry_and_seeded():
    a, b = _make("subspace", d=3, D=12), _make("subspace", d=3, D=12)
    assert torch.allclose(a.Q.T @ a.Q, torch.eye(3), atol=1e-6)
    assert torch.equal(a.Q, b.Q)
    assert not torch.equal(a.Q, _make("subspace", d=3, D=12, embed_seed=1).Q)


@pytest.mark.parametrize("name", ["torus", "curved"])
def test_other_manifolds_shapes_and_intrinsic_rank(name):
    ds = _make(name, d=2, D=6)
    x = ds.reference(2000, seed=0)
    assert x.shape == (2000, 6)
    s = torch.linalg.svdvals(x - x.mean(0))
    assert int((s > 1e-4 * s[0]).sum()) == 4  # embedded in R^{2d} = R^4


def test_ambient_dimension_too_small_is_a_clear_error():
    with pytest.raises(BenchError, match="needs D >= 4"):
        _make("torus", d=2, D=3)


def test_loglog_fit_recovers_a_power_law():
    xs = [2, 4, 8, 16, 32]
    ys = [3.0 * x**-0.5 for x in xs]
    f = loglog_fit(xs, ys)
    assert f["slope"] == pytest.approx(-0.5, abs=1e-9) and f["r2"] == pytest.approx(1.0)
    assert f["intercept"] == pytest.approx(math.log(3.0))


def test_study_definitions_resolve_and_render():
    from bench.run.runner import resolve_config
    from bench.studies.study import BASE_SETS

    for st in STUDIES.values():
        for v in st.values:
            resolve_config("chargen", st.dataset, sets=BASE_SETS + st.fixed + [f"{st.axis}={v}"])
    fake = {
        "study": "x",
        "claim": "c",
        "dataset": "d",
        "axis": "a",
        "x_label": "K",
        "seeds": [0],
        "budget": [],
        "device": "cpu",
        "points": [
            {
                "x": 1,
                "chargen_w2_mean": 0.1,
                "chargen_w2_std": 0.0,
                "teacher_w2_mean": 0.2,
                "teacher_w2_std": 0.0,
                "floor_w2_mean": 0.05,
                "floor_w2_std": 0.0,
                "seeds": [{"teacher_nfe": 20}],
            }
        ],
        "fit_chargen": loglog_fit([1], [1]),
        "fit_teacher": loglog_fit([1], [1]),
        "fit_floor": loglog_fit([1], [1]),
    }
    assert "| 1 | 0.1000" in render_study(fake)


def test_study_end_to_end_tiny(bench_cli):
    code, out, err = bench_cli(
        "study",
        "euler_steps",
        "--seeds",
        "0",
        "--values",
        "2,4",
        "--out",
        str(bench_cli.results),
        "--runs-dir",
        str(bench_cli.runs),
        "--set",
        "train.steps=30",
        "--set",
        "method.fit_steps=30",
        "--set",
        "eval.n_gen=200",
        "--set",
        "eval.n_ref=200",
        "--set",
        "method.n_traj=200",
        dirs=False,
    )
    assert code == 0, err
    import json

    r = json.loads((bench_cli.results / "study" / "euler_steps.json").read_text())
    assert [p["x"] for p in r["points"]] == [2, 4]
    assert "slope" in r["fit_chargen"] and (bench_cli.results / "study" / "euler_steps.md").exists()
    # one teacher, reused by both points
    runs = {p["seeds"][0]["run_id"] for p in r["points"]}
    assert len(runs) == 2 and len(list(bench_cli.runs.glob("flow-*"))) == 1
