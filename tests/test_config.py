import pytest

from bench.config import EvalConfig, RunConfig, build_run_config, from_dict, parse_sets, run_config_dict
from bench.errors import BenchError
from bench.registry import DATASETS, METHODS, Registry
from bench.runner import load_builtins, resolve_config

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
