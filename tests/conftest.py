"""Shared test helpers: run the real CLI in-process and capture its exit code and output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


class BenchCLI:
    def __init__(self, tmp: Path, capsys) -> None:
        self.tmp, self.capsys = tmp, capsys
        self.results = tmp / "results"
        self.runs = tmp / "runs"

    def __call__(self, *args: str, dirs: bool = True) -> tuple[int, str, str]:
        from bench.cli import main

        argv = ["bench", *args]
        if dirs and args and args[0] in ("run", "eval", "study"):
            argv += ["--out", str(self.results)]
        if dirs and args and args[0] in ("run", "train", "study"):
            argv += ["--runs-dir", str(self.runs)]
        old = sys.argv
        sys.argv = argv
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv = old
        cap = self.capsys.readouterr()
        return code, cap.out, cap.err

    def records(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.results.glob("runs/**/*.json"))]


@pytest.fixture
def bench_cli(tmp_path, capsys) -> BenchCLI:
    return BenchCLI(tmp_path, capsys)
