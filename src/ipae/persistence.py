"""`ipae.load`: whatever a model directory holds, a fitted estimator or a model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ipae.checkpoint import load_model, read_metadata
from ipae.models import AutoEncoder
from ipae.rates import Rate

if TYPE_CHECKING:  # scikit-learn takes a second to import: only when an estimator is loaded
    from ipae.estimators import IPAE, BetaVAE

__all__: list[str] = []  # users reach its public names through the package: ipae.load


def load(
    directory: str | Path, *, encoder: nn.Module | None = None, decoder: nn.Module | None = None, rate: Rate | None = None
) -> AutoEncoder | IPAE | BetaVAE:
    """What was saved in `directory`: the fitted estimator (`IPAE`, `BetaVAE`) written by its `save`,
    else the `AutoEncoder` written by `ipae.save` (into `encoder` and `decoder` for networks of your own,
    with `rate` for a rate of your own, each built as when the model was saved).
    A missing or damaged file is a FileNotFoundError or ValueError naming it; nothing is unpickled."""
    if "estimator" in read_metadata(directory):
        from ipae.estimators import load_estimator  # scikit-learn takes a second to import: only when needed

        try:
            return load_estimator(directory)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as error:
            # load_estimator builds the estimator's model from its record partly outside its own checks: what a
            # damaged record raises there is named here (its own errors, which name the directory, pass as they are)
            if isinstance(error, ValueError) and str(directory) in str(error):
                raise
            reason = " ".join(str(error).split())
            raise ValueError(f"{Path(directory) / 'model.json'}: damaged estimator metadata ({type(error).__name__}: {reason})") from None
    return load_model(directory, encoder=encoder, decoder=decoder, rate=rate)
