import gc
import math
import os
import re
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ipae.data import arrays, load_array
from ipae.data.arrays import RowReader

EXPECTED = np.array([[0.0, 1.5], [-2.0, 3e-3], [4.0, 5.0]], dtype=np.float32)  # what every good file below holds


def refused(path, fragment, *, error=ValueError, **options):
    """Call load_array, expecting `error` whose one-line message starts with the path and contains `fragment`."""
    with pytest.raises(error, match=re.escape(fragment)) as info:
        load_array(path, **options)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message


def test_npy_is_read_as_float32(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(6, dtype=np.int64).reshape(3, 2))
    array = load_array(path)
    assert array.dtype == np.float32 and not isinstance(array, np.memmap)
    np.testing.assert_array_equal(array, [[0, 1], [2, 3], [4, 5]])


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_with_one_array_needs_no_key(tmp_path, save):
    path = tmp_path / "x.npz"
    save(path, features=EXPECTED.astype(np.float64))
    array = load_array(path)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, EXPECTED)


def test_npz_key_picks_the_named_array(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros((2, 2)), b=EXPECTED, labels=np.arange(3))
    np.testing.assert_array_equal(load_array(path, key="b"), EXPECTED)
    np.testing.assert_array_equal(load_array(path, key="a"), np.zeros((2, 2)))


@pytest.mark.parametrize(
    "text",
    [
        "0,1.5\n-2,0.003\n4,5\n",
        "x,y\n0,1.5\n-2,0.003\n4,5\n",  # header
        '"x","y"\n0, 1.5\n-2.0,3e-3\n4,+5\n\n  \n',  # quoted header, spaces, exponents, blank trailing lines
        "\ufeffx,y\r\n0,1.5\r\n-2,0.003\r\n4,5",  # a spreadsheet's BOM and CRLF, no final newline
        "0,1.5\n\n-2,0.003\n4,5\n",  # a blank line in the middle is skipped too
    ],
)
def test_csv_is_read_with_or_without_a_header(tmp_path, text):
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    array = load_array(path)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, EXPECTED)


def test_csv_with_one_column_and_a_header(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("value\n1\n2\n")
    np.testing.assert_array_equal(load_array(path), [[1.0], [2.0]])


def test_suffix_is_case_insensitive(tmp_path):
    path = tmp_path / "DATA.CSV"
    path.write_text("1,2\n")
    np.testing.assert_array_equal(load_array(path), [[1.0, 2.0]])


@pytest.mark.parametrize(
    "content, fragment",
    [
        (np.zeros(4), "expected an array (samples, features), got shape (4,)"),
        (np.zeros((2, 2, 2)), "expected an array (samples, features), got shape (2, 2, 2)"),
        (np.zeros((0, 2)), "the array has no rows"),
        (np.zeros((3, 0)), "the array has no features"),
        (np.array([[1.0, math.nan]]), "NaN or infinite"),
        (np.array([[1.0, -math.inf]]), "NaN or infinite"),
        (np.array([[1.0, 1e300]]), "beyond the float32 range"),
        (np.array([["a", "b"]]), "expected a numeric array, got dtype <U1"),
        (np.array([[1 + 2j, 0]]), "expected a numeric array, got dtype complex128"),
    ],
)
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_bad_arrays_are_refused(tmp_path, content, fragment, suffix):
    path = tmp_path / f"x{suffix}"
    np.save(path, content) if suffix == ".npy" else np.savez(path, x=content)
    refused(path, fragment)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("1,2\n3,4\n5,abc\n", "data.csv, line 3: 'abc' is not a number"),
        ("x,y\n1,2\n\n3,oops\n", "data.csv, line 4: 'oops' is not a number"),
        ("x,y\n1,\n", "data.csv, line 2: '' is not a number"),  # a missing value
        ("1;2\n3;4\n", "data.csv, line 2: '3;4' is not a number"),  # not comma-separated
        ("1,2\n3,4,5\n", "data.csv, line 2: 3 fields, but line 1 has 2"),
        ("x,y,z\n1,2,3\n4,5\n", "data.csv, line 3: 2 fields, but line 1 has 3"),
        ("x,y\n1,2,3\n", "data.csv, line 2: 3 fields, but line 1 has 2"),
        ("", "the array has no rows"),
        ("\n\n", "the array has no rows"),
        ("x,y\n", "the array has no rows"),
        ("1,2\nnan,4\n", "NaN or infinite"),
        ("1,2\n3,-inf\n", "NaN or infinite"),
        ("1,2\n3,1e300\n", "beyond the float32 range"),
    ],
)
def test_bad_csv_is_refused_with_the_line(tmp_path, text, fragment):
    path = tmp_path / "data.csv"
    path.write_text(text)
    refused(path, fragment)


