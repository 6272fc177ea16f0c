"""The ``bench`` command line (Typer + rich): one module per command group, all registered on one app.

common.py   the app, consoles, option types, progress and the checks before any work
train.py    run, train, sample, eval
results.py  leaderboard, list, report
studies.py  study, sweep
doctor.py   doctor (--gpu: the GPU check)
"""

from __future__ import annotations

import contextlib
import os
import sys

import typer

# each registers its commands on the app, in the order `bench --help` lists them
from bench.cli import train  # noqa: F401

# isort: split
from bench.cli import results, studies  # noqa: F401

# isort: split
from bench.cli import doctor  # noqa: F401

# isort: split
from bench.cli.common import PlainProgress, app, console, error
from bench.cli.results import describe
from bench.errors import BenchError

__all__ = ["PlainProgress", "app", "describe", "main"]


def main() -> None:
    """Console entry point: user errors (bad names, keys, values, paths, usage) print one line and exit 2."""
    ok = False
    try:
        code = app(standalone_mode=False) if len(sys.argv) > 1 else app()
        ok = code in (None, 0)
    except BenchError as e:
        error(str(e))
        sys.exit(2)
    except typer.TyperException as e:  # click's usage errors (unknown option, bad int, ...), one line here too
        usage = getattr(getattr(e, "ctx", None), "command_path", None)
        error(e.format_message() + (f" (see `{usage} --help`)" if usage else ""))  # type: ignore[attr-defined]
        sys.exit(getattr(e, "exit_code", 2))
    except (KeyboardInterrupt, typer.Abort):
        console.print("interrupted")
        sys.exit(130)
    finally:  # leave the process group before exit: gloo threads alive at exit abort the process
        dist = sys.modules.get("bench.core.distributed")
        in_group = dist is not None and dist.current().active
        if dist is not None:
            with contextlib.suppress(Exception):  # a peer already gone must not turn the exit into a traceback
                dist.shutdown(sync=ok)
        if in_group and ok:
            # a torchrun rank that finished cleanly skips the interpreter's teardown: gloo's C++ objects being
            # destroyed there still aborted a rank now and then (std::terminate) after a complete, written run
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 0)
    if isinstance(code, int) and code != 0:
        sys.exit(code)
