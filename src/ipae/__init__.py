"""Information Potential Auto-Encoders: autoencoders regularised by a bound on I(x; z).

The names here are the library: a model (`AutoEncoder`, its networks `MLP` and `Conv`, the `PRESETS`),
its rate terms (`Rate` and the six built in), training (`train`, `TrainConfig`), saving and loading,
the scikit-learn estimators (`IPAE`, `BetaVAE`), the information terms as tensor functions and
`mutual_information` of a mixture of Gaussian codes. All quantities of information are in nats.
The submodules add a few more (`ipae.data`, `ipae.diagnostics`, `ipae.evaluation`, the experiments).
"""

from ipae._version import __version__
from ipae.checkpoint import TrainState
from ipae.information import conditional_entropy, draw_partners, gaussian_kl, information_potential, reparameterise
from ipae.mixture import mutual_information
from ipae.models import PRESETS, AutoEncoder, ModelSpec
from ipae.networks import MLP, Conv
from ipae.persistence import load, save
from ipae.rates import Bhattacharyya, InformationPotential, Jensen, MonteCarlo, PairwiseKL, PriorKL, Rate
from ipae.training import CompileFailed, TrainConfig, TrainingDiverged, TrainResult, train

__all__ = [
    "__version__",
    "AutoEncoder",
    "MLP",
    "Conv",
    "ModelSpec",
    "PRESETS",
    "Rate",
    "InformationPotential",
    "PriorKL",
    "PairwiseKL",
    "Bhattacharyya",
    "Jensen",
    "MonteCarlo",
    "train",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingDiverged",
    "CompileFailed",
    "save",
    "load",
    "IPAE",
    "BetaVAE",
    "reparameterise",
    "gaussian_kl",
    "conditional_entropy",
    "information_potential",
    "draw_partners",
    "mutual_information",
    "plot_runs",
]

_LAZY = {"IPAE": "ipae.estimators", "BetaVAE": "ipae.estimators", "plot_runs": "ipae.plotting"}


def __getattr__(name: str):
    """The scikit-learn estimators and the figures of runs, imported on first use (scikit-learn and
    matplotlib take a second each to import, and training needs neither)."""
    if name in _LAZY:
        import importlib

        value = globals()[name] = getattr(importlib.import_module(_LAZY[name]), name)  # once: later lookups find it
        return value
    raise AttributeError(f"module 'ipae' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with the lazily imported ones, which `dir(ipae)` would otherwise miss until first used."""
    return sorted({*globals(), *_LAZY})
