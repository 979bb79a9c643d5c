"""Metrics of trained models, as pure functions of arrays."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["centre_distance"]


def centre_distance(points: Tensor, labels: Tensor, centres: Tensor) -> float:
    """The paper's metric E (section 4.1): mean Euclidean distance of each point to its true centre.

    points (N, 2), labels (N,) int, centres (C, 2) -> float. For the inputs themselves (no model),
    E = sqrt(variance) * sqrt(pi / 2), about 0.396 for the toy task's variance 0.1.
    """
    if points.ndim != 2 or labels.shape != points.shape[:1] or centres.ndim != 2 or centres.shape[1] != points.shape[1]:
        raise ValueError(
            f"need points (N, F), labels (N,), centres (C, F); got {tuple(points.shape)}, {tuple(labels.shape)}, {tuple(centres.shape)}"
        )
    return float(torch.linalg.vector_norm(points.double() - centres.double()[labels], dim=1).mean())
