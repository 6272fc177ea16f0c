"""Resource caps: a network too large for the memory is refused before allocation (one line, exit 2); a killed
atomic write's temporary file is removed on the next run of that folder."""

from __future__ import annotations

import torch
from torch import nn

from bench.core.resources import check_fits, meta_param_count
from bench.errors import BenchError


def test_meta_count_allocates_nothing_and_matches_the_real_count():
    assert meta_param_count(lambda: nn.Linear(10**6, 10**6)) == 10**12 + 10**6  # 4 TB if it were real
    assert meta_param_count(lambda: nn.Linear(3, 4)) == sum(p.numel() for p in nn.Linear(3, 4).parameters())


def test_check_fits_refuses_with_params_and_gib():
    try:
        check_fits("net", lambda: nn.Linear(1000, 1000), torch.device("cpu"), available=1000)
    except BenchError as e:
        assert "1,001,000 parameters" in str(e) and "GiB" in str(e)
    else:
        raise AssertionError("not refused")
    check_fits("net", lambda: nn.Linear(10, 10), torch.device("cpu"), available=10**9)  # fits: no error


def test_huge_network_is_one_line_exit_2(bench_cli):
    code, _, err = bench_cli(
        "run", "--method", "flow", "--dataset", "moons", "--smoke", "--set", "method.net.hidden=1000000000"
    )
    assert code == 2 and "parameters" in err and "GiB" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_stale_tmp_files_are_removed_on_resume(bench_cli):
    fast = ["--set", "eval.timing=false", "--set", "eval.nfe=[1]", "--set", "eval.solvers=[euler]"]
    code, _, err = bench_cli("train", "--method", "flow", "--dataset", "moons", "--smoke", "--run-id", "r1", *fast)
    assert code == 0, err
    folder = bench_cli.runs / "r1"
    stale = folder / ".ckpt.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    code, _, err = bench_cli(
        "train", "--method", "flow", "--dataset", "moons", "--smoke", "--run-id", "r1", "--resume", *fast
    )
    assert code == 0, err
    assert not stale.exists() and (folder / "ckpt.pt").is_file()


def test_forward_batch_caps_host_images_only():
    from bench.core.resources import forward_batch

    cpu = torch.device("cpu")
    assert forward_batch(cpu, (1, 28, 28)) == 334 and forward_batch(cpu, (3, 32, 32)) == 85
    assert forward_batch(cpu, (2,)) >= 100_000  # points: n_gen is never split
    assert forward_batch(torch.device("cuda"), (3, 32, 32)) == 0  # accelerators: one call


def test_split_calls_is_one_call_per_block_in_row_order():
    from bench.core.resources import split_calls

    sizes = []

    def fn(x):
        sizes.append(len(x))
        return 2 * x

    x = torch.arange(10.0)[:, None]
    assert torch.equal(split_calls(fn, x, 4), 2 * x) and sizes == [4, 4, 2]
    sizes.clear()
    assert torch.equal(split_calls(fn, x, 0), 2 * x) and sizes == [10]
