"""One run of the toy experiment (section 4.1): train on the 25-Gaussian mixture, measure E, draw it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure

from ipae.checkpoint import save_model
from ipae.data.toy import gaussian_grid
from ipae.evaluation import centre_distance
from ipae.models import AutoEncoder
from ipae.results import json_lines, save_png, write_json
from ipae.train import TrainingDiverged, resolve_device, train

if TYPE_CHECKING:
    from ipae.experiments.mnist import MnistRun  # which imports this module

__all__ = ["MODELS", "ToyRun", "ToyOutcome", "run_toy", "draw_reconstruction", "child_seeds"]

# The CLI's model names and the rate term each one trains with unless told otherwise.
MODELS = {"ipae": "ip", "vae": "vae"}


@dataclass(frozen=True)
class ToyRun:
    """One configuration of the toy experiment. Defaults are the paper's training settings."""

    model: str = "ipae"  # a key of MODELS
    beta: float = 0.01  # weight of the rate term
    n_pairs: int | None = 1  # the paper's N_j for IPAE (None: all pairs); Figure 1 uses 1
    steps: int = 5000  # section 4.1: "finished after 5000 batches"
    batch_size: int = 512  # section 4.1
    lr: float = 1e-3  # section 4.1, Adam
    seed: int = 0  # data, initial weights, batches and noise
    precision: str = "fp32"  # a key of ipae.train.PRECISIONS; "bf16" is faster, fp32 is the reference
    compile: bool = False  # torch.compile the objective (see ipae.train)
    rate: str | None = None  # a key of ipae.models.RATES; None: the model's own (MODELS)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")


def training_options(run: ToyRun | MnistRun) -> dict:
    """The `ipae.train` options that a run's settings name (a ToyRun or an MnistRun: they share them)."""
    names = ("steps", "batch_size", "lr", "n_pairs", "precision", "compile")
    return {name: getattr(run, name) for name in names}


class ToyOutcome(NamedTuple):
    metrics: dict
    inputs: torch.Tensor  # (N, 2) the training data
    reconstruction: torch.Tensor | None  # (N, 2) decoded mean codes; None when training diverged


def child_seeds(seed: int, count: int) -> list[int]:
    """Independent seeds for the data, the weights and the training stream, all from `seed`."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(count)]


def run_toy(run: ToyRun, out: Path, *, device: str | torch.device | None = None, progress: bool | None = None) -> ToyOutcome:
    """Train and evaluate one toy run, writing into the existing directory `out`:
    metrics.json, metrics.jsonl (the training log), and unless training diverged, reconstruction.png and
    the model. Returns the metrics.

    Metrics: E (decoding the mean code), E_sampled (decoding a sampled code), E_identity (the inputs
    themselves), train_seconds (the training loop alone), status ("ok" or "failed"), the config.
    `device`: where to train (None: CUDA when present, else the CPU).
    """
    device = resolve_device(device)
    out.mkdir(exist_ok=True)
    data_seed, model_seed, train_seed = child_seeds(run.seed, 3)
    data = gaussian_grid(seed=data_seed)
    model = AutoEncoder.from_preset("toy", rate=run.rate or MODELS[run.model], beta=run.beta, seed=model_seed).to(device)
    metrics: dict = {
        "device": str(device),
        "config": asdict(run),
        "architecture": model.config.to_dict(),
        "E_identity": centre_distance(data.x, data.labels, data.centres),
    }
    try:
        with json_lines(out / "metrics.jsonl") as log:
            result = train(model, data.x, seed=train_seed, progress=progress, on_log=log, **training_options(run))
    except TrainingDiverged as diverged:
        metrics |= {"status": "failed", "error": str(diverged), "failed_step": diverged.step, "train_seconds": diverged.result.seconds}
        write_json(out / "metrics.json", metrics)
        return ToyOutcome(metrics, data.x, None)
    model.eval()
    with torch.no_grad():
        mu, logvar = model.encode(data.x.to(device))
        noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(train_seed)).to(device)
        mean_reconstruction = model.decode(mu).cpu()
        sampled_reconstruction = model.decode(mu + (0.5 * logvar).exp() * noise).cpu()
    metrics |= {
        "status": "ok",
        "E": centre_distance(mean_reconstruction, data.labels, data.centres),
        "E_sampled": centre_distance(sampled_reconstruction, data.labels, data.centres),
        "final_loss": float(result.loss[-1]),
        "final_distortion": float(result.distortion[-1]),
        "final_rate": float(result.rate[-1]),
        "train_seconds": result.seconds,
    }
    figure = Figure(figsize=(4, 4))
    draw_reconstruction(figure.add_subplot(), data.x, mean_reconstruction, title=f"{run.model}, β={run.beta:g}, E={metrics['E']:.3f}")
    save_png(figure, out / "reconstruction.png")
    save_model(model, out)
    write_json(out / "metrics.json", metrics)
    return ToyOutcome(metrics, data.x, mean_reconstruction)


def draw_reconstruction(axes, inputs: torch.Tensor, reconstructions: torch.Tensor, *, title: str) -> None:
    """The paper's Figure 1 panel: inputs as red circles, reconstructions as blue dots."""
    axes.scatter(inputs[:, 0], inputs[:, 1], s=12, facecolors="none", edgecolors="red", linewidths=0.4, label="input")
    axes.scatter(reconstructions[:, 0], reconstructions[:, 1], s=2, color="blue", label="reconstruction")
    axes.set_title(title, fontsize=9)
    axes.set_xlim(-6, 6)
    axes.set_ylim(-6, 6)
    axes.set_aspect("equal")
    axes.tick_params(labelsize=7)
