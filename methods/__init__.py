"""Methods (installed as ``bench.methods``). Importing this package registers the built-in methods."""

from bench.methods import chargen, flow  # noqa: F401  (registers)
