"""``bench doctor --gpu``: the GPU check. Runs the tests marked ``gpu``, then times per-sample sampling of
``flow`` (Euler NFE 1, 8, 64) and ``chargen`` (NFE 1) at batch 1 and 1024 with the ``mnist`` and ``cifar10``
U-Net presets, fp32 and bf16, eager and compiled; prints one table and writes it as JSON.

Networks are freshly initialised (sampling time does not depend on the weights); times come from
``torch.utils.benchmark`` (CUDA synchronised) through the suite's own timing functions, so they measure
exactly what ``bench eval`` records.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.core.checkpoint import atomic_write_json
from bench.errors import BenchError

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _methods(preset: str, device: torch.device):
    from bench.core.config import TrainConfig, from_dict
    from bench.datasets.base import DataSpec
    from bench.methods.chargen import Chargen, ChargenConfig
    from bench.methods.flow import Flow, FlowConfig

    spec = DataSpec(preset, "image", SHAPES[preset], False)
    train = TrainConfig()
    flow = Flow(from_dict(FlowConfig, {"net": {"unet": preset}}), spec, train).to(device).eval()
    cg = from_dict(ChargenConfig, {"teacher": {"flow": {"net": {"unet": preset}}}, "euler_steps": 64})
    chargen = Chargen(cg, spec, train).to(device).eval()
    flow.registered_name, chargen.registered_name = "flow", "chargen"
    return flow, chargen


def run_gpu_tests() -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], capture_output=True, text=True
    )
    lines = (p.stdout + p.stderr).strip().splitlines()
    return {"exit_code": p.returncode, "summary": lines[-1] if lines else "", "seconds": time.perf_counter() - t0}


def time_sampling(budget_s: float = 360.0, batches: tuple[int, ...] = (1, 1024)) -> list[dict[str, Any]]:
    """One row per (preset, dtype, compile, method, NFE, batch); compiled configurations are skipped (and
    listed as such) once ``budget_s`` is spent, so the whole check stays within its time limit."""
    from bench.core.config import EvalConfig
    from bench.eval.sampling import sampling_mode
    from bench.eval.timing import time_call
    from bench.methods.base import EvalPoint

    if not torch.cuda.is_available():
        raise BenchError("bench doctor --gpu needs a CUDA device (none is visible)")
    dev = torch.device("cuda")
    t_start, rows = time.perf_counter(), []
    for preset in ("mnist", "cifar10"):
        flow, chargen = _methods(preset, dev)
        for precision in ("fp32", "bf16"):
            for compile_ in (False, True):
                ev = EvalConfig(precision=precision, compile=compile_)
                if compile_ and time.perf_counter() - t_start > budget_s:
                    rows.append({"preset": preset, "dtype": precision, "compile": True, "skipped": "time budget"})
                    continue
                cases = [(flow, EvalPoint(flow.label(), "euler", k)) for k in (1, 8, 64)]
                cases.append((chargen, EvalPoint(chargen.label(), "onestep", 1)))
                for b in batches:
                    z = torch.randn(b, *SHAPES[preset], device=dev)
                    fwd = {}
                    for m in (flow, chargen):
                        with torch.no_grad(), sampling_mode(m, ev, dev):
                            fwd[id(m)] = time_call(m.forward_reference(), z, 5, 0.2)["median_s"] / b
                    for m, pt in cases:
                        with torch.no_grad(), sampling_mode(m, ev, dev):
                            t = time_call(lambda x, m=m, pt=pt: m.sample(x, pt), z, 5, 0.2)["median_s"] / b
                        rows.append(
                            {
                                "preset": preset,
                                "params": m.sampling_params(),
                                "dtype": precision,
                                "compile": compile_,
                                "method": m.registered_name,
                                "nfe": pt.nfe,
                                "batch": b,
                                "per_sample_s": t,
                                "samples_per_s": 1 / t,
                                "forward_per_sample_s": fwd[id(m)],
                                "throughput_vs_forward": fwd[id(m)] / t,
                            }
                        )
        del flow, chargen
        torch.cuda.empty_cache()
    return rows


def device_check(out: Path, budget_s: float = 360.0, tests: bool = True) -> dict:
    if not torch.cuda.is_available():
        raise BenchError("bench doctor --gpu needs a CUDA device (none is visible)")
    res = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "gpu_tests": run_gpu_tests() if tests else None,
        "sampling": time_sampling(budget_s),
        "timer": "torch.utils.benchmark.Timer.blocked_autorange (CUDA synchronised), median",
    }
    atomic_write_json(out, res)
    return res
