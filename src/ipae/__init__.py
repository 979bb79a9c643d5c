"""Information Potential Auto-Encoders: autoencoders regularised by a bound on I(x; z)."""

__version__ = "0.1.0"

from ipae.checkpoint import load  # noqa: E402
from ipae.information import conditional_entropy, draw_partners, gaussian_kl, information_potential  # noqa: E402
from ipae.models import PRESETS, AutoEncoder, ModelConfig  # noqa: E402
from ipae.train import CompileFailed, TrainingDiverged, TrainResult, TrainState, train  # noqa: E402

__all__ = [
    "__version__",
    "AutoEncoder",
    "ModelConfig",
    "PRESETS",
    "train",
    "TrainResult",
    "TrainState",
    "load",
    "IPAE",
    "BetaVAE",
    "load_estimator",
    "TrainingDiverged",
    "CompileFailed",
    "gaussian_kl",
    "conditional_entropy",
    "information_potential",
    "draw_partners",
]


def __getattr__(name: str):
    """The scikit-learn estimators, imported on first use (scikit-learn takes a second to import)."""
    if name in ("IPAE", "BetaVAE", "load_estimator"):
        from ipae import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'ipae' has no attribute {name!r}")
