"""The `.npy` output of `embedkit embed`, written in place, block by block, in any order.

`np.save` needs the whole array in memory; a corpus's vectors may not fit. `NpyWriter` gives
the file its final header and size up front, so a block of rows lands at a known offset with
`os.pwrite` and a resumed run rewrites rows where they belong, without mapping the file.
`fsync_dir` makes renames and new files durable (the state file and the sinks use it too).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .corpus import CorpusError

__all__ = ["NpyWriter", "fsync_dir", "npy_header"]

_HAVE_PWRITE = hasattr(os, "pwrite")


def npy_header(shape: tuple[int, ...], dtype: np.dtype[Any]) -> bytes:
    """The .npy header `np.save` writes for a C-ordered array of this shape and dtype."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer,
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape},
    )
    return buffer.getvalue()


def fsync_dir(directory: Path) -> None:
    """Make renames and new files in `directory` durable (POSIX; a no-op on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NpyWriter:
    """An .npy file of known shape, filled by blocks of rows at any offset (`os.pwrite`).

    The file has its full size from the start (sparse until written), so the header is final
    and a row block lands at `header + row × row_bytes`. Nothing is mapped into memory.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, *, create: bool) -> None:
        self.path = path
        self.dtype: np.dtype[Any] = np.dtype(dtype)
        self.shape = shape
        self.header = npy_header(shape, self.dtype)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        size = len(self.header) + shape[0] * self.row_bytes
        flags = os.O_RDWR | getattr(os, "O_BINARY", 0) | (os.O_CREAT | os.O_TRUNC if create else 0)
        try:
            self._fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise CorpusError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            if create:
                self._write_all(self.header, 0)
                os.ftruncate(self._fd, size)
            else:
                os.lseek(self._fd, 0, os.SEEK_SET)
                found = os.read(self._fd, len(self.header))
                if found != self.header or os.fstat(self._fd).st_size != size:
                    raise CorpusError(
                        f"{path} does not hold the {shape} {self.dtype} array this run writes; "
                        "start over with --force"
                    )
        except BaseException:
            os.close(self._fd)
            raise

    def _write_all(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            if _HAVE_PWRITE:
                written = os.pwrite(self._fd, view, offset)
            else:  # Windows
                os.lseek(self._fd, offset, os.SEEK_SET)
                written = os.write(self._fd, view)
            view = view[written:]
            offset += written

    def write(self, row: int, block: npt.NDArray[Any]) -> None:
        """Write `block` (rows `row` to `row + len(block)`) in place."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.size == 0:
            return  # nothing to write (zero rows, or rows of dimension 0)
        self._write_all(block.data.cast("B"), len(self.header) + row * self.row_bytes)

    def sync(self) -> None:
        """Flush the written rows to disk."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
