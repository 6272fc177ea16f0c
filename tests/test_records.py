"""Run records that survive: corrupt files skipped with a reason, one writer at a time, re-evaluations
merged (never silently replaced), same-seed copies counted once, and the compact leaderboard."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import os
import statistics
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.core.records import (
    LOCK_NAME,
    SCHEMA,
    load_records,
    merge_records,
    record_path,
    record_problem,
    scan_records,
    write_record,
)
from bench.errors import BenchError
from bench.output.leaderboard import build_tables, render, render_all, render_markdown
from bench.output.targets import render_targets

REF = "fresh samples of the exact data law"


def _row(
    nfe: int | None = 4,
    w2: tuple[float, ...] = (0.30, 0.32),
    *,
    label: str = "flow[icfm]",
    solver: str = "euler",
    n_gen: int = 5000,
    per_sample_s: float = 1e-4,
    device: str = "cpu (2 threads)",
    load: float | None = None,
) -> dict:
    proto = {"n_gen": n_gen, "n_ref": n_gen, "repeats": len(w2), "reference": REF, "solver": "POT emd2"}
    timing = {"per_sample_s": per_sample_s, "ratio_to_forward": 2.0, "latency_s": 1e-3, "batch": 256, "device": device}
    if load is not None:
        timing["load_avg_1min"] = load
    return {
        "label": label,
        "solver": solver,
        "nfe_requested": nfe,
        "nfe": float(nfe or 50),
        "metrics": {
            "w2": {"mean": statistics.fmean(w2), "values": list(w2), "protocol": {**proto, "hit_cap": False}},
            "sw2": {"mean": statistics.fmean(w2) / 2, "values": [v / 2 for v in w2], "protocol": proto},
        },
        "timing": timing,
    }


def _record(run_id: str, rows: list[dict], *, seed: int = 0, date: str = "2026-11-28T10:00:00Z", steps: int = 100,
            dataset: str = "moons", threads: int | None = 2, **extra) -> dict:  # fmt: skip
    return {
        "run_id": run_id,
        "status": "ok",
        "method": "flow",
        "dataset": dataset,
        "data_spec": {"kind": "points"},
        "seed": seed,
        "config": {
            "method": {"name": "flow"},
            "data": {"name": dataset, "n_train": 0},
            "train": {"steps": steps},
            "eval": {"n_gen": 5000, "nfe": sorted({r["nfe_requested"] or 0 for r in rows})},
            "seed": seed,
        },
        "params": 1234,
        "train": {"wall_clock_s": {"flow": 60.0}, "total_s": 60.0},
        "device": "cpu (2 threads)",
        "date": date,
        "git_commit": "abc",
        "rows": rows,
        "reference_floor": {"w2": {"values": [0.1, 0.11], "what": REF}},
        "timing_reference": {"per_sample_s": 5e-5, "threads": threads} if threads else {"per_sample_s": 5e-5},
        **extra,
    }


def _put(results: Path, rel: str, data: bytes | str) -> Path:
    p = results / "runs" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def _md_table(md: str, title: str) -> list[list[str]]:
    """The cells of the Markdown table under ``## title``: header first."""
    part = md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in part.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in rows]


# 1. corrupt records ------------------------------------------------------------------------------------


