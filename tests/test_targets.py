"""TARGETS.md: chargen vs its teacher from a record (paired per-repeat ratios, reference NFE per data kind)."""

from __future__ import annotations

import statistics

import pytest

from bench.output.targets import chargen_targets, render_targets


def _row(label: str, solver: str, nfe: int, metric: str, values: list[float], per_sample_s: float) -> dict:
    mean = sum(values) / len(values)
    return {
        "label": label,
        "solver": solver,
        "nfe_requested": nfe,
        "metrics": {metric: {"mean": mean, "std": 0.1, "values": values}},
        "timing": {"per_sample_s": per_sample_s, "ratio_to_forward": 1.05, "device": "cpu (2 threads)"},
    }


def _record(kind: str, metric: str, t_nfe: int) -> dict:
    return {
        "method": "chargen",
        "status": "ok",
        "dataset": "digits" if kind == "image" else "moons",
        "run_id": "chargen-x",
        "data_spec": {"kind": kind},
        "rows": [
            _row("chargen[K=32]", "onestep", 1, metric, [3.0, 4.4], 1e-4),
            _row("flow (teacher)", "euler", 1, metric, [100.0, 110.0], 1e-4),
            _row("flow (teacher)", "euler", t_nfe, metric, [2.0, 4.0], 64e-4),
        ],
    }


@pytest.mark.parametrize(
    "kind,metric,t_nfe,ok", [("image", "fd_digits", 64, "yes"), ("points", "w2", 128, "**no**")]
)  # 1.233: within digits' 1.3, outside the points' 1.1
def test_ratio_is_paired_over_repeats_and_uses_the_kinds_reference_nfe(kind, metric, t_nfe, ok):
    (r,) = chargen_targets([_record(kind, metric, t_nfe)])
    assert r["metric"] == metric and r["teacher_nfe"] == t_nfe
    assert r["ratio_ref"] == pytest.approx(3.7 / 3.0)
    assert r["ratio_ref_std"] == pytest.approx(statistics.stdev([3.0 / 2.0, 4.4 / 4.0]))  # paired, not pooled
    assert r["speedup_vs_ref"] == pytest.approx(64.0)
    assert r["min_speedup"] == (50.0 if kind == "points" else None)  # no speed target was set for images
    md = render_targets([_record(kind, metric, t_nfe)])
    limit = "1.3" if kind == "image" else "1.1"
    assert f"| 1.233 ± 0.283 | {limit} | {ok} |" in md and "3.7000 ± 0.1000" in md and "| 64 |" in md


def test_an_image_set_uses_its_own_fd_and_its_own_target():
    """Fashion-MNIST's records carry fd_fmnist (not fd_digits) and its issue's 1.5x target: 1.233 passes there."""
    rec = _record("image", "fd_fmnist", 64) | {"dataset": "fashion-mnist"}
    (r,) = chargen_targets([rec])
    assert (r["metric"], r["max_ratio"]) == ("fd_fmnist", 1.5)
    assert "| 1.233 ± 0.283 | 1.5 | yes |" in render_targets([rec])


def test_no_chargen_records():
    assert "No chargen records yet" in render_targets([{"method": "flow", "rows": []}])
