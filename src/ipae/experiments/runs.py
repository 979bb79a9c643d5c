"""What every experiment's runs share: one configuration type, seeds, names and the training log."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ipae.rates import InformationPotential, Rate, spec
from ipae.results import json_lines
from ipae.train import TrainConfig, TrainingDiverged, TrainResult, train

__all__ = ["Run", "child_seeds", "train_logged"]


@dataclass(frozen=True)
class Run:
    """One configuration of an experiment: the rate term and its weight, the master seed, and how to
    train (the paper's settings unless told otherwise). Runs are compared by identity of their rate."""

    rate: Rate = field(default_factory=InformationPotential)  # IPAE with N_j = 1, as in Figure 1
    beta: float = 0.01  # weight of the rate term
    seed: int = 0  # the data (or subset), the initial weights and the training stream are drawn from it
    training: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))  # its seed is replaced by one drawn from `seed`

    def name(self) -> str:
        """A directory name: the rate, its options and beta, e.g. "ip-n_partners8-beta1e-05"."""
        options = "".join(f"-{key}{'all' if value is None else value}" for key, value in spec(self.rate).items() if key != "name")
        return f"{self.rate.name}{options}-beta{self.beta:g}"

    def row(self) -> dict:
        """The columns a results table shows of the configuration."""
        options = ", ".join(f"{key}={'all' if value is None else value}" for key, value in spec(self.rate).items() if key != "name")
        training = self.training
        return {
            "rate": self.rate.name,
            "options": options,
            "beta": self.beta,
            "steps": training.steps,
            "seed": self.seed,
            "precision": training.precision,
        }

    def describe(self) -> dict:
        """The configuration as JSON."""
        return {"rate": spec(self.rate), "beta": self.beta, "seed": self.seed, "training": self.training.to_dict()}


def child_seeds(seed: int, count: int) -> list[int]:
    """Independent seeds for the data, the weights and the training stream, all from `seed`."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(count)]


def train_logged(model, data, config: TrainConfig, log: Path) -> tuple[TrainResult | None, dict]:
    """Train with the JSON-lines log at `log`; returns the result and {"status": "ok"}, or None and
    the failure's record (status, error, failed_step, train_seconds) when the loss turned non-finite."""
    try:
        with json_lines(log) as write:
            return train(model, data, config, on_log=write), {"status": "ok"}
    except TrainingDiverged as diverged:
        return None, {"status": "failed", "error": str(diverged), "failed_step": diverged.step, "train_seconds": diverged.result.seconds}