def test_npz_without_a_usable_key_is_refused_with_the_names(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros((2, 2)), b=np.ones((2, 2)))
    refused(path, f"{path}: holds arrays 'a', 'b'; name one with --key")
    refused(path, f"{path}: no array named 'c'; it holds 'a', 'b'", key="c")
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    refused(empty, f"{empty}: holds no arrays")
    refused(empty, f"{empty}: no array named 'a'; it holds none", key="a")


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_key_is_refused_for_files_that_hold_one_array(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    np.save(path, EXPECTED) if suffix == ".npy" else path.write_text("1,2\n")
    refused(path, f"key='a' names an array in a .npz archive, but a {suffix} file holds only one", key="a")


def test_missing_and_foreign_files_are_refused(tmp_path):
    missing = tmp_path / "missing.npy"
    refused(missing, f"{missing}: no such file", error=FileNotFoundError)
    refused(tmp_path, "no such file", error=FileNotFoundError)  # a directory is not a file
    other = tmp_path / "x.txt"
    other.write_text("1,2\n")
    refused(other, "unsupported file type '.txt'; expected one of .npy, .npz, .csv")
    no_suffix = tmp_path / "x"
    no_suffix.write_text("1,2\n")
    refused(no_suffix, "unsupported file type ''; expected one of .npy, .npz, .csv")


def _truncated(path, save):
    save(path, np.zeros((100, 2)))
    path.write_bytes(path.read_bytes()[:200])


def _npz_named_npy(path, save):
    np.savez(path.with_suffix(".tmp.npz"), x=np.zeros((2, 2)))
    path.write_bytes(path.with_suffix(".tmp.npz").read_bytes())


def _npy_named_npz(path, save):
    with path.open("wb") as file:
        np.save(file, np.zeros((2, 2)))


def _pickled_objects(path, save):
    objects = np.array([[1, None]], dtype=object)
    with path.open("wb") as file:  # a file object: np.save would otherwise append a suffix
        np.save(file, objects, allow_pickle=True) if save is np.save else np.savez(file, x=objects)


def _corrupt_member(path, save):
    np.savez_compressed(path, x=np.arange(1000.0).reshape(500, 2))
    data = bytearray(path.read_bytes())
    data[100:400] = bytes(300)  # inside the deflated data; the zip directory at the end stays intact
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "suffix, make",
    [
        (".npy", lambda path, save: path.write_bytes(b"\x93NUMPY garbage")),
        (".npy", lambda path, save: path.write_text("1,2\n")),
        (".npy", _truncated),
        (".npy", _npz_named_npy),
        (".npy", _pickled_objects),
        (".npz", lambda path, save: path.write_bytes(b"PK\x03\x04 garbage")),
        (".npz", lambda path, save: path.write_bytes(b"")),
        (".npz", _truncated),
        (".npz", _npy_named_npz),
        (".npz", _pickled_objects),
        (".npz", _corrupt_member),
        (".csv", lambda path, save: path.write_bytes(b"1,2\n\xff\xfe,3\n")),
        (".csv", lambda path, save: path.write_bytes(b'1,"2\n3,4\n')),
    ],
)
def test_unreadable_files_are_refused(tmp_path, suffix, make):
    path = tmp_path / f"bad{suffix}"
    make(path, {".npy": np.save, ".npz": np.savez}.get(suffix))
    refused(path, f"{path}: not a readable {suffix}")


# images: more dimensions where the caller takes them (`ipae fit` takes up to 4: (N, C, H, W))


@pytest.mark.parametrize("shape", [(3, 2), (3, 4, 5), (3, 2, 4, 5)])
def test_max_ndim_admits_images(tmp_path, shape):
    path = tmp_path / "x.npy"
    values = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    np.save(path, values)
    array = load_array(path, max_ndim=4)
    assert array.shape == shape and array.dtype == np.float32
    np.testing.assert_array_equal(array, values)


def test_more_dimensions_than_max_ndim_are_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 1, 1, 2, 2)))
    refused(path, "expected an array of 2 to 4 dimensions (samples, ...), got shape (2, 1, 1, 2, 2)", max_ndim=4)
    np.save(path, np.zeros((2, 3, 3)))
    refused(path, "expected an array (samples, features), got shape (2, 3, 3)")  # the default takes tables only


# a large .npy: read by a RowReader in its own dtype, from one handle, never loaded whole


