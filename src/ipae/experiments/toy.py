"""One run of the toy experiment (section 4.1): train on the 25-Gaussian mixture, measure E, draw it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure

from ipae._files import write_json
from ipae.checkpoint import save_model
from ipae.data.toy import gaussian_grid
from ipae.diagnostics import diagnose
from ipae.evaluation import centre_distance
from ipae.experiments.runs import Run, child_seeds, run_provenance, train_logged
from ipae.information import reparameterise
from ipae.reporting import save_png
from ipae.runtime import resolve_device

__all__: list[str] = []  # internal


class ToyOutcome(NamedTuple):
    metrics: dict
    inputs: torch.Tensor  # (N, 2) the training data
    reconstruction: torch.Tensor | None  # (N, 2) decoded mean codes; None when training diverged


def run_toy(
    run: Run,
    out: Path,
    *,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    monitor: bool = False,
    monitor_points: int | None = None,
) -> ToyOutcome:
    """Train and evaluate one toy run, writing into the existing directory `out`:
    metrics.json, metrics.jsonl (the training log), and unless training diverged, reconstruction.png and
    the model. Returns the metrics.

    Metrics: E (decoding the mean code), E_sampled (decoding a sampled code), E_identity (the inputs
    themselves), train_seconds (the training loop alone), status ("ok" or "failed"), the config, and
    `ipae.diagnostics.diagnose`'s numbers on a fresh draw of 5000 points from the same mixture (I(x; z),
    distortion, log-variance, and k-means NMI/ARI against the 25 components).
    `device`: where to train (None: CUDA when present, else the CPU). `monitor`: the training log also
    holds I(x; z) and the distortion of those 5000 held-out points every `run.training.monitor_every`
    steps (`ipae.train`'s monitor); the weights are the same either way. `monitor_points`: at most
    that many of them, evenly spaced over the components (a measurement's cost grows as its points squared).
    """
    device = resolve_device(device)
    out.mkdir(exist_ok=True)
    data_seed, model_seed, train_seed, evaluation_seed = child_seeds(run.seed, 4)
    data = gaussian_grid(seed=data_seed)
    model = run.model("toy").build(seed=model_seed, rate=run.rate).to(device)
    metrics: dict = {
        **run_provenance(device),
        "config": run.to_dict("toy"),
        "E_identity": centre_distance(data.x, data.labels, data.centres),
    }
    config = replace(run.training, seed=train_seed, progress=progress)
    held_out = gaussian_grid(seed=evaluation_seed)
    watched = None
    if monitor:
        count = len(held_out.x) if monitor_points is None else min(monitor_points, len(held_out.x))
        if count < 2:
            raise ValueError(f"monitor_points must be at least 2 (I_loo leaves each point out), got {monitor_points}")
        watched = held_out.x[np.linspace(0, len(held_out.x) - 1, count).round().astype(np.int64)]  # the points are in component order
    result, status = train_logged(model, data.x, config, out / "metrics.jsonl", monitor=watched)
    metrics |= status
    if result is None:
        write_json(out / "metrics.json", metrics)
        return ToyOutcome(metrics, data.x, None)
    model.eval()
    with torch.no_grad():
        mu, logvar = model.encode(data.x.to(device))
        noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(train_seed)).to(device)
        mean_reconstruction = model.decode(mu).cpu()
        sampled_reconstruction = model.decode(reparameterise(mu, logvar, noise)).cpu()
    metrics |= diagnose(model, held_out.x, y_test=held_out.labels.numpy(), x_information=held_out.x, seed=evaluation_seed)
    metrics |= {
        "E": centre_distance(mean_reconstruction, data.labels, data.centres),
        "E_sampled": centre_distance(sampled_reconstruction, data.labels, data.centres),
        "final_loss": float(result.loss[-1]),
        "final_distortion": float(result.distortion[-1]),
        "final_rate": float(result.rate[-1]),
        "train_seconds": result.seconds,
    }
    figure = Figure(figsize=(4, 4.4), layout="constrained")
    axes = figure.add_subplot()
    draw_reconstruction(axes, data.x, mean_reconstruction, title=f"{run.rate.name}, β={run.beta:g}, E={metrics['E']:.3f}")
    figure.legend(loc="outside lower center", ncol=2, fontsize=7, markerscale=2, frameon=False)  # below: it hides no point
    save_png(figure, out / "reconstruction.png")
    save_model(model, out)
    write_json(out / "metrics.json", metrics)
    return ToyOutcome(metrics, data.x, mean_reconstruction)


def draw_reconstruction(axes, inputs: torch.Tensor, reconstructions: torch.Tensor, *, title: str) -> None:
    """The paper's Figure 1 panel: inputs as red circles, reconstructions as blue dots, labelled so for a legend."""
    axes.scatter(inputs[:, 0], inputs[:, 1], s=12, facecolors="none", edgecolors="red", linewidths=0.4, label="input (red circles)")
    axes.scatter(reconstructions[:, 0], reconstructions[:, 1], s=2, color="blue", label="reconstruction (blue dots)")
    axes.set_title(title, fontsize=9)
    axes.set_xlim(-6, 6)
    axes.set_ylim(-6, 6)
    axes.set_aspect("equal")
    axes.tick_params(labelsize=7)
