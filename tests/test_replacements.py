"""Hand-written helpers replaced by their dependencies (POT, torchvision, scipy) or merged into one copy,
pinned against the numbers the old implementations gave on fixed inputs (computed before the switch)."""

from __future__ import annotations

import hashlib
import math
import threading
import time
import warnings

import numpy as np
import ot
import pytest
import torch
from bench.datasets.images import digits_split
from bench.datasets.synthetic import checkerboard, eight_gaussians, moons
from PIL import Image

from bench.core.checkpoint import atomic_path, atomic_write_text, load_checkpoint, save_checkpoint
from bench.core.stats import mean_std, summary
from bench.eval.grids import grid_image, save_grid
from bench.eval.metrics.registry import MetricContext
from bench.eval.metrics.w2 import solver_workers, w2_exact, w2_exact_many, w2_metric_many, w2_sliced
from bench.eval.sampling import TensorSamples
from bench.registry import DATASETS
from bench.studies.study import loglog_fit


def _sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _randn(seed: int, n: int, d: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- sliced W2

_SLICED_CASES = {  # name -> (x, y)
    "2d": lambda: (_randn(0, 2000, 2), _randn(1, 2000, 2) * torch.tensor([1.0, 0.5]) + torch.tensor([0.3, -0.2])),
    "8d": lambda: (_randn(2, 1000, 8), _randn(3, 1000, 8) * 1.3 + 0.1),
}
# the old torch implementation (sorted projections on torch.randn directions), 512 projections
OLD_SLICED = {("2d", 0): 0.3699151592437266, ("2d", 7): 0.3711241864592086, ("8d", 0): 0.34261866506440397}
NEW_SLICED = {("2d", 0): 0.36639903203097457, ("2d", 7): 0.37131911377214716, ("8d", 0): 0.34459517491040215}


def _old_directions(d: int, n_proj: int, seed: int) -> np.ndarray:
    """The old implementation's directions: normalised columns of torch.randn(d, n_proj) from a seeded Generator."""
    theta = torch.randn(d, n_proj, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (theta / theta.norm(dim=0, keepdim=True)).numpy()


@pytest.mark.parametrize("case,seed", list(OLD_SLICED))
def test_pot_sliced_w2_is_the_old_estimator_on_the_old_directions(case, seed):
    """Same directions -> the same number to rounding: POT's p=2 sliced distance is sqrt(mean 1-D W2^2), i.e. W2,
    not W2^2, exactly what the old code computed."""
    x, y = _SLICED_CASES[case]()
    dirs = _old_directions(x.shape[1], 512, seed)
    assert ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), projections=dirs, p=2) == pytest.approx(
        OLD_SLICED[case, seed], rel=1e-12
    )


@pytest.mark.parametrize("case,seed", list(OLD_SLICED))
def test_sliced_w2_differs_from_the_old_only_by_projection_noise(case, seed):
    """POT draws its own directions (numpy RandomState(seed) instead of torch's generator), so the new and old
    numbers are two independent Monte-Carlo estimates of the same sliced W2. The standard error of one estimate
    is that of a mean of 512 per-direction W2^2 values, mapped through sqrt (delta method); the difference of two
    has sqrt(2) times that. Tolerance: 4 of those standard errors (a few per cent here, 1-2 % observed)."""
    x, y = _SLICED_CASES[case]()
    new = w2_sliced(x, y, 512, seed=seed)
    assert new == pytest.approx(NEW_SLICED[case, seed], rel=1e-12)  # deterministic for a fixed seed
    _, log = ot.sliced_wasserstein_distance(
        x.numpy(), y.numpy(), n_projections=512, seed=np.random.RandomState(seed), log=True
    )
    per_dir = np.asarray(log["projected_emds"])
    se_sq = per_dir.std(ddof=1) / math.sqrt(len(per_dir))  # of the mean W2^2
    se = se_sq / (2 * math.sqrt(per_dir.mean()))  # of its sqrt
    assert abs(new - OLD_SLICED[case, seed]) <= 4 * math.sqrt(2) * se


