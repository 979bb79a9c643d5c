"""The paper's Figure 1: IPAE against the VAE on the toy task, across beta."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ipae._files import write_json
from ipae.experiments.parallel import map_runs
from ipae.experiments.runs import Run
from ipae.experiments.toy import ToyOutcome, draw_reconstruction, run_toy
from ipae.rates import InformationPotential, PriorKL
from ipae.reporting import save_png, write_table
from ipae.training import TrainConfig

__all__ = ["reproduce_figure1"]

# The VAE grid spans 0.01..3 so that its best E (near beta = 1) lies inside it; the IPAE grid is
# centred on its best E (near beta = 0.01 with N_j = 1).
VAE_BETAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
IPAE_BETAS = (0.001, 0.003, 0.01, 0.03, 0.1)

COLUMNS = ("rate", "options", "beta", "steps", "seed", "precision", "status", "E", "E_sampled", "E_identity", "train_seconds")


def figure1_runs(training: TrainConfig, *, seed: int = 0, paper_exact: bool = False) -> list[Run]:
    """The grid: the VAE at VAE_BETAS, IPAE (N_j = 1) at IPAE_BETAS, each trained as `training` says."""
    return [Run(PriorKL(), beta, seed, training, paper_exact) for beta in VAE_BETAS] + [
        Run(InformationPotential(1), beta, seed, training, paper_exact) for beta in IPAE_BETAS
    ]


def _run_into(runs_directory: Path, device: torch.device | str | None, run: Run) -> ToyOutcome:
    return run_toy(run, runs_directory / run.name(), device=device, progress=False)


def reproduce_figure1(
    out: Path,
    training: TrainConfig,
    *,
    seed: int = 0,
    paper_exact: bool = False,
    jobs: int = 1,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Run the grid (`paper_exact`: models as printed, `ipae.models.paper_conventions`) into the existing directory `out` and write there:
    runs/<run name>/ (each run's metrics, panel and model), cells.json (every run's metrics),
    figure1.{md,csv,json} (the table) and figure1.png (the grid of panels). Returns the table's rows."""
    runs = figure1_runs(training, seed=seed, paper_exact=paper_exact)
    (out / "runs").mkdir()
    outcomes = map_runs(partial(_run_into, out / "runs", device), runs, jobs=jobs, progress=progress, desc="figure 1")
    rows = [{**run.row(), **outcome.metrics} for run, outcome in zip(runs, outcomes, strict=True)]
    write_json(out / "cells.json", {run.name(): outcome.metrics for run, outcome in zip(runs, outcomes, strict=True)})
    write_table(out, "figure1", rows, COLUMNS, note=summary(rows))
    save_png(_grid_figure(runs, outcomes), out / "figure1.png")
    return rows


def summary(rows: list[dict]) -> str:
    """One line: each model's best E over its grid, and the ratio IPAE / VAE."""
    best = {}
    for row in rows:
        if row["status"] == "ok" and row["E"] < best.get(row["rate"], {"E": math.inf})["E"]:
            best[row["rate"]] = row
    parts = [f"{rate} {row['E']:.3f} at β = {row['beta']:g}" for rate, row in best.items()]
    line = "Best E: " + ("; ".join(parts) if parts else "no run succeeded")
    if {"ip", "vae"} <= best.keys():
        line += f"; ratio ip / vae = {best['ip']['E'] / best['vae']['E']:.3f}"
    return line + "."


def _grid_figure(runs: list[Run], outcomes: list[ToyOutcome]) -> Figure:
    """One row per rate term, one panel per beta, like the paper's Figure 1; the best E is marked."""
    models = list(dict.fromkeys(run.rate.name for run in runs))
    width = max(sum(run.rate.name == model for run in runs) for model in models)
    figure = Figure(figsize=(2.6 * width, 2.9 * len(models) + 0.3), layout="constrained")  # titles never overlap ticks
    axes = figure.subplots(len(models), width, squeeze=False)
    for row, model in enumerate(models):
        pairs = [(run, outcome) for run, outcome in zip(runs, outcomes, strict=True) if run.rate.name == model]
        best = min((outcome.metrics.get("E", math.inf) for _, outcome in pairs), default=math.inf)
        for column in range(width):
            panel = axes[row][column]
            if column >= len(pairs):
                panel.set_axis_off()
                continue
            run, outcome = pairs[column]
            if outcome.reconstruction is None:
                panel.set_title(f"{model}, β={run.beta:g}: failed", fontsize=9)
                continue
            error = outcome.metrics["E"]
            mark = " (best)" if error == best else ""
            draw_reconstruction(panel, outcome.inputs, outcome.reconstruction, title=f"{model} β={run.beta:g}\nE={error:.3f}{mark}")
    drawn = next((panel for panel in figure.axes if panel.collections), None)
    if drawn is not None:  # above the panels: the constrained layout makes room for it
        figure.legend(*drawn.get_legend_handles_labels(), loc="outside upper center", ncol=2, fontsize=8, markerscale=2, frameon=False)
    return figure
