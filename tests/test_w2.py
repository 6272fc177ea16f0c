import numpy as np
import pytest
import torch

from bench.eval.metrics.w2 import gaussian_w2, w2_exact, w2_sliced


def test_w2_matches_gaussian_closed_form_at_default_n():
    """Exact W2 at the default n = 5000 per side within 5% of the Bures-Wasserstein value."""
    g = torch.Generator().manual_seed(0)
    m1, m2 = np.zeros(2), np.array([1.0, -0.5])
    s1, s2 = np.diag([1.0, 0.25]), np.array([[0.8, 0.3], [0.3, 0.6]])
    x = torch.randn(5000, 2, generator=g, dtype=torch.float64) @ torch.tensor(np.linalg.cholesky(s1).T)
    y = torch.randn(5000, 2, generator=g, dtype=torch.float64) @ torch.tensor(np.linalg.cholesky(s2).T) + torch.tensor(
        m2
    )
    est, proto = w2_exact(x + torch.tensor(m1), y)
    exact = gaussian_w2(m1, s1, m2, s2)
    assert abs(est - exact) / exact < 0.05
    assert proto["hit_cap"] is False


def test_w2_of_a_translation_is_its_length():
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(1))
    shift = torch.tensor([0.3, -0.4, 1.2])
    assert w2_exact(x, x + shift)[0] == pytest.approx(float(shift.norm()), rel=1e-6)


def test_w2_identical_sets_is_zero_and_symmetric():
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(2))
    y = torch.randn(200, 2, generator=torch.Generator().manual_seed(3))
    assert w2_exact(x, x)[0] == pytest.approx(0.0, abs=1e-7)
    assert w2_exact(x, y)[0] == pytest.approx(w2_exact(y, x)[0], rel=1e-9)


def test_sliced_w2_properties():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(4))
    assert w2_sliced(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = torch.zeros(8)
    shift[0] = 2.0
    # sliced W2 of a translation by c: sqrt(E[(theta . c)^2]) = |c| / sqrt(D)
    assert w2_sliced(x, x + shift, n_proj=4000) == pytest.approx(2.0 / np.sqrt(8), rel=0.05)
    assert w2_sliced(x, x + shift, seed=5) == w2_sliced(x, x + shift, seed=5)  # seeded


def test_exact_w2_refuses_too_many_samples():
    with pytest.raises(ValueError, match="limited"):
        w2_exact(torch.zeros(10_001, 1), torch.zeros(10, 1))
