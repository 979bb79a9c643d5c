import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

import mnist_files
from ipae.data import mnist
from ipae.data.mnist import (
    FILES,
    MIRRORS,
    PAPER_DIGITS,
    PAPER_N_TRAIN,
    DownloadError,
    load_mnist,
    mnist_directory,
    read_idx,
    verify_checksum,
)
from mnist_files import HAS_REAL_MNIST, MISSING, REAL_MNIST

_real_fetch = mnist._fetch


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test reaches the network, and the user's cache settings never leak in."""

    def refuse(url, destination):
        raise AssertionError(f"a test tried to fetch {url}")

    monkeypatch.setattr(mnist, "_fetch", refuse)
    for name in ("IPAE_DATA", "IPAE_NO_DOWNLOAD", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)


def idx_bytes(array: np.ndarray, *, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# A tiny stand-in for MNIST: train labels 0..9 then 1, 3, 1 (13 images), test labels 1, 3, 4, 0, 9 (5 images).
FAKE_TRAIN_LABELS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 3, 1], dtype=np.uint8)
FAKE_TEST_LABELS = np.array([1, 3, 4, 0, 9], dtype=np.uint8)


def fake_images(labels: np.ndarray) -> np.ndarray:
    """Image i is filled with 20 * i + label, so tests can tell which images were kept."""
    return np.broadcast_to((20 * np.arange(len(labels)) + labels)[:, None, None], (len(labels), 28, 28)).astype(np.uint8)