def test_corrupt_and_incomplete_records_are_skipped_with_a_reason(tmp_path):
    res = tmp_path / "results"
    assert write_record(res, _record("good", [_row(4)])).action == "new"
    full = json.dumps({"schema": SCHEMA, **_record("trunc", [_row(4)])})
    no_config = {"schema": SCHEMA, **_record("noconf", [_row(4)])}
    del no_config["config"]
    no_metrics = {"schema": SCHEMA, **_record("nometrics", [_row(4)])}
    del no_metrics["rows"][0]["metrics"]
    bad_timing = {"schema": SCHEMA, **_record("badtiming", [_row(4)])}
    bad_timing["rows"][0]["timing"]["per_sample_s"] = "fast"
    files = {
        "moons/trunc.json": (full[: len(full) // 2], "not valid JSON"),
        "moons/garbage.json": (b"\x00\xff\xfe garbage", "not UTF-8 text"),
        "moons/empty.json": ("", "not valid JSON (Expecting value at line 1 column 1)"),
        "moons/list.json": ("[1, 2]", "not a JSON object"),
        "moons/other.json": ('{"schema": "someone-else/2"}', "schema 'someone-else/2'"),
        "moons/noconf.json": (json.dumps(no_config), "missing key 'config'"),
        "moons/nometrics.json": (json.dumps(no_metrics), "rows[0] lacks 'metrics'"),
        "digits/badtiming.json": (json.dumps(bad_timing), "rows[0].timing.per_sample_s is not a number"),
    }
    for rel, (data, _) in files.items():
        _put(res, rel, data)

    records, skipped = scan_records(res)
    assert [r["run_id"] for r in records] == ["good"] and load_records(res) == records
    reasons = {p.relative_to(res / "runs").as_posix(): why for p, why in skipped}
    assert set(reasons) == set(files)
    for rel, (_, want) in files.items():
        assert want in reasons[rel] and "\n" not in reasons[rel]

    r = render_all(res)  # nothing raised: the good record is rendered, the others are named
    assert [(p.relative_to(res).as_posix(), why) for p, why in r.skipped] == [
        (p.relative_to(res).as_posix(), why) for p, why in skipped
    ]
    md = r.md.read_text()
    assert "| flow[icfm] | euler | 4 | 0.3100 ± 0.0141 |" in md
    tail = md.split("## Skipped record files\n", 1)[1]
    assert f"- `runs/moons/trunc.json`: {reasons['moons/trunc.json']}" in tail
    assert all(f"`runs/{rel}`" in tail for rel in files)
    first = r.md.read_bytes(), r.csv.read_bytes()
    render(res)  # the compatibility wrapper renders the same bytes
    assert (r.md.read_bytes(), r.csv.read_bytes()) == first


def test_bench_leaderboard_command_survives_a_truncated_record(bench_cli):
    res = bench_cli.results
    write_record(res, _record("good", [_row(4)]))
    _put(res, "moons/broken.json", '{"schema": "onestep-bench-record/1", "run_id": "bro')
    code, _, err = bench_cli("leaderboard", "--out", str(res), "-q")
    assert code == 0, err
    md = (res / "LEADERBOARD.md").read_text()
    assert "flow[icfm]" in md and "`runs/moons/broken.json`: not valid JSON" in md


def test_write_record_refuses_records_the_leaderboard_could_not_read(tmp_path):
    bad = _record("x", [_row(4)])
    del bad["rows"][0]["solver"]
    with pytest.raises(BenchError, match=r"rows\[0\] lacks 'solver'"):
        write_record(tmp_path, bad)
    assert not record_path(tmp_path, "moons", "x").exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_RECORD_KEYS = sorted(_record("f", [_row(4)]))
_ROW_KEYS = sorted(_row(4))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from([("record", k) for k in _RECORD_KEYS] + [("row", k) for k in _ROW_KEYS]),
    value=json_values,
    delete=st.booleans(),
    cut=st.integers(min_value=0, max_value=4000),
)
def test_fuzzed_records_are_read_or_skipped_never_a_traceback(where, value, delete, cut):
    rec = {"schema": SCHEMA, **_record("fuzz", [_row(4), _row(8)], extra={"teacher": {"train_wall_clock_s": {}}})}
    target = rec if where[0] == "record" else rec["rows"][0]
    if delete:
        target.pop(where[1], None)
    else:
        target[where[1]] = value
    text = json.dumps(rec)
    with tempfile.TemporaryDirectory() as d:
        res = Path(d)
        _put(res, "moons/fuzz.json", text)
        _put(res, "moons/cut.json", text[:cut])
        records, skipped = scan_records(res)
        assert len(records) + len(skipped) == 2
        assert all(why and "\n" not in why for _, why in skipped)
        for rec_ok in records:
            assert record_problem(rec_ok) is None
        tables = build_tables(records)  # a record that passed the check renders
        render_markdown(tables, [("x", why) for _, why in skipped])
        render_targets(records)


# 2. one writer per record; leaderboard rendered under a lock --------------------------------------------


def _writer(results: str, k: int, barrier) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    barrier.wait(timeout=60)
    for j in range(3):
        write_record(Path(results), _record(f"run-{k}-{j}", [_row(4, (0.3 + k / 100, 0.31))], seed=k * 10 + j))
    # every process re-evaluates one shared run at its own NFE: merges under the lock lose no row
    write_record(Path(results), _record("shared", [_row(100 + k)], date=f"2026-11-28T10:00:{k:02d}Z"))
    render_all(Path(results))


def test_eight_processes_write_and_render_at_once(tmp_path):
    res = tmp_path / "results"
    write_record(res, _record("shared", [_row(1)]))
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_writer, args=(str(res), k, barrier)) for k in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * 8

    for k in range(8):
        for j in range(3):
            rec = json.loads(record_path(res, "moons", f"run-{k}-{j}").read_text())  # exists, valid JSON
            assert rec["run_id"] == f"run-{k}-{j}"
    shared = json.loads(record_path(res, "moons", "shared").read_text())
    assert sorted(r["nfe_requested"] for r in shared["rows"]) == [1, *range(100, 108)]
    assert [h["action"] for h in shared["history"]] == ["merged"] * 8
    records, skipped = scan_records(res)
    assert len(records) == 25 and skipped == []
    assert not list(res.glob("**/*.tmp"))

    md, csv_path = res / "LEADERBOARD.md", res / "leaderboard.csv"
    after = md.read_bytes(), csv_path.read_bytes()
    render_all(res)
    assert (md.read_bytes(), csv_path.read_bytes()) == after
    assert _md_table(md.read_text(), "moons")[1][0] == "*reference floor*"
    nfe4 = next(r for r in build_tables(records)[0]["rows"] if r["nfe"] == 4)
    assert nfe4["seeds"] == 24 and len(nfe4["values"]["w2"]) == 48


