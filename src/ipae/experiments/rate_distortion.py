"""Rate against distortion on the toy task, for the paper's rate term, tighter ones and the VAE's."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ipae._files import write_json
from ipae.checkpoint import load_model
from ipae.data.toy import gaussian_grid
from ipae.diagnostics import information
from ipae.experiments.parallel import map_runs
from ipae.experiments.runs import Run, child_seeds
from ipae.experiments.toy import run_toy
from ipae.information import reparameterise
from ipae.rates import InformationPotential, MonteCarlo, PairwiseKL, PriorKL, Rate
from ipae.reporting import save_png, write_table
from ipae.training import TrainConfig

__all__ = ["reproduce_rate_distortion"]

# Rate term -> betas. The mixture estimates are capped by log(batch) = 6.2 nats, eq. 10 and the VAE's
# KL are not, so their useful betas differ. (The Bhattacharyya lower bound trains too, but a lower bound
# is not one to minimise; it is left out of the grid.) The pairwise terms use all pairs of the batch.
GRID: dict[str, tuple[Rate, tuple[float, ...]]] = {
    "ip": (InformationPotential(1), (0.003, 0.01, 0.03, 0.1)),
    "pairwise-kl": (PairwiseKL(), (0.3, 1.0, 3.0)),
    "mc": (MonteCarlo(1), (1.0, 3.0)),
    "vae": (PriorKL(), (0.1, 0.3, 1.0, 3.0)),
}
MC_SAMPLES = 16  # draws per data point for the Monte Carlo estimate
COLUMNS = ("rate", "beta", "status", "E", "distortion", "I_lower", "I_mc", "I_upper", "I_jensen", "train_seconds")


def rate_distortion_runs(training: TrainConfig, *, seed: int = 0) -> list[Run]:
    """Every (rate term, beta) of GRID, each trained as `training` says."""
    return [Run(rate, beta, seed, training) for rate, betas in GRID.values() for beta in betas]


@torch.no_grad()
def evaluate_rate(run: Run, directory: Path) -> dict:
    """Distortion (squared error of sampled codes, mean over the data) and I(x; z) by every estimator,
    of the model trained in `directory`, on the whole toy data set (a mixture of 5000 components)."""
    data_seed, _, train_seed = child_seeds(run.seed, 3)
    x = gaussian_grid(seed=data_seed).x.double()
    model = load_model(directory).double()
    mu, logvar = model.encode(x)
    generator = torch.Generator().manual_seed(train_seed)
    noise = torch.randn((MC_SAMPLES, *mu.shape), generator=generator, dtype=mu.dtype)
    decoded = model.decode(reparameterise(mu, logvar, noise).flatten(0, 1))  # (S * N, 2)
    metrics = {"distortion": float((decoded - x.repeat(MC_SAMPLES, 1)).square().sum(dim=1).mean())}
    return metrics | information(mu, logvar, generator=generator, n_samples=MC_SAMPLES)


def _run_into(runs_directory: Path, device: torch.device | str | None, run: Run) -> dict:
    directory = runs_directory / run.name()
    metrics = run_toy(run, directory, device=device, progress=False).metrics
    if metrics["status"] == "ok":
        metrics |= evaluate_rate(run, directory)
        write_json(directory / "metrics.json", metrics)
    return metrics


def reproduce_rate_distortion(
    out: Path,
    training: TrainConfig,
    *,
    seed: int = 0,
    jobs: int = 1,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Train every run of the grid into `out`/runs and write cells.json (every run's metrics) and
    rate_distortion.{md,csv,json,png}."""
    runs = rate_distortion_runs(training, seed=seed)
    (out / "runs").mkdir()
    cells = map_runs(partial(_run_into, out / "runs", device), runs, jobs=jobs, progress=progress, desc="rate-distortion")
    write_json(out / "cells.json", {run.name(): metrics for run, metrics in zip(runs, cells, strict=True)})
    rows = [{**run.row(), **metrics} for run, metrics in zip(runs, cells, strict=True)]
    write_table(out, "rate_distortion", rows, COLUMNS, note=summary(rows))
    save_png(_figure(rows), out / "rate_distortion.png")
    return rows


def summary(rows: list[dict]) -> str:
    """One line: the best E of each rate term over its betas."""
    best: dict[str, dict] = {}
    for row in rows:
        if row["status"] == "ok" and row["E"] < best.get(row["rate"], {"E": math.inf})["E"]:
            best[row["rate"]] = row
    parts = [f"{rate} {row['E']:.3f} at β = {row['beta']:g}" for rate, row in best.items()]
    return "Best E: " + ("; ".join(parts) if parts else "no run succeeded") + "."


def _figure(rows: list[dict]) -> Figure:
    """Left: distortion against I(x; z) (MC, with the bracket of the lower and upper bounds); right: E."""
    figure = Figure(figsize=(11, 4.2))
    distortion_axes, error_axes = figure.subplots(1, 2)
    for rate in GRID:
        points = sorted((row for row in rows if row["rate"] == rate and row["status"] == "ok"), key=lambda row: row["I_mc"])
        if not points:
            continue
        information = [row["I_mc"] for row in points]
        bracket = [[row["I_mc"] - row["I_lower"] for row in points], [row["I_upper"] - row["I_mc"] for row in points]]
        line = distortion_axes.errorbar(information, [row["distortion"] for row in points], xerr=bracket, marker="o", capsize=3, label=rate)
        error_axes.plot(information, [row["E"] for row in points], marker="o", color=line.lines[0].get_color(), label=rate)
        for row in points:
            error_axes.annotate(f"{row['beta']:g}", (row["I_mc"], row["E"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for axes in (distortion_axes, error_axes):
        axes.axvline(math.log(25), linestyle=":", color="gray", label="log 25: which of the 25 centres")
    distortion_axes.set(xlabel="I(x; z), nats (MC; bars: Bhattacharyya .. pairwise-KL bounds)", ylabel="distortion (squared error)")
    distortion_axes.set_yscale("log")
    error_axes.set(xlabel="I(x; z), nats (MC)", ylabel="E (distance to the true centre)")
    for axes in (distortion_axes, error_axes):
        axes.legend(title="rate term", fontsize=8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure
