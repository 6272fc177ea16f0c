"""Figures and the static results page, rendered from synthetic run records (fast, CPU, seeded)."""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.output.leaderboard import train_time
from bench.output.page import render_page
from bench.output.report import pareto_front, plan_report, render_report

SCHEMA = "onestep-bench-record/1"
EVIL = 'gan[<b>&"x"]'  # a label that must come out escaped


def _metric(rng: random.Random, mean: float, proto: dict) -> dict:
    vals = [mean * (1 + 0.1 * rng.uniform(-1, 1)) for _ in range(3)]
    m = sum(vals) / 3
    return {"mean": m, "std": float(np.std(vals, ddof=1)), "values": vals, "protocol": proto}


def _row(rng, label, solver, nfe, metrics: dict, grid: str | None = None, device: str = "cpu (2 threads)") -> dict:
    row = {
        "label": label,
        "solver": solver,
        "nfe_requested": nfe,
        "nfe": float(nfe),
        "metrics": metrics,
        "timing": {
            "per_sample_s": 1e-6 * nfe * (1 + rng.random()),
            "latency_s": 1e-4 * nfe,
            "batch": 256,
            "device": device,
            "ratio_to_forward": float(nfe),
        },
    }
    if grid is not None:
        row["grid"] = grid
    return row


def _record(run_id, method, dataset, kind, seed, rows, floor, workdir, train_s, teacher_s=None) -> dict:
    rec = {
        "schema": SCHEMA,
        "run_id": run_id,
        "status": "ok",
        "method": method,
        "method_label": rows[0]["label"],
        "dataset": dataset,
        "data_spec": {"kind": kind, "shape": [2] if kind == "points" else [1, 8, 8]},
        "seed": seed,
        "params": 1000 + seed,
        "train": {"wall_clock_s": {"fit": train_s}, "total_s": train_s},
        "extra": {},
        "device": "cpu (2 threads)",
        "workdir": str(workdir),
        "config": {"method": {"name": method}, "data": {"name": dataset}, "seed": seed},
        "rows": rows,
        "reference_floor": floor,
    }
    if teacher_s is not None:
        rec["extra"]["teacher"] = {"run": "flow-moons-s0", "train_wall_clock_s": {"teacher": teacher_s}}
    return rec


def _write_records(results: Path, tmp: Path) -> list[dict]:
    rng = random.Random(0)
    w2p = {"n_gen": 500, "n_ref": 500, "repeats": 3, "reference": "fresh samples", "solver": "POT emd2"}
    fdp = {
        "n_gen": 64,
        "n_ref": 64,
        "reference": "train split",
        "extractor": "digits-cnn-v1",
        "weights_sha256": "ab" * 32,
        "comparable": True,
    }
    bad = {**fdp, "comparable": False, "comparable_reason": "n_gen below 2048"}
    floor_pts = {"w2": {"mean": 0.1, "std": 0.01, "values": [0.09, 0.1, 0.11]}}
    floor_img = {"fd_digits": {"mean": 5.0, "std": 0.5, "values": [4.5, 5.0, 5.5], "what": "held-out split"}}
    logdir = tmp / "runs" / "flow-moons-s0"
    logdir.mkdir(parents=True)
    logdir.joinpath("log.jsonl").write_text(
        "".join(
            json.dumps({"stage": "flow", "step": s, "loss": 2.0 / s, "grad_norm": 1.0}) + "\n" for s in (1, 2, 4, 8)
        )
    )
    flow = _record(
        "flow-moons-s0",
        "flow",
        "moons",
        "points",
        0,
        [_row(rng, "flow", "euler", n, {"w2": _metric(rng, 2.0 / n, w2p)}) for n in (1, 2, 4, 8)],
        floor_pts,
        logdir,
        100.0,
    )
    chargen = _record(
        "chargen-moons-s0",
        "chargen",
        "moons",
        "points",
        0,
        [
            _row(rng, "chargen", "onestep", 1, {"w2": _metric(rng, 0.15, w2p)}),
            _row(rng, "chargen", "compose", 2, {"w2": _metric(rng, 0.14, w2p)}),
            _row(rng, "flow (teacher)", "euler", 8, {"w2": _metric(rng, 0.3, w2p)}),
        ],
        floor_pts,
        tmp / "gone" / "chargen-moons-s0",  # no such folder: its loss curves are skipped with a note
        50.0,
        teacher_s=100.0,
    )
    gans = [
        _record(
            f"gan-moons-s{s}",
            "gan",
            "moons",
            "points",
            s,
            [_row(rng, EVIL, "onestep", 1, {"w2": _metric(rng, 0.8, w2p)})],
            floor_pts,
            tmp / "gone" / f"gan-moons-s{s}",
            20.0,
        )
        for s in (0, 1)
    ]
    digits_rows = []
    for solver, n, proto in (("onestep", 1, fdp), ("euler", 4, bad)):
        grid = f"grids/digits/img-digits-s0/{solver}_{n}.png"
        pixels = np.random.default_rng(n).integers(0, 256, size=(34, 34), dtype=np.uint8)
        (results / grid).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(results / grid)
        digits_rows.append(_row(rng, "img", solver, n, {"fd_digits": _metric(rng, 20.0 / n, proto)}, grid))
    digits = _record(
        "img-digits-s0", "img", "digits", "image", 0, digits_rows, floor_img, tmp / "gone" / "img-digits-s0", 30.0
    )
    records = [flow, chargen, *gans, digits]
    for rec in records:
        path = results / "runs" / rec["dataset"] / f"{rec['run_id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=2))
    return records


