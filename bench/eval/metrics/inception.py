"""Inception-v3 feature extractors built from LOCAL weights files, never a silent download.

Two engines (PROTOCOL.md): torch-fidelity's ``inception-v3-compat`` (default) and clean-fid's
TorchScript Inception (modes ``legacy_tensorflow`` and ``clean``). They take different files:

* torch-fidelity: a state dict ``weights-inception-2015-12-05-6726825d.pth`` (looked up in: the
  explicit path, ``$BENCH_INCEPTION_WEIGHTS``, ``<torch hub dir>/checkpoints/``, where torch-fidelity
  itself caches it). torch-fidelity unpickles it with ``weights_only=False``, so the file is checked
  first: sha256 equal to the published file, or a ``torch.load(weights_only=True)`` that yields
  Inception tensors; anything else is refused.
* clean-fid: NVIDIA's TorchScript archive ``inception-2015-12-05.pt`` (explicit path,
  ``$BENCH_CLEANFID_WEIGHTS``, clean-fid's own download spot ``/tmp/inception-2015-12-05.pt``,
  ``<torch hub dir>/checkpoints/``). The suite places (symlinks or copies) the verified file under the
  name clean-fid expects in a folder it owns and builds clean-fid's ``InceptionV3W`` with
  ``download=False``, so clean-fid never downloads.

Downloads happen only when allowed (``eval.allow_download`` or ``BENCH_ALLOW_DOWNLOAD=1``).
"""

from __future__ import annotations

import os
import platform
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.errors import BenchError
from bench.eval.metrics.features import FeatureExtractor, default_cache_dir, sha256_file

# torch-fidelity v0.2.0 release asset (URL_INCEPTION_V3 in torch_fidelity/feature_extractor_inceptionv3.py).
# torch-fidelity itself publishes only "6726825d", the first 8 hex digits of the sha256 (torch.hub's
# file-name convention). The full digest below is the one independent public projects record for that
# file (95,628,359 bytes) and it starts with that prefix; it could not be recomputed on this offline
# machine. A mismatch is never fatal: it marks the weights unofficial and every number not comparable.
TFID_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
TFID_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + TFID_FILENAME
TFID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
# clean-fid / StyleGAN2-ADA TorchScript Inception (cleanfid/downloads_helper.py `inception_url`); the
# sha256 is the download digest k-diffusion pins for the same URL (95,607,719 bytes).
CLEANFID_FILENAME = "inception-2015-12-05.pt"
CLEANFID_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + CLEANFID_FILENAME
CLEANFID_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"

ENV_WEIGHTS = "BENCH_INCEPTION_WEIGHTS"
ENV_CLEANFID_WEIGHTS = "BENCH_CLEANFID_WEIGHTS"
ENV_ALLOW_DOWNLOAD = "BENCH_ALLOW_DOWNLOAD"
_PROBE_KEY = "Mixed_7c.branch_pool.conv.weight"  # a tensor every inception-v3-compat state dict holds