def test_a_held_lock_gives_a_clear_error_after_the_timeout(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    other = FileLock(str(res / LOCK_NAME))  # another holder (as another process would be)
    with other:
        with pytest.raises(BenchError, match="is busy: no lock on .*within 0.2 s"):
            write_record(res, _record("a", [_row(4)]), timeout=0.2)
        with pytest.raises(BenchError, match="is busy"):
            render_all(res, timeout=0.2)
    assert not record_path(res, "moons", "a").exists()
    assert write_record(res, _record("a", [_row(4)]), timeout=0.2).action == "new"


# 3. records never silently replaced ---------------------------------------------------------------------


def test_reevaluation_with_the_same_protocol_merges_rows(tmp_path):
    first = _record("r", [_row(1), _row(4), _row(16), _row(None, solver="dopri5")], threads=2)
    write_record(tmp_path, first)
    # `bench eval --set eval.nfe=[2,4]`: NFE 2 is new, NFE 4 is re-measured, the others are not touched
    again = _record("r", [_row(2, (0.5, 0.6)), _row(4, (0.2, 0.22))], date="2026-11-29T10:00:00Z", threads=1)
    w = write_record(tmp_path, again)
    assert w.action == "merged" and str(w).endswith("r.json (merged)")
    path, action = w
    rec = json.loads(path.read_text())
    assert [(r["solver"], r["nfe_requested"]) for r in rec["rows"]] == [
        ("euler", 1),
        ("euler", 4),
        ("euler", 16),
        ("dopri5", None),
        ("euler", 2),
    ]
    by_nfe = {r["nfe_requested"]: r for r in rec["rows"]}
    assert by_nfe[4]["metrics"]["w2"]["values"] == [0.2, 0.22] and by_nfe[1]["metrics"] == _row(1)["metrics"]
    # each kept row still says how many threads timed it (its own record's), the new ones theirs
    assert by_nfe[1]["timing"]["threads"] == 2 and by_nfe[4]["timing"]["threads"] == 1
    (h,) = rec["history"]
    assert h["action"] == "merged" and h["added"] == [["flow[icfm]", "euler", 2]]
    assert h["replaced"] == [["flow[icfm]", "euler", 4]] and len(h["kept"]) == 3
    assert h["previous"]["date"] == "2026-11-28T10:00:00Z" and rec["date"] == "2026-11-29T10:00:00Z"
    # the leaderboard counts each (run, row) once: NFE 4 holds the re-measured values only
    (t,) = build_tables(load_records(tmp_path))
    assert sorted(r["nfe_sort"] for r in t["rows"]) == [1, 2, 4, 16, 10**9]
    assert next(r for r in t["rows"] if r["nfe_sort"] == 4)["values"]["w2"] == [0.2, 0.22]
    # re-timing (same rows, same protocol) merges again and keeps the history
    assert write_record(tmp_path, {**rec, "date": "2026-11-30T10:00:00Z"}).action == "merged"
    assert len(json.loads(path.read_text())["history"]) == 2


def test_another_protocol_writes_a_new_version_and_keeps_the_old_one(tmp_path):
    old = _record("r", [_row(1), _row(4), _row(8), _row(16)])
    write_record(tmp_path, old)
    new = _record("r", [_row(2, n_gen=2000), _row(4, n_gen=2000)], date="2026-11-29T10:00:00Z")
    w = write_record(tmp_path, new)
    assert w.action == "new version"
    rec = json.loads(w.path.read_text())
    assert [r["nfe_requested"] for r in rec["rows"]] == [2, 4]
    (h,) = rec["history"]
    assert h["action"] == "new version" and "w2 protocol changed: n_gen 5000 -> 2000; n_ref 5000 -> 2000" in h["reason"]
    assert [r["nfe_requested"] for r in h["superseded"]["rows"]] == [1, 4, 8, 16]  # nothing lost
    assert h["superseded"]["date"] == "2026-11-28T10:00:00Z"
    (t,) = build_tables(load_records(tmp_path))  # only the current version is on the board
    assert json.loads(t["key"][2])[0] == 2000 and len(t["rows"]) == 2


def test_merge_rules_in_isolation():
    old = {"schema": SCHEMA, **_record("r", [_row(1)])}
    diverged = {**_record("r", []), "status": "diverged"}
    action, out = merge_records(old, diverged)
    assert action == "new version" and "status ok -> diverged" in out["history"][0]["reason"]
    action, out = merge_records(out, _record("r", [_row(4)]))  # after a divergence: a new version again
    assert action == "new version" and [h["action"] for h in out["history"]] == ["new version"] * 2
    retrained = _record("r", [_row(1)], steps=200)  # a resumed run trained further under the same id
    action, out = merge_records(old, retrained)
    assert action == "new version" and out["history"][0]["reason"] == "training config changed: train.steps 100 -> 200"
    grown = _record("r", [_row(4)])
    grown["config"]["train"]["new_option"] = 1  # a key added to the config since the run: not a change
    assert merge_records(old, grown)[0] == "merged"
    other_metric = _record("r", [{**_row(1), "metrics": {"fid": {**_row(1)["metrics"]["w2"]}}}])
    assert merge_records(old, other_metric)[0] == "new version"


def test_write_record_never_overwrites_another_runs_record_and_sets_aside_an_unreadable_one(tmp_path):
    path = record_path(tmp_path, "moons", "r")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema": SCHEMA, **_record("someone-else", [_row(1)])}))
    with pytest.raises(BenchError, match="another run's record"):
        write_record(tmp_path, _record("r", [_row(1)]))
    path.write_text('{"run_id": "r", "rows": [')
    w = write_record(tmp_path, _record("r", [_row(1)]))
    assert w.action == "new version"
    (aside,) = path.parent.glob("r.json.unreadable-*")
    assert aside.read_text() == '{"run_id": "r", "rows": ['
    assert aside.name in json.loads(path.read_text())["history"][0]["reason"]
    assert scan_records(tmp_path)[1] == []  # the kept bytes are out of the records' glob


def test_two_files_of_one_run_count_once(tmp_path):
    write_record(tmp_path, _record("r", [_row(4, (0.3, 0.3))]))
    copy = {"schema": SCHEMA, **_record("r", [_row(4, (0.9, 0.9))], date="2026-12-01T00:00:00Z")}
    _put(tmp_path, "moons/r.v2.json", json.dumps(copy))
    records, skipped = scan_records(tmp_path)
    assert [r["date"] for r in records] == ["2026-12-01T00:00:00Z"]
    ((p, why),) = skipped
    assert p.name == "r.json" and why == "older copy of run r (counted once, from runs/moons/r.v2.json)"


# 4. same-seed copies are one measurement ----------------------------------------------------------------


def test_same_seed_copies_count_once_distinct_seeds_aggregate(tmp_path):
    write_record(tmp_path, _record("a-s0-old", [_row(4, (0.9, 0.9))], seed=0, date="2026-11-28T10:00:00Z"))
    write_record(tmp_path, _record("b-s0-new", [_row(4, (0.3, 0.3))], seed=0, date="2026-11-28T12:00:00Z"))
    write_record(tmp_path, _record("c-s0-mid", [_row(4, (0.8, 0.8))], seed=0, date="2026-11-28T11:00:00Z"))
    write_record(tmp_path, _record("d-s1", [_row(4, (0.5, 0.5))], seed=1))
    write_record(tmp_path, _record("e-s0-longer", [_row(4, (0.1, 0.1))], seed=0, steps=999))  # another config
    (t,) = build_tables(load_records(tmp_path))
    base, longer = sorted(t["rows"], key=lambda r: r["seeds"], reverse=True)
    assert base["seeds"] == 2 and sorted(base["values"]["w2"]) == [0.3, 0.3, 0.5, 0.5]  # newest copy of seed 0
    assert base["copies_dropped"] == 2 and base["runs"] == ["b-s0-new", "d-s1"]
    assert longer["seeds"] == 1 and longer["copies_dropped"] == 0 and longer["values"]["w2"] == [0.1, 0.1]
    assert t["dropped_runs"] == ["a-s0-old", "c-s0-mid"] and t["ambiguous"] == ["flow[icfm]"]
    md = render_all(tmp_path).md.read_text()
    head, _floor, *rows = _md_table(md, "moons")
    assert head[7] == "seeds" and sorted(r[7] for r in rows) == ["1", "2 (+2 dup)"]
    assert "`+k dup`: k same-seed copies of the config not counted (PROTOCOL.md, Seeds): `a-s0-old`, `c-s0-mid`." in md
    assert f"flow[icfm] `{base['config']}`" in md  # one label, two configs: the hash tells them apart
    rows = list(csv.DictReader(io.StringIO((tmp_path / "leaderboard.csv").read_text())))
    w2 = [r for r in rows if r["metric"] == "w2" and r["method"] == "flow[icfm]" and r["copies_dropped"] == "2"]
    assert len(w2) == 1 and w2[0]["n_values"] == "4" and w2[0]["runs"] == "b-s0-new d-s1"


def test_a_reevaluated_run_keeps_its_config_group(tmp_path):
    """eval.nfe chooses rows, it does not make another experiment: seeds still aggregate after a re-eval."""
    a = _record("a", [_row(4)], seed=0)
    b = _record("b", [_row(4)], seed=1)
    b["config"]["eval"]["nfe"] = [1, 2, 4]
    write_record(tmp_path, a)
    write_record(tmp_path, b)
    ((row,),) = [t["rows"] for t in build_tables(load_records(tmp_path))]
    assert row["seeds"] == 2


def test_runs_saved_before_a_defaulted_option_existed_share_the_row_of_later_runs(tmp_path):
    """A record lacking keys added since (top-level or nested) is hashed with their defaults, so a method's
    seeds recorded on both sides of such a change stay one row (it used to split 2 + 1 seeds); a changed value
    still makes another row."""
    from bench.methods.nets import NetConfig

    from bench.core.config import TrainConfig

    old = _record("old", [_row(4)], seed=0)
    new = _record("new", [_row(4)], seed=1)
    new["config"]["train"]["grad_clip"] = TrainConfig().grad_clip
    new["config"]["method"]["net"] = {"hidden": NetConfig().hidden}  # nested, partial
    other = _record("other", [_row(4)], seed=2)
    other["config"]["method"]["net"] = {"hidden": NetConfig().hidden + 1}
    for r in (old, new, other):
        write_record(tmp_path, r)
    ((a, b),) = [t["rows"] for t in build_tables(load_records(tmp_path))]
    assert sorted((r["seeds"], tuple(r["runs"])) for r in (a, b)) == [(1, ("other",)), (2, ("new", "old"))]


def test_records_of_a_plugin_method_not_loaded_here_are_grouped_as_saved(tmp_path):
    recs = [_record(f"p{s}", [_row(4)], seed=s) for s in (0, 1)]
    for r in recs:
        r["method"] = r["config"]["method"]["name"] = "my-plugin-method"
        write_record(tmp_path, r)
    ((row,),) = [t["rows"] for t in build_tables(load_records(tmp_path))]
    assert row["seeds"] == 2


# 5-6. compact Markdown leaderboard, cost column --------------------------------------------------------


def test_compact_markdown_marks_loaded_rows_teacher_time_passes_and_groups_by_device(tmp_path):
    write_record(tmp_path, _record("cpu-loaded", [_row(4, load=3.5)], threads=2, seed=0))
    write_record(tmp_path, _record("cpu-at-cores", [_row(8, load=2.0)], threads=2, seed=0))
    write_record(tmp_path, _record("cpu-unknown", [_row(16, load=9.0)], threads=None, seed=0))
    write_record(tmp_path, _record("gpu", [_row(4, device="NVIDIA H200", per_sample_s=1e-6)], seed=1))
    student = _record(
        "student",
        [_row(1, (0.2, 0.2), label="chargen[K=8]", solver="onestep"), _row(2, label="flow[icfm] (teacher)")],
        extra={"teacher": {"run": "flow-x", "train_wall_clock_s": {"teacher": 540.0}}},
        train={"wall_clock_s": {"trajectories": 30.0, "fit": 30.0}, "total_s": 60.0, "cost": {"network_passes": 1.5e9}},
    )
    write_record(tmp_path, student)
    own_teacher = _record("own", [_row(1, label="chargen[K=9]", solver="onestep"), _row(3, label="t (teacher)")])
    own_teacher["extra"] = {"teacher": {"train_wall_clock_s": {"teacher": 10.0}}}
    own_teacher["train"] = {"wall_clock_s": {"teacher": 10.0, "fit": 50.0}, "total_s": 60.0}
    write_record(tmp_path, own_teacher)
    r = render_all(tmp_path)
    md = r.md.read_text()
    head, floor, *rows = _md_table(md, "moons")
    assert head == ["method", "solver", "NFE", "w2", "time/sample", "× fwd", "train", "train passes", "seeds", "device"]
    assert floor[:4] == ["*reference floor*", "-", "-", "0.1050 ± 0.0071"]
    cell = {(x[0], x[2], x[9]): dict(zip(head, x, strict=True)) for x in rows}
    # grouped by device: the H200 row is its own row, after the CPU ones
    assert [x[9] for x in rows] == ["NVIDIA H200"] + ["cpu (2 threads)"] * 7
    assert cell[("flow[icfm]", "4", "NVIDIA H200")]["time/sample"] == "1.00 µs"
    assert cell[("flow[icfm]", "4", "cpu (2 threads)")]["time/sample"] == "100.00 µs †"  # 3.5 > 2 threads
    assert cell[("flow[icfm]", "8", "cpu (2 threads)")]["time/sample"] == "100.00 µs"  # 2.0 is not above 2
    assert cell[("flow[icfm]", "16", "cpu (2 threads)")]["time/sample"] == "100.00 µs"  # no count recorded
    ch = cell[("chargen[K=8]", "1", "cpu (2 threads)")]
    assert ch["train"] == "10.0 min ‡" and ch["train passes"] == "1.5G"  # 60 s + the reused teacher's 540 s
    assert cell[("chargen[K=9]", "1", "cpu (2 threads)")]["train"] == "60 s"  # its teacher is already in
    assert cell[("flow[icfm] (teacher)", "2", "cpu (2 threads)")]["train"] == "540 s ‡"  # the teacher alone
    assert cell[("t (teacher)", "3", "cpu (2 threads)")]["train"] == "10 s"  # trained in the run: its stage
    assert cell[("flow[icfm]", "4", "cpu (2 threads)")]["train passes"] == "-"
    assert (
        "† timed at a 1-min load average above the cores" in md
        and "‡ includes (a `(teacher)` row: is) the training wall-clock of a teacher reused" in md
    )
    assert "- other metrics in `leaderboard.csv`: `sw2`" in md and "| sw2" not in md
    # the wide table: every metric, protocol, passes, the load, run ids
    rows_csv = list(csv.DictReader(io.StringIO(r.csv.read_text())))
    assert {x["metric"] for x in rows_csv} == {"w2", "sw2"}
    st_w2 = next(x for x in rows_csv if x["runs"] == "student" and x["metric"] == "w2")
    assert st_w2["train_network_passes"] == "1500000000" and st_w2["train_s"] == "600"
    assert st_w2["train_includes_reused_teacher"] == "yes" and st_w2["n_gen"] == "5000" and st_w2["reference"] == REF
    loaded = next(x for x in rows_csv if x["runs"] == "cpu-loaded" and x["metric"] == "w2")
    assert loaded["loaded"] == "yes" and loaded["load_avg_1min"] == "3.5" and loaded["cores"] == "2"
    before = r.md.read_bytes(), r.csv.read_bytes()
    render_all(tmp_path)
    assert (r.md.read_bytes(), r.csv.read_bytes()) == before


def test_no_train_passes_column_without_costs_and_an_empty_board(tmp_path):
    md = render_all(tmp_path).md.read_text()
    assert "No run records yet" in md and "Skipped" not in md
    write_record(tmp_path, _record("a", [_row(4)]))
    head = _md_table(render_all(tmp_path).md.read_text(), "moons")[0]
    assert "train passes" not in head and head[-2:] == ["seeds", "device"]


def test_main_table_rows_are_sorted_by_their_methods_best_quality_at_nfe_1():
    """A main table lists methods best-first at NFE 1 (each method's rows together, by solver and NFE), not by name."""
    recs = [
        _record("a", [_row(1, (0.9, 0.9), label="aaa", solver="onestep"), _row(4, (0.1,), label="aaa")]),
        _record("b", [_row(1, (0.2, 0.2), label="bbb", solver="onestep"), _row(2, (0.15,), label="bbb")], seed=1),
        _record("c", [_row(1, (0.5, 0.5), label="ccc", solver="onestep")], seed=2),
    ]
    (t,) = build_tables(recs, main=True)
    assert [(r["method"], r["nfe_sort"]) for r in t["rows"]] == [
        ("bbb", 1),
        ("bbb", 2),
        ("ccc", 1),
        ("aaa", 1),
        ("aaa", 4),
    ]


def test_thread_counts_do_not_split_a_row_and_its_time_is_the_quiet_setting(tmp_path):
    for seed, device, load, t in [(0, "cpu (2 threads)", 0.1, 2e-5), (1, "cpu (1 threads)", 1.9, 9e-5),
                                  (2, "cpu (1 threads)", 1.7, 8e-5)]:  # fmt: skip
        row = _row(1, (0.2 + seed / 100,), device=device, load=load, per_sample_s=t)
        write_record(tmp_path, _record(f"s{seed}", [row], seed=seed, threads=int(device[5])))
    head, _floor, *rows = _md_table(render_all(tmp_path).md.read_text(), "moons")
    assert len(rows) == 1  # one recipe, one NFE: one row over the three seeds
    cell = dict(zip(head, rows[0], strict=True))
    assert cell["seeds"] == "3" and cell["w2"].startswith("0.2100")
    assert cell["time/sample"] == "20.00 µs" and cell["device"] == "cpu (2 threads), timed 1 of 3 runs"  # no †
