"""The toy task of section 4.1: a mixture of 25 Gaussians on a 5 x 5 grid in the plane."""

from typing import NamedTuple

import torch
from torch import Tensor

from ipae._validation import check_positive_int

__all__: list[str] = []  # users reach its public names through the package: ipae.data


class ToyData(NamedTuple):
    """Samples of a mixture of Gaussians with the component of each: x (N, 2) float32, labels (N,) int64,
    centres (C, 2) float32 (the component means)."""

    x: Tensor  # (N, 2) float32 samples
    labels: Tensor  # (N,) int64: the component each sample was drawn from
    centres: Tensor  # (C, 2) float32: the component means


def gaussian_grid(
    *, n_per_component: int = 200, grid: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0), variance: float = 0.1, seed: int = 0
) -> ToyData:
    """Equal mixture of Gaussians N(c, variance * I) with means c on grid x grid.

    The defaults are the paper's: 25 components, covariance 0.1 I, 200 samples each (5000).
    """
    check_positive_int("n_per_component", n_per_component)
    if not grid or not variance > 0:
        raise ValueError(f"need a non-empty grid and variance > 0, got {grid}, {variance}")
    axis = torch.tensor(grid, dtype=torch.float64)
    centres = torch.cartesian_prod(axis, axis)  # (C, 2)
    labels = torch.arange(len(centres)).repeat_interleave(n_per_component)  # (N,)
    noise = torch.randn(len(labels), 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = centres[labels] + variance**0.5 * noise  # (N, 2)
    return ToyData(x.float(), labels, centres.float())
