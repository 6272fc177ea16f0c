"""A small CNN trained by the suite on scikit-learn's 8x8 digits: its penultimate layer defines FD_digits.

Data: ``sklearn.datasets.load_digits`` (1,797 images, values 0..16) scaled to uint8 as
``floor(x * 255 / 16 + 0.5)`` and split exactly like the ``digits`` data set (datasets/images.py):
``torch.randperm(1797, generator=torch.Generator().manual_seed(0))``, the first 1,500 indices train, the
other 297 test; so the classifier never sees the test split. Training: Adam, fixed seed, CPU, one
thread, deterministic algorithms, a few seconds.
The weights file is cached (``<cache>/digits_classifier/digits-cnn-v1.pt``), its sha256 goes into every
metric protocol, and it is retrained when absent. The extractor is also registered with torch-fidelity
as ``bench-digits-cnn-v1`` (features ``penultimate`` and ``logits``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.checkpoint import atomic_write_bytes
from bench.datasets.images import DIGITS_N_TRAIN, DIGITS_SPLIT_SEED, digits_split
from bench.errors import BenchError
from bench.metrics.features import FeatureExtractor, default_cache_dir, sha256_file
from bench.pixels import from_uint8

VERSION = "digits-cnn-v1"
TRAIN_SEED = 0
EPOCHS = 20
BATCH = 64
LR = 2e-3
FEATURE_DIM = 64
MIN_TEST_ACCURACY = 0.95
TFID_NAME = "bench-digits-cnn-v1"


class DigitsCNN(nn.Module):
    """conv3x3(32)-ReLU-conv3x3(64)-ReLU-maxpool2 -> fc(64) [features, pre-activation] -> ReLU -> fc(10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def embed(self, u8: Tensor) -> Tensor:
        """Penultimate-layer features of uint8 (N, 1, 8, 8) images (pixels mapped to [-1, 1] first)."""
        x = from_uint8(u8)
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc1(x.flatten(1))

    def forward(self, u8: Tensor) -> Tensor:
        return self.fc2(F.relu(self.embed(u8)))


def train_classifier() -> tuple[dict[str, Tensor], float]:
    """Train :class:`DigitsCNN` deterministically; returns (state dict, test accuracy)."""
    xtr, ytr, xte, yte = digits_split()
    was_det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TRAIN_SEED)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)  # one thread: a fixed reduction order (and no oversubscription on busy CPUs)
        try:
            net = DigitsCNN()
            opt = torch.optim.Adam(net.parameters(), lr=LR)
            g = torch.Generator().manual_seed(TRAIN_SEED)
            steps = EPOCHS * ((len(xtr) + BATCH - 1) // BATCH)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            for _ in range(EPOCHS):
                perm = torch.randperm(len(xtr), generator=g)
                for idx in perm.split(BATCH):
                    loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
            net.eval()
            with torch.no_grad():
                acc = float((net(xte).argmax(1) == yte).float().mean())
        finally:
            torch.use_deterministic_algorithms(was_det)
            torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, acc


@dataclass
class DigitsClassifier:
    net: DigitsCNN
    path: Path
    sha256: str
    test_accuracy: float


def classifier_path(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "digits_classifier" / f"{VERSION}.pt"


def _load(path: Path) -> DigitsClassifier:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("version") != VERSION:
        raise BenchError(f"{path} is not a {VERSION} classifier file; delete it to retrain")
    net = DigitsCNN()
    net.load_state_dict(payload["state_dict"])
    net.eval().requires_grad_(False)
    return DigitsClassifier(net, path, sha256_file(path), float(payload["test_accuracy"]))


_MEMO: dict[str, DigitsClassifier] = {}


def load_or_train(cache_dir: str | Path | None = None) -> DigitsClassifier:
    """The cached classifier, trained (and written atomically) when its file is absent."""
    path = classifier_path(cache_dir)
    memo = _MEMO.get(str(path))
    if memo is not None and path.is_file() and sha256_file(path) == memo.sha256:
        return memo
    if not path.is_file():
        sd, acc = train_classifier()
        if acc < MIN_TEST_ACCURACY:
            raise RuntimeError(f"{VERSION} reached only {acc:.3f} test accuracy (< {MIN_TEST_ACCURACY})")
        buf = io.BytesIO()
        torch.save(
            {"version": VERSION, "state_dict": sd, "test_accuracy": acc, "split_seed": DIGITS_SPLIT_SEED,
             "train_seed": TRAIN_SEED, "epochs": EPOCHS, "n_train": DIGITS_N_TRAIN},
            buf,
        )  # fmt: skip
        atomic_write_bytes(path, buf.getvalue())
    clf = _load(path)
    _MEMO[str(path)] = clf
    return clf


class DigitsExtractor(FeatureExtractor):
    """FD_digits features: the classifier's 64-d penultimate layer on native 8x8 grayscale images."""

    name = VERSION
    engine = "bench"
    resize = "none (native 1x8x8)"
    resize_mode = "none"
    dim = FEATURE_DIM
    batch_size = 2048

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.clf = load_or_train(cache_dir)
        self.weights_sha256 = self.clf.sha256
        self.weights_official = True  # the suite's own, reproducible by retraining
        self.test_accuracy = self.clf.test_accuracy

    @torch.no_grad()
    def features(self, u8: Tensor) -> Tensor:
        if u8.dtype != torch.uint8 or tuple(u8.shape[1:]) != (1, 8, 8):
            raise BenchError(f"FD_digits needs uint8 (N, 1, 8, 8) images, got {u8.dtype} {tuple(u8.shape)}")
        return self.clf.net.embed(u8)

    def describe(self) -> dict:
        return {**super().describe(), "classifier_test_accuracy": self.test_accuracy}


def _register_with_torch_fidelity() -> None:
    """Register the classifier as a torch-fidelity feature extractor (``feature_extractor=TFID_NAME``)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    class TorchFidelityDigits(FeatureExtractorBase):
        """torch-fidelity wrapper; ``feature_extractor_weights_path`` = the cached classifier file
        (default: the suite's cache, trained if absent). Loaded with ``weights_only=True``."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            path = feature_extractor_weights_path
            self.net = (_load(Path(path)) if path else load_or_train()).net

        def forward(self, x):
            if x.dtype != torch.uint8:
                raise ValueError("expecting uint8 images")
            f = self.net.embed(x)
            out = {"penultimate": f, "logits": self.net.fc2(F.relu(f))}
            return tuple(out[k] for k in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return ("penultimate", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    if TFID_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(TFID_NAME, TorchFidelityDigits)


_register_with_torch_fidelity()
