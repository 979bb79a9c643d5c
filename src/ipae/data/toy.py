"""The toy task of section 4.1: a mixture of 25 Gaussians on a 5 x 5 grid in the plane."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ToyData", "gaussian_grid"]


class ToyData(NamedTuple):
    x: Tensor  # (N, 2) float32 samples
    labels: Tensor  # (N,) int64: the component each sample was drawn from
    centres: Tensor  # (C, 2) float32: the component means


def gaussian_grid(
    *, n_per_component: int = 200, grid: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0), variance: float = 0.1, seed: int = 0
) -> ToyData:
    """Equal mixture of Gaussians N(c, variance * I) with means c on grid x grid.

    The defaults are the paper's: 25 components, covariance 0.1 I, 200 samples each (5000).
    """
    if n_per_component < 1 or not grid or not variance > 0:
        raise ValueError(f"need n_per_component >= 1, a non-empty grid and variance > 0, got {n_per_component}, {grid}, {variance}")
    axis = torch.tensor(grid, dtype=torch.float64)
    centres = torch.cartesian_prod(axis, axis)  # (C, 2)
    labels = torch.arange(len(centres)).repeat_interleave(n_per_component)  # (N,)
    noise = torch.randn(len(labels), 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = centres[labels] + variance**0.5 * noise  # (N, 2)
    return ToyData(x.float(), labels, centres.float())
