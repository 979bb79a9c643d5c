"""Arrays from users' files (.npy, .npz, .csv), checked before any work is done on them."""

from __future__ import annotations

import csv
import io
import lzma
import math
import mmap
import os
import zipfile
import zlib
from pathlib import Path
from tokenize import TokenError

import numpy as np
from numpy.lib import format as npy_format

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
    anything that is not a non-empty, finite, numeric array of that many dimensions. Loading never runs code
    (an array of Python objects, which only unpickling reads, is refused), and a .npy header is checked
    against the bytes that follow it before anything is allocated for the shape it declares.
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
            if array.dtype.itemsize > 4 and (np.abs(chunk) > _FLOAT32_MAX).any():  # the cast would turn these into inf
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


def _unreadable(path: Path, what: str, error: Exception | str) -> ValueError:
    reason = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the library said
    if len(reason) > 300:  # numpy quotes a whole damaged header
        reason = reason[:300] + " ..."
    return ValueError(f"{path}: not a readable {what} ({reason})")


_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"
_NPY_MAX_HEADER = 10_000  # bytes: numpy's own limit (np.load's max_header_size)
_MAX_DIMENSION = np.iinfo(np.intp).max  # numpy indexes no further
# Versions numpy writes for numeric arrays: the size of the header-length field, and numpy's reader.
# (3.0 differs only by a UTF-8 header, which numpy writes for structured dtypes with non-Latin-1 names.)
_NPY_VERSIONS = {(1, 0): (2, npy_format.read_array_header_1_0), (2, 0): (4, npy_format.read_array_header_2_0)}
# What np.savez and np.savez_compressed write; an LZMA member's header sets the size of the decoder's dictionary (up to
# 4 GiB, allocated before any data is read), and a bzip2 member is no archive numpy writes either.
_NPZ_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
# What zipfile raises for a damaged archive (RuntimeError: an encrypted member; NotImplementedError: an unknown compression).
_ZIP_ERRORS = (OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error, lzma.LZMAError)
# What numpy's header parser raises for a damaged header (it evaluates the header as a Python literal).
_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, TokenError, RecursionError, MemoryError, OverflowError)


def _npy_header(path: Path, what: str, stream, size: int) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """The shape, Fortran order, dtype and data size in bytes that the .npy header at the start of `stream`
    declares, `stream` holding `size` bytes. Checked before any data is read, so that nothing is allocated
    for a header's claims: no Python objects (loading them means unpickling, which can run code), a
    numeric dtype, and a shape whose bytes the file holds."""
    start = stream.read(len(_NPY_MAGIC) + 2)
    if start[: len(_NPY_MAGIC)] != _NPY_MAGIC:
        raise _unreadable(path, what, f"no .npy magic string: it starts with {start!r}")
    version = tuple(start[len(_NPY_MAGIC) :])
    if version not in _NPY_VERSIONS:
        raise _unreadable(path, what, f".npy format version {'.'.join(map(str, version))} is not 1.0 or 2.0")
    length_size, read_header = _NPY_VERSIONS[version]
    length_field = stream.read(length_size)
    length = int.from_bytes(length_field, "little")
    room = size - len(start) - length_size
    if len(length_field) < length_size or length > min(room, _NPY_MAX_HEADER):
        raise _unreadable(path, what, f"a header of {length} bytes, more than numpy's limit of {_NPY_MAX_HEADER} or the file's {room}")
    try:
        shape, fortran, dtype = read_header(io.BytesIO(length_field + stream.read(length)), max_header_size=_NPY_MAX_HEADER)
    except _HEADER_ERRORS as error:
        raise _unreadable(path, what, error) from None
    if dtype.hasobject:
        raise _unreadable(path, what, "it holds Python objects, which only unpickling could load, and unpickling can run code")
    if dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a numeric array, got dtype {dtype}")
    if any(not 0 <= dimension <= _MAX_DIMENSION for dimension in shape):  # a shape of no items passes the size check below
        raise _unreadable(path, what, f"the header declares a dimension outside 0..{_MAX_DIMENSION} in the shape {shape}")
    nbytes, room = math.prod(shape) * dtype.itemsize, room - length  # Python ints: no overflow
    if nbytes > room:
        raise _unreadable(path, what, f"the header declares {shape} {dtype}, {nbytes} bytes, but {room} bytes follow it")
    return shape, fortran, dtype, nbytes


def _read_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    with path.open("rb") as file:
        if file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
            raise ValueError(f"{path}: not a readable .npy array (it is a .npz archive)")
        file.seek(0)
        _npy_header(path, ".npy array", file, path.stat().st_size)
    try:  # the header fits the file: np.load allocates no more than the file holds
        return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except (ValueError, OSError, EOFError) as error:
        raise _unreadable(path, ".npy array", error) from None


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    """The array `key` of a .npz archive, read from the zip member by member name as np.load names them
    ("x.npy" is "x"), its header checked before its data is read; the data is read in chunks, so that
    memory grows with what the member holds, not with what its header or the zip directory claims. Members
    compressed otherwise than numpy does (stored or deflated) are refused."""
    what = ".npz archive"
    with path.open("rb") as file:
        if file.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
            raise ValueError(f"{path}: not a readable .npz archive (it is a .npy array)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            names = ", ".join(map(repr, members))
            if key is None and len(members) != 1:
                raise ValueError(f"{path}: holds arrays {names}; name one with --key" if names else f"{path}: holds no arrays")
            if key is not None and key not in members:
                raise ValueError(f"{path}: no array named {key!r}; it holds {names or 'none'}")
            name, info = (key, members[key]) if key is not None else next(iter(members.items()))
            if info.compress_type not in _NPZ_COMPRESSIONS:
                method = f"array {name!r} is compressed by method {info.compress_type}"
                raise _unreadable(path, what, f"{method}; numpy writes stored or deflated arrays only (LZMA's header can claim 4 GiB)")
            with archive.open(info) as stream:
                shape, fortran, dtype, nbytes = _npy_header(path, f"{what} (array {name!r})", stream, info.file_size)
                data = bytearray()
                while len(data) < nbytes and (chunk := stream.read(min(nbytes - len(data), 1 << 24))):
                    data += chunk
    except _ZIP_ERRORS as error:  # not ValueError: ours are worded already
        raise _unreadable(path, what, error) from None
    if len(data) < nbytes:
        raise _unreadable(path, f"{what} (array {name!r})", f"its data ended after {len(data)} of {nbytes} bytes")
    try:
        return np.frombuffer(data, dtype=dtype, count=math.prod(shape)).reshape(shape, order="F" if fortran else "C")
    except ValueError as error:  # a shape numpy cannot make: over 64 dimensions, or no items in one too large to index
        raise _unreadable(path, f"{what} (array {name!r})", error) from None


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