@dataclass
class WeightsLookup:
    """Where the suite looked for a weights file, and what it found (for errors and `bench doctor`)."""

    filename: str
    path: Path | None
    looked: list[str] = field(default_factory=list)


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cleanfid_default_folder() -> Path:
    """The folder clean-fid's ``feature_extractor`` downloads into (cleanfid/features.py)."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


def _lookup(filename: str, explicit: str | None, env: str, extra: list[Path]) -> WeightsLookup:
    cands: list[tuple[str, Path]] = []
    if explicit:
        cands.append(("option", Path(explicit)))
    if os.environ.get(env):
        cands.append((f"${env}", Path(os.environ[env])))
    cands += [("cache", p) for p in extra]
    out = WeightsLookup(filename, None)
    for what, p in cands:
        p = p.expanduser()
        if p.is_dir():
            p = p / filename
        out.looked.append(f"{p} ({what})")
        if p.is_file():
            out.path = p
            return out
        if what != "cache":  # an explicit path that does not exist is an error, not a fall-through
            raise BenchError(f"Inception weights not found at {p} (given by {what}); expected the file {filename}")
    return out


def locate_inception_weights(explicit: str | None = None) -> WeightsLookup:
    return _lookup(TFID_FILENAME, explicit, ENV_WEIGHTS, [_hub_checkpoints() / TFID_FILENAME])


def locate_cleanfid_weights(explicit: str | None = None) -> WeightsLookup:
    extra = [cleanfid_default_folder() / CLEANFID_FILENAME, _hub_checkpoints() / CLEANFID_FILENAME]
    return _lookup(CLEANFID_FILENAME, explicit, ENV_CLEANFID_WEIGHTS, extra)


def _missing(lk: WeightsLookup, url: str, env: str) -> BenchError:
    looked = "; ".join(lk.looked) or "nowhere"
    return BenchError(
        f"Inception weights file {lk.filename} not found (looked in: {looked}). Download it on a machine "
        f"with network access from {url} and put it at {_hub_checkpoints() / lk.filename}, or point "
        f"${env} (or eval.inception_weights) at it; or allow downloading with {ENV_ALLOW_DOWNLOAD}=1."
    )


def download_allowed(ev: object = None) -> bool:
    return bool(getattr(ev, "allow_download", False)) or os.environ.get(ENV_ALLOW_DOWNLOAD, "") in ("1", "true", "yes")


def _download(url: str, dst: Path, sha256: str) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=sha256, progress=False)
    except Exception as e:  # network down, proxy, hash mismatch
        raise BenchError(f"downloading {url} failed ({type(e).__name__}: {e}); put the file at {dst} by hand") from e
    return dst


_VERIFIED: dict[tuple, tuple[str, bool]] = {}


def _memo_verify(fn):
    """Verify a file once per (kind, path, size, mtime): hashing 95 MB per metric call adds up."""

    def wrapped(path: Path) -> tuple[str, bool]:
        st = Path(path).stat()
        key = (fn.__name__, str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
        if key not in _VERIFIED:
            _VERIFIED[key] = fn(Path(path))
        return _VERIFIED[key]

    wrapped.__doc__, wrapped.__name__ = fn.__doc__, fn.__name__
    return wrapped


@_memo_verify
def verify_state_dict_weights(path: Path) -> tuple[str, bool]:
    """(sha256, official) for a torch-fidelity Inception state-dict file; BenchError if it is not one.

    A file whose sha256 is the published one is accepted as is. Any other file must load with
    ``torch.load(weights_only=True)`` (no code runs) into a mapping of Inception tensors.
    """
    sha = sha256_file(path)
    if sha == TFID_SHA256:
        return sha, True
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BenchError(
            f"{path} is not a safe Inception weights file: sha256 {sha} is not the published {TFID_FILENAME} "
            f"({TFID_SHA256}) and torch.load(weights_only=True) refuses it ({type(e).__name__})"
        ) from None
    if not isinstance(sd, dict) or not isinstance(sd.get(_PROBE_KEY), Tensor):
        raise BenchError(f"{path} is not an inception-v3-compat state dict (no tensor {_PROBE_KEY!r})")
    return sha, False


@_memo_verify
def verify_torchscript_weights(path: Path) -> tuple[str, bool]:
    """(sha256, official) for clean-fid's TorchScript Inception; BenchError if it is not one.

    TorchScript archives are loaded by ``torch.jit.load`` (TorchScript code, not arbitrary pickled
    Python); a non-official file must still load and expose the ``layers`` submodule clean-fid uses.
    """
    sha = sha256_file(path)
    if sha == CLEANFID_SHA256:
        return sha, True
    try:
        m = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise BenchError(
            f"{path} is not a TorchScript Inception ({CLEANFID_FILENAME}) that clean-fid can use: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not hasattr(m, "layers"):
        raise BenchError(f"{path} is a TorchScript file but has no 'layers' submodule (not clean-fid's Inception)")
    return sha, False


def _resolve(lk: WeightsLookup, url: str, filename: str, sha256: str, env: str, allow_download: bool, verify):
    """The located file, else a download (only when allowed), else the one clear error; then ``verify``."""
    if lk.path is None:
        if not allow_download:
            raise _missing(lk, url, env)
        lk.path = _download(url, _hub_checkpoints() / filename, sha256[:8])
    sha, official = verify(lk.path)
    return lk.path, sha, official


def resolve_inception_weights(explicit: str | None = None, allow_download: bool = False) -> tuple[Path, str, bool]:
    """(path, sha256, official) of the verified torch-fidelity Inception weights, or BenchError."""
    lk = locate_inception_weights(explicit)
    return _resolve(lk, TFID_URL, TFID_FILENAME, TFID_SHA256, ENV_WEIGHTS, allow_download, verify_state_dict_weights)


def resolve_cleanfid_weights(explicit: str | None = None, allow_download: bool = False) -> tuple[Path, str, bool]:
    """(path, sha256, official) of the verified clean-fid TorchScript Inception, or BenchError."""
    lk = locate_cleanfid_weights(explicit)
    return _resolve(
        lk,
        CLEANFID_URL,
        CLEANFID_FILENAME,
        CLEANFID_SHA256,
        ENV_CLEANFID_WEIGHTS,
        allow_download,
        verify_torchscript_weights,
    )


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rgb(u8: Tensor) -> Tensor:
    if u8.dtype != torch.uint8 or u8.dim() != 4 or u8.shape[1] not in (1, 3):
        raise BenchError(f"Inception features need uint8 images (N, 1 or 3, H, W), got {u8.dtype} {tuple(u8.shape)}")
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8  # grayscale: channel repeated (common practice)


class TorchFidelityInception(FeatureExtractor):
    """torch-fidelity ``inception-v3-compat`` pool3 features (2048-d), TF1-compatible bilinear resize to 299."""

    name = "inception-v3-compat"
    engine = "torch-fidelity"
    resize = "tf1-bilinear to 299x299 inside torch-fidelity (grayscale repeated to RGB)"
    resize_mode = "tf1-bilinear-299"
    dim = 2048
    batch_size = 64

    def __init__(self, path: Path, sha256: str, official: bool, device: torch.device | None = None) -> None:
        from torch_fidelity.utils import create_feature_extractor

        self.path, self.weights_sha256, self.weights_official = Path(path), sha256, official
        self.device = device or _device()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fe = create_feature_extractor(
                self.name, ["2048"], cuda=False, feature_extractor_weights_path=str(path), verbose=False
            )
        self.net = fe.to(self.device)

    @torch.no_grad()
    def features(self, u8: Tensor) -> Tensor:
        return self.net(_rgb(u8).to(self.device))[0].float().cpu()


class CleanFidInception(FeatureExtractor):
    """clean-fid's TorchScript Inception pool3 features; mode ``legacy_tensorflow`` (resize inside the
    graph, TF1 bilinear) or ``clean`` (PIL bicubic in float to 299x299, per channel)."""

    engine = "clean-fid"
    dim = 2048
    batch_size = 64
    MODES = ("legacy_tensorflow", "clean")

    def __init__(
        self,
        path: Path,
        sha256: str,
        official: bool,
        mode: str = "legacy_tensorflow",
        stage_dir: Path | None = None,
        device: torch.device | None = None,
    ) -> None:
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        if mode not in self.MODES:
            raise BenchError(f"clean-fid mode must be one of {self.MODES}, got {mode!r}")
        self.mode, self.path, self.weights_sha256, self.weights_official = mode, Path(path), sha256, official
        self.name = f"clean-fid-inception-{mode}"
        self.resize = {
            "legacy_tensorflow": "tf1-bilinear to 299x299 inside the TorchScript graph (clean-fid legacy_tensorflow)",
            "clean": "PIL bicubic (float, no quantisation) to 299x299 (clean-fid clean)",
        }[mode]
        self.resize_mode = {"legacy_tensorflow": "tf1-bilinear-299", "clean": "pil-bicubic-299"}[mode]
        self.device = device or _device()
        folder = place_for_cleanfid(self.path, stage_dir)
        self.net = InceptionV3W(str(folder), download=False, resize_inside=mode == "legacy_tensorflow").to(self.device)
        self.net.eval()
        self._resize = build_resizer(mode)

    @torch.no_grad()
    def features(self, u8: Tensor) -> Tensor:
        x = _rgb(u8)
        if self.mode == "clean":
            imgs = [self._resize(img.permute(1, 2, 0).numpy()) for img in x]
            x = torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy())
        return self.net(x.float().to(self.device)).float().cpu()


def place_for_cleanfid(path: Path, stage_dir: Path | None = None) -> Path:
    """A folder holding ``inception-2015-12-05.pt`` (the name clean-fid's ``InceptionV3W`` opens) that is
    the verified ``path``: its own folder if already so named, else a symlink (or copy) in ``stage_dir``
    (default ``<cache>/cleanfid``). Never writes into clean-fid's ``/tmp`` download spot."""
    path = Path(path).resolve()
    if path.name == CLEANFID_FILENAME:
        return path.parent
    folder = Path(stage_dir) if stage_dir is not None else default_cache_dir() / "cleanfid"
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / CLEANFID_FILENAME
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == path or (dst.is_file() and sha256_file(dst) == sha256_file(path)):
            return folder
        dst.unlink()
    try:
        dst.symlink_to(path)
    except OSError:
        shutil.copyfile(path, dst)
    return folder


_LOADED: dict[tuple, FeatureExtractor] = {}


def inception_extractor(ev: object = None, engine: str = "torch-fidelity", mode: str = "legacy_tensorflow"):
    """The verified extractor for ``engine`` (memoised per weights file and mode); BenchError if unusable."""
    allow = download_allowed(ev)
    if engine == "torch-fidelity":
        path, sha, official = resolve_inception_weights(getattr(ev, "inception_weights", "") or None, allow)
        key = (engine, str(path), sha)
        if key not in _LOADED:
            _LOADED[key] = TorchFidelityInception(path, sha, official)
    elif engine == "clean-fid":
        path, sha, official = resolve_cleanfid_weights(getattr(ev, "cleanfid_weights", "") or None, allow)
        key = (engine, str(path), sha, mode)
        if key not in _LOADED:
            _LOADED[key] = CleanFidInception(path, sha, official, mode)
    else:
        raise BenchError(f"unknown FID engine {engine!r} (torch-fidelity or clean-fid)")
    return _LOADED[key]
