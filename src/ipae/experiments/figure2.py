"""The paper's Figure 2: the MNIST study (digits 1, 3, 4) across beta and N_j, repeated, resumable."""

from __future__ import annotations

import math
import statistics
from functools import partial
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ipae._files import write_json
from ipae._validation import check_positive_int
from ipae.evaluation import holm, paired_comparison, within_class_fraction
from ipae.experiments.mnist import draw_codes, first_successful_repeat, run_repeat, summarise_repeats, title
from ipae.experiments.parallel import map_runs
from ipae.experiments.runs import Run, claim_sweep
from ipae.rates import InformationPotential, PriorKL
from ipae.reporting import save_png, write_table
from ipae.training import TrainConfig

__all__ = ["reproduce_figure2"]

# The paper's grid (section 4.2): the VAE across beta; IPAE with N_j = 1 across beta; IPAE at its
# best beta with more partners (None: all 512 pairs of the batch).
VAE_BETAS = (1e-5, 1e-4, 1e-3, 1e-2)
# The pre-registered reference of the primary comparison (docs/rate_matched.md): the paper's own VAE.
REFERENCE_VAE_BETA = 1e-3
IPAE_BETAS = (1e-5, 1e-4, 1e-3)
IPAE_PAIRS = (8, 64, None)

COLUMNS = ("rate", "options", "beta", "steps", "precision", "repeats", "failed_repeats", "svm_error", "svm_error_std")
COLUMNS += ("pca_within_class", "train_seconds")
PAIRED_COLUMNS = ("rate", "options", "beta", "metric", "n", "difference", "better", "worse", "tied", "p_sign", "p_t", "differences")
# The settings a resumed sweep must share with the runs it keeps.
SWEEP_SETTINGS = ("steps", "seed", "precision", "paper_exact")


def figure2_runs(
    training: TrainConfig,
    *,
    seed: int = 0,
    paper_exact: bool = False,
    rates: tuple[str, ...] | None = None,
    cells: tuple[str, ...] | None = None,
) -> list[Run]:
    """The ten cells of the grid, each trained as `training` says (the paper's settings by default);
    `paper_exact`: models as printed (`ipae.models.paper_conventions`); `rates`: only the cells of these
    rates; `cells`: only these cells, named as `Run.name()` without "-paper" (e.g. "ip-n_partners8-beta1e-05")."""
    runs = (
        [Run(PriorKL(), beta, seed, training, paper_exact) for beta in VAE_BETAS]
        + [Run(InformationPotential(1), beta, seed, training, paper_exact) for beta in IPAE_BETAS]
        + [Run(InformationPotential(pairs), IPAE_BETAS[0], seed, training, paper_exact) for pairs in IPAE_PAIRS]
    )
    if rates is not None:
        unknown = set(rates) - {run.rate.name for run in runs}
        if unknown:
            raise ValueError(f"figure 2 has no cells of rate {', '.join(sorted(unknown))}; its rates are vae and ip")
        runs = [run for run in runs if run.rate.name in rates]
    if cells is not None:
        names = {run.name().removesuffix("-paper"): run for run in runs}
        unknown = set(cells) - set(names)
        if unknown:
            raise ValueError(f"figure 2 has no cell {', '.join(sorted(unknown))}; its cells are {', '.join(names)}")
        runs = [run for name, run in names.items() if name in cells]
    return runs


def _repeat_into(runs_directory: Path, data_dir: Path | None, device: str | None, task: tuple[Run, int]) -> dict:
    run, repeat = task
    return run_repeat(run, data_dir, runs_directory / run.name(), repeat, device=device)


def reproduce_figure2(
    out: Path,
    training: TrainConfig,
    *,
    seed: int = 0,
    repeats: int = 10,
    paper_exact: bool = False,
    rates: tuple[str, ...] | None = None,
    cells: tuple[str, ...] | None = None,
    data_dir: Path | None = None,
    jobs: int = 1,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Train every repeat of every cell into `out`/runs, keeping the repeats already there, then write
    runs/<cell>/metrics.json and codes.png, cells.json (every cell's metrics), figure2.{md,csv,json} and
    figure2.png. Returns the table's rows.

    `out` is created if missing; if it holds a sweep, that sweep's settings (out/sweep.json) must equal
    these, and its finished repeats (one JSON each) are not redone. Repeats run in the order
    repeat 0 of every cell, then repeat 1, ..., so that an interrupted sweep has a little of every cell.
    """
    check_positive_int("repeats", repeats)
    settings = {"steps": training.steps, "seed": seed, "precision": training.precision, "paper_exact": paper_exact}
    claim_sweep(
        out, settings, SWEEP_SETTINGS, kind="figure-2", absent={"paper_exact": False}
    )  # compile changes rounding only, so a resumed sweep may differ in it
    runs = figure2_runs(training, seed=seed, paper_exact=paper_exact, rates=rates, cells=cells)
    for run in runs:
        (out / "runs" / run.name()).mkdir(parents=True, exist_ok=True)
    tasks = [(run, repeat) for repeat in range(repeats) for run in runs]
    device = None if device is None else str(device)
    records = map_runs(partial(_repeat_into, out / "runs", data_dir, device), tasks, jobs=jobs, progress=progress, desc="figure 2")
    rows, results, cells = [], {}, {}
    for run in runs:
        results[run] = [record for (task_run, _), record in zip(tasks, records, strict=True) if task_run is run]
        cells[run.name()] = summarise_repeats(run, results[run], out / "runs" / run.name())
        rows.append({**run.row(), **cells[run.name()]})
    write_json(out / "cells.json", cells)
    write_table(out, "figure2", rows, COLUMNS, note=summary(rows))
    reference = next((run for run in runs if run.rate.name == "vae" and run.beta == REFERENCE_VAE_BETA), None)
    ipae_cells = [run for run in runs if run.rate.name == "ip"]
    if reference is not None and ipae_cells:
        primary = paired_against(out, [reference, *ipae_cells], results, reference, "svm_error")
        for row, adjusted in zip(primary, holm([row["p_t"] for row in primary]), strict=True):
            row["p_holm"] = adjusted
        note = "Primary, pre-registered (docs/rate_matched.md): each IPAE cell against the paper's VAE (β = 1e-3), Holm across the cells. "
        write_table(out, "figure2-primary", primary, PAIRED_COLUMNS + ("p_holm",), note=note + paired_summary(primary, "β = 1e-3"))
    best = best_vae(runs, results)
    if best is not None:
        paired = paired_against(out, runs, results, best, "svm_error")
        note = "Secondary: the reference was picked after seeing the data. "
        write_table(
            out, "figure2-paired", paired, PAIRED_COLUMNS, note=note + paired_summary(paired, f"the best VAE cell (β = {best.beta:g})")
        )
    partners = [run for run in runs if run.rate.name == "ip" and run.beta == IPAE_BETAS[0]]
    one = next((run for run in partners if run.rate.n_partners == 1), None)
    if one is not None and len(partners) > 1 and any(r["status"] == "ok" for r in results[one]):
        compared = [row for metric in ("svm_error", "pca_within_class") for row in paired_against(out, partners, results, one, metric)]
        write_table(out, "figure2-partners", compared, PAIRED_COLUMNS, note=paired_summary(compared, "IPAE with N_j = 1 at β = 1e-5"))
    save_png(_grid_figure(out, runs, results, rows), out / "figure2.png")
    return rows


def summary(rows: list[dict]) -> str:
    """The paper's comparisons: each model's best cell, and IPAE (beta = 1e-5, N_j = 8) against the best VAE."""
    done = [row for row in rows if row["svm_error"] is not None]
    best = {}
    for row in done:
        if row["svm_error"] < best.get(row["rate"], {"svm_error": math.inf})["svm_error"]:
            best[row["rate"]] = row
    parts = [f"{rate} {row['svm_error']:.2f} % ({_cell_label(row)})" for rate, row in best.items()]
    line = "Lowest mean test error: " + ("; ".join(parts) if parts else "no repeat succeeded") + "."
    paper_cell = next(
        (row for row in done if row["rate"] == "ip" and row["beta"] == IPAE_BETAS[0] and row["options"] == "n_partners=8"), None
    )
    if paper_cell is not None and "vae" in best:
        verdict = "below" if paper_cell["svm_error"] < best["vae"]["svm_error"] else "not below"
        line += f" IPAE with β = 1e-5, N_j = 8: {paper_cell['svm_error']:.2f} %, {verdict} the best VAE."
    failed = sum(row["failed_repeats"] for row in rows)
    return line + f" Failed repeats (non-finite loss): {failed} of {sum(row['repeats'] for row in rows)}."


def per_repeat(out: Path, run: Run, records: list[dict], metric: str) -> dict[int, float]:
    """repeat -> `metric` of the successful repeats of `run`: a key of the repeat's record, or
    "pca_within_class" (`within_class_fraction` of its test codes' 2-D PCA, from its .npz)."""
    values = {}
    for record in records:
        if record["status"] != "ok":
            continue
        if metric == "pca_within_class":
            picture = np.load(out / "runs" / run.name() / f"repeat-{record['repeat']}-pca.npz")
            values[record["repeat"]] = within_class_fraction(picture["pca"], picture["labels"])
        else:
            values[record["repeat"]] = record[metric]
    return values


def paired_against(out: Path, runs: list[Run], results: dict, reference: Run, metric: str) -> list[dict]:
    """Each run of `runs` but `reference` against it, repeat by repeat (the repeats share subset, initial
    weights and batches): `ipae.evaluation.paired_comparison` of `metric` (lower is better) over the
    repeats that succeeded in both, with the per-repeat differences (run - reference)."""
    base = per_repeat(out, reference, results[reference], metric)
    rows = []
    for run in runs:
        if run is reference:
            continue
        found = per_repeat(out, run, results[run], metric)
        common = sorted(found.keys() & base.keys())
        values, against = np.array([found[r] for r in common]), np.array([base[r] for r in common])
        differences = " ".join(f"{a - b:+.3f}" for a, b in zip(values, against, strict=True))
        rows.append({**run.row(), "metric": metric, **paired_comparison(values, against), "differences": differences})
    return rows


def best_vae(runs: list[Run], results: dict) -> Run | None:
    """The VAE cell of lowest mean SVM error over its successful repeats (None if there is none)."""
    errors = {run: [r["svm_error"] for r in results[run] if r["status"] == "ok"] for run in runs if run.rate.name == "vae"}
    errors = {run: values for run, values in errors.items() if values}
    return min(errors, key=lambda run: statistics.fmean(errors[run])) if errors else None


def paired_summary(rows: list[dict], reference: str) -> str:
    """A paired table's note: the reference, and each row's verdict at p < 0.05 (the Holm-adjusted
    paired t-test where the rows carry `p_holm`, else the paired t-test)."""
    parts = []
    for row in rows:
        verdict = "no significant difference"
        p = row.get("p_holm", row["p_t"])
        if p is not None and p < 0.05:
            verdict = "lower" if row["difference"] < 0 else "higher"
        counts = f"{row['better']} lower, {row['worse']} higher, {row['tied']} tied"
        parts.append(f"{row['rate']} {_cell_label(row)}, {row['metric']}: {counts}; {verdict}")
    return (
        f"Against {reference}, repeat by repeat: difference = cell - reference (negative: lower); better/worse count the "
        f"repeats where the cell is lower/higher; p_sign: two-sided sign test over untied repeats; p_t: paired t-test"
        + ("; p_holm: p_t Holm-adjusted across the rows. " if any("p_holm" in row for row in rows) else ". ")
        + "; ".join(parts)
        + "."
    )


def _cell_label(row: dict) -> str:
    return f"β = {row['beta']:g}" + (f", {row['options']}" if row["options"] else "")


def _grid_figure(out: Path, runs: list[Run], results: dict, rows: list[dict]) -> Figure:
    """One panel per cell: the PCA of the first successful repeat's test codes, titled with the error."""
    columns = 5
    figure = Figure(figsize=(3.2 * columns, 3.3 * math.ceil(len(runs) / columns)))
    for index, (run, row) in enumerate(zip(runs, rows, strict=True)):
        axes = figure.add_subplot(math.ceil(len(runs) / columns), columns, index + 1)
        first = first_successful_repeat(results[run])
        if first is None:
            axes.set_title(f"{run.rate.name} {_cell_label(row)}\nall {row['repeats']} repeats failed", fontsize=9)
            axes.set_axis_off()
            continue
        pca = np.load(out / "runs" / run.name() / f"repeat-{first}-pca.npz")
        draw_codes(axes, pca, title=title(run, row))
    figure.tight_layout()
    return figure
