"""The time-smoothness check of a flow (bench/studies/time_derivative.py) on closed-form velocities."""

import pytest
import torch


def test_time_smoothness_sees_wiggles_in_t_that_a_finite_difference_misses():
    from bench.studies.time_derivative import render, time_smoothness

    x1 = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    smooth = time_smoothness(lambda t, x: x * t[:, None, None, None] ** 2, x1)
    wiggly = time_smoothness(lambda t, x: x * torch.sin(1000 * t)[:, None, None, None], x1)
    assert all(r["fd_gap"] < 1e-3 for r in smooth) and all(r["fd_gap"] > 0.5 for r in wiggly)
    r = smooth[2]  # t = 0.5, v = t^2 x: dv/dt = 2t x = x, dv/dx v = t^2 v = t^4 x
    xt_norm = r["v"] / 0.25
    assert r["dv_dt"] == pytest.approx(xt_norm, rel=1e-5) and r["dv_dx_v"] == pytest.approx(xt_norm / 16, rel=1e-5)
    assert "| 0.5 |" in render(smooth, "a toy", 1e-2)
