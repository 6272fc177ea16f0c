"""Image data sets: ``digits`` (bundled), ``mnist``, ``fashion-mnist``, ``cifar10`` (local files first) and
``imagefolder``.

Every image data set holds its splits as uint8 ``(N, C, H, W)`` tensors and exposes the interface the
metrics rely on: :meth:`ImageDataset.split_u8`, :meth:`ImageDataset.data_id`, ``train_batch`` and
``reference`` (both in [-1, 1] through :func:`bench.pixels.from_uint8`). Reference samples come from the
**training** split (the literature's FID reference), whatever ``n_train`` says.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from bench.datasets.base import Dataset, DataSpec
from torch import Tensor

from bench.core.checkpoint import atomic_path
from bench.errors import BenchError
from bench.pixels import from_uint8
from bench.registry import register_dataset


def _check_n_train(n_train: int) -> None:
    if n_train < 0:
        raise BenchError("data.n_train must be >= 0 (0 = the whole training split)")


def _try_download(download, enabled: bool) -> str:
    """Run ``download`` when allowed; returns the end of the missing-files message (what was tried)."""
    if not enabled:
        return "or set data.download=true (--set data.download=true) on a machine with network access"
    try:
        download()
    except Exception as e:  # noqa: BLE001 - any download failure becomes part of the one message
        return (
            f"the download was tried (download failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        )
    return "the download was tried"


class ImageDataset(Dataset):
    """Base class: subclasses implement :meth:`_load` (one split as uint8 ``(N, C, H, W)``).

    ``n_train > 0`` restricts *training batches* to a fixed random subset of the training split
    (chosen with seed ``10_000 + run seed``, as for the synthetic data); ``split_u8("train")`` and
    ``reference`` always use the whole training split.
    """

    name: ClassVar[str] = "image"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    smoke: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: Any, seed: int = 0) -> None:
        self.cfg = cfg
        self._u8: dict[str, Tensor] = {}
        self._ids: dict[str, str] = {}
        train = self.split_u8("train")
        super().__init__(DataSpec(self.name, "image", tuple(train.shape[1:]), exact_reference=False), 0, seed)
        self.n_train = cfg.n_train
        self._pool: Tensor | None = None
        if 0 < cfg.n_train < len(train):
            g = torch.Generator().manual_seed(10_000 + seed)
            self._pool = torch.randperm(len(train), generator=g)[: cfg.n_train].sort().values

    def _load(self, split: str) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def measure_std(self) -> float:
        """The std of the training split's pixels in [-1, 1] (exact, from the uint8 histogram)."""
        counts = torch.bincount(self.split_u8("train").flatten(), minlength=256).double()
        v = from_uint8(torch.arange(256, dtype=torch.uint8)).double()
        mean = (counts * v).sum() / counts.sum()
        return float(((counts * (v - mean) ** 2).sum() / (counts.sum() - 1)).sqrt())

    def split_u8(self, split: str) -> Tensor:
        """The whole split as uint8 ``(N, C, H, W)`` (loaded once, then cached)."""
        if split not in self.splits:
            raise BenchError(f"data set {self.name!r} has no split {split!r}; valid: {', '.join(self.splits)}")
        if split not in self._u8:
            x = self._load(split)
            if x.dtype != torch.uint8 or x.ndim != 4 or len(x) == 0:
                raise BenchError(
                    f"{self.name} {split}: expected non-empty uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
                )
            self._u8[split] = x.contiguous()
        return self._u8[split]

    def data_id(self, split: str) -> str:
        """Stable identity for caches: name, split, C x H x W, n and a content hash of the uint8 split."""
        if split not in self._ids:
            x = self.split_u8(split)
            digest = hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
            c, h, w = x.shape[1:]
            self._ids[split] = f"{self.name}:{split}:{c}x{h}x{w}:n{len(x)}:{digest}"
        return self._ids[split]

    def train_batch(self, n: int, gen: torch.Generator) -> Tensor:
        """``n`` training images drawn with replacement (from the ``n_train`` subset if set), in [-1, 1]."""
        train = self.split_u8("train")
        if self._pool is None:
            idx = torch.randint(0, len(train), (n,), generator=gen)
        else:
            idx = self._pool[torch.randint(0, len(self._pool), (n,), generator=gen)]
        return from_uint8(train[idx])

    def reference(self, n: int, seed: int) -> Tensor:
        """``n`` seeded random training images in [-1, 1], without replacement while ``n <= N`` (larger ``n``
        concatenates further seeded permutations)."""
        train = self.split_u8("train")
        g = torch.Generator().manual_seed(seed)
        reps = -(-n // len(train))
        idx = torch.cat([torch.randperm(len(train), generator=g) for _ in range(reps)])[:n]
        return from_uint8(train[idx])

    def floor_reference(self, n: int, seed: int) -> tuple[Tensor, str]:
        """The held-out ``test`` split (a seeded subset of at most ``n`` images) against the training
        reference: what a model that generalises perfectly would score. Without a test split the floor is
        resampled training images, i.e. what a model that *memorises* its training set would score, and the
        returned line says so."""
        if "test" not in self.splits:
            return self.reference(n, seed), (
                f"training images resampled (n={n}): a memorising model's score, not a generalisation floor "
                f"({self.name} has no held-out split)"
            )
        test = self.split_u8("test")
        k = min(n, len(test))
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:k]
        note = f"held-out test split (n={k}) vs the training reference: a perfectly generalising model's score"
        if k < n:
            note += f" at n={k} (generated sets use n={n}; Fréchet distances are biased upward at small n)"
        return from_uint8(test[idx]), note


