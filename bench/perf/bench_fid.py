"""Benchmark of the FID feature path: images/s vs torch-fidelity on the same images and extractor, and
peak memory vs n_gen. Uses the digits classifier (Inception is too slow on CPU and needs weights).

    python -m bench.perf.bench_fid [--out results/bench/fid_throughput.json] [--quick]

Throughput: the same uint8 images (sklearn digits tiled to ``n``) through (a) our path
(``feature_set_from_u8_batches``: extractor + float64 running statistics) and (b) torch-fidelity's
``get_featuresdict_from_dataset`` with the same extractor registered in torch-fidelity; median of repeats.
Memory: one fresh subprocess per n_gen streams generated samples (``bench.eval.sampling.Samples``) through
the FD_digits statistics; peak RSS (``ru_maxrss``) minus the peak after a one-batch warm-up run, with
and without keeping per-sample features (KID/PR need them: n_gen x dim x 4 bytes).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BATCH = 256


def _tiled_digits(n: int) -> torch.Tensor:
    from bench.datasets.images import digits_u8

    x, _ = digits_u8()
    reps = -(-n // len(x))
    return x.repeat(reps, 1, 1, 1)[:n].contiguous()


def throughput(n: int, repeats: int, cache_dir: Path) -> dict:
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from bench.eval.metrics.digits_classifier import TFID_NAME, DigitsExtractor
    from bench.eval.metrics.features import feature_set_from_u8_batches

    u8 = _tiled_digits(n)
    ours = DigitsExtractor(cache_dir)
    ours.batch_size = BATCH
    theirs = create_feature_extractor(
        TFID_NAME, ["penultimate"], cuda=False, feature_extractor_weights_path=str(ours.clf.path), verbose=False
    )

    class U8(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(u8)

        def __getitem__(self, i: int) -> torch.Tensor:
            return u8[i]

    def run_ours() -> None:
        feature_set_from_u8_batches(u8.split(BATCH), ours, keep_features=False)

    def run_theirs() -> None:
        get_featuresdict_from_dataset(U8(), theirs, BATCH, False, True, False)

    times: dict[str, list[float]] = {"ours": [], "torch_fidelity": []}
    run_ours(), run_theirs()  # warm-up
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for name, fn in (("ours", run_ours), ("torch_fidelity", run_theirs)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "n_images": n,
        "batch": BATCH,
        "repeats": repeats,
        "images_per_s": {k: n / v for k, v in med.items()},
        "median_s": med,
        "all_s": times,
        "ratio_ours_over_torch_fidelity": med["torch_fidelity"] / med["ours"],
        "note": "ours includes the float64 running mean/covariance; torch-fidelity only collects features",
    }


_CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
from bench.eval.metrics.digits_classifier import DigitsExtractor
from bench.eval.metrics.features import generated_feature_set
from bench.eval.sampling import Samples

class M:
    noise_shape = (1, 8, 8)
    def sample(self, z, point):
        return torch.tanh(z), 1

n, keep, cache = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
ex = DigitsExtractor(cache)
generated_feature_set(Samples(M(), None, 2500, 0, 2500, torch.device("cpu")), ex, {}, keep)  # warm-up: one batch
gen = Samples(M(), None, n, 0, 2500, torch.device("cpu"))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fs = generated_feature_set(gen, ex, {}, keep)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n_gen": n, "keep_features": keep, "rss_base_mib": base / 1024, "rss_peak_mib": peak / 1024,
                  "peak_minus_base_mib": (peak - base) / 1024, "n_stats": fs.n}))
"""


def memory(ns: list[int], cache_dir: Path) -> list[dict]:
    rows = []
    for keep in (False, True):
        for n in ns:
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(n), "1" if keep else "0", str(cache_dir)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench/fid_throughput.json"))
    ap.add_argument("--quick", action="store_true", help="smaller sizes (CI smoke)")
    ap.add_argument("--memory-only", action="store_true", help="re-measure memory, keep the file's throughput")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        from bench.eval.metrics.digits_classifier import load_or_train

        clf = load_or_train(cache)
        n_tp = 5_000 if args.quick else 50_000
        ns = [1_000, 4_000] if args.quick else [2_000, 8_000, 32_000, 128_000]
        res = {
            "what": "FD_digits feature path (digits-cnn-v1): our streaming path vs torch-fidelity, CPU",
            "device": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "classifier_sha256": clf.sha256,
            "classifier_test_accuracy": clf.test_accuracy,
            "throughput": json.loads(args.out.read_text())["throughput"]
            if args.memory_only and args.out.is_file()
            else throughput(n_tp, 3 if args.quick else 5, cache),
            "memory": memory(ns, cache),
            "max_rss_parent_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from bench.core.checkpoint import atomic_write_json

    atomic_write_json(args.out, res)
    print(json.dumps({"throughput": res["throughput"]["images_per_s"], "memory": res["memory"]}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
