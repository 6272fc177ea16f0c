"""The engine contract: Batch randomness, fused EMA, pass counting, precision options in the record."""

from __future__ import annotations

import copy
import math

import torch
from bench.methods.base import Batch, ema_update, step_seed
from torch import nn


def test_batch_slices_reproduce_the_global_draw():
    """Two processes holding rows 0:3 and 3:8 of a step draw exactly the 1-process numbers for their rows."""
    x = torch.arange(16.0).reshape(8, 2)
    seed = step_seed(0, 1, 0, 0, 5)
    whole = Batch(x, 8, 0, 8, seed, torch.device("cpu"), 5)
    parts = [Batch(x, 8, lo, hi, seed, torch.device("cpu"), 5) for lo, hi in ((0, 3), (3, 8))]
    for draw in (lambda b: b.rand(), lambda b: b.randn(3), lambda b: b.randint(0, 100, 2)):  # in sequence
        assert torch.equal(torch.cat([draw(p) for p in parts]), draw(whole))
    assert torch.equal(torch.cat([p.x for p in parts]), whole.x)
    assert step_seed(0, 1, 0, 0, 5) != step_seed(0, 1, 0, 0, 6) != step_seed(1, 1, 0, 0, 6)


def test_fused_ema_equals_per_parameter_lerp():
    torch.manual_seed(0)
    online = [nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))]
    emas = [copy.deepcopy(m) for m in online]
    ref = [copy.deepcopy(m) for m in online]
    for m in online:
        for p in m.parameters():
            p.data.add_(torch.randn_like(p))
        m(torch.randn(5, 3)) if isinstance(m, nn.Linear) else m.train()(torch.randn(5, 4))
    ema_update(list(zip(emas, online, strict=True)), 0.9)
    for e, r, o in zip(emas, ref, online, strict=True):
        for pe, pr, po in zip(e.parameters(), r.parameters(), o.parameters(), strict=True):
            assert torch.allclose(pe, 0.9 * pr + 0.1 * po, atol=1e-7)
        for be, bo in zip(e.buffers(), o.buffers(), strict=True):
            assert torch.equal(be, bo)


def test_pass_counter_counts_forward_jvp_and_backward():
    from bench.run.engine import PassCounter

    class M(nn.Module):  # the counter hooks the networks a method holds
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(3, 3)

    m, x = M(), torch.randn(4, 3)
    pc = PassCounter(m)
    with torch.no_grad():
        m.net(x)  # plain forward: 1 per sample
    assert pc.total == 4
    m.net(x[:2]).sum().backward()  # forward with a graph and its backward: 3 per sample
    assert pc.total == 4 + 6
    with torch.no_grad():  # forward-mode JVP: primal and tangent, 2 per sample
        torch.func.jvp(m.net, (x,), (torch.ones_like(x),))
    assert pc.total == 4 + 6 + 8
    pc.close()
    m.net(x)
    assert pc.total == 18


def test_passes_counted_and_precision_recorded(bench_cli):
    sets = ["--set", "train.steps=20", "--set", "train.batch_size=32", "--set", "train.precision=bf16"]
    sets += ["--set", "eval.precision=bf16", "--set", "eval.nfe=[1,4]", "--set", "eval.solvers=[euler]"]
    code, _, err = bench_cli("run", "--method", "flow", "--dataset", "moons", "--smoke", "--device", "cpu", *sets)
    assert code == 0, err
    (rec,) = bench_cli.records()
    cost = rec["train"]["cost"]
    assert cost["network_passes"] == 20 * 32 * 3  # one forward with a graph (1) and its backward (2) per sample
    assert cost["complete"] and cost["total_wall_clock_s"] > 0
    assert rec["config"]["train"]["precision"] == "bf16"
    for row in rec["rows"]:
        tm = row["timing"]
        assert tm["dtype"] == "bfloat16" and tm["compile"] is False and tm["threads"] >= 1
        assert tm["timer"].startswith("torch.utils.benchmark") and tm["blocks"] >= 1 and "load_avg_1min" in tm


def test_chargen_carries_its_reused_teachers_cost(bench_cli):
    code, _, err = bench_cli("train", "--method", "flow", "--dataset", "moons", "--smoke", "--run-id", "teach")
    assert code == 0, err
    sets = ["--set", f"method.teacher.run={bench_cli.runs / 'teach'}", "--set", "eval.nfe=[1]"]
    code, _, err = bench_cli("run", "--method", "chargen", "--dataset", "moons", "--smoke", *sets)
    assert code == 0, err
    (rec,) = bench_cli.records()
    cost = rec["train"]["cost"]
    teacher_passes = 150 * 256 * 3  # the --smoke teacher: 150 steps at batch 256
    assert cost["reused"]["network_passes"] == teacher_passes
    assert cost["network_passes"] == teacher_passes + sum(cost["network_passes_by_stage"].values())
    assert "reused: teacher" in cost["wall_clock_s"] and cost["complete"]


def test_lr_factor_warms_up_then_decays_by_half_cosine():
    from bench.run.engine import lr_factor

    assert [lr_factor(4, 100, "constant", 0.0, s) for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cos = [lr_factor(4, 104, "cosine", 0.1, s) for s in range(104)]
    assert cos[:4] == [0.25, 0.5, 0.75, 1.0] and abs(cos[-1] - 0.1) < 1e-12
    assert abs(cos[4 + 49] - (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 49 / 99)))) < 1e-12
    assert all(a >= b for a, b in zip(cos[3:], cos[4:], strict=False))  # monotone after warm-up
    assert lr_factor(0, 1, "cosine", 0.0, 0) == 1.0  # a one-step stage keeps its LR


def test_cosine_schedule_reaches_its_floor_in_the_checkpoint(bench_cli):
    sets = ["--set", "train.steps=12", "--set", "train.batch_size=16", "--set", "train.warmup_steps=2"]
    sets += ["--set", "train.lr_schedule=cosine", "--set", "train.lr_min_ratio=0.25"]
    code, _, err = bench_cli("train", "--method", "flow", "--dataset", "moons", "--smoke", "--run-id", "cos", *sets)
    assert code == 0, err
    ck = torch.load(bench_cli.runs / "cos" / "ckpt.pt", weights_only=True)
    (runner,) = next(iter(ck["optim"].values()))
    assert abs(runner["opt"]["param_groups"][0]["lr"] - 0.25 * 1e-3) < 1e-12
    bad = ["--set", "train.lr_min_ratio=2"]
    code, _, err = bench_cli("train", "--method", "flow", "--dataset", "moons", "--smoke", *bad)
    assert code == 2 and "lr_min_ratio" in err
