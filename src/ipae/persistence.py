"""`ipae.save` and `ipae.load`: a model or a fitted estimator to a model directory and back, one path for both.

The files are `ipae.checkpoint`'s; a fitted estimator is its model with the estimator's parameters and
fitted attributes in model.json's metadata. This module sits above both `ipae.checkpoint`, which the
training loop writes its checkpoints with, and `ipae.estimators`, which it imports only for an estimator
(scikit-learn takes a second to import): the checkpoint format cannot import the estimators without an
import cycle, since an estimator's fit writes checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ipae._files import staged_directory
from ipae.checkpoint import load_model, read_metadata, save_model
from ipae.models import AutoEncoder
from ipae.rates import Rate

if TYPE_CHECKING:  # scikit-learn takes a second to import: only when an estimator is loaded
    from ipae.estimators import IPAE, BetaVAE

__all__: list[str] = []  # users reach its public names through the package: ipae.save, ipae.load


def save(saved, directory: str | Path, *, overwrite: bool = False) -> None:
    """Write `saved`, an `AutoEncoder` or a fitted `IPAE`/`BetaVAE`, into the new directory `directory`
    (its parents are created); `ipae.load` reads it back. An existing `directory` is a FileExistsError
    unless `overwrite`, then it is replaced as a whole once the new one is written. A model whose rate
    could not be loaded back (`ipae.rates.spec`) is refused, and nothing is left behind."""
    directory = Path(directory)
    if isinstance(saved, AutoEncoder):
        model, metadata = saved, {}
    else:
        from ipae.estimators import checkpoint_of

        model, metadata = checkpoint_of(saved)
    if os.path.lexists(directory) and not overwrite:
        raise FileExistsError(f"{directory} already exists; pass overwrite=True to replace it")
    with staged_directory(directory, overwrite=True) as stage:
        save_model(model, stage, metadata=metadata)


def load(
    directory: str | Path, *, encoder: nn.Module | None = None, decoder: nn.Module | None = None, rate: Rate | None = None
) -> AutoEncoder | IPAE | BetaVAE:
    """What was saved in `directory`: the fitted estimator (`IPAE`, `BetaVAE`), or the `AutoEncoder`
    (into `encoder` and `decoder` for networks of your own, with `rate` for a rate of your own, each
    built as when the model was saved). A missing or damaged file is a FileNotFoundError or ValueError
    naming it; nothing is unpickled."""
    if "estimator" in read_metadata(directory):
        if encoder is not None or decoder is not None or rate is not None:
            raise ValueError(f"{directory}: holds a fitted estimator, which builds its own model; pass no encoder, decoder or rate")
        from ipae.estimators import from_checkpoint

        return from_checkpoint(directory)
    return load_model(directory, encoder=encoder, decoder=decoder, rate=rate)