@pytest.fixture
def always_mapped(monkeypatch):
    """Read every .npy file asked for with mmap=True by rows, however small (the library may load small files whole)."""
    monkeypatch.setattr(arrays, "MMAP_BYTES", 0, raising=False)


def written_earlier(path: Path) -> Path:
    """Date the file a minute back, as a file written before a run is: a rewrite within the same tick of
    the file system's clock would otherwise leave its modification time as it was."""
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - 60 * 10**9))
    return path


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8, np.int16])
def test_mmap_reads_a_npy_file_by_rows_in_its_own_dtype(tmp_path, always_mapped, dtype):
    path = tmp_path / "x.npy"
    values = (np.arange(5 * 3 * 16 * 16) % 200).reshape(5, 3, 16, 16).astype(dtype)
    np.save(path, values)
    with load_array(path, max_ndim=4, mmap=True) as reader:
        assert isinstance(reader, RowReader) and reader.dtype == dtype and reader.shape == values.shape and len(reader) == 5
        np.testing.assert_array_equal(reader(np.array([4, 0, 4, 2])), values[[4, 0, 4, 2]])
        runs = [run.copy() for run in arrays.chunks(reader, nbytes=values[0].nbytes * 2)]  # a run is good until the next is read
        assert [len(run) for run in runs] == [2, 2, 1]
        np.testing.assert_array_equal(np.concatenate(runs), values)
    with pytest.raises(ValueError, match="closed"):
        reader(np.array([0]))


def test_a_reader_reads_the_rows_of_a_memmap_from_its_file(tmp_path):
    values = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "x.npy", values)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    with RowReader.from_memmap(mapped[3:8]) as reader:  # a view of rows: the offset of row 3 in the file
        assert reader.shape == (5, 4)
        np.testing.assert_array_equal(reader(np.array([4, 0])), values[[7, 3]])
    with pytest.raises(ValueError, match="C-contiguous"):
        RowReader.from_memmap(np.load(tmp_path / "x.npy"))


def test_the_fingerprint_of_a_file_is_of_its_values(tmp_path, always_mapped):
    values = np.random.default_rng(0).random((50, 3))
    for name, array in (("x", values), ("same", values.copy()), ("other", values[::-1].copy()), ("f32", values.astype(np.float32))):
        np.save(tmp_path / f"{name}.npy", array)
    prints = {name: RowReader(tmp_path / f"{name}.npy").fingerprint() for name in ("x", "same", "other", "f32")}
    assert prints["x"] == prints["same"] and len({prints["x"], prints["other"], prints["f32"]}) == 3
    reader = RowReader(tmp_path / "x.npy")
    for _ in arrays.chunks(reader, nbytes=16 * 24):  # a whole pass in 4 chunks leaves the fingerprint of the whole file
        pass
    assert reader._fingerprint == prints["x"]


def test_a_large_file_of_one_value_is_refused_in_one_line(tmp_path, always_mapped):
    np.save(tmp_path / "x.npy", np.float64(3.0))
    refused(tmp_path / "x.npy", "expected an array of samples (N, ...), got shape ()", mmap=True)


def test_a_reader_checks_its_file_by_the_name_it_was_given_wherever_the_process_goes(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.ones((4, 3)))
    monkeypatch.chdir(tmp_path)
    reader = RowReader("x.npy")
    monkeypatch.chdir("/")
    np.testing.assert_array_equal(reader(np.array([3])), np.ones((1, 3)))


def test_a_reader_that_cannot_be_made_closes_quietly(tmp_path, monkeypatch):
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((4, 3))))
    (tmp_path / "bad.npy").write_bytes(b"not a numpy file")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    for name in ("f.npy", "bad.npy", "missing.npy"):
        with pytest.raises((ValueError, FileNotFoundError)):
            RowReader(tmp_path / name)
        gc.collect()
    assert unraisable == []  # no "Exception ignored in RowReader.__del__", no unclosed file


