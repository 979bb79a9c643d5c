import math
import re

import numpy as np
import pytest

from ipae.data import load_array

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
    array = load_array(path, n_features=2)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, [[0, 1], [2, 3], [4, 5]])


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_with_one_array_needs_no_key(tmp_path, save):
    path = tmp_path / "x.npz"
    save(path, features=EXPECTED.astype(np.float64))
    array = load_array(path, n_features=2)
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
    array = load_array(path, n_features=2)
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
        (np.zeros(4), "expected a 2-D array (samples, features), got shape (4,)"),
        (np.zeros((2, 2, 2)), "expected a 2-D array (samples, features), got shape (2, 2, 2)"),
        (np.zeros((0, 2)), "the array has no rows"),
        (np.zeros((3, 0)), "the array has no features"),
        (np.zeros((3, 5)), "expected 2 features per row, got 5"),
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
    if fragment == "the array has no features":
        refused(path, fragment)  # checked before the number of features
    else:
        refused(path, fragment, n_features=2)


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
        ("x,y\n1,2\n3,4\n", "expected 3 features per row, got 2"),
        ("1,2\nnan,4\n", "NaN or infinite"),
        ("1,2\n3,-inf\n", "NaN or infinite"),
        ("1,2\n3,1e300\n", "beyond the float32 range"),
    ],
)
def test_bad_csv_is_refused_with_the_line(tmp_path, text, fragment):
    path = tmp_path / "data.csv"
    path.write_text(text)
    refused(path, fragment, n_features=3 if "features" in fragment else None)


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
