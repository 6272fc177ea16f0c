"""The minimal re-implementations (bench/studies/fairness) run end to end on a tiny budget and the comparison table
renders from their entries; their real numbers are a benchmark (results/fairness.md), not a timed test."""

from __future__ import annotations

import json
import math

import pytest

from bench.studies.fairness import __main__ as fair
from bench.studies.fairness import (
    minimal_cd,
    minimal_ect,
    minimal_gan,
    minimal_ict,
    minimal_imeanflow,
    minimal_meanflow,
    minimal_reflow,
    minimal_sct,
    minimal_shortcut,
    minimal_tvm,
)


@pytest.mark.parametrize(
    "run",
    [
        lambda: minimal_meanflow.run("moons", 0, 3),
        lambda: minimal_ict.run("moons", 0, 3),
        lambda: minimal_shortcut.run("moons", 0, 3),
        lambda: minimal_tvm.run("moons", 0, 3),
        lambda: minimal_imeanflow.run("moons", 0, 3),
        lambda: minimal_sct.run("moons", 0, 3),
        lambda: minimal_cd.run("moons", 0, 3, 3),
        lambda: minimal_ect.run("moons", 0, 3, 3),
        lambda: minimal_reflow.run("moons", 0, 3, 3, 3, n_pairs=256, pair_steps=4),
        lambda: minimal_gan.run("moons", 0, 3, "wgan-gp"),
        lambda: minimal_gan.run("moons", 0, 3, "hinge-sn"),
    ],
)
def test_minimal_versions_run_and_score(run, monkeypatch):
    from bench.studies.fairness import harness

    monkeypatch.setattr(harness, "N_EVAL", 200)  # exact OT on 5,000 points takes seconds per repeat
    out = run()
    assert "1" in out and all(len(v) == 3 and all(math.isfinite(x) and x > 0 for x in v) for v in out.values())


def test_fairness_table_pairs_minimal_entries_with_benchmark_records(tmp_path):
    (tmp_path / "benchmark.yaml").write_text(
        "suites:\n  points:\n    datasets: [moons]\n    seeds: [0]\n    jobs:\n"
        "      - {name: meanflow, method: meanflow, recipe: test recipe of the unit test}\n"
    )
    (tmp_path / "fairness.json").write_text(
        json.dumps([{"job": "meanflow", "dataset": "moons", "seed": 0, "budget": "3 steps", "w2": {"1": [0.5, 0.7]}}])
    )
    md = fair.render(tmp_path)
    assert "| meanflow | moons | 3 steps | 1 | 0.600 ± 0.100 | - | - | 1 / 0 |" in md
    assert fair.main(["--results", str(tmp_path), "--methods", "nope"]) == 2


def test_net_probe_runs_the_minimal_version_on_the_suites_network_and_renders_beside_it(tmp_path, monkeypatch):
    """``--net suite``: the same minimal ECT on the suite's TimeMLP (a different network: other weights, other W2),
    kept in its own file and paired with the plain-MLP entry of the same job, data set and seed."""
    from bench.methods.nets import TimeMLP

    from bench.studies.fairness import harness

    monkeypatch.setattr(harness, "N_EVAL", 200)
    monkeypatch.setitem(fair.MINIMAL, "ect", (lambda d, s: minimal_ect.run(d, s, 3, 3), "3 + 3 steps"))
    (tmp_path / "benchmark.yaml").write_text(
        "suites:\n  points:\n    datasets: [moons]\n    seeds: [0]\n    jobs:\n"
        "      - {name: ect, method: ect, recipe: test recipe of the unit test}\n"
    )
    monkeypatch.setattr(harness, "NET", "suite")
    assert isinstance(harness.MLP(3, 2).u, TimeMLP)
    monkeypatch.setattr(harness, "NET", "mlp")
    args = ["--results", str(tmp_path), "--methods", "ect", "--datasets", "moons", "--seeds", "0"]
    assert fair.main(args) == 0 and fair.main([*args, "--net", "suite"]) == 0
    assert harness.NET == "mlp"  # reset after the probe
    plain, net = (json.loads((tmp_path / f).read_text())[0] for f in ("fairness.json", "fairness-net.json"))
    assert (plain["net"], net["net"]) == ("mlp", "suite") and plain["w2"]["1"] != net["w2"]["1"]
    md = (tmp_path / "fairness.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| ect | moons | 1 | 0 |"))
    assert f"{sum(plain['w2']['1']) / 3:.3f}" in row and f"{sum(net['w2']['1']) / 3:.3f}" in row
    assert fair.main([*args[:2], "--methods", "gan-ns", "--net", "suite"]) == 2
