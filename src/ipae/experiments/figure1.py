"""The paper's Figure 1: IPAE against the VAE on the toy task, across beta."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ipae.experiments.parallel import map_runs
from ipae.experiments.toy import ToyOutcome, ToyRun, draw_reconstruction, run_toy
from ipae.results import save_png, write_table

__all__ = ["VAE_BETAS", "IPAE_BETAS", "figure1_runs", "reproduce_figure1", "summary"]

# The VAE grid spans 0.01..3 so that its best E (near beta = 1) lies inside it; the IPAE grid is
# centred on its best E (near beta = 0.01 with N_j = 1).
VAE_BETAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
IPAE_BETAS = (0.001, 0.003, 0.01, 0.03, 0.1)

COLUMNS = ("model", "beta", "steps", "seed", "precision", "status", "E", "E_sampled", "E_identity", "train_seconds")


def figure1_runs(*, steps: int = 5000, seed: int = 0, precision: str = "fp32", compile: bool = False) -> list[ToyRun]:
    """The grid: the VAE at VAE_BETAS, IPAE (N_j = 1) at IPAE_BETAS, the paper's training settings."""
    return [ToyRun(model="vae", beta=beta, steps=steps, seed=seed, precision=precision, compile=compile) for beta in VAE_BETAS] + [
        ToyRun(model="ipae", beta=beta, n_pairs=1, steps=steps, seed=seed, precision=precision, compile=compile) for beta in IPAE_BETAS
    ]


def _run_name(run: ToyRun) -> str:
    return f"{run.model}-beta{run.beta:g}"


def _run_into(runs_directory: Path, device: torch.device | str | None, run: ToyRun) -> ToyOutcome:
    return run_toy(run, runs_directory / _run_name(run), device=device, progress=False)


def reproduce_figure1(
    out: Path,
    *,
    steps: int = 5000,
    seed: int = 0,
    precision: str = "fp32",
    compile: bool = False,
    jobs: int = 1,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Run the grid into the existing directory `out` and write there:
    runs/<model>-beta<beta>/ (each run's metrics, panel and model), figure1.{md,csv,json} (the table)
    and figure1.png (the grid of panels). Returns the table's rows."""
    runs = figure1_runs(steps=steps, seed=seed, precision=precision, compile=compile)
    (out / "runs").mkdir()
    outcomes = map_runs(partial(_run_into, out / "runs", device), runs, jobs=jobs, progress=progress, desc="figure 1")
    rows = [{**outcome.metrics["config"], **outcome.metrics} for outcome in outcomes]
    write_table(out, "figure1", rows, COLUMNS, note=summary(rows))
    save_png(_grid_figure(runs, outcomes), out / "figure1.png")
    return rows


def summary(rows: list[dict]) -> str:
    """One line: each model's best E over its grid, and the ratio IPAE / VAE."""
    best = {}
    for row in rows:
        if row["status"] == "ok" and row["E"] < best.get(row["model"], {"E": math.inf})["E"]:
            best[row["model"]] = row
    parts = [f"{model} {row['E']:.3f} at β = {row['beta']:g}" for model, row in best.items()]
    line = "Best E: " + ("; ".join(parts) if parts else "no run succeeded")
    if {"ipae", "vae"} <= best.keys():
        line += f"; ratio ipae / vae = {best['ipae']['E'] / best['vae']['E']:.3f}"
    return line + "."


def _grid_figure(runs: list[ToyRun], outcomes: list[ToyOutcome]) -> Figure:
    """One row per model, one panel per beta, like the paper's Figure 1; the best E is marked."""
    models = list(dict.fromkeys(run.model for run in runs))
    width = max(sum(run.model == model for run in runs) for model in models)
    figure = Figure(figsize=(2.6 * width, 2.8 * len(models)))
    axes = figure.subplots(len(models), width, squeeze=False)
    for row, model in enumerate(models):
        pairs = [(run, outcome) for run, outcome in zip(runs, outcomes, strict=True) if run.model == model]
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
    figure.tight_layout()
    return figure
