import pytest

from bench.core.config import (
    EvalConfig,
    RunConfig,
    TrainConfig,
    build_run_config,
    eval_memory_bytes,
    from_dict,
    parse_sets,
    run_config_dict,
)
from bench.errors import BenchError
from bench.registry import DATASETS, METHODS, Registry, load_builtins
from bench.run.runner import resolve_config

load_builtins()


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(BenchError, match=r"unknown config key 'eval.n_gem'.*n_gen"):
        from_dict(EvalConfig, {"n_gem": 3}, prefix="eval.")


@pytest.mark.parametrize(
    ("key", "value", "msg"),
    [("n_gen", "many", "expected an integer"), ("timing", 3, "true/false"), ("nfe", ["x"], "integer")],
)
def test_wrong_types(key, value, msg):
    with pytest.raises(BenchError, match=msg):
        from_dict(EvalConfig, {key: value}, prefix="eval.")


def test_yaml_style_scalars_are_coerced():
    cfg = resolve_config("flow", "moons", sets=["train.lr=1e-3", "eval.nfe=8", "method.coupling=ot"])
    assert cfg.train.lr == 1e-3 and cfg.eval.nfe == [8] and cfg.method.coupling == "ot"


def test_literal_choices_are_checked():
    with pytest.raises(BenchError, match="one of 'independent', 'ot'"):
        resolve_config("flow", "moons", sets=["method.coupling=sinkhorn"])


