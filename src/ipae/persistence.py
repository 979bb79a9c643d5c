"""`ipae.load`: whatever a model directory holds, a fitted estimator or a model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ipae.checkpoint import load_model, read_metadata

__all__ = ["load"]


def load(directory: str | Path, *, encoder: nn.Module | None = None, decoder: nn.Module | None = None):
    """What was saved in `directory`: the fitted estimator (`IPAE`, `BetaVAE`) written by its `save`,
    else the `AutoEncoder` written by `ipae.save` (into `encoder` and `decoder` for networks of your own)."""
    if "estimator" in read_metadata(directory):
        from ipae.estimators import load_estimator  # scikit-learn takes a second to import: only when needed

        return load_estimator(directory)
    return load_model(directory, encoder=encoder, decoder=decoder)