# ----------------------------------------------------------------------------------------------
# digits (scikit-learn, bundled)


@dataclass
class DigitsConfig:
    n_train: int = 0  # 0 = all 1500 training images; N > 0 = a fixed random subset for training batches

    def validate(self) -> None:
        _check_n_train(self.n_train)


DIGITS_SPLIT_SEED = 0
DIGITS_N_TRAIN = 1500


def digits_u8() -> tuple[Tensor, Tensor]:
    """All 1,797 sklearn digits as uint8 ``(N, 1, 8, 8)`` images (``floor(v * 255 / 16 + 0.5)``) and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()  # images (1797, 8, 8) float64 in 0..16
    u8 = np.floor(d.images * 255.0 / 16.0 + 0.5).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(u8)[:, None], torch.from_numpy(d.target.astype(np.int64))


def digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: the suite's one digits split, used by the data set and by
    the FD_digits classifier. ``torch.randperm(1797, generator=torch.Generator().manual_seed(0))``; the
    first 1,500 indices are ``train``, the remaining 297 ``test`` (fixed, independent of the run seed)."""
    x, y = digits_u8()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    tr, te = perm[:DIGITS_N_TRAIN], perm[DIGITS_N_TRAIN:]
    return x[tr], y[tr], x[te], y[te]


@register_dataset("digits")
class Digits(ImageDataset):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, UCI), 1 channel, no download; the split
    is :func:`digits_split`'s."""

    Config = DigitsConfig
    name = "digits"

    def _load(self, split: str) -> Tensor:
        x_train, _, x_test, _ = digits_split()
        return x_train if split == "train" else x_test


# ----------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (torchvision's classes over the idx files)


