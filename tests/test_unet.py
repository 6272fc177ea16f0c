"""The image U-Net: shapes for every supported size, the two-time initialisation contract, presets, and an
end-to-end flow run on digits through the CLI."""

from __future__ import annotations

import pytest
import torch
from bench.datasets.base import DataSpec
from bench.methods.nets import NetConfig, build_net, count_params
from bench.methods.unet import PRESETS, UNet, UNetPreset, build_unet, widening
from PIL import Image

from bench.errors import BenchError
from bench.eval.metrics.registry import MetricContext, MetricSpec
from bench.registry import METRICS


def _pixel_mean(gen, ctx: MetricContext) -> tuple[float, dict]:
    """|mean pixel of the samples - mean pixel of the training split| (a cheap image metric for tests)."""
    from bench.pixels import from_uint8

    total = sum(float(b.clamp(-1, 1).sum()) for b in gen.batches())
    ref = float(from_uint8(ctx.dataset.split_u8("train")).mean())
    return abs(total / (len(gen) * ctx.dataset.spec.dim) - ref), {"reference": "training split mean"}


def spec(*shape: int) -> DataSpec:
    return DataSpec("img", "image", shape, exact_reference=False)


@pytest.mark.parametrize("n_times", [1, 2])
@pytest.mark.parametrize(
    ("preset", "shape"), [("tiny", (1, 8, 8)), ("small", (1, 8, 8)), ("small", (1, 28, 28)), ("small", (3, 32, 32))]
)
def test_output_shape(preset, shape, n_times):
    torch.manual_seed(0)
    net = build_unet(spec(*shape), preset, n_times)
    x = torch.randn(3, *shape)
    ts = [torch.rand(3) for _ in range(n_times)]
    y = net(*ts, x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(TypeError, match="time input"):
        net(x)


def test_odd_sizes_are_padded_and_cropped():
    net = UNet(1, PRESETS["small"], 1, side=28)  # 3 levels: 28 -> 14 -> 7 (no padding needed)
    assert net(torch.rand(2), torch.randn(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    net4 = UNet(1, PRESETS["cifar10"].__class__(8, (1, 2, 2, 2), 1), 1, side=28)  # 4 levels: padded to 32
    assert net4(torch.rand(2), torch.randn(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    assert net4(torch.rand(1), torch.randn(1, 1, 9, 13)).shape == (1, 1, 9, 13)


def test_time_bandwidth_of_the_unet_is_a_net_setting_and_blocks_a_teacher_copy():
    from bench.methods.meanflow import MeanFlowConfig
    from bench.methods.nets import NetConfig, build_net, can_start_from
    from bench.methods.tvm import TVMConfig

    img = spec(1, 8, 8)
    raw = build_net(img, NetConfig(unet="tiny", unet_time_max_freq=0.0), n_times=2)
    assert all(e.raw for e in raw.times) and raw(torch.rand(2), torch.rand(2), torch.randn(2, 1, 8, 8)).shape[0] == 2
    assert build_net(img, NetConfig(unet="tiny", unet_time_max_freq=16.0)).times[0].freqs.max() == pytest.approx(16)
    assert build_net(img, NetConfig(unet="tiny")).times[0].freqs.max() == pytest.approx(1000)  # every image record
    assert MeanFlowConfig().net.unet_time_max_freq == TVMConfig().net.unet_time_max_freq == 0.0  # d/dt methods
    assert not can_start_from(img, NetConfig(unet="tiny", unet_time_max_freq=0.0), NetConfig(unet="tiny"))
    assert can_start_from(img, NetConfig(unet="tiny"), NetConfig(unet="tiny"))


def test_two_time_net_from_one_time_net_is_exact_at_init():
    torch.manual_seed(0)
    one = build_unet(spec(1, 8, 8), "tiny", 1)
    with torch.no_grad():  # a 'trained' teacher: no near-zero layers left
        for p in one.parameters():
            p.add_(0.1 * torch.randn_like(p))
    two = build_unet(spec(1, 8, 8), "tiny", 2)
    two.load_from_single_time(one)
    one.eval(), two.eval()
    x, t, s = torch.randn(4, 1, 8, 8), torch.rand(4), torch.rand(4)
    y1 = one(t, x)
    assert y1.abs().mean() > 1e-2
    assert torch.equal(two(t, s, x), y1)
    assert torch.equal(two(t, torch.zeros(4), x), y1)
    # ... and the second time input can learn
    two.train()
    two(t, s, x).square().sum().backward()
    assert two.times[1].net[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="incompatible"):
        build_unet(spec(1, 8, 8), "small", 2).load_from_single_time(one)


def _trained(net: UNet) -> UNet:
    with torch.no_grad():  # a 'trained' teacher: no near-zero layers left
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize(
    ("narrow", "k", "shape", "dtype"),
    [
        (UNetPreset(32, (1, 2), 1), 2, (1, 8, 8), torch.float32),  # tiny -> tiny-wide
        (UNetPreset(8, (1, 2), 1, attn=(4,), n_freq=16), 2, (1, 8, 8), torch.float64),  # attention at 4 px, float64
        (UNetPreset(8, (1, 2, 2), 2, attn=(4,), n_freq=16), 3, (3, 7, 7), torch.float32),  # padded to 8, k = 3
    ],
    ids=["tiny", "attention-float64", "k3-padded"],
)
def test_a_wider_net_starts_as_an_exact_copy_of_its_narrow_teacher(narrow, k, shape, dtype):
    """Net2WiderNet oracle: the k-times wider two-time net equals the one-time teacher at initialisation for
    any (t, s, x); the copies of a channel get different weight shares, so training can tell them apart."""
    torch.manual_seed(0)
    n_freq, groups = narrow.n_freq or 16, 32 * k
    wide = UNetPreset(narrow.channels * k, narrow.mults, narrow.blocks, narrow.attn, n_freq=n_freq, max_groups=groups)
    assert widening(wide, narrow) == k and widening(narrow, wide) == 0 and widening(narrow, narrow) == 1
    one = _trained(UNet(shape[0], narrow, 1, side=shape[1])).to(dtype)
    two = UNet(shape[0], wide, 2, side=shape[1]).to(dtype)
    two.load_from_single_time(one)
    two.eval()
    n_attn = sum(type(m).__name__ == "SelfAttention" for m in two.modules())
    assert n_attn == 1 if not narrow.attn else n_attn > 1  # mid block only, or also at the 4 px level
    x, t, s = torch.randn(5, *shape, dtype=dtype), torch.rand(5, dtype=dtype), torch.rand(5, dtype=dtype)
    y1 = one(t, x)
    assert y1.abs().mean() > 1e-2
    torch.testing.assert_close(two(t, s, x), y1, rtol=1e-4, atol=1e-5)
    c = narrow.channels
    w = two.out.weight.detach()  # reads the last k x c replicated channels
    assert not torch.allclose(w[:, :c], w[:, c : 2 * c])
    torch.testing.assert_close(sum(w[:, i * c : (i + 1) * c] for i in range(k)), one.out.weight, rtol=1e-5, atol=1e-7)
    # replicated channels diverge after one gradient step
    two.train()
    opt = torch.optim.SGD(two.parameters(), lr=0.1)
    two(t, s, x).square().sum().backward()
    opt.step()
    w0 = two.inp.weight.detach()
    assert not torch.allclose(w0[:c], w0[c : 2 * c])


def test_tiny_wide_is_tiny_at_twice_the_width_and_other_pairs_are_refused():
    assert widening(PRESETS["tiny-wide"], PRESETS["tiny"]) == 2
    assert widening(PRESETS["small"], PRESETS["tiny"]) == 0  # more levels, blocks, attention
    assert widening(UNetPreset(64, (1, 2), 1, max_groups=64), PRESETS["tiny"]) == 0  # other time features
    # 32 GroupNorm groups at most in both: at 256 channels a group would mix two groups of the teacher's
    assert widening(UNetPreset(64, (1, 2), 1, n_freq=16), PRESETS["tiny"]) == 0
    one = build_unet(spec(1, 8, 8), "tiny", 1)
    for other in ("small", "tiny"):  # a different net; a narrower student
        with pytest.raises(ValueError, match="incompatible"):
            build_unet(spec(1, 8, 8), other, 2).load_from_single_time(build_unet(spec(1, 8, 8), "tiny-wide", 1))
    with pytest.raises(ValueError, match="incompatible"):
        build_unet(spec(1, 8, 8), "small", 2).load_from_single_time(one)


# parameter counts (recorded in the test ids); the EDM DDPM++ CIFAR-10 net (mults [2,2,2]) has 55.7M
@pytest.mark.parametrize(
    ("preset", "shape", "expected"),
    [
        ("tiny", (1, 8, 8), 715_201),
        ("tiny-wide", (1, 8, 8), 2_841_473),
        ("compact", (1, 28, 28), 691_873),
        ("small", (1, 28, 28), 1_786_529),
        ("mnist", (1, 28, 28), 2_656_353),
        ("cifar10", (3, 32, 32), 62_859_139),
    ],
    ids=["tiny-0.72M", "tiny-wide-2.84M", "compact-0.69M", "small-1.79M", "mnist-2.66M", "cifar10-62.9M"],
)
def test_preset_parameter_counts(preset, shape, expected):
    net = build_unet(spec(*shape), preset, 1)
    assert count_params(net) == expected
    p = PRESETS[preset]
    if preset == "cifar10":
        assert (p.channels, p.mults, p.blocks, p.attn, p.dropout) == (128, (1, 2, 2, 2), 4, (16,), 0.1)
        assert sum(type(m).__name__ == "SelfAttention" for m in net.modules()) == 10  # 16x16: 4 enc + 5 dec; bottom
    if preset == "mnist":
        assert (p.channels, p.mults, p.blocks, p.dropout) == (32, (1, 2, 2), 4, 0.1)


def test_build_net_picks_the_unet_and_rejects_unknown_presets():
    assert NetConfig().unet == "auto"
    assert isinstance(build_net(spec(1, 8, 8), NetConfig(), 1), UNet)
    assert build_net(spec(1, 8, 8), NetConfig(), 1).preset == PRESETS["tiny"]
    assert build_net(spec(1, 28, 28), NetConfig(), 1).preset == PRESETS["compact"]  # the CPU preset above 16 px
    with pytest.raises(BenchError, match="unknown U-Net preset 'huge'"):
        build_unet(spec(1, 8, 8), "huge", 1)


def test_flow_on_digits_end_to_end_with_grids(bench_cli, monkeypatch):
    # a cheap image metric, registered for this test only (the real image metrics have their own tests)
    monkeypatch.setitem(METRICS._items, "test-pixel-mean", MetricSpec("test-pixel-mean", ("image",), _pixel_mean))
    args = ["run", "--method", "flow", "--dataset", "digits", "--smoke", "--set", "train.steps=3"]
    args += ["--set", "train.batch_size=32", "--set", "eval.n_gen=16", "--set", "eval.n_ref=16"]
    args += ["--set", "eval.repeats=1", "--set", "eval.nfe=[1,2]", "--set", "eval.solvers=[euler]"]
    args += ["--set", "eval.timing=false", "--set", "eval.metrics=[test-pixel-mean]"]
    code, out, err = bench_cli(*args)
    assert code == 0, out + err
    (rec,) = bench_cli.records()
    assert rec["status"] == "ok" and rec["data_spec"] == {"kind": "image", "shape": [1, 8, 8], "exact_reference": False}
    assert [(r["solver"], r["nfe_requested"]) for r in rec["rows"]] == [("euler", 1), ("euler", 2)]
    for r in rec["rows"]:
        assert 0 <= r["metrics"]["test-pixel-mean"]["mean"] < 2
        assert r["grid"] == f"grids/digits/{rec['run_id']}/flow-icfm_euler_{r['nfe_requested']}.png"
        with Image.open(bench_cli.results / r["grid"]) as im:
            assert im.mode == "L" and im.size == (2 + 8 * 34, 2 + 8 * 34)
    # a results folder that lost its grids: --grids-only re-draws the same files (same seeds), record untouched
    grids = {r["grid"]: (bench_cli.results / r["grid"]).read_bytes() for r in rec["rows"]}
    before = next(bench_cli.results.glob("runs/**/*.json")).read_bytes()
    for g in grids:
        (bench_cli.results / g).unlink()
    code, out, err = bench_cli("eval", "--run", rec["workdir"], "--grids-only")
    assert code == 0, out + err
    assert {g: (bench_cli.results / g).read_bytes() for g in grids} == grids
    assert next(bench_cli.results.glob("runs/**/*.json")).read_bytes() == before
    code, _, err = bench_cli("eval", "--run", rec["workdir"], "--grids-only", "--timing-only")
    assert code == 2 and "choose one" in err

    # chargen on images, reusing that U-Net teacher: one-step and 2-step rows, a grid per row
    args = ["run", "--method", "chargen", "--dataset", "digits", "--smoke", "--set", "train.batch_size=16"]
    args += ["--set", f"method.teacher.run={rec['run_id']}", "--set", "method.euler_steps=4"]
    args += ["--set", "method.n_traj=32", "--set", "method.fit_steps=2", "--set", "method.compose=[1,2]"]
    # eval.solvers=[]: --smoke on images asks for Euler rows, which would bring the teacher's rows back
    args += ["--set", "method.teacher_solvers=[]", "--set", "eval.solvers=[]", "--set", "eval.nfe=[1]"]
    args += ["--set", "eval.n_gen=16"]
    args += ["--set", "eval.n_ref=16", "--set", "eval.repeats=1", "--set", "eval.timing=false"]
    args += ["--set", "eval.metrics=[test-pixel-mean]"]
    code, out, err = bench_cli(*args)
    assert code == 0, out + err
    ch = next(r for r in bench_cli.records() if r["method"] == "chargen")
    assert ch["extra"]["teacher"]["run"] == rec["run_id"]
    assert sorted(r["nfe"] for r in ch["rows"]) == [1, 2] and all(r["grid"].endswith(".png") for r in ch["rows"])
