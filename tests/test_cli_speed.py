"""A CLI that answers at once: `bench list` and bad-input errors import none of the heavy packages (scipy,
POT, scikit-learn, torchvision, torch-fidelity, clean-fid, torchdiffeq, matplotlib); they are imported only
where used. A deterministic check on ``sys.modules`` in a fresh interpreter, not a timing; the timing is
``python -m bench.perf.bench_cli`` (results/bench/cli_latency.json)."""

import subprocess
import sys

from bench.perf.bench_cli import heavy_imports


def test_bench_list_imports_no_heavy_package(tmp_path):
    [(code, heavy)] = heavy_imports([["list"]], cwd=tmp_path)
    assert code == 0
    assert heavy == [], f"`bench list` imported {heavy}: move these imports into the functions that use them"


BAD_INPUT = [
    ["run", "--method", "nosuch"],
    ["run", "--method", "flow", "--dataset", "nowhere"],
    ["run", "--method", "flow", "--set", "train.lr=nan"],
    ["run", "--method", "flow", "--set", "train.stepz=1"],
    ["run", "--method", "flow", "--config", "missing.yaml"],
    ["run", "--out", "a_file"],
    ["train", "--run-id", "../../escape"],
    ["run", "--bogus-option"],
]


def test_bad_input_fails_before_any_heavy_import(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for args, (code, heavy) in zip(BAD_INPUT, heavy_imports(BAD_INPUT, cwd=tmp_path), strict=True):
        assert code == 2, args
        assert heavy == [], f"bench {' '.join(args)} imported {heavy} before refusing its input"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # and wrote nothing


def test_metric_modules_load_on_first_lookup():
    """``import bench.eval.metrics`` is cheap; the first look-up of a metric imports the modules that register them."""
    code = (
        "import sys; import bench.eval.metrics; from bench.registry import METRICS\n"
        "assert 'bench.eval.metrics.w2' not in sys.modules and 'ot' not in sys.modules\n"
        "assert METRICS.get('w2').kinds == ('points',) and 'bench.eval.metrics.w2' in sys.modules\n"
        "assert {'fid', 'fd_digits', 'modes', 'sw2'} <= set(METRICS.names())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
