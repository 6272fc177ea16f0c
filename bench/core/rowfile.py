"""A ``.npy`` file of fixed-shape rows, written and read with positional I/O (``os.pwrite`` / ``os.preadv``) and
never memory-mapped: what a process reads is copied into arrays it owns, so its resident memory is the size of
what it asked for, whatever the size of the file (the pages the kernel caches for the file are not the
process's and are given back under pressure). A memory map, by contrast, counts every page it has touched in
the process's RSS until it is unmapped. The file is a plain ``.npy`` (``np.load`` reads it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_HEADER = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}


class RowFile:
    """Array of ``shape`` = (rows, cols, *item) in C order. ``read_items(r, c)`` returns items ``a[r[i], c[i]]``."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int, writable: bool) -> None:
        self.fd = -1
        self.path, self.shape, self.dtype, self.offset = Path(path), tuple(shape), np.dtype(dtype), offset
        self.item_shape = self.shape[2:]
        self.item_bytes = int(np.prod(self.item_shape, dtype=np.int64)) * self.dtype.itemsize
        self.row_bytes = self.item_bytes * self.shape[1]
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    @classmethod
    def create(cls, path: str | Path, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> RowFile:
        """A new file of ``shape`` (sparse until written: its size is reserved, not allocated)."""
        path, dtype = Path(path), np.dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            offset = f.tell()
            f.truncate(offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        return cls(path, tuple(shape), dtype, offset, writable=True)

    @classmethod
    def open(cls, path: str | Path, writable: bool = False) -> RowFile:
        """An existing file; ValueError when it is not a complete C-order ``.npy`` of at least 2 dimensions."""
        path = Path(path)
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            if major not in _HEADER:
                raise ValueError(f"unsupported .npy version {major}")
            shape, fortran, dtype = _HEADER[major](f)
            offset = f.tell()
        if fortran or len(shape) < 2 or dtype.hasobject:
            raise ValueError(f"not a C-order numeric array of >= 2 dimensions (shape {shape})")
        want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if path.stat().st_size != want:
            raise ValueError(f"size {path.stat().st_size} bytes, header says {want} (truncated or padded)")
        return cls(path, shape, dtype, offset, writable)

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        """Rows ``start .. start + len(rows)`` from a C-contiguous array of shape (n, *shape[1:])."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or not 0 <= start <= self.shape[0] - len(rows):
            raise ValueError(f"rows {rows.shape} at {start} do not fit {self.shape}")
        view, pos = memoryview(rows.reshape(-1).view(np.uint8)), self.offset + start * self.row_bytes
        while len(view):
            n = os.pwrite(self.fd, view, pos)
            view, pos = view[n:], pos + n

    def read_items(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Items ``a[rows[i], cols[i]]`` -> (n, *item), read in file order (one positional read each)."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        n_rows, n_cols = self.shape[:2]
        if len(rows) and (rows.min() < 0 or rows.max() >= n_rows or cols.min() < 0 or cols.max() >= n_cols):
            raise IndexError(f"item index out of range for shape {self.shape}")
        out = np.empty((len(rows), *self.item_shape), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        pos = self.offset + (rows * self.shape[1] + cols) * self.item_bytes
        for i in np.argsort(pos, kind="stable"):
            if os.preadv(self.fd, [flat[i]], int(pos[i])) != self.item_bytes:
                raise ValueError(f"{self.path}: short read at byte {int(pos[i])} (file truncated?)")
        return out

    def read_rows(self, start: int, n: int) -> np.ndarray:
        """Rows ``start .. start + n`` -> (n, *shape[1:]), one sequential positional read."""
        if start < 0 or n < 0 or start + n > self.shape[0]:
            raise IndexError(f"rows {start}..{start + n} out of range for shape {self.shape}")
        out = np.empty((n, *self.shape[1:]), dtype=self.dtype)
        view, pos = memoryview(out.reshape(-1).view(np.uint8)), self.offset + start * self.row_bytes
        while len(view):
            k = os.preadv(self.fd, [view], pos)
            if k == 0:
                raise ValueError(f"{self.path}: short read (file truncated?)")
            view, pos = view[k:], pos + k
        return out

    def read_all(self) -> np.ndarray:
        """The whole array (for tests and small files)."""
        return self.read_rows(0, self.shape[0])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()