@pytest.fixture
def results(tmp_path) -> tuple[Path, list[dict]]:
    res = tmp_path / "results"
    return res, _write_records(res, tmp_path)


def _strip_png_metadata(data: bytes) -> bytes:
    """PNG bytes without text and time chunks (the plotting library's metadata)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [data[:8]], 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        chunk = data[i : i + 12 + n]
        assert struct.unpack(">I", chunk[-4:])[0] == zlib.crc32(chunk[4:-4])
        if kind not in (b"tEXt", b"zTXt", b"iTXt", b"tIME"):
            out.append(chunk)
        i += 12 + n
    return b"".join(out)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.rows: list[dict] = []

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "tr" and "data-comparable" in a:
            self.rows.append(a)


def test_figures_and_page_render_byte_identically(results):
    res, _ = results
    paths = render_report(res)
    first = {p: _strip_png_metadata(p.read_bytes()) for p in paths}
    page = render_page(res)
    html1 = page.read_bytes()
    assert render_report(res) == paths
    assert {p: _strip_png_metadata(p.read_bytes()) for p in paths} == first
    assert render_page(res).read_bytes() == html1
    rel = sorted(p.relative_to(res).as_posix() for p in paths)
    assert rel == [
        "figures/digits/quality_vs_nfe.png",
        "figures/digits/quality_vs_time.png",
        "figures/digits/quality_vs_train.png",
        "figures/digits/samples.png",
        "figures/moons/loss.png",
        "figures/moons/quality_vs_nfe.png",
        "figures/moons/quality_vs_time.png",
        "figures/moons/quality_vs_train.png",
    ]
    for p in paths:  # fixed size and DPI: 9 x 4.8 in at 110 dpi; panels grow in height only
        with Image.open(p) as im:
            assert im.size == (990, 528) if p.name.startswith("quality") else im.size[0] == 990


def test_page_is_self_contained_sortable_and_filterable(results):
    res, records = results
    render_report(res)
    text = render_page(res).read_text()
    tags = _Tags()
    tags.feed(text)
    for rec in records:
        assert rec["run_id"] in text
    assert not re.search(r"https?://", text)
    assert 'addEventListener("click"' in text and "rows.sort(" in text
    assert 'type="checkbox" class="comparable-only"' in text and "comparable rows only" in text
    assert "reference floor" in text and "held-out split" in text
    assert tags.imgs and all((res / src).is_file() for src in tags.imgs)
    assert "figures/moons/quality_vs_nfe.png" in tags.imgs and "grids/digits/img-digits-s0/onestep_1.png" in tags.imgs
    record_links = [h for h in tags.links if h.endswith(".json")]
    assert sorted(set(record_links)) == sorted(f"runs/{r['dataset']}/{r['run_id']}.json" for r in records)
    assert all((res / h).is_file() for h in record_links)
    assert len(tags.rows) == 10  # flow 4 + chargen 3 + gan 1 (two seeds, one row) + digits 2
    assert sum(r["data-comparable"] == "false" for r in tags.rows) == 1  # the digits row marked comparable: false
    assert "n_gen below 2048" in text and "weights_sha256" in text and "digits-cnn-v1" in text
    assert EVIL not in text and "gan[&lt;b&gt;&amp;&quot;x&quot;]" in text
    assert text.count("150 s †") == 2  # chargen's two rows: 50 s + its reused teacher's 100 s


def test_plan_names_what_it_skips(results):
    res, _ = results
    notes = plan_report(res).skipped
    # the teacher's rows inside chargen's record get no panel of their own (the teacher's run has its rows)
    assert any(t == "moons" and n.startswith("sample panel for chargen, flow, gan[") for t, n in notes)
    assert ("moons", "loss curves of 3 run(s): no log.jsonl in their workdir on this machine") in notes
    assert not any(t == "digits" and n.startswith("sample panel") for t, n in notes)
    render_report(res)
    assert "no log.jsonl in their workdir" in render_page(res).read_text()


def test_training_cost_counts_a_reused_teacher(results):
    _, records = results
    chargen = next(r for r in records if r["method"] == "chargen")
    assert train_time(chargen, "chargen") == (150.0, True)
    assert train_time(chargen, "flow (teacher)") == (100.0, True)
    assert train_time(records[0], "flow") == (100.0, False)
    in_run = {"train": {"wall_clock_s": {"teacher": 70.0, "fit": 30.0}, "total_s": 100.0}}
    assert train_time(in_run, "chargen") == (100.0, False)
    assert train_time(in_run, "flow (teacher)") == (70.0, False)


def test_pareto_front():
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (0.5, 9.0), (2.0, 2.5)]
    assert pareto_front(pts) == [4, 0, 5, 3]
    assert pareto_front([]) == []


def test_cli_report(results, bench_cli):
    res, _ = results
    code, out, err = bench_cli("report", "--out", str(res))
    assert code == 0, err
    assert str(res / "index.html") in out and str(res / "figures" / "moons" / "loss.png") in out
    assert "not drawn (moons): sample panel" in err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.browser
def test_page_in_a_browser(results):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    res, _ = results
    render_report(res)
    page_path = render_page(res)
    exe = _chromium()
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        except sync_api.Error as e:
            pytest.skip(f"no Chromium for playwright (install one: apt-get install chromium): {str(e)[:200]}")
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            assert errors == []
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert widths and all(w > 0 for w in widths)
            table = "table#t-moons"
            before = page.eval_on_selector_all(f"{table} tbody.rows tr", "rs => rs.map(r => r.cells[3].dataset.sort)")
            page.click(f"{table} thead th:nth-child(4)")  # w2, ascending
            asc = page.eval_on_selector_all(f"{table} tbody.rows tr", "rs => rs.map(r => r.cells[3].dataset.sort)")
            assert asc != before and asc == sorted(before, key=float)
            page.click(f"{table} thead th:nth-child(4)")  # descending
            desc = page.eval_on_selector_all(f"{table} tbody.rows tr", "rs => rs.map(r => r.cells[3].dataset.sort)")
            assert desc == sorted(before, key=float, reverse=True)
            visible = "rs => rs.filter(r => !r.hidden).length"
            n_all = page.eval_on_selector_all("table#t-digits tbody.rows tr", visible)
            page.check("input.comparable-only[data-table=t-digits]")
            assert page.eval_on_selector_all("table#t-digits tbody.rows tr", visible) == n_all - 1
        finally:
            browser.close()


def test_points_sample_panel_from_a_real_run(bench_cli):
    """A points run whose folder is on this machine gets a sample panel drawn from its checkpoint."""
    from bench.output.report import plan_report, render_report

    sets = ["--set", "eval.nfe=[1,4]", "--set", "eval.solvers=[euler]", "--set", "eval.timing=false"]
    code, _, err = bench_cli("run", "--method", "flow", "--dataset", "moons", "--smoke", *sets)
    assert code == 0, err
    paths = render_report(bench_cli.results)
    png = bench_cli.results / "figures" / "moons" / "samples.png"
    assert png in paths and png.stat().st_size > 0
    assert not any(n.startswith("sample panel") for _, n in plan_report(bench_cli.results).skipped)
    first = png.read_bytes()
    render_report(bench_cli.results)
    assert png.read_bytes() == first  # fixed seeds: drawn twice, the same figure


def test_point_panels_one_series_per_method_and_the_cap_is_named(tmp_path, monkeypatch):
    """Each method gets the panels of one series (its own sampler, else Euler), not one per solver or device; a
    method left out by the panel cap is named as such, not as 'no run folder'."""
    from bench.output import report

    def row(method, solver, nfe, run):
        return {
            "method": method,
            "solver": solver,
            "nfe": nfe,
            "nfe_sort": nfe,
            "runs": [run],
            "config": "c",
            "device": "cpu",
        }

    by_id = {}
    for run in ("f", "a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "ckpt.pt").write_bytes(b"")
    rows = [row("flow", s, n, "f") for s in ("dopri5", "euler", "heun") for n in (1, 8)]
    rows += [row("a", "onestep", 1, "a"), row("a", "compose", 2, "a"), row("b", "onestep", 1, "b")]
    for run, label in (("f", "flow"), ("a", "a"), ("b", "b")):
        by_id[run] = {
            "workdir": str(tmp_path / run),
            "rows": [
                {"label": label, "solver": r["solver"], "nfe_requested": r["nfe"]} for r in rows if r["runs"] == [run]
            ],
        }
    table = {"rows": rows}
    panels, capped = report._point_panels(table, by_id)
    assert [(p[3], p[0].split(chr(10))[0]) for p in panels] == [
        ("a", "a"),
        ("a", "a"),
        ("b", "b"),
        ("flow", "flow · euler"),
        ("flow", "flow · euler"),
    ]
    assert capped == []
    monkeypatch.setattr(report, "MAX_PANELS", 3)
    panels, capped = report._point_panels(table, by_id)
    assert [p[3] for p in panels] == ["a", "a", "b"] and capped == ["flow"]
