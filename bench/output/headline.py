"""``python -m bench.output.headline``: the README's headline table from the benchmark's records: for each job of the
``points`` suite, its NFE-1 W2 per data set (mean ± sample std over all seed x repeat values, the leaderboard's
convention, and how many training seeds that data set has) and training passes, the teacher's Euler NFE 128 and the
reference floor on top. Written between ``<!-- headline -->`` markers of README.md."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from bench.core.records import scan_records
from bench.core.stats import mean_std
from bench.output.leaderboard import benchmark_run_ids, fmt_count, network_passes, split_tables
from bench.run.benchmark import plan

START, END = "<!-- headline -->", "<!-- /headline -->"


def _cell(values: list[float], seeds: int | None = None) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    text = f"{m:.3f} ± {s:.3f}" if len(values) > 1 else f"{m:.3f}"
    return text if seeds is None else f"{text} ({seeds})"


def headline(results: Path, suite: str = "points") -> str:
    jobs = [p for p in plan(results / "benchmark.yaml") if p.suite == suite]
    datasets = list(dict.fromkeys(p.dataset for p in jobs))
    records, _ = scan_records(results)
    by_id = {r["run_id"]: r for r in records}
    tables = {t["title"]: t for t in split_tables(records, benchmark_run_ids(results)) if t["kind"] == "main"}
    head = "| method (benchmark job) | NFE | " + " | ".join(f"{d} W2 (seeds) | passes" for d in datasets) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(datasets))]
    floor = []
    for d in datasets:
        t = next((t for title, t in tables.items() if title.split(" ")[0] == d), None)
        floor.append(_cell(t["floor"].get("w2", [])) if t else "-")
    lines.append("| *reference floor* | - | " + " | ".join(f"{f} | -" for f in floor) + " |")
    rows = []
    for job in dict.fromkeys(p.job for p in jobs):
        for nfe, solver in ((1, None), (128, "euler")) if job == "flow" else ((1, None),):
            cells, key = [], []
            for d in datasets:
                vals, passes, seeds = [], [], set()
                for p in jobs:
                    rec = by_id.get(p.run_id)
                    if p.job != job or p.dataset != d or rec is None:
                        continue
                    for row in rec["rows"]:
                        ok = row["nfe_requested"] == nfe and not row["label"].endswith("(teacher)")
                        if ok and (solver is None or row["solver"] == solver) and "w2" in row["metrics"]:
                            vals += row["metrics"]["w2"]["values"]
                            if (n := network_passes(rec, row)) is not None:
                                passes.append(n)
                            seeds.add(p.seed)
                            break
                cells.append(f"{_cell(vals, len(seeds))} | {fmt_count(statistics.fmean(passes)) if passes else '-'}")
                key.append(statistics.fmean(vals) if vals else float("inf"))
            label = f"{job}" + (f" (Euler {nfe})" if solver else "")
            rows.append((key[0], f"| {label} | {nfe} | " + " | ".join(cells) + " |"))
    lines += [r for _, r in sorted(rows)]
    return "\n".join(lines)


def write(readme: Path, results: Path) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"error: {readme} has no {START} ... {END} block")
    a, b = text.index(START) + len(START), text.index(END)
    readme.write_text(text[:a] + "\n" + headline(results) + "\n" + text[b:])


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"), Path("results"))
