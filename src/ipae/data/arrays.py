"""Arrays from users' files (.npy, .npz, .csv), checked before any work is done on them."""

from __future__ import annotations

import csv
import hashlib
import io
import lzma
import math
import mmap
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from tokenize import TokenError

import numpy as np
from numpy.lib import format as npy_format

__all__: list[str] = []  # users reach its public names through the package: ipae.data

_FLOAT32_MAX = float(np.finfo(np.float32).max)
MMAP_BYTES = 1 << 30  # a .npy file larger than this is read batch by batch; a smaller one is loaded (faster batches)
CHUNK_BYTES = 64 << 20  # a pass over an array reads this much at a time: small beside memory, large beside a syscall


def load_array(path: str | Path, *, key: str | None = None, max_ndim: int = 2, mmap: bool = False) -> np.ndarray | RowReader:
    """Load a numeric array (N, ...) of 2 to `max_ndim` dimensions from a `.npy`, `.npz` or `.csv` file.

    `key` names the array to take from a `.npz` archive; it may be left out when the archive holds
    one array. A `.csv` file is comma-separated numbers, one sample per line, with an optional header
    row. With `mmap`, a `.npy` file larger than MMAP_BYTES is not loaded: a `RowReader` of it is
    returned, in the file's own dtype, its values checked CHUNK_BYTES at a time (`ipae.train` reads it
    batch by batch); anything else is float32 (float32 data is not copied). Raises FileNotFoundError
    for a missing file and ValueError, starting with the path, for anything that is not a non-empty,
    finite, numeric array of that many dimensions. Loading never runs code (an array of Python objects,
    which only unpickling reads, is refused), and a .npy header is checked against the bytes that
    follow it before anything is allocated for the shape it declares. A .npy file is opened once: what
    is checked is what is read.
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
        array = RowReader(path)
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
    return array if isinstance(array, RowReader) else array.astype(np.float32, copy=False)


def chunks(array: np.ndarray | RowReader, nbytes: int | None = None) -> Iterator[np.ndarray]:
    """The array in runs of whole rows of about `nbytes` (default CHUNK_BYTES), in order; a `RowReader`'s
    are read from its file into one buffer, so that a pass over a file larger than memory holds one run
    (good until the next is read)."""
    if isinstance(array, RowReader):
        yield from array.chunks(nbytes)
        return
    rows = _rows_per_chunk(array[0].nbytes, nbytes)
    for start in range(0, len(array), rows):
        yield array[start : start + rows]


def _rows_per_chunk(row_bytes: int, nbytes: int | None) -> int:
    return max(1, (CHUNK_BYTES if nbytes is None else nbytes) // max(1, row_bytes))


def value_range(array: np.ndarray | RowReader) -> tuple[float, float]:
    """(min, max) of an array, or of a `RowReader`'s file, a chunk at a time."""
    lows, highs = zip(*((float(chunk.min()), float(chunk.max())) for chunk in chunks(array)), strict=True)
    return min(lows), max(highs)


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


def _open_npy(path: Path, file) -> tuple[os.stat_result, tuple[int, ...], bool, np.dtype]:
    """The file's status and the shape, Fortran order and dtype of the .npy array open in `file`, checked
    (see `_npy_header`) from the open file itself; `file` is left at the first byte of the data."""
    status = os.fstat(file.fileno())
    if file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
        raise ValueError(f"{path}: not a readable .npy array (it is a .npz archive)")
    file.seek(0)
    shape, fortran, dtype, _ = _npy_header(path, ".npy array", file, status.st_size)
    return status, shape, fortran, dtype


