"""Methods (installed as ``bench.methods``). Importing this package registers the built-in methods."""

from bench.methods import chargen, flow, gan  # noqa: F401  (registers)
