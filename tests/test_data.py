import pytest
import torch

from ipae.data import gaussian_grid


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
