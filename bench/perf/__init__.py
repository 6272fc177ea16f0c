"""The suite's own benchmarks (speed, memory, FLOPs, FID cost, the main job, the GPU check): scripts run with
``python -m bench.perf.<name>``, whose results are committed under results/bench/."""
