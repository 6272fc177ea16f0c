"""CUDA paths (run by `bench doctor --gpu` on a GPU machine; skipped without CUDA)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_flow_trains_and_evaluates_on_cuda(bench_cli, precision):
    sets = ["--set", f"train.precision={precision}", "--set", f"eval.precision={precision}", "--set", "train.tf32=true"]
    code, _, err = bench_cli("run", "--method", "flow", "--dataset", "moons", "--smoke", "--device", "cuda", *sets)
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert rec["config"]["train"]["precision"] == precision and "cpu" not in rec["device"]
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
    assert all(r["timing"]["dtype"] == dtype for r in rec["rows"])


def test_chargen_compiled_sampling_on_cuda(bench_cli):
    sets = ["--set", "eval.compile=true", "--set", "eval.nfe=[1]", "--set", "train.channels_last=false"]
    code, _, err = bench_cli("run", "--method", "chargen", "--dataset", "moons", "--smoke", "--device", "cuda", *sets)
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert all(r["timing"]["compile"] for r in rec["rows"])


def test_cuda_samples_match_cpu_samples(bench_cli, tmp_path):
    code, _, err = bench_cli("train", "--method", "flow", "--dataset", "moons", "--smoke", "--run-id", "r")
    assert code == 0, err
    run = str(bench_cli.runs / "r")
    for dev in ("cpu", "cuda"):
        code, _, err = bench_cli(
            "sample", "--run", run, "-n", "256", "--device", dev, "-o", str(tmp_path / f"{dev}.pt")
        )
        assert code == 0, err
    a = torch.load(tmp_path / "cpu.pt", weights_only=True)["samples"]
    b = torch.load(tmp_path / "cuda.pt", weights_only=True)["samples"]
    assert torch.allclose(a, b, atol=1e-3), json.dumps(float((a - b).abs().max()))