def test_parse_sets_nested():
    assert parse_sets(["a.b=1", "a.c=[1, 2]", "d=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    with pytest.raises(BenchError):
        parse_sets(["novalue"])


def test_malformed_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: {steps: [1, 2\n")
    with pytest.raises(BenchError, match="malformed YAML"):
        resolve_config("flow", "moons", str(p))


def test_precedence_file_then_smoke_then_set(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 999\n  lr: 0.01\nmethod:\n  coupling: ot\n")
    cfg = resolve_config("flow", "moons", str(p), sets=["train.batch_size=32"], smoke=True, seed=3)
    assert cfg.train.steps == 150  # --smoke overrides the file's budget
    assert cfg.train.lr == 0.01 and cfg.method.coupling == "ot" and cfg.train.batch_size == 32 and cfg.seed == 3


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("dataset", ["checkerboard", "gmm"])
def test_every_config_instantiates_and_round_trips(method, dataset):
    cfg = resolve_config(method, dataset)
    assert isinstance(cfg, RunConfig)
    d = run_config_dict(cfg)
    assert d["method"]["name"] == method and d["data"]["name"] == dataset
    assert run_config_dict(build_run_config(d)) == d


@pytest.mark.parametrize("dataset", DATASETS.names())
def test_every_dataset_config_instantiates(dataset):
    try:
        cfg = from_dict(DATASETS.get(dataset).Config, {})
    except BenchError as e:  # a config with a required field (e.g. imagefolder's root) must say which
        assert "data." in str(e)
    else:
        assert cfg is not None


def test_registry_uniqueness():
    r: Registry = Registry("thing")
    r.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", 2)
    with pytest.raises(BenchError, match="valid: a"):
        r.get("b")


@pytest.mark.parametrize("value", ["nan", "-inf", "1e999", float("nan"), float("inf"), 10**400])
def test_float_values_must_be_finite(value):
    """NaN passes every range check (nan <= 0 is False), so it is refused where it is read, naming the key."""
    with pytest.raises(BenchError, match=r"^config key 'train.lr': expected a finite number, got "):
        from_dict(TrainConfig, {"lr": value}, prefix="train.")


@pytest.mark.parametrize("text", ["nan", ".nan", ".inf", "-.inf", "1e999"])
def test_float_overrides_must_be_finite(text):
    with pytest.raises(BenchError, match="'method.t_eps1': expected a finite number"):
        resolve_config("flow", "moons", sets=[f"method.t_eps1={text}"])


@pytest.mark.parametrize(
    "raw",
    [
        {"method": [1, 2], "data": {"name": "moons"}},
        {"method": {"name": "flow"}, "data": {"name": "moons"}, 1: 2, "x": 3},
        {"method": {"name": "flow", 7: 1, "z": 2}, "data": {"name": "moons"}},
    ],
)
def test_ill_shaped_sections_and_non_string_keys_are_errors(raw):
    with pytest.raises(BenchError):
        build_run_config(raw)


def test_yaml_values_that_resolve_but_cannot_build(tmp_path):
    assert parse_sets(["seed=2001-13-01"]) == {"seed": "2001-13-01"}  # kept as text, then refused as not an int
    with pytest.raises(BenchError, match="'seed': expected an integer"):
        resolve_config("flow", "moons", sets=["seed=2001-13-01"])
    p = tmp_path / "c.yaml"
    p.write_text("seed: 2001-13-01\n")
    with pytest.raises(BenchError, match="malformed YAML"):
        resolve_config("flow", "moons", str(p))
    p.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(BenchError, match="cannot be read as text"):
        resolve_config("flow", "moons", str(p))


def test_eval_memory_estimate():
    ev = EvalConfig(n_gen=10, n_ref=20, repeats=2, timing_batch=3, sliced_projections=4)
    samples, timing = 4 * 2 * (10 + 2 * 20), 2 * 4 * 2 * 3
    w2, sw2 = 8 * 2 * (10 + 20) + 8 * 10 * 20 * 3, 8 * (10 + 20 + 2) * 4
    assert eval_memory_bytes(ev, (2,), "points", set(), 3) == samples + timing
    assert eval_memory_bytes(ev, (2,), "points", {"w2", "sw2"}, 3) == samples + timing + w2 + sw2
    assert eval_memory_bytes(ev, (1, 8, 8), "image", set()) == 4 * 64 * 10 + 2 * 4 * 64 * 3  # no reference sets


def test_eval_and_seed_ranges():
    for sets, msg in [
        (["eval.timing_repeats=0"], "timing_repeats >= 1"),
        (["eval.sliced_projections=0"], "sliced_projections >= 1"),
        (["eval.n_ref_images=1"], "n_ref_images"),
        (["seed=-1"], r"seed must be in \[0, "),
        ([f"eval.sample_seed={2**63 - 10}"], r"eval.sample_seed must be in \[0, "),
    ]:
        with pytest.raises(BenchError, match=msg):
            resolve_config("flow", "moons", sets=sets)


def test_legacy_values_fill_only_saved_sections_that_lack_them():
    """A config saved before `time_max_freq` existed (its net section lacks the key) reads back with the
    Fourier features the older code used; one saved today, and non-net sections, are left as they are."""
    from bench.core.config import legacy_filled, resolved_config

    old = {"method": {"name": "flow", "net": {"hidden": 32, "depth": 1, "unet": {}}}, "train": {"steps": 3}}
    filled = legacy_filled(old)
    assert filled["method"]["net"]["time_max_freq"] == 1000.0
    assert "time_max_freq" not in old["method"]["net"]  # a copy
    assert "time_max_freq" not in filled["train"] and "time_max_freq" not in filled["method"]
    new = {"method": {"name": "flow", "net": {"hidden": 32, "depth": 1, "unet": {}, "time_max_freq": 0.0}}}
    assert legacy_filled(new) == new
    assert resolved_config(old)["method"]["net"]["time_max_freq"] == 1000.0


def test_raw_time_feature_and_fourier_features():
    """time_max_freq = 0 feeds t itself (through one linear layer); > 0 gives sin/cos features up to it."""
    import torch
    from bench.methods.nets import FourierTime, NetConfig, TimeMLP

    raw, four = FourierTime(8, max_freq=0.0), FourierTime(8, max_freq=1000.0)
    t = torch.linspace(0, 1, 5)
    assert raw(t).shape == four(t).shape == (5, 8)
    assert raw.net[0].in_features == 1 and four.net[0].in_features == 64
    assert NetConfig().time_max_freq == 0.0
    net = TimeMLP(2, 16, 1, n_times=2)
    assert net(torch.rand(3), torch.rand(3), torch.zeros(3, 2)).shape == (3, 2)


def test_a_section_given_in_part_keeps_the_parents_default_for_the_rest():
    from bench.methods.meanflow import MeanFlowConfig
    from bench.methods.nets import NetConfig

    cfg = from_dict(MeanFlowConfig, {"net": {"unet": "micro"}})  # as --set method.net.unet=micro
    assert cfg.net == NetConfig(unet="micro", unet_time_max_freq=0.0)  # MeanFlow's raw time, not NetConfig's 1,000
    assert from_dict(MeanFlowConfig, {"net": {"unet_time_max_freq": 16}}).net.unet_time_max_freq == 16.0
    with pytest.raises(BenchError, match="unknown config key 'net.widht'"):
        from_dict(MeanFlowConfig, {"net": {"widht": 3}})