def _read_npy(path: Path) -> np.ndarray:
    with path.open("rb") as file:  # one handle: the header checked is the header of the data read
        _open_npy(path, file)
        file.seek(0)
        try:  # the header fits the file: np.load allocates no more than the file holds
            return np.load(file, allow_pickle=False)
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
    """The rows of a .npy file larger than memory, read with pread from one handle opened here.

    The header is parsed, and the file's identity taken (inode, size, modification time), from that
    handle, and every read comes from it: no mapping (a mapped file that shrinks kills the process with
    SIGBUS) and no second open by name (which could find another file than the one checked). After
    every read `check` makes sure that the file is still the one that was opened, so a file rewritten or
    replaced while it is read is a ValueError naming it, never a batch of other bytes. A Fortran-ordered
    array is refused: its rows are not contiguous in the file.

    Reading from the file, not from a mapping, also keeps the process small: touching a mapping maps
    whole page-cache folios into the process (on Linux up to 2 MiB a fault: 800 MB of resident memory
    to gather 512 random rows of a 2 GB file); a read holds only the batch.

    `RowReader.from_memmap(array)` reads a C-ordered np.memmap's rows from its file the same way (the
    file as it is then). The handle is closed by `close`, on leaving a `with` block, or with the reader.
    """

    def __init__(self, path: str | Path, *, layout: tuple[int, np.dtype, tuple[int, ...]] | None = None) -> None:
        self._file = None  # first: a constructor that fails leaves a reader whose __del__ has nothing to close
        self.path = Path(path)
        self._name = Path(os.path.abspath(path))  # what `check` looks up: the same file wherever the process goes
        file = open(self.path, "rb")  # open as long as the reader lives
        try:
            if layout is None:
                status, shape, fortran, dtype = _open_npy(self.path, file)
                position = file.tell()
                if fortran and sum(size > 1 for size in shape) > 1:
                    raise ValueError(
                        f"{self.path}: the array is in Fortran order, whose rows are scattered through the file; "
                        f"save it in C order (np.save(path, np.ascontiguousarray(array))) to read it a batch at a time"
                    )
            else:
                status, (position, dtype, shape) = os.fstat(file.fileno()), layout
            if len(shape) == 0:
                raise ValueError(f"{self.path}: expected an array of samples (N, ...), got shape ()")
            self.shape, self.dtype, self.position = tuple(shape), np.dtype(dtype), position
            self.row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])
            if position + len(self) * self.row_bytes > status.st_size:
                raise ValueError(f"{self.path}: {self.shape} {self.dtype} from byte {position} needs more than the file's {status.st_size}")
        except BaseException:
            file.close()
            raise
        self._file, self._identity = file, _identity(status)
        self._fingerprint: str | None = None

    @classmethod
    def from_memmap(cls, array: np.memmap) -> RowReader:
        """A reader of the rows of a C-contiguous memory-mapped array (or a view of its rows, `array[a:b]`)
        from its file: the file named `array.filename` as it is now."""
        if not isinstance(array, np.memmap) or not array.flags.c_contiguous or array.filename is None or array.ndim < 1:
            raise ValueError("RowReader.from_memmap needs a C-contiguous memory-mapped array of rows")
        mapping_start = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY  # np.memmap maps from here
        base = np.frombuffer(array._mmap, dtype=np.uint8).ctypes.data  # the mapping's first byte
        return cls(array.filename, layout=(mapping_start + array.ctypes.data - base, array.dtype, array.shape))

    ndim = property(lambda self: len(self.shape))
    nbytes = property(lambda self: len(self) * self.row_bytes)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"RowReader({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def check(self) -> None:
        """ValueError, naming the file, unless it is the file opened here, as it was then: the same size
        and modification time (not written since) and still the file of that name (not replaced)."""
        if self._file is None:
            raise ValueError(f"{self.path}: the reader was closed")
        now = os.fstat(self._file.fileno())
        if _identity(now) != self._identity:
            raise ValueError(
                f"{self.path}: the file was written to after ipae checked it (its size or modification time changed); "
                "nothing was trained on the new bytes; run again once it is no longer being written"
            )
        try:
            named = os.stat(self._name)
        except OSError:
            named = None
        if named is None or (named.st_dev, named.st_ino) != (now.st_dev, now.st_ino):
            raise ValueError(
                f"{self.path}: the file was replaced or removed after ipae checked it; "
                "nothing was trained on the new file; run again once it is no longer being written"
            )

    def __call__(self, index: np.ndarray) -> np.ndarray:
        """Rows `index` (k,), in that order: (k, ...)."""
        buffer = np.empty(len(index) * self.row_bytes, dtype=np.uint8)  # not zeroed: every byte is read into
        view = memoryview(buffer)
        for slot, row in enumerate(index.tolist()):
            self._read(view[slot * self.row_bytes : (slot + 1) * self.row_bytes], row)
        self.check()  # after the reads: a file changed before or while they ran is found here
        return buffer.view(self.dtype).reshape(len(index), *self.shape[1:])

    def chunks(self, nbytes: int | None = None) -> Iterator[np.ndarray]:
        """The rows in order, in runs of about `nbytes` (default CHUNK_BYTES), each checked as a batch
        is. One buffer holds every run, so a pass takes no new memory (fresh pages are slower than the
        reads themselves): a run is good until the next is read; copy it to keep it. The first whole
        pass leaves the fingerprint (see `fingerprint`): the pass that checks the values hashes them."""
        rows = _rows_per_chunk(self.row_bytes, nbytes)
        digest = hashlib.sha256(f"{self.dtype.str} {self.shape}".encode()) if self._fingerprint is None else None
        buffer = np.empty(min(rows, len(self)) * self.row_bytes, dtype=np.uint8)
        for start in range(0, len(self), rows):
            count = min(rows, len(self) - start)
            run = buffer[: count * self.row_bytes]
            self._read(memoryview(run), start)
            self.check()
            if digest is not None:
                digest.update(run)
            yield run.view(self.dtype).reshape(count, *self.shape[1:])
        if digest is not None:
            self._fingerprint = digest.hexdigest()

    def fingerprint(self) -> str:
        """A SHA-256 of the array's dtype, shape and values in the file, from the first whole pass or a new one."""
        if self._fingerprint is None:
            for _ in self.chunks():
                pass
        return self._fingerprint

    def _read(self, view: memoryview, row: int) -> None:
        """Fill `view` with the bytes of the file from row `row` on (pread until it is full)."""
        if self._file is None:
            raise ValueError(f"{self.path}: the reader was closed")
        done, position = 0, self.position + row * self.row_bytes
        while done < len(view):
            read = os.preadv(self._file.fileno(), [view[done:]], position + done)
            if read == 0:
                self.check()  # a file that ended early was cut short since it was checked
                raise ValueError(f"{self.path}: the file ended before row {row}")
            done += read

    def close(self) -> None:
        file, self._file = getattr(self, "_file", None), None
        if file is not None:
            file.close()

    def __enter__(self) -> RowReader:
        return self

    def __exit__(self, *exception) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _identity(status: os.stat_result) -> tuple[int, int, int, int]:
    """What says that a file is the one it was: inode (on its device), size and modification time."""
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns
