"""MNIST: the original IDX files, checked against their SHA-256, from a local directory or downloaded into a cache."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import sys
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from ipae._files import write_atomic
from ipae._validation import check_positive_int
from ipae._version import __version__

__all__: list[str] = []  # users reach its public names through the package: ipae.data

# The four original files and their well-known SHA-256; a file that does not match is never used.
FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

# Tried in turn; the checksum, not the transport, vouches for the content, so plain HTTP is acceptable last.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# The paper trains on digits 1, 3 and 4: 18715 training images (6742 + 6131 + 5842) of which it uses 18000,
# and 3127 test images (1135 + 1010 + 982).
PAPER_DIGITS = (1, 3, 4)
PAPER_N_TRAIN = 18000

_IDX_TYPES = {0x08: "unsigned byte"}  # the only type MNIST uses
_GZIP_MAGIC = b"\x1f\x8b"
_DEFLATE_MAX_RATIO = 1032  # deflate expands a byte at most this much (258 bytes from 2 bits): a bound on a gzip's content
_IMAGE_SHAPE = (28, 28)


class DownloadError(OSError):
    """No mirror served a file with the expected checksum."""


class MnistSplits(NamedTuple):
    """MNIST images as float32 pixels in [0, 1] and int64 labels in 0..9."""

    x_train: np.ndarray  # (N, 784)
    y_train: np.ndarray  # (N,)
    x_test: np.ndarray  # (M, 784)
    y_test: np.ndarray  # (M,)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzipped or not (told by its first bytes), as a uint8 array of its declared shape.

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for a corrupt gzip stream,
    a bad magic number, an unsupported type code, or a payload shorter or longer than the declared shape.
    The header is checked before the payload is read: a shape that needs more bytes than the file can
    hold (its size, or for a gzipped file deflate's largest expansion of it) is refused without allocating.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("rb") as file:
        gzipped = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        if not gzipped:
            return _read_idx_stream(path, file, capacity=path.stat().st_size, exact=True)
        try:
            with gzip.GzipFile(fileobj=file, mode="rb") as stream:
                return _read_idx_stream(path, stream, capacity=_DEFLATE_MAX_RATIO * path.stat().st_size, exact=False)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: corrupt gzip data ({' '.join(str(error).split()) or type(error).__name__})") from None


def _read_idx_stream(path: Path, stream, *, capacity: int, exact: bool) -> np.ndarray:
    """The IDX array in `stream`, which holds at most `capacity` bytes (exactly that many when `exact`)."""
    start = stream.read(4)
    if not start:
        raise ValueError(f"{path}: the file is empty")
    if len(start) < 4 or start[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an IDX file (magic number {start.hex()}, expected 0000TTNN)")
    type_code, ndim = start[2], start[3]
    if type_code not in _IDX_TYPES:
        supported = ", ".join(f"0x{code:02x} ({name})" for code, name in _IDX_TYPES.items())
        raise ValueError(f"{path}: unsupported IDX type code 0x{type_code:02x}; supported: {supported}")
    if ndim == 0:
        raise ValueError(f"{path}: the IDX header declares no dimensions")
    header = 4 + 4 * ndim
    dimensions = stream.read(4 * ndim)
    if len(dimensions) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({4 + len(dimensions)} bytes, expected {header} for {ndim} dimensions)")
    shape = tuple(int.from_bytes(dimensions[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = math.prod(shape)  # a Python int: 255 dimensions of 2**32 - 1 do not wrap around
    if expected > capacity - header:  # refused before anything of that size is allocated
        has = (
            f"the file has {capacity - header}"
            if exact
            else f"a gzipped file of {capacity // _DEFLATE_MAX_RATIO} bytes holds at most {capacity}"
        )
        raise ValueError(f"{path}: payload truncated: the shape {_short(shape)} needs {expected} bytes, {has}")
    payload = bytearray()
    while len(payload) < expected and (chunk := stream.read(min(expected - len(payload), 1 << 20))):
        payload += chunk
    if len(payload) < expected:
        raise ValueError(f"{path}: payload truncated: the shape {_short(shape)} needs {expected} bytes, the file has {len(payload)}")
    if stream.read(1):
        has = f"the file has {capacity - header}" if exact else "the file has more"
        raise ValueError(f"{path}: payload too long: the shape {_short(shape)} needs {expected} bytes, {has}")
    try:
        return np.frombuffer(payload, dtype=np.uint8).reshape(shape)  # writable: the bytearray is ours
    except ValueError as error:  # more dimensions than numpy takes (64), or zero items in a shape too large to index
        raise ValueError(f"{path}: the IDX shape {_short(shape)} is not one an array can have ({error})") from None


def _short(shape: tuple[int, ...]) -> str:
    """A shape for a message: the first 8 dimensions of a long one."""
    return str(shape) if len(shape) <= 8 else f"({', '.join(map(str, shape[:8]))}, ... {len(shape)} dimensions)"


def verify_checksum(path: str | Path, expected: str) -> None:
    """Raise ValueError, naming the file, when its SHA-256 is not `expected` (hex)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    actual = _sha256(path)
    if actual != expected.lower():
        raise ValueError(f"{path}: SHA-256 is {actual}, expected {expected}; the file is damaged or not the original")


def mnist_directory(data_dir: str | Path | None = None, *, download: bool | None = None) -> Path:
    """The directory that holds the four MNIST files, downloading missing ones where allowed.

    With `data_dir`, the files must be there; they are downloaded into it only when `download` is True.
    Without it, the cache `$IPAE_DATA/mnist` (default: `$XDG_CACHE_HOME/ipae/mnist`, `~/.cache/ipae/mnist`,
    or `%LOCALAPPDATA%\\ipae\\mnist` on Windows) is used, and missing files are downloaded unless `download`
    is False or the environment sets `IPAE_NO_DOWNLOAD=1`. Files that cannot be had raise FileNotFoundError
    (a failed download raises DownloadError and leaves no directory it made behind). The messages name the
    Python parameters and the command line's options alike: both reach this function.
    """
    if data_dir is not None:
        directory, allowed = Path(data_dir), download is True
        how = "copy the original files there, or download them there with download=True (or leave out --data-dir to use the cache)"
    else:
        directory = _cache_root() / "mnist"
        allowed = download if download is not None else os.environ.get("IPAE_NO_DOWNLOAD", "") in ("", "0")
        how = "copy the original files there, or name a directory that holds them (data_dir=, or --data-dir), or unset IPAE_NO_DOWNLOAD"
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory}: not a directory")
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing and not allowed:
        raise FileNotFoundError(f"{directory}: missing MNIST files {', '.join(missing)}; {how}")
    made = [path for path in (directory, *directory.parents) if not path.exists()]  # the deepest first
    try:
        for name in missing:
            directory.mkdir(parents=True, exist_ok=True)
            _download(name, directory)
    except BaseException:
        for path in made:  # an empty cache would look like a place that holds MNIST
            try:
                path.rmdir()
            except OSError:  # not empty: a file that did arrive is kept
                break
        raise
    return directory


def load_mnist(
    data_dir: str | Path | None = None,
    *,
    digits: Iterable[int] | None = None,
    n_train: int | None = None,
    seed: int = 0,
    download: bool | None = None,
) -> MnistSplits:
    """MNIST as flat float32 pixels in [0, 1]: x (N, 784), y (N,) int64, for training and test.

    The files come from `mnist_directory(data_dir, download=download)` and are checked against `FILES`.
    Only `digits` are kept when given; `n_train` training images are then drawn without replacement with
    `np.random.default_rng(seed)` and kept in their original order. The test set is never subsampled.
    """
    digits = _check_digits(digits)
    check_positive_int("n_train", int(n_train) if isinstance(n_train, np.integer) else n_train, or_none="all")
    directory = mnist_directory(data_dir, download=download)
    arrays = {}
    for name, expected in FILES.items():
        verify_checksum(directory / name, expected)
        arrays[name] = read_idx(directory / name)
    x_train, y_train = _pair(directory, "train", arrays)
    x_test, y_test = _pair(directory, "t10k", arrays)
    if digits is not None:
        keep, keep_test = np.isin(y_train, digits), np.isin(y_test, digits)
        x_train, y_train, x_test, y_test = x_train[keep], y_train[keep], x_test[keep_test], y_test[keep_test]
    if n_train is not None:
        which = "" if digits is None else f" of digits {digits}"
        if n_train > len(y_train):
            raise ValueError(f"n_train={n_train} but only {len(y_train)} training images{which} are available")
        index = subset_index(len(y_train), n_train, seed)
        x_train, y_train = x_train[index], y_train[index]
    return MnistSplits(_pixels(x_train), y_train.astype(np.int64), _pixels(x_test), y_test.astype(np.int64))


def subset_index(available: int, n_train: int, seed: int) -> np.ndarray:
    """The rows of a training split of `available` images that `load_mnist(n_train=..., seed=...)` keeps:
    (n_train,) int64, drawn without replacement with `np.random.default_rng(seed)`, in increasing order."""
    return np.sort(np.random.default_rng(seed).choice(available, size=n_train, replace=False))


def _check_digits(digits: Iterable[int] | None) -> tuple[int, ...] | None:
    if digits is None:
        return None
    digits = tuple(digits)
    if not digits:
        raise ValueError("digits must name at least one digit, got none")
    for digit in digits:
        if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
            raise ValueError(f"digits must be integers in 0..9, got {digits!r}")
    if len(set(digits)) != len(digits):
        raise ValueError(f"digits must not repeat, got {digits!r}")
    return tuple(int(digit) for digit in digits)


def _pair(directory: Path, split: str, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 28, 28) and labels (N,) of one split, checked against each other."""
    images_name, labels_name = f"{split}-images-idx3-ubyte.gz", f"{split}-labels-idx1-ubyte.gz"
    images, labels = arrays[images_name], arrays[labels_name]
    if images.ndim != 3 or images.shape[1:] != _IMAGE_SHAPE:
        raise ValueError(f"{directory / images_name}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{directory / labels_name}: expected labels of shape (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {images_name} has {len(images)} images but {labels_name} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{directory / labels_name}: labels must be in 0..9, found {labels.max()}")
    return images, labels


def _pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 (N, 784) in [0, 1]."""
    pixels = images.reshape(len(images), -1).astype(np.float32)
    pixels /= 255
    return pixels


def _cache_root() -> Path:
    if os.environ.get("IPAE_DATA"):
        return Path(os.environ["IPAE_DATA"]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "ipae"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "ipae"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(name: str, directory: Path) -> None:
    """Fetch `name` from the first mirror that serves it with the right checksum; nothing is left behind on failure."""
    expected, failures = FILES[name], []

    def fetch_and_check(url: str, tmp: Path) -> None:
        _fetch(url, tmp)
        actual = _sha256(tmp)
        if actual != expected:
            raise ValueError(f"served a file with SHA-256 {actual}, expected {expected}")

    for mirror in MIRRORS:
        url = mirror + name
        try:
            write_atomic(directory / name, lambda tmp, url=url: fetch_and_check(url, tmp))
            return
        except (OSError, ValueError, http.client.HTTPException) as error:
            failures.append(f"{url} ({str(error) or type(error).__name__})")
    raise DownloadError(f"could not download {name} into {directory}; tried: {'; '.join(failures)}")


def _fetch(url: str, destination: Path) -> None:
    """Write the body at `url` into `destination`, with a progress bar on a terminal; tests replace this."""
    request = urllib.request.Request(url, headers={"User-Agent": f"ipae/{__version__}"})
    with urllib.request.urlopen(request, timeout=60) as response, open(destination, "wb") as file:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=url.rsplit("/", 1)[-1], disable=None) as bar:
            while chunk := response.read(1 << 16):
                file.write(chunk)
                bar.update(len(chunk))
