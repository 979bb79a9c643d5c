"""Information Potential Auto-Encoders: autoencoders regularised by a bound on I(x; z)."""

from ipae._version import __version__
from ipae.information import conditional_entropy, draw_partners, gaussian_kl, information_potential, reparameterise
from ipae.models import PRESETS, AutoEncoder
from ipae.persistence import load, save
from ipae.rates import Bhattacharyya, InformationPotential, Jensen, MonteCarlo, PairwiseKL, PriorKL, Rate
from ipae.train import CompileFailed, TrainConfig, TrainingDiverged, TrainResult, TrainState, train

__all__ = [
    "__version__",
    "AutoEncoder",
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
    "save",
    "load",
    "IPAE",
    "BetaVAE",
    "TrainingDiverged",
    "CompileFailed",
    "reparameterise",
    "gaussian_kl",
    "conditional_entropy",
    "information_potential",
    "draw_partners",
    "plot_runs",
]


def __getattr__(name: str):
    """The scikit-learn estimators and the figures of runs, imported on first use (scikit-learn and
    matplotlib take a second each to import, and training needs neither)."""
    if name in ("IPAE", "BetaVAE"):
        from ipae import estimators

        return getattr(estimators, name)
    if name == "plot_runs":
        from ipae.plotting import plot_runs

        return plot_runs
    raise AttributeError(f"module 'ipae' has no attribute {name!r}")
