import math

import numpy as np
import pytest
import torch

from ipae.data import gaussian_grid, load_array


def test_the_toy_mixture_has_the_papers_layout():
    data = gaussian_grid()
    assert data.x.shape == (5000, 2) and data.x.dtype == torch.float32
    assert sorted({(float(a), float(b)) for a, b in data.centres}) == [(a, b) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)]
    assert torch.bincount(data.labels).tolist() == [200] * 25
    residuals = (data.x - data.centres[data.labels]).double()
    # 5000 samples per axis: the variance 0.1 is estimated to about +-0.002.
    torch.testing.assert_close(residuals.var(dim=0), torch.full((2,), 0.1, dtype=torch.float64), rtol=0, atol=0.008)
    torch.testing.assert_close(residuals.mean(dim=0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=0.02)


def test_the_toy_mixture_is_reproducible_from_its_seed():
    torch.testing.assert_close(gaussian_grid(seed=1).x, gaussian_grid(seed=1).x, rtol=0, atol=0)
    assert not torch.equal(gaussian_grid(seed=1).x, gaussian_grid(seed=2).x)


def test_bad_toy_options_are_refused():
    with pytest.raises(ValueError):
        gaussian_grid(n_per_component=0)
    with pytest.raises(ValueError):
        gaussian_grid(variance=-1.0)


def test_load_array_reads_a_numeric_matrix(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(6, dtype=np.int64).reshape(3, 2))
    array = load_array(path, n_features=2)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, [[0, 1], [2, 3], [4, 5]])


@pytest.mark.parametrize(
    "content, message",
    [
        (np.zeros(4), "2-D"),
        (np.zeros((0, 2)), "no rows"),
        (np.zeros((3, 5)), "expected 2 features"),
        (np.array([[1.0, math.nan]]), "NaN"),
        (np.array([[1.0, -math.inf]]), "infinite"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_load_array_refuses_bad_content(tmp_path, content, message):
    path = tmp_path / "x.npy"
    np.save(path, content)
    with pytest.raises(ValueError, match=message):
        load_array(path, n_features=2)


def test_load_array_refuses_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_array(tmp_path / "missing.npy")
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="corrupt.npy: not a readable"):
        load_array(corrupt)
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.zeros((100, 2)))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.npy"):
        load_array(truncated)
    other = tmp_path / "x.txt"
    other.write_text("1,2\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_array(other)
