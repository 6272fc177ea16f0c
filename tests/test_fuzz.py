"""Hostile input never gives a traceback (issue 11): hypothesis over the config loader and over the CLI.

The loader (``parse_sets`` -> ``build_run_config`` -> ``validate_eval``) gets every type in every place:
ints (huge, negative), floats (NaN, Inf, huge), unicode strings, booleans, None, empty lists and nested
junk. It either builds a config whose floats are all finite and which round-trips, or raises ``BenchError``.
The CLI runs in-process as ``bench run --dry-run --smoke`` (everything resolved and checked, the data set
and method built, nothing trained): exit 0, or exit 2 with exactly one line on stderr; nothing is written.
"""

import math
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.core.config import EvalConfig, TrainConfig, build_run_config, parse_sets, run_config_dict
from bench.errors import BenchError
from bench.registry import DATASETS, METHODS, load_builtins
from bench.run.runner import validate_eval

load_builtins()

# image data sets need files (or build U-Nets): the CLI cases stay on points, milliseconds each
POINTS = [n for n, c in DATASETS.items() if c.__module__ != "bench.datasets.images"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["nan", ".nan", "inf", "-.inf", "1e999", "1e-3", "", "~", "2001-13-01", "[", "{a: 1}", "é∂\u0000"]),
)
junk = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=6), kids, max_size=3)),
    max_leaves=6,
)
# numbers of the right type but the wrong size come first: they pass the type check and reach the range checks
numbers = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, -1.0, 0, -1, 1, 2**63, -(2**63), 10**30])
values = st.one_of(numbers, st.floats(), st.integers(), junk)


def _paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of a config dataclass, nested sections (``NetConfig``, ``NetConfig | None``) included."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        out.append(prefix + f.name)
        sub = [t for t in (typing.get_args(hints[f.name]) or (hints[f.name],)) if is_dataclass(t)]
        if sub:
            out += _paths(sub[0], f"{prefix}{f.name}.")
    return out


TRAIN_KEYS = _paths(TrainConfig)
EVAL_KEYS = _paths(EvalConfig)


def _keys(mname: str, dname: str) -> list[str]:
    """Every dotted key a run config with this method and data set accepts."""
    return (
        ["method." + k for k in _paths(METHODS.get(mname).Config)]
        + ["data." + k for k in _paths(DATASETS.get(dname).Config)]
        + ["train." + k for k in TRAIN_KEYS]
        + ["eval." + k for k in EVAL_KEYS]
        + ["seed"]
    )


MOSTLY = [False] * 7 + [True]  # sampled_from(MOSTLY): True one time in eight


@st.composite
def raw_configs(draw) -> dict:
    """A raw config as YAML + --set would produce it: a valid method and data set (now and then a junk name
    or a junk section) and up to four keys, mostly known ones, set to junk of every type."""
    mname, dname = draw(st.sampled_from(METHODS.names())), draw(st.sampled_from(DATASETS.names()))
    raw: dict = {"method": {"name": mname}, "data": {"name": dname}}
    if draw(st.sampled_from(MOSTLY)):
        raw[draw(st.sampled_from(["method", "data"]))]["name"] = draw(junk)
    keys = _keys(mname, dname)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.text(max_size=8)) if draw(st.sampled_from(MOSTLY)) else draw(st.sampled_from(keys))
        _assign(raw, key, draw(values))
    if draw(st.sampled_from(MOSTLY)):
        raw[draw(st.sampled_from(["method", "data", "train", "eval", "seed", "extra"]))] = draw(junk)
    return raw


def _assign(raw: dict, key: str, value) -> None:
    """raw[a][b][c] = value for key "a.b.c", as a later --set would (a non-mapping on the way is replaced)."""
    *head, last = key.split(".")
    node = raw
    for h in head:
        if not isinstance(node.get(h), dict):
            node[h] = {}
        node = node[h]
    node[last] = value


def _floats(obj) -> list[float]:
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _floats(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _floats(v)]
    return []


@settings(max_examples=400, deadline=None, database=None)
@given(raw_configs())
def test_config_loader_builds_a_finite_config_or_says_why(raw):
    try:
        cfg = build_run_config(raw)
        validate_eval(cfg)
    except BenchError as e:
        assert str(e).strip()
        return
    d = run_config_dict(cfg)
    assert all(math.isfinite(x) for x in _floats(d)), d
    assert run_config_dict(build_run_config(d)) == d


set_values = st.one_of(
    st.sampled_from(["nan", ".inf", "-.inf", "1e999", "-1", "0", "1e-300", "1e300", "[]", "[[]]", "{}", "~", "''"]),
    st.sampled_from(["true", "2001-13-01", "!!float x", "&a [*a]", "*a", "[1, 2", "é∂", "9" * 5000, "{a: {b: [1]}}"]),
    st.integers().map(str),
    st.floats().map(repr),
    st.text(max_size=12),
    junk.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["train.lr", "eval.nfe", "seed", "a.b.c"]), st.text(max_size=8)), set_values
        ),
        max_size=4,
    )
)
def test_parse_sets_then_loader(pairs):
    items = [f"{k}={v}" for k, v in pairs]
    try:
        over = parse_sets(items)
        cfg = build_run_config({"method": {"name": "flow"}, "data": {"name": "moons"}, **over})
        validate_eval(cfg)
    except BenchError as e:
        assert str(e).strip()
        return
    assert all(math.isfinite(x) for x in _floats(run_config_dict(cfg)))


@st.composite
def cli_args(draw) -> list[str]:
    """``bench run --dry-run --smoke`` with a valid method and data set (now and then a junk name) and up to
    four ``--set`` of hostile values on train/eval/seed keys (and junk keys), --seed and --threads junk."""
    method, dataset = draw(st.sampled_from(METHODS.names())), draw(st.sampled_from(POINTS))
    hostile = ["train." + k for k in TRAIN_KEYS] + ["eval." + k for k in EVAL_KEYS] + ["seed"]
    sets = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.text(max_size=8)) if draw(st.sampled_from(MOSTLY)) else draw(st.sampled_from(hostile))
        sets += ["--set", f"{key}={draw(set_values)}"]
    if draw(st.sampled_from(MOSTLY)):  # method/data sizes allocate when built: wrong types and small sizes only
        mine = [k for k in _keys(method, dataset) if k.startswith(("method.", "data."))]
        value = draw(st.one_of(st.integers(0, 64).map(str), st.sampled_from(["nan", "[]", "x", "{}", "-.inf", "~"])))
        sets += ["--set", f"{draw(st.sampled_from(mine))}={value}"]
    if draw(st.sampled_from(MOSTLY)):
        method = draw(st.text(max_size=8))
    if draw(st.sampled_from(MOSTLY)):
        dataset = draw(st.text(max_size=8))
    args = ["run", "--dry-run", "--smoke", "--method", method, "--dataset", dataset, *sets]
    if draw(st.sampled_from(MOSTLY)):
        args += ["--seed", str(draw(st.integers(-(2**65), 2**65)))]
    if draw(st.sampled_from(MOSTLY)):
        args += ["--threads", str(draw(st.integers(-1, 3)))]
    return args


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=cli_args(), where=st.sampled_from(["ok", "file", "under_file", "nul"]))
def test_cli_never_tracebacks_and_writes_nothing(bench_cli, args, where):
    tmp = bench_cli.tmp
    (tmp / "a_file").write_text("x")
    out = {"ok": tmp / "results", "file": tmp / "a_file", "under_file": tmp / "a_file" / "r", "nul": "r\0s"}[where]
    before = sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*"))
    code, stdout, err = bench_cli(*args, "--out", str(out), "--runs-dir", str(tmp / "runs"), dirs=False)
    assert code in (0, 2), (args, err)
    if code == 2:
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (args, err)
    else:
        resolved = yaml.safe_load(stdout)
        assert where == "ok" and "dry run" in err and resolved["method"]["name"] == args[4], (args, err)
        assert all(math.isfinite(x) for x in _floats(resolved)), args
    assert sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*")) == before, args