def fake_files(*, train_labels=FAKE_TRAIN_LABELS, test_labels=FAKE_TEST_LABELS, train_images=None) -> dict[str, bytes]:
    train_images = fake_images(train_labels) if train_images is None else train_images
    arrays = {
        "train-images-idx3-ubyte.gz": train_images,
        "train-labels-idx1-ubyte.gz": train_labels,
        "t10k-images-idx3-ubyte.gz": fake_images(test_labels),
        "t10k-labels-idx1-ubyte.gz": test_labels,
    }
    return {name: gzip.compress(idx_bytes(array), mtime=0) for name, array in arrays.items()}


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A directory with the tiny stand-in files, whose checksums replace the real ones in FILES."""
    contents = fake_files()
    monkeypatch.setattr(mnist, "FILES", {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()})
    directory = tmp_path / "fake"
    directory.mkdir()
    for name, data in contents.items():
        write(directory / name, data)
    return directory, contents


# read_idx


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_returns_the_declared_shape(tmp_path, compress):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(array)
    path = write(tmp_path / "plain.bin", gzip.compress(data) if compress else data)  # gzip told by its bytes, not the name
    result = read_idx(path)
    assert result.dtype == np.uint8 and result.shape == (2, 3, 4)
    np.testing.assert_array_equal(result, array)
    result[0, 0, 0] = 99  # an ordinary, writable array


def test_read_idx_reads_a_one_dimensional_file(tmp_path):
    path = write(tmp_path / "labels.gz", gzip.compress(idx_bytes(np.array([7, 2, 1], dtype=np.uint8))))
    np.testing.assert_array_equal(read_idx(path), [7, 2, 1])


GOOD = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x01\x00" + GOOD[2:], "not an IDX file"),
        (b"\x00", "not an IDX file"),
        (GOOD[:2] + b"\x0d" + GOOD[3:], "unsupported IDX type code 0x0d"),
        (b"\x00\x00\x08\x00", "no dimensions"),
        (GOOD[:10], "truncated IDX header"),
        (GOOD[:-1], "payload truncated"),
        (GOOD + b"\x00", "payload too long"),
        (gzip.compress(GOOD)[:-12], "corrupt gzip"),
        (b"\x1f\x8b" + b"not really gzip" * 4, "corrupt gzip"),
        (gzip.compress(b""), "empty"),
    ],
    ids=[
        "empty",
        "bad-magic",
        "short-magic",
        "type-code",
        "no-dims",
        "short-header",
        "truncated",
        "over-long",
        "cut-gzip",
        "bad-gzip",
        "empty-gzip",
    ],
)
def test_read_idx_rejects_damaged_files_naming_them(tmp_path, data, message):
    path = write(tmp_path / "damaged-idx", data)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_reports_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        read_idx(tmp_path / "absent")


# checksums


def test_verify_checksum_accepts_the_right_file_and_rejects_another(tmp_path):
    path = write(tmp_path / "f.gz", b"some bytes")
    verify_checksum(path, hashlib.sha256(b"some bytes").hexdigest())
    with pytest.raises(ValueError, match="SHA-256") as info:
        verify_checksum(path, hashlib.sha256(b"other bytes").hexdigest())
    assert str(path) in str(info.value)


def test_the_checksums_are_the_published_ones():
    assert FILES["train-images-idx3-ubyte.gz"] == "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    assert FILES["t10k-labels-idx1-ubyte.gz"] == "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    if (REAL_MNIST / "SHA256SUMS").is_file():
        sums = dict(reversed(line.split()) for line in (REAL_MNIST / "SHA256SUMS").read_text().splitlines() if line.strip())
        assert sums == FILES


# where the files are


def test_the_tests_find_the_real_files_in_ipae_data_first(tmp_path, monkeypatch):
    """tests/mnist_files.py: $IPAE_DATA/mnist where it holds the four files, else ../shared/data/mnist."""
    monkeypatch.setenv("IPAE_DATA", str(tmp_path))
    (tmp_path / "mnist").mkdir()
    assert mnist_files._real_mnist() == mnist_files.SHARED  # empty: not there
    for name in FILES:
        write(tmp_path / "mnist" / name, b"x")
    assert mnist_files._real_mnist() == tmp_path / "mnist"
    monkeypatch.delenv("IPAE_DATA")
    assert mnist_files._real_mnist() == mnist_files.SHARED


def test_a_given_directory_must_hold_all_four_files(tmp_path):
    write(tmp_path / "train-labels-idx1-ubyte.gz", b"x")
    with pytest.raises(FileNotFoundError) as info:
        mnist_directory(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "train-labels-idx1-ubyte.gz" not in message
    assert all(name in message for name in FILES if name != "train-labels-idx1-ubyte.gz")


def test_a_given_directory_with_all_files_is_returned(fake_mnist):
    directory, _ = fake_mnist
    assert mnist_directory(directory) == directory


def test_the_cache_follows_ipae_data_and_obeys_ipae_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("IPAE_DATA", str(tmp_path))
    monkeypatch.setenv("IPAE_NO_DOWNLOAD", "1")
    with pytest.raises(FileNotFoundError, match="IPAE_NO_DOWNLOAD") as info:
        mnist_directory()
    assert str(tmp_path / "mnist") in str(info.value) and all(name in str(info.value) for name in FILES)
    assert not (tmp_path / "mnist").exists()


def test_download_false_is_obeyed_without_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IPAE_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing MNIST files"):
        mnist_directory(download=False)


def test_the_default_cache_is_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist._cache_root() == tmp_path / "xdg" / "ipae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnist._cache_root() == tmp_path / "home" / ".cache" / "ipae"
    monkeypatch.setattr(mnist.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert mnist._cache_root() == tmp_path / "local" / "ipae"


# downloading, with _fetch replaced by a fake server


def serve(monkeypatch, responses: dict[str, bytes | Exception]) -> list[str]:
    """Make _fetch answer from `responses` (URL -> body or exception); return the list of URLs asked for."""
    asked = []

    def fake_fetch(url, destination):
        asked.append(url)
        response = responses.get(url, OSError(f"HTTP Error 404: {url} not found"))
        if isinstance(response, Exception):
            Path(destination).write_bytes(b"partial")  # a failure half-way must not leave this behind
            raise response
        Path(destination).write_bytes(response)

    monkeypatch.setattr(mnist, "_fetch", fake_fetch)
    return asked


def test_download_falls_back_to_the_next_mirror(fake_mnist, tmp_path, monkeypatch):
    _, contents = fake_mnist
    responses = {MIRRORS[0] + name: ConnectionError("connection refused") for name in contents}
    responses |= {MIRRORS[1] + name: data for name, data in contents.items()}
    asked = serve(monkeypatch, responses)
    monkeypatch.setenv("IPAE_DATA", str(tmp_path / "cache"))
    directory = mnist_directory()
    assert directory == tmp_path / "cache" / "mnist"
    assert sorted(path.name for path in directory.iterdir()) == sorted(FILES)
    assert all((directory / name).read_bytes() == data for name, data in contents.items())
    assert asked == [mirror + name for name in FILES for mirror in MIRRORS[:2]]
    asked.clear()
    assert mnist_directory() == directory and asked == []  # present files are not fetched again


def test_a_mirror_serving_the_wrong_file_is_skipped(fake_mnist, tmp_path, monkeypatch):
    _, contents = fake_mnist
    responses = {MIRRORS[0] + name: b"an error page" for name in contents}
    responses |= {MIRRORS[1] + name: contents["t10k-labels-idx1-ubyte.gz"] for name in contents}  # the wrong file
    responses |= {MIRRORS[2] + name: data for name, data in contents.items()}
    asked = serve(monkeypatch, responses)
    directory = mnist_directory(tmp_path / "given", download=True)
    # The second mirror serves the t10k labels under every name: right for that one, so the third is not asked for it.
    expected = [mirror + name for name in FILES for mirror in (MIRRORS if name != "t10k-labels-idx1-ubyte.gz" else MIRRORS[:2])]
    assert asked == expected
    assert sorted(path.name for path in directory.iterdir()) == sorted(FILES)
    assert load_mnist(directory).y_test.tolist() == FAKE_TEST_LABELS.tolist()


def test_when_every_mirror_fails_the_error_lists_them_and_nothing_is_left(fake_mnist, tmp_path, monkeypatch):
    _, contents = fake_mnist
    serve(monkeypatch, {MIRRORS[1] + "train-images-idx3-ubyte.gz": b"wrong"})
    monkeypatch.setenv("IPAE_DATA", str(tmp_path / "cache"))
    with pytest.raises(DownloadError) as info:
        mnist_directory()
    message = str(info.value)
    assert isinstance(info.value, OSError) and "\n" not in message
    assert "train-images-idx3-ubyte.gz" in message and all(mirror in message for mirror in MIRRORS)
    assert "SHA-256" in message and "404" in message
    assert not (tmp_path / "cache").exists()  # nor the cache directories the download made


def test_a_given_directory_is_not_downloaded_into_unless_asked(tmp_path, monkeypatch):
    asked = serve(monkeypatch, {})
    with pytest.raises(FileNotFoundError, match="download=True"):
        mnist_directory(tmp_path)
    assert asked == [] and list(tmp_path.iterdir()) == []


def test_the_real_fetch_streams_a_local_url(fake_mnist, tmp_path, monkeypatch):
    """The urllib path and the progress bar, exercised on a file:// mirror: no network."""
    source, contents = fake_mnist
    monkeypatch.setattr(mnist, "_fetch", _real_fetch)
    monkeypatch.setattr(mnist, "MIRRORS", (tmp_path.as_uri() + "/absent/", source.as_uri() + "/"))
    directory = mnist_directory(tmp_path / "target", download=True)
    assert all((directory / name).read_bytes() == data for name, data in contents.items())