@dataclass
class MNISTConfig:
    root: str = "data"  # holds <root>/MNIST/raw/ (or <root>/FashionMNIST/raw/) with the four idx files
    download: bool = False  # try torchvision's download when the files are missing (needs network)
    n_train: int = 0  # 0 = all 60,000 training images; N > 0 = a fixed random subset for training batches
    pad_to_32: bool = False  # zero-pad (black, -1) 28x28 -> 32x32

    def validate(self) -> None:
        _check_n_train(self.n_train)
        if not self.root:
            raise BenchError("data.root must not be empty")


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class _MNISTLike(ImageDataset):
    """Loaded with torchvision's class (``download=False``: it reads the raw idx files, no checksum)."""

    Config = MNISTConfig
    smoke: ClassVar[dict[str, Any]] = {"n_train": 2048}
    tv_class: ClassVar[str] = "MNIST"
    url_hint: ClassVar[str] = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    # system copies (read-only; their files, plain or .gz, are unpacked into <root>/<tv_class>/raw/ on first use)
    system_dirs: ClassVar[tuple[str, ...]] = ("/usr/share/datasets/mnist",)
    apt_package: ClassVar[str] = ""  # Debian package that installs them, named in the missing-files error

    def __init__(self, cfg: MNISTConfig, seed: int = 0) -> None:
        self._ensure_files(cfg)
        super().__init__(cfg, seed)

    def raw_dir(self, cfg: MNISTConfig) -> Path:
        return Path(cfg.root) / self.tv_class / "raw"

    def _missing(self, raw: Path) -> list[str]:
        return [f for f in MNIST_FILES if not (raw / f).is_file()]

    def _ensure_files(self, cfg: MNISTConfig) -> None:
        import torchvision

        raw = self.raw_dir(cfg)
        for f in self._missing(raw):  # the official .gz files are accepted and unpacked next to them
            gz = raw / (f + ".gz")
            if not gz.is_file():  # then a system copy (e.g. Debian's dataset-fashion-mnist)
                sys_file = next(
                    (Path(d) / n for d in self.system_dirs for n in (f + ".gz", f) if (Path(d) / n).is_file()), None
                )
                if sys_file is not None and sys_file.suffix != ".gz":
                    raw.mkdir(parents=True, exist_ok=True)
                    with atomic_path(raw / f) as tmp:
                        shutil.copyfile(sys_file, tmp)
                    continue
                gz = sys_file or gz
            if gz.is_file():
                try:  # unpacked to a temporary file and renamed: a kill never leaves a truncated idx file
                    raw.mkdir(parents=True, exist_ok=True)
                    with atomic_path(raw / f) as tmp, gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                except OSError as e:
                    raise BenchError(f"cannot unpack {gz}: {e}") from None
        how = _try_download(
            lambda: getattr(torchvision.datasets, self.tv_class)(cfg.root, train=True, download=True),
            cfg.download and bool(self._missing(raw)),
        )
        missing = self._missing(raw)
        if missing:
            raise BenchError(
                f"{self.name} not found: expected {', '.join(str(raw / f) for f in MNIST_FILES)} "
                f"(missing: {', '.join(missing)}; the official .gz files are also accepted); "
                f"put the files from {self.url_hint} there (--set data.root=DIR to change {cfg.root!r})"
                + (
                    f" or `apt-get install {self.apt_package}` (read from {', '.join(self.system_dirs)})"
                    if self.apt_package
                    else ""
                )
                + f", {how}"
            )

    def _tv(self, split: str) -> Any:
        import torchvision

        if split not in self.splits:
            raise BenchError(f"data set {self.name!r} has no split {split!r}; valid: {', '.join(self.splits)}")
        try:
            return getattr(torchvision.datasets, self.tv_class)(self.cfg.root, train=split == "train", download=False)
        except (RuntimeError, AssertionError, ValueError, TypeError, OSError) as e:
            raise BenchError(f"cannot read {self.name} idx files in {self.raw_dir(self.cfg)}: {e!r}") from None

    def labels(self, split: str) -> Tensor:
        """The class labels (int64, one per image of :meth:`split_u8`), for the suite's classifier metrics."""
        y = torch.as_tensor(self._tv(split).targets, dtype=torch.int64)
        if len(y) != len(self.split_u8(split)):
            raise BenchError(f"{self.name} {split}: {len(y)} labels for {len(self.split_u8(split))} images")
        return y

    def _load(self, split: str) -> Tensor:
        x = self._tv(split).data
        if x.dtype != torch.uint8 or x.ndim != 3:
            raise BenchError(f"{self.name} {split}: expected uint8 (N, 28, 28) images, got {x.dtype} {tuple(x.shape)}")
        x = x[:, None]
        if self.cfg.pad_to_32:
            x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=0)
        return x


@register_dataset("mnist")
class MNIST(_MNISTLike):
    """MNIST (LeCun et al.), 1 x 28 x 28 (or 32 x 32 padded), 60,000 train / 10,000 test."""

    name = "mnist"
    tv_class = "MNIST"


