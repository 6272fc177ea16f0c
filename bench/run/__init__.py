"""A run end to end: the training engine, the runner (train, evaluate, write the record) and the benchmark plan
(results/benchmark.yaml expanded into runs)."""