def test_sliced_w2_unequal_sizes_and_private_rng():
    x, y = _randn(4, 300, 3), _randn(5, 500, 3) + 1.0
    state = np.random.get_state()[1].copy()
    v = w2_sliced(x, y, 256, seed=3)
    assert v == w2_sliced(x, y, 256, seed=3) and v > 0  # POT weights unequal sizes; no equal-n restriction
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global generator untouched


# ---------------------------------------------------------------------------------------------- grids

_G1 = torch.randint(0, 256, (13, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
_G3 = torch.arange(10 * 3 * 4 * 4).remainder(256).to(torch.uint8).reshape(10, 3, 4, 4)
# (input, kwargs) -> (PIL mode, size, sha256 of the old hand-written grid's pixel array)
OLD_GRIDS = [
    (
        _G3,
        dict(nrow=4, padding=1, scale=1),
        "RGB",
        (21, 16),
        "e0d26f65be8419cd2377e6d8829cd54149e10934e664ba13b6a7c84bb0b60c6d",
    ),
    (
        _G3,
        dict(nrow=4, padding=1),
        "RGB",
        (133, 100),
        "f2d93357410f736f0180f86e8aa09190159fb251fe8ddeef712c6d8fe5d56b18",
    ),
    (_G1, {}, "L", (274, 70), "724ef3b3cb2cf9abced6bb21b9e5ba160287d52a064263c28318db85f437a979"),
    (
        _G1,
        dict(nrow=5, padding=3, pad_value=255, scale=2),
        "L",
        (98, 60),
        "eaeddbd4018cc6fa2e27ef8057deb0e322afd227826c8b7c0b72969827b36d97",
    ),
    (_G1[:3], dict(nrow=8), "L", (104, 36), "5ec0155a617a600340d7ffdabb8906c1cffe7e570a56ea7c833e483f153b8fff"),
    (_G1[:1], {}, "L", (36, 36), "2a38df94589ade830dc1f9f2c7d6795ab026408f34f6034503a19d595767a1cc"),
    (
        _G3[:1],
        dict(padding=3, pad_value=7, scale=1),
        "RGB",
        (10, 10),
        "7367be2c0bf03dc8e522d0ae4aa911cdb1978056d4b2036de8700104975725dd",
    ),
    (_G1, dict(padding=0), "L", (256, 64), "28b50b2dc9e9c78d1e2f7a4c3e2867a7b540225f8c693d7f7bfc901d3f9a52a8"),
    (
        _G3,
        dict(nrow=3, pad_value=200, scale=3),
        "RGB",
        (44, 58),
        "d39ea39f5a199163229d380a3875f5d06489ca55a84ed5fee08d8b057d95475e",
    ),
]


@pytest.mark.parametrize("x,kw,mode,size,sha", OLD_GRIDS)
def test_make_grid_gives_the_old_grids_pixel_for_pixel(x, kw, mode, size, sha, tmp_path):
    img = grid_image(x, **kw)
    assert (img.mode, img.size, _sha(np.asarray(img))) == (mode, size, sha)
    p = save_grid(x, tmp_path / "g.png", nrow=kw.get("nrow", 8), padding=kw.get("padding", 2), scale=kw.get("scale"))
    if "pad_value" not in kw:  # save_grid pads with 0
        with Image.open(p) as im:
            assert _sha(np.asarray(im)) == sha
    assert [q.name for q in tmp_path.iterdir()] == ["g.png"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- log-log fits

# the old hand-written least squares (numpy lstsq, se from (A^T A)^-1): slope, slope_se, intercept, r2
OLD_FITS = [
    (
        [2, 4, 8, 16, 32],
        [0.9, 0.52, 0.41, 0.2, 0.17],
        (-0.6187292133412404, 0.06437013519396953, 0.2801552579298111, 0.9685506838863469),
    ),
    (
        [250, 1000, 4000, 16000],
        [0.31, 0.22, 0.2, 0.19],
        (-0.11281549572899029, 0.034847992728594554, -0.6313703793861764, 0.8397500022600624),
    ),
    ([2, 4], [3.0, 1.5], (-1.0, 1.633433425331257e-15, 1.7917594692280545, 1.0)),
]


@pytest.mark.parametrize("xs,ys,old", OLD_FITS)
def test_linregress_gives_the_old_fit(xs, ys, old):
    """Same least-squares problem, different arithmetic: equal to ~1e-14 relative; the exact two-point fit has a
    zero standard error (old: 1.6e-15 of rounding), hence the absolute term."""
    f = loglog_fit(xs, ys)
    assert list(f) == ["slope", "slope_se", "intercept", "r2"]
    for got, want in zip((f["slope"], f["slope_se"], f["intercept"], f["r2"]), old, strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_loglog_fit_degenerate_inputs():
    assert all(math.isnan(v) for v in loglog_fit([1], [1]).values())  # as before: one point, no fit
    flat = loglog_fit([2, 4, 8], [3.0, 3.0, 3.0])  # old: slope 5.6e-17, slope_se 3.2e-16, r2 nan
    assert flat["slope"] == pytest.approx(0.0, abs=1e-15) and flat["intercept"] == pytest.approx(math.log(3.0))
    assert math.isnan(flat["r2"]) and math.isnan(flat["slope_se"])  # linregress: r undefined for a flat line


# ---------------------------------------------------------------------------------------------- one copy each


def test_mean_std_is_the_old_summary():
    vals = [0.237, 0.224, 0.2415]
    assert mean_std(vals) == (0.23416666666666666, 0.00908753725347705)  # statistics.fmean / stdev, as before
    assert mean_std([3.05]) == (3.05, 0.0)
    assert summary(vals) == {"mean": 0.23416666666666666, "std": 0.00908753725347705, "values": vals}


def test_eight_gaussians_centres_one_copy():
    ds = DATASETS.get("8gaussians")
    s2 = 2.0003020763397217  # float32(4 / sqrt 2) / 1.414, as the two old copies gave
    r = 2.8288543224334717
    want = [[r, 0], [-r, 0], [0, r], [0, -r], [s2, s2], [s2, -s2], [-s2, s2], [-s2, -s2]]
    assert ds.modes.tolist() == want and ds.mode_std == 0.5 / 1.414
    x = eight_gaussians(1000, torch.Generator().manual_seed(0))
    assert _sha(x.numpy()) == "75d42697af4bc495690362248a1231bb7e4307da36cd2a1ac11f84e5a8c02efa"  # old sampler's


def test_digits_split_one_copy():
    xtr, ytr, xte, yte = digits_split()
    assert [_sha(t.numpy()) for t in (xtr, ytr, xte, yte)] == [
        "ab4431731dc52165a459f3fc392f28fe9f922ead04449e037468c1bbfca6c21e",
        "60167e13d1f9cb0cb9173ceef4e9406390105c82e3d297aee4ba8bf07391e3c7",
        "4d530901bbe9beb60436f383e4285d51390f2f8fd7aa3cec705106fd4250a10e",
        "5334771414d24b53d5bda1dbe615b4c89d003f54745c78fcedb4caf7c4e0108e",
    ]  # the old classifier split; the data set's splits below are the old data set's, and the same tensors
    ds = DATASETS.get("digits")(DATASETS.get("digits").Config())
    assert torch.equal(ds.split_u8("train"), xtr) and torch.equal(ds.split_u8("test"), xte)


def test_atomic_writes_keep_the_old_file_when_the_write_fails(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    atomic_write_text(p, "one")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert p.read_text() == "one" and sorted(q.name for q in p.parent.iterdir()) == ["f.txt"]
    ck = tmp_path / "ckpt.pt"
    save_checkpoint(ck, {"step": 3, "w": torch.arange(4)})
    got = load_checkpoint(ck)
    assert got["step"] == 3 and torch.equal(got["w"], torch.arange(4))


# ---------------------------------------------------------------------------------------------- exact W2, concurrent

OLD_EXACT = [0.4072116674493289, 0.37819238464315386, 0.40307939540145243]  # old w2_exact, checkerboard 1200 v 1200


def _pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator
    return [
        (checkerboard(1200, g().manual_seed(100 + r)), checkerboard(1200, g().manual_seed(200 + r)) * 1.05)
        for r in range(3)
    ]


def test_concurrent_exact_w2_equals_sequential_and_the_old_numbers():
    pairs = _pairs()
    seq = [w2_exact(x, y) for x, y in pairs]
    par = w2_exact_many(pairs, workers=3)  # explicit: the OMP_NUM_THREADS=1 of the test run would give 1
    assert par == seq  # bit-identical values and protocols, in order
    assert [v for v, _ in seq] == OLD_EXACT


@pytest.mark.filterwarnings("ignore:numItermax reached before optimality")  # POT's own, besides ours
def test_concurrent_exact_w2_reports_iteration_caps_per_solve():
    x, y = moons(300, torch.Generator().manual_seed(1)), moons(300, torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="iteration cap"):
        res = w2_exact_many([(x, y), (x, y), (x, x)], num_itermax=50, workers=3)
    assert [p["hit_cap"] for _, p in res] == [True, True, False]
    assert res[0] == res[1] and res[2][0] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a solve that converges warns about nothing
        assert w2_exact(x, y)[0] == 0.4238473421092495  # the old number


def test_metric_batch_entry_equals_the_per_repeat_metric():
    from bench.registry import METRICS

    spec = METRICS.get("w2")
    pairs = _pairs()
    gens = [TensorSamples(x) for x, _ in pairs]
    ctxs = [MetricContext(y, None, None, r) for r, (_, y) in enumerate(pairs)]
    assert spec.fn.many is w2_metric_many
    assert w2_metric_many(gens, ctxs) == [spec(g, c) for g, c in zip(gens, ctxs, strict=True)]


def test_pot_network_simplex_releases_the_gil():
    """The reason a thread pool is enough: while a solve runs in a worker thread, this thread keeps running.
    Holding the GIL would stall it for the whole C++ solve (most of the call); allow scheduler hiccups."""
    x, y = checkerboard(2000, torch.Generator().manual_seed(0)), checkerboard(2000, torch.Generator().manual_seed(1))
    worker = threading.Thread(target=w2_exact, args=(x, y))
    start = last = time.perf_counter()
    worker.start()
    longest, ticks = 0.0, 0
    while worker.is_alive():
        now = time.perf_counter()
        longest, last, ticks = max(longest, now - last), now, ticks + 1
    worker.join()
    assert ticks > 1000 and longest < 0.5 * (time.perf_counter() - start)


def test_solver_workers_from_affinity_omp_and_task_count(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert solver_workers(3) == 3 and solver_workers(8) == 4 and solver_workers(1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert solver_workers(3) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert solver_workers(3) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # a higher OMP setting does not add cores
    assert solver_workers(8) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert solver_workers(8) == 4


def test_sliced_w2_fast_path_equals_pots_own_solver():
    """Equal sizes use sorted projections; the value is POT's sliced_wasserstein_distance on the same seed."""
    import numpy as np
    import ot

    from bench.eval.metrics.w2 import w2_sliced

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(700, 3, generator=g), torch.randn(700, 3, generator=g) * 1.5 + 0.2
    for seed in (0, 7):
        ref = ot.sliced_wasserstein_distance(
            x.double().numpy(), y.double().numpy(), n_projections=128, p=2, seed=np.random.RandomState(seed)
        )
        assert abs(w2_sliced(x, y, 128, seed) - float(ref)) < 1e-12
    assert w2_sliced(x, y[:500], 128, 0) > 0  # unequal sizes: POT's general solver
