"""Information Potential Auto-Encoders: autoencoders regularised by a bound on I(x; z)."""

__version__ = "0.1.0"

from ipae.information import conditional_entropy, draw_partners, gaussian_kl, information_potential  # noqa: E402
from ipae.models import PRESETS, AutoEncoder, ModelConfig  # noqa: E402
from ipae.train import TrainingDiverged, TrainResult, train  # noqa: E402

__all__ = [
    "__version__",
    "AutoEncoder",
    "ModelConfig",
    "PRESETS",
    "train",
    "TrainResult",
    "TrainingDiverged",
    "gaussian_kl",
    "conditional_entropy",
    "information_potential",
    "draw_partners",
]
