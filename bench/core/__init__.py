"""The engine's foundations: typed configs, checkpoints and atomic writes, processes, row files, network
swaps, resource caps, ODE solvers, summary statistics and the run record format. Imports only the public base
(bench.errors, bench.registry, bench.pixels)."""