# load_mnist on the stand-in files


def test_load_mnist_flattens_scales_and_filters(fake_mnist):
    directory, _ = fake_mnist
    splits = load_mnist(directory)
    assert splits.x_train.shape == (13, 784) and splits.x_train.dtype == np.float32
    assert splits.y_train.dtype == np.int64 and splits.y_train.tolist() == FAKE_TRAIN_LABELS.tolist()
    np.testing.assert_allclose(splits.x_train[:, 0], (20 * np.arange(13) + FAKE_TRAIN_LABELS) / 255, rtol=1e-6)
    subset = load_mnist(directory, digits=(1, 3))
    assert subset.y_train.tolist() == [1, 3, 1, 3, 1] and subset.y_test.tolist() == [1, 3]
    np.testing.assert_allclose(subset.x_train[:, 0] * 255, [21, 63, 201, 223, 241], rtol=1e-6)


def test_n_train_draws_without_replacement_in_original_order(fake_mnist):
    directory, _ = fake_mnist
    draws = [load_mnist(directory, n_train=5, seed=seed) for seed in range(6)]
    for draw in draws:
        index = np.round(draw.x_train[:, 0] * 255).astype(int) // 20  # image i is filled with 20 i + label
        assert len(set(index)) == 5 and np.all(np.diff(index) > 0)
        assert draw.x_test.shape == (5, 784)  # the test set is never subsampled
    np.testing.assert_array_equal(draws[0].x_train, load_mnist(directory, n_train=5, seed=0).x_train)
    assert len({draw.x_train[:, 0].tobytes() for draw in draws}) > 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"digits": (1, 10)}, "0..9"),
        ({"digits": (1, 1)}, "repeat"),
        ({"digits": ()}, "at least one"),
        ({"digits": (1.5,)}, "0..9"),
        ({"n_train": 0}, "n_train must be an integer >= 1 or None"),
        ({"n_train": 14}, "only 13"),
        ({"digits": (1, 3), "n_train": 6}, r"only 5 training images of digits \(1, 3\)"),
    ],
)
def test_load_mnist_refuses_bad_options(fake_mnist, options, message):
    directory, _ = fake_mnist
    with pytest.raises(ValueError, match=message):
        load_mnist(directory, **options)


