"""Studies over many runs: budget, manifolds/fit-gap, sweeps, and the fairness check against minimal
re-implementations (bench.studies.fairness)."""
