"""Arrays from users' files (.npy, .npz, .csv), checked before any work is done on them."""

from __future__ import annotations

import csv
import mmap
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["load_array", "chunks", "value_range", "release", "RowReader", "MMAP_BYTES"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)
MMAP_BYTES = 1 << 30  # a .npy file larger than this is read batch by batch; a smaller one is loaded (faster batches)


def load_array(path: str | Path, *, key: str | None = None, max_ndim: int = 2, mmap: bool = False) -> np.ndarray:
    """Load a numeric array (N, ...) of 2 to `max_ndim` dimensions from a `.npy`, `.npz` or `.csv` file.

    `key` names the array to take from a `.npz` archive; it may be left out when the archive holds
    one array. A `.csv` file is comma-separated numbers, one sample per line, with an optional header
    row. With `mmap`, a `.npy` file larger than MMAP_BYTES is memory-mapped read-only and returned in
    its own dtype (checked 64 MiB at a time, never loaded whole: `ipae.train` reads it batch by batch,
    see `RowReader`); anything else is float32. Raises FileNotFoundError for a missing file and ValueError, starting with the path, for
    anything that is not a non-empty, finite, numeric array of that many dimensions.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(_READERS)}")
    if key is not None and suffix != ".npz":
        raise ValueError(f"{path}: key={key!r} names an array in a .npz archive, but a {suffix} file holds only one")
    if suffix == ".npy" and mmap and path.stat().st_size > MMAP_BYTES:
        array = _read_npy(path, mmap_mode="r")
    else:
        array = _read_npz(path, key) if suffix == ".npz" else _READERS[suffix](path)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if not 2 <= array.ndim <= max_ndim:
        shapes = "(samples, features)" if max_ndim == 2 else f"of 2 to {max_ndim} dimensions (samples, ...)"
        raise ValueError(f"{path}: expected an array {shapes}, got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{path}: the array has no rows")
    if 0 in array.shape[1:]:
        raise ValueError(f"{path}: the array has no features (columns)")
    if array.dtype.kind == "f":
        for chunk in chunks(array):
            if not np.isfinite(chunk).all():
                raise ValueError(f"{path}: the array contains NaN or infinite values")
            if (np.abs(chunk) > _FLOAT32_MAX).any():  # the cast would turn these into inf
                raise ValueError(f"{path}: the array has values beyond the float32 range (+-{_FLOAT32_MAX:.3g})")
    return array if isinstance(array, np.memmap) else array.astype(np.float32)


def chunks(array: np.ndarray, nbytes: int = 64 << 20):
    """The array in runs of rows of about `nbytes` (64 MiB); a memory-mapped array's pages are dropped
    from this process after each, so a pass over a file larger than memory stays small."""
    rows = max(1, nbytes // max(1, array[0].nbytes))
    for start in range(0, len(array), rows):
        yield array[start : start + rows]
        release(array)


def value_range(array: np.ndarray) -> tuple[float, float]:
    """(min, max) of an array, a memory-mapped one included, a chunk at a time."""
    lows, highs = zip(*((float(chunk.min()), float(chunk.max())) for chunk in chunks(array)), strict=True)
    return min(lows), max(highs)


def release(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process's memory (the OS keeps them cached)."""
    mapping = getattr(array, "_mmap", None)
    if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def _unreadable(path: Path, what: str, error: Exception) -> ValueError:
    reason = " ".join(str(error).split())  # one line, whatever the library said
    return ValueError(f"{path}: not a readable {what} ({reason})")


def _read_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except (ValueError, OSError, EOFError) as error:
        raise _unreadable(path, ".npy array", error) from None
    if not isinstance(array, np.ndarray):  # np.load reads by content: this is a .npz archive
        array.close()
        raise ValueError(f"{path}: not a readable .npy array (it is a .npz archive)")
    return array


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise _unreadable(path, ".npz archive", error) from None
    if isinstance(archive, np.ndarray):  # np.load reads by content: this is a .npy array
        raise ValueError(f"{path}: not a readable .npz archive (it is a .npy array)")
    with archive:
        names = ", ".join(map(repr, archive.files))
        if key is None and len(archive.files) != 1:
            raise ValueError(f"{path}: holds arrays {names}; name one with --key" if names else f"{path}: holds no arrays")
        if key is not None and key not in archive.files:
            raise ValueError(f"{path}: no array named {key!r}; it holds {names or 'none'}")
        try:
            return archive[archive.files[0] if key is None else key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise _unreadable(path, ".npz archive", error) from None


def _read_csv(path: Path) -> np.ndarray:
    """Comma-separated numbers; a first row that is not all numbers is a header. Blank lines are skipped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:  # -sig: spreadsheets often start with a BOM
            reader = csv.reader(file, strict=True)  # strict: an unclosed quote is an error, not a swallowed file
            rows = [(reader.line_num, row) for row in reader if len(row) > 1 or "".join(row).strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise _unreadable(path, ".csv file", error) from None
    if not rows:
        return np.empty((0, 0))
    first_line, first = rows[0]
    if not all(_is_number(field) for field in first):
        rows = rows[1:]  # a header
    values = []
    for line, row in rows:
        if len(row) != len(first):
            raise ValueError(f"{path}, line {line}: {len(row)} fields, but line {first_line} has {len(first)}")
        for field in row:
            if not _is_number(field):
                raise ValueError(f"{path}, line {line}: {field!r} is not a number")
        values.append([float(field) for field in row])
    return np.array(values, dtype=np.float64).reshape(len(values), len(first))


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


_READERS = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_csv}


class RowReader:
    """Rows of a C-contiguous memory-mapped array, read from its file with pread, not through the mapping.

    Touching a mapping maps whole page-cache folios into the process (on Linux, up to 2 MiB a fault:
    800 MB of resident memory to gather 512 random rows of a 2 GB file), so the rows are read from the
    file itself: the process holds only the batch. A view of rows (`array[a:b]`) works too.
    """

    def __init__(self, array: np.memmap) -> None:
        if not isinstance(array, np.memmap) or not array.flags.c_contiguous or array.filename is None:
            raise ValueError("RowReader needs a C-contiguous memory-mapped array")
        mapping_start = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY  # np.memmap maps from here
        base = np.frombuffer(array._mmap, dtype=np.uint8).ctypes.data  # the mapping's first byte
        self.position = mapping_start + array.ctypes.data - base  # of row 0 in the file
        self.row_shape, self.dtype = array.shape[1:], array.dtype
        self.row_bytes = array.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self.file = open(array.filename, "rb")  # open as long as the reader lives

    def __call__(self, index: np.ndarray) -> np.ndarray:
        """Rows `index` (k,), in that order: (k, ...)."""
        buffer = bytearray(len(index) * self.row_bytes)
        view = memoryview(buffer)
        descriptor = self.file.fileno()
        for slot, row in enumerate(index.tolist()):
            start = slot * self.row_bytes
            if os.preadv(descriptor, [view[start : start + self.row_bytes]], self.position + row * self.row_bytes) != self.row_bytes:
                raise ValueError(f"{self.file.name}: the file ended before row {row}")
        return np.frombuffer(buffer, dtype=self.dtype).reshape(len(index), *self.row_shape)

    def __del__(self) -> None:
        self.file.close()