def test_a_float32_file_is_not_copied_when_loaded(tmp_path):
    values = np.random.default_rng(0).random((1 << 16, 32), dtype=np.float32)  # 8 MiB
    np.save(tmp_path / "x.npy", values)
    tracemalloc.start()
    try:
        array = load_array(tmp_path / "x.npy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(array, values)
    assert peak < 1.5 * values.nbytes, f"{peak / values.nbytes:.2f} x the data"  # a copy would be 2 x


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_mmap_of_other_files_loads_them_as_float32(tmp_path, always_mapped, suffix):
    path = tmp_path / f"x{suffix}"
    np.savez(path, x=EXPECTED.astype(np.float64)) if suffix == ".npz" else path.write_text("0,1.5\n-2,0.003\n4,5\n")
    array = load_array(path, mmap=True)
    assert isinstance(array, np.ndarray) and array.dtype == np.float32
    np.testing.assert_array_equal(array, EXPECTED)


def test_a_large_fortran_ordered_file_is_refused_and_a_small_one_copied(tmp_path, monkeypatch):
    values = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "x.npy", np.asfortranarray(values))
    np.testing.assert_array_equal(load_array(tmp_path / "x.npy", mmap=True), values)  # under MMAP_BYTES: loaded
    monkeypatch.setattr(arrays, "MMAP_BYTES", 0)
    refused(tmp_path / "x.npy", "in Fortran order", mmap=True)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (np.array([[1.0, 2.0], [3.0, math.nan]]), "NaN or infinite"),
        (np.array([[1.0, 2.0], [math.inf, 0.0]]), "NaN or infinite"),
        (np.array([[1.0, 2.0], [3.0, 1e300]]), "beyond the float32 range"),
        (np.zeros(4), "expected an array (samples, features), got shape (4,)"),
        (np.zeros((0, 2)), "the array has no rows"),
    ],
)
def test_a_mapped_file_is_checked_as_a_loaded_one(tmp_path, always_mapped, content, fragment):
    path = tmp_path / "x.npy"
    np.save(path, content)
    refused(path, fragment, mmap=True)


def test_a_mapped_file_is_checked_to_its_last_row(tmp_path, always_mapped):
    values = np.zeros((1000, 4))
    values[-1, -1] = math.nan
    np.save(tmp_path / "x.npy", values)
    refused(tmp_path / "x.npy", "NaN or infinite", mmap=True)


def test_checking_a_large_file_reads_a_chunk_at_a_time(tmp_path, always_mapped, monkeypatch):
    np.save(tmp_path / "x.npy", np.ones((1000, 4)))
    monkeypatch.setattr(arrays, "CHUNK_BYTES", 32 * 100)  # 100 rows of 4 float64
    sizes, real_preadv = [], os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: sizes.append(len(buffers[0])) or real_preadv(fd, buffers, offset))
    reader = load_array(tmp_path / "x.npy", mmap=True)
    assert sizes == [3200] * 10  # the check read the file in 10 runs of 100 rows
    np.testing.assert_array_equal(reader(np.arange(1000)), np.ones((1000, 4)))


# a file that changes while it is read: a one-line error naming it, never a signal or other bytes


class RewrittenWhenOpened(RowReader):
    """A RowReader whose file another program rewrites (np.save to the same name) right after it is opened."""

    content = None

    def __init__(self, path, **options):
        super().__init__(path, **options)
        np.save(path, self.content)


@pytest.mark.parametrize("content", [np.zeros((3, 4)), np.full((10, 4), 7.0), np.full((20, 4), 7.0, dtype=np.float32)])
def test_a_file_rewritten_in_place_during_its_check_is_refused(tmp_path, always_mapped, monkeypatch, content):
    """Cut short, the same size or longer: the finite check reads no byte of the new file."""
    path = tmp_path / "x.npy"
    np.save(path, np.ones((10, 4)))
    written_earlier(path)
    monkeypatch.setattr(RewrittenWhenOpened, "content", content)
    monkeypatch.setattr(arrays, "RowReader", RewrittenWhenOpened)
    refused(path, "was written to after ipae checked it", mmap=True)


def test_a_file_rewritten_between_two_passes_is_refused(tmp_path, always_mapped):
    path = tmp_path / "x.npy"
    np.save(path, np.full((10, 4), 0.5))
    reader = load_array(written_earlier(path), mmap=True)
    np.save(path, np.full((10, 4), 0.5))  # the same bytes, written again: not the file that was checked
    with pytest.raises(ValueError, match=re.escape(f"{path}: the file was written to after ipae checked it")):
        arrays.value_range(reader)


def test_a_file_replaced_after_its_check_is_refused(tmp_path, always_mapped):
    path = tmp_path / "x.npy"
    np.save(path, np.full((10, 4), 7.0))
    reader = load_array(path, mmap=True)
    np.save(tmp_path / "new.npy", np.full((20, 4), 7.0, dtype=np.float32))  # the same size, other values in its bytes
    os.replace(tmp_path / "new.npy", path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: the file was replaced or removed after ipae checked it")) as info:
        reader(np.array([0, 1]))
    assert "\n" not in str(info.value)
    path.unlink()
    with pytest.raises(ValueError, match="replaced or removed"):
        reader.check()