def use_files(monkeypatch, directory: Path, contents: dict[str, bytes]) -> None:
    for name, data in contents.items():
        write(directory / name, data)
    monkeypatch.setattr(mnist, "FILES", {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()})


def test_load_mnist_checks_the_files_agree(tmp_path, monkeypatch):
    use_files(monkeypatch, tmp_path, fake_files(train_images=fake_images(FAKE_TRAIN_LABELS)[:-1]))
    with pytest.raises(ValueError, match="12 images but train-labels-idx1-ubyte.gz has 13 labels"):
        load_mnist(tmp_path)
    use_files(monkeypatch, tmp_path, fake_files(test_labels=np.array([1, 2, 3, 4, 10], dtype=np.uint8)))
    with pytest.raises(ValueError, match="labels must be in 0..9") as info:
        load_mnist(tmp_path)
    assert "t10k-labels-idx1-ubyte.gz" in str(info.value)
    use_files(monkeypatch, tmp_path, fake_files(train_images=np.zeros((13, 28, 27), dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\)"):
        load_mnist(tmp_path)


def test_load_mnist_refuses_a_file_that_is_not_the_original(fake_mnist):
    directory, contents = fake_mnist
    write(directory / "train-labels-idx1-ubyte.gz", contents["t10k-labels-idx1-ubyte.gz"])
    with pytest.raises(ValueError, match="SHA-256") as info:
        load_mnist(directory)
    assert str(directory / "train-labels-idx1-ubyte.gz") in str(info.value)


# the real files


@pytest.fixture(scope="module")
def real_mnist():
    if not HAS_REAL_MNIST:
        pytest.skip(MISSING)
    return load_mnist(REAL_MNIST, download=False)


def test_the_real_files_have_the_known_shapes(real_mnist):
    x_train, y_train, x_test, y_test = real_mnist
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == x_test.dtype == np.float32 and y_train.dtype == y_test.dtype == np.int64
    assert x_train.min() == 0 and x_train.max() == 1 and x_test.min() == 0 and x_test.max() == 1
    assert np.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    for name, expected in FILES.items():
        verify_checksum(REAL_MNIST / name, expected)


def test_the_papers_subset_has_the_known_counts(real_mnist):
    subset = load_mnist(REAL_MNIST, digits=PAPER_DIGITS, download=False)
    assert subset.x_train.shape == (18715, 784) and subset.x_test.shape == (3127, 784)
    assert np.bincount(subset.y_train, minlength=10)[list(PAPER_DIGITS)].tolist() == [6742, 6131, 5842]
    assert np.bincount(subset.y_test, minlength=10)[list(PAPER_DIGITS)].tolist() == [1135, 1010, 982]
    keep = np.isin(real_mnist.y_train, PAPER_DIGITS)
    np.testing.assert_array_equal(subset.x_train, real_mnist.x_train[keep])


def test_the_papers_training_draw_is_reproducible(real_mnist):
    first, again, other = (load_mnist(REAL_MNIST, digits=PAPER_DIGITS, n_train=PAPER_N_TRAIN, seed=seed) for seed in (0, 0, 1))
    assert first.x_train.shape == (PAPER_N_TRAIN, 784) and first.y_train.shape == (PAPER_N_TRAIN,)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    np.testing.assert_array_equal(first.y_train, again.y_train)
    assert not np.array_equal(first.x_train, other.x_train)
    assert set(first.y_train.tolist()) == set(PAPER_DIGITS) and first.x_test.shape == (3127, 784)