@register_dataset("fashion-mnist")
class FashionMNIST(_MNISTLike):
    """Fashion-MNIST (Xiao et al.), same idx format and sizes as MNIST."""

    name = "fashion-mnist"
    tv_class = "FashionMNIST"
    url_hint = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
    apt_package = "dataset-fashion-mnist"


# ----------------------------------------------------------------------------------------------
# CIFAR-10 (the "python version" pickle batches, read directly)


@dataclass
class CIFAR10Config:
    root: str = "data"  # holds <root>/cifar-10-batches-py/
    download: bool = False  # try torchvision's download when the files are missing (needs network)
    n_train: int = 0  # 0 = all 50,000 training images; N > 0 = a fixed random subset for training batches
    verify: bool = True  # check every file against the official md5 (torchvision's list); false = any copy

    def validate(self) -> None:
        _check_n_train(self.n_train)
        if not self.root:
            raise BenchError("data.root must not be empty")


CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of lists and numpy arrays only (the CIFAR format); anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; avoid the deprecation shim
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One CIFAR python batch -> (uint8 (N, 3, 32, 32), labels); the documented format: a pickled dict with
    ``data`` (N x 3072 uint8, 1024 R then G then B values, row-major) and ``labels``."""
    with open(path, "rb") as f:
        entry = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError("not a dict")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"'data' must be uint8 N x 3072, got {data.dtype} {data.shape}")
    labels = list(entry.get("labels", entry.get("fine_labels", [])))
    return data.reshape(-1, 3, 32, 32), labels


@register_dataset("cifar10")
class CIFAR10(ImageDataset):
    """CIFAR-10 (Krizhevsky), 3 x 32 x 32, 50,000 train / 10,000 test.

    Files are read by :func:`read_cifar_batch` (a restricted unpickler: arrays and lists only), not by
    torchvision's class, because that class refuses any file whose md5 is not the official one. The md5
    check is done here instead (``verify``, default on, with torchvision's checksums); ``verify=false``
    accepts other copies, whose content hash is still part of :meth:`data_id`. torchvision is used to
    download when ``download=true``.
    """

    Config = CIFAR10Config
    name = "cifar10"
    smoke: ClassVar[dict[str, Any]] = {"n_train": 2048}

    def __init__(self, cfg: CIFAR10Config, seed: int = 0) -> None:
        self.folder = Path(cfg.root) / "cifar-10-batches-py"
        self._ensure_files(cfg)
        super().__init__(cfg, seed)

    def _missing(self) -> list[str]:
        return [f for f in CIFAR10_FILES if not (self.folder / f).is_file()]

    def _ensure_files(self, cfg: CIFAR10Config) -> None:
        import torchvision
        from torchvision.datasets.utils import check_integrity

        how = _try_download(
            lambda: torchvision.datasets.CIFAR10(cfg.root, train=True, download=True),
            cfg.download and bool(self._missing()),
        )
        missing = self._missing()
        if missing:
            raise BenchError(
                f"cifar10 not found: expected {self.folder}/data_batch_1 .. data_batch_5, test_batch, batches.meta "
                f"(missing: {', '.join(missing)}); unpack cifar-10-python.tar.gz from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html into {cfg.root} "
                f"(--set data.root=DIR to change it), {how}"
            )
        if cfg.verify:
            tv = torchvision.datasets.CIFAR10
            md5 = dict(tv.train_list + tv.test_list + [[tv.meta["filename"], tv.meta["md5"]]])
            bad = [f for f in CIFAR10_FILES if not check_integrity(str(self.folder / f), md5[f])]
            if bad:
                raise BenchError(
                    f"cifar10 files in {self.folder} are not the official ones (md5 mismatch: {', '.join(bad)}); "
                    "replace them with the official files, or --set data.verify=false to use this copy anyway"
                )

    def _load(self, split: str) -> Tensor:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        parts = []
        for f in names:
            try:
                parts.append(read_cifar_batch(self.folder / f)[0])
            except (pickle.UnpicklingError, ValueError, KeyError, EOFError, OSError) as e:
                raise BenchError(f"cannot read CIFAR-10 batch {self.folder / f}: {e}") from None
        return torch.from_numpy(np.concatenate(parts))


# ----------------------------------------------------------------------------------------------
# imagefolder


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class ImageFolderConfig:
    root: str = ""  # the folder of images (searched recursively)
    resolution: int = 32  # output H = W
    channels: int = 3  # 1 (grayscale, "L") or 3 (RGB)
    resize: Literal["center-crop", "stretch"] = "center-crop"  # shorter side -> resolution then crop, or squash
    mixed_modes: Literal["convert", "error"] = "convert"  # images whose mode differs from L/RGB (e.g. RGB vs L)
    mixed_sizes: Literal["resize", "error"] = "resize"  # images of different sizes
    n_train: int = 0  # 0 = all images; N > 0 = a fixed random subset for training batches

    def validate(self) -> None:
        _check_n_train(self.n_train)
        if not self.root:
            raise BenchError("data.root must name the image folder (--set data.root=DIR)")
        if self.resolution < 4 or self.channels not in (1, 3):
            raise BenchError("imagefolder needs data.resolution >= 4 and data.channels in {1, 3}")


@register_dataset("imagefolder")
class ImageFolder(ImageDataset):
    """Any folder of images (PNG, JPEG, ...; recursive, sorted by path), resized with Lanczos to a square
    ``resolution`` and converted to ``channels``. Unreadable files are skipped and counted in ``skipped``
    (their paths in ``skipped_files``) with a warning. Only a ``train`` split."""

    Config = ImageFolderConfig
    name = "imagefolder"
    splits = ("train",)

    def __init__(self, cfg: ImageFolderConfig, seed: int = 0) -> None:
        self.skipped = 0
        self.skipped_files: list[str] = []
        super().__init__(cfg, seed)

    def _load(self, split: str) -> Tensor:
        from PIL import Image, UnidentifiedImageError

        cfg = self.cfg
        root = Path(cfg.root)
        if not root.is_dir():
            raise BenchError(f"imagefolder: {root} is not a folder")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise BenchError(f"imagefolder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
        target = "L" if cfg.channels == 1 else "RGB"
        out, first_size = [], None
        for p in files:
            try:
                with Image.open(p) as im:
                    im.load()
                    img = im.copy()
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
                self.skipped_files.append(str(p))
                continue
            if img.mode != target and cfg.mixed_modes == "error":
                raise BenchError(
                    f"imagefolder: {p} has mode {img.mode}, expected {target} (data.channels={cfg.channels}); "
                    "set data.mixed_modes=convert to convert it"
                )
            first_size = first_size or img.size
            if img.size != first_size and cfg.mixed_sizes == "error":
                raise BenchError(
                    f"imagefolder: {p} is {img.size[0]}x{img.size[1]}, others are {first_size[0]}x{first_size[1]}; "
                    "set data.mixed_sizes=resize to resize every image"
                )
            out.append(_to_array(img, target, cfg.resolution, cfg.resize))
        self.skipped = len(self.skipped_files)
        if self.skipped:
            warnings.warn(
                f"imagefolder: skipped {self.skipped} unreadable file(s) under {root}, e.g. {self.skipped_files[0]}",
                stacklevel=2,
            )
        if not out:
            raise BenchError(f"imagefolder: none of the {len(files)} image files under {root} could be read")
        return torch.from_numpy(np.stack(out))


def _to_array(img: Any, mode: str, res: int, resize: str) -> np.ndarray:
    """PIL image -> uint8 (C, res, res): alpha composited on white, converted to ``mode``, resized/cropped."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    img = img.convert(mode)
    w, h = img.size
    if resize == "center-crop":
        s = res / min(w, h)
        nw, nh = max(res, round(w * s)), max(res, round(h * s))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.LANCZOS)
        left, top = (nw - res) // 2, (nh - res) // 2
        img = img.crop((left, top, left + res, top + res))
    elif (w, h) != (res, res):
        img = img.resize((res, res), Image.Resampling.LANCZOS)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy()
