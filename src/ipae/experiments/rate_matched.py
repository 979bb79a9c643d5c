"""IPAE and the VAE compared at the same information rate, not at the same beta.

The eq. 10 bound grows like Var(mu) / sigma^2, the VAE's KL like log of the signal-to-noise ratio, so
one beta compresses the two models very differently. Here each model (`MODELS`) is trained over its
own beta grid (`GRIDS`), every run's I(x; z) is measured on held-out codes (`ipae.diagnostics`), and
the models are compared where their measured I(x; z) coincides: each repeat's metric is interpolated
along that model's curve of metric against I_mc, at target rates inside the range all models share,
and the paired differences against the VAE get a sign test and a paired t-test.

Repeats are paired: repeat r of every model uses the same data (subset), initial weights and batches.
A sweep is resumable: finished repeats (one JSON each) are kept, so the pilot's repeat 0 of a beta is
also the main sweep's repeat 0 of that beta.
"""

from __future__ import annotations

import json
import math
import statistics
from functools import partial
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ipae.diagnostics import SATURATION_MARGIN
from ipae.evaluation import paired_comparison
from ipae.experiments.mnist import run_repeat
from ipae.experiments.parallel import map_runs
from ipae.experiments.runs import Run, child_seeds, claim_sweep
from ipae.experiments.toy import run_toy
from ipae.rates import InformationPotential, PairwiseKL, PriorKL, Rate
from ipae.results import markdown_table, save_png, write_atomic, write_table
from ipae.train import TrainConfig

__all__ = ["DATASETS", "MODELS", "PILOT_GRIDS", "GRIDS", "METRICS", "reproduce_rate_matched", "matched_rates", "summary", "report"]

DATASETS = ("toy", "mnist134", "mnist10")
REFERENCE = "vae"
MODELS: dict[str, type[Rate] | partial] = {
    "vae": PriorKL,
    "ip1": partial(InformationPotential, 1),
    "ip8": partial(InformationPotential, 8),
    "pairwise-kl": PairwiseKL,
}

# The pilot: one repeat per beta, decades wide enough to go from about 1 nat to saturation. The MNIST
# grids start where the rate weighs anything against a distortion of about 65 nats: eq. 10 reads
# about 1.6e4 nats at beta = 1e-5, the KL about 270 at beta = 1e-3, so lower betas are saturated.
PILOT_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "toy": {
        "vae": (0.01, 0.1, 1.0, 3.0, 10.0),
        "ip1": (1e-3, 0.01, 0.1, 0.3, 1.0),
        "ip8": (1e-3, 0.01, 0.1, 0.3, 1.0),
        "pairwise-kl": (0.1, 1.0, 3.0, 10.0),
    },
    **{
        dataset: {
            "vae": (1e-3, 0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0),
            "ip1": (1e-5, 1e-3, 0.01, 0.1, 1.0),
            "ip8": (0.1, 1.0),  # N_j = 1 was saturated up to beta = 0.01
            "pairwise-kl": (0.1, 1.0, 10.0, 100.0),
        }
        for dataset in ("mnist134", "mnist10")
    },
}
# The main sweeps' grids, picked from the pilots' tables (docs/rate_matched/<dataset>/pilot.md): for
# each model, betas whose pilot I(x; z) falls between about 1 nat and saturation (mnist134: the VAE
# 6.96 nats at beta 3, 2.82 at 10; IPAE 7.5 at 0.1, 4.3 at 1; pairwise KL saturated at 1, 2.55 at 10).
# A dataset without a pilot yet runs its pilot grid.
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    **PILOT_GRIDS,
    "mnist134": {
        "vae": (3.0, 5.0, 10.0, 20.0),
        "ip1": (0.3, 1.0, 3.0, 10.0),
        "ip8": (0.3, 1.0, 3.0, 10.0),
        "pairwise-kl": (2.0, 4.0, 10.0, 20.0),
    },
}

# What each dataset's comparison reports, and whether lower is better.
METRICS: dict[str, dict[str, bool]] = {
    "toy": {"E": True, "E_sampled": True, "nmi": False, "distortion": True},
    "mnist": {"svm_error": True, "svm_error_sampled": True, "nmi": False, "ari": False, "distortion": True},
}
RUN_COLUMNS = ("model", "rate", "options", "beta", "repeat", "status", "I_mc", "I_lower", "I_upper", "I_saturated")
CELL_COLUMNS = ("model", "beta", "runs", "failed", "I_mc", "I_lower", "I_upper", "saturated")
MATCHED_COLUMNS = ("metric", "I_target", "model", "n", "model_mean", "vae_mean", "difference", "better", "worse", "tied")
MATCHED_COLUMNS += ("p_sign", "p_t")
SWEEP_SETTINGS = ("dataset", "steps", "seed", "precision")


def metrics_of(dataset: str) -> dict[str, bool]:
    return METRICS["toy" if dataset == "toy" else "mnist"]


def _cells(dataset: str, grids: dict[str, tuple[float, ...]], training: TrainConfig, seed: int) -> list[tuple[str, Run]]:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    unknown = set(grids) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return [(model, Run(MODELS[model](), float(beta), seed, training)) for model, betas in grids.items() for beta in betas]


def _repeat(dataset: str, runs_directory: Path, data_dir: Path | None, task: tuple[str, Run, int]) -> dict:
    """Repeat `repeat` of one cell, kept when finished; its record with the model's label."""
    model, run, repeat = task
    cell = runs_directory / run.name()
    cell.mkdir(parents=True, exist_ok=True)
    if dataset == "toy":
        out = cell / f"repeat-{repeat}"
        record = out / "metrics.json"
        if not record.exists():
            out.mkdir(parents=True, exist_ok=True)
            paired = Run(run.rate, run.beta, child_seeds(run.seed, repeat + 1)[repeat], run.training, run.paper_exact)
            run_toy(paired, out, device="cpu", progress=False)
        found = json.loads(record.read_text())
        found |= {"repeat": repeat, **run.row()}
    else:
        found = run_repeat(run, data_dir, cell, repeat, dataset=dataset)
    return {"model": model, "dataset": dataset, **found}


def reproduce_rate_matched(
    out: Path,
    training: TrainConfig,
    *,
    dataset: str = "mnist134",
    pilot: bool = False,
    grids: dict[str, tuple[float, ...]] | None = None,
    repeats: int | None = None,
    seed: int = 0,
    data_dir: Path | None = None,
    jobs: int = 1,
    progress: bool | None = None,
) -> dict:
    """Run the sweep of `dataset` into `out` (created, or resumed when it holds the same sweep), then
    write runs.jsonl, the per-cell table (pilot.{md,csv,json} for the pilot, cells.{md,csv,json}
    otherwise) and, for the main sweep, the matched-rate table matched.{md,csv,json} and
    rate_matched.png. `pilot`: PILOT_GRIDS with one repeat (default); else GRIDS with 5 repeats.
    Returns {"cells": rows, "matched": rows or None, "shared": (low, high) or None, "summary": the note or None}."""
    grids = grids or (PILOT_GRIDS if pilot else GRIDS)[dataset]
    repeats = repeats or (1 if pilot else 5)
    cells = _cells(dataset, grids, training, seed)
    claim_sweep(
        out,
        {"dataset": dataset, "steps": training.steps, "seed": seed, "precision": training.precision},
        SWEEP_SETTINGS,
        kind="rate-matched",
    )
    tasks = [(model, run, repeat) for repeat in range(repeats) for model, run in cells]
    records = map_runs(
        partial(_repeat, dataset, out / "runs", data_dir), tasks, jobs=jobs, progress=progress, desc=f"rate-matched {dataset}"
    )
    write_atomic(out / "runs.jsonl", partial(_write_lines, records))
    rows = cell_rows(records)
    name = "pilot" if pilot else "cells"
    write_table(out, name, rows, CELL_COLUMNS + tuple(metrics_of(dataset)), note=_cell_note(records))
    if pilot:
        return {"cells": rows, "matched": None, "shared": None, "summary": None}
    matched, shared = matched_rates(records, metrics_of(dataset))
    note = summary(matched, shared, records)
    write_table(out, "matched", matched, MATCHED_COLUMNS, note=note)
    save_png(_figure(records, metrics_of(dataset), dataset, shared), out / "rate_matched.png")
    return {"cells": rows, "matched": matched, "shared": shared, "summary": note}


def _write_lines(records: list[dict], path: Path) -> None:
    with path.open("w") as file:
        for record in records:
            file.write(json.dumps({key: value for key, value in record.items() if key != "config"}, sort_keys=True) + "\n")


def _ok(records: list[dict]) -> list[dict]:
    return [record for record in records if record.get("status") == "ok"]


def cell_rows(records: list[dict]) -> list[dict]:
    """One row per (model, beta): the runs, failures, and the means of I(x; z) and each metric."""
    keys = sorted({(record["model"], record["beta"]) for record in records}, key=lambda key: (list(MODELS).index(key[0]), key[1]))
    rows = []
    for model, beta in keys:
        cell = [record for record in records if (record["model"], record["beta"]) == (model, beta)]
        done = _ok(cell)
        row = {"model": model, "beta": beta, "runs": len(cell), "failed": len(cell) - len(done)}
        row["saturated"] = sum(bool(record.get("I_saturated")) for record in done)
        for key in ("I_mc", "I_lower", "I_upper", *METRICS["toy"], *METRICS["mnist"]):
            values = [record[key] for record in done if record.get(key) is not None]
            row[key] = statistics.mean(values) if values else None
        rows.append(row)
    return rows


def _cell_note(records: list[dict]) -> str:
    done = _ok(records)
    if not done:
        return "No run finished."
    points = {record["I_points"] for record in done}
    log_n = math.log(min(points))
    return (
        f"Means over the repeats that finished. I(x; z) in nats of {', '.join(map(str, sorted(points)))} held-out codes: I_mc the "
        f"Monte Carlo estimate, I_lower and I_upper its Bhattacharyya and pairwise-KL bounds. It cannot exceed log N = {log_n:.2f}; "
        f"`saturated` counts runs with I_mc within {SATURATION_MARGIN} nats of it."
    )


def _curve(records: list[dict], model: str, repeat: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(I_mc, metric) of one model's repeat over its betas, unsaturated and finished, sorted by I_mc."""
    points = sorted(
        (record["I_mc"], record[metric])
        for record in _ok(records)
        if record["model"] == model and record["repeat"] == repeat and not record["I_saturated"] and record.get(metric) is not None
    )
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def shared_range(records: list[dict]) -> tuple[float, float] | None:
    """The range of I_mc that every model's unsaturated cell means cover: (max of the models' lowest,
    min of their highest); None where they do not overlap."""
    lows, highs = [], []
    for model in {record["model"] for record in records}:
        means = [
            row["I_mc"]
            for row in cell_rows([r for r in records if r["model"] == model and not r.get("I_saturated")])
            if row["I_mc"] is not None
        ]
        if len(means) < 2:
            return None
        lows.append(min(means))
        highs.append(max(means))
    low, high = max(lows), min(highs)
    return (low, high) if low < high else None


def matched_rates(records: list[dict], metrics: dict[str, bool], *, targets: int = 5) -> tuple[list[dict], tuple[float, float] | None]:
    """Every model against the VAE at `targets` rates spread over the shared range of I_mc.

    For each repeat, a model's metric at a target rate is interpolated linearly along that repeat's
    curve of metric against I_mc (unsaturated runs only); a repeat whose curve does not reach the target
    is left out for that target. Differences are model - VAE, paired by repeat; `better` counts repeats
    where the model is better (lower, or higher for NMI/ARI), `p_sign` is the two-sided sign test over
    the untied repeats and `p_t` the paired t-test."""
    shared = shared_range(records)
    if shared is None:
        return [], None
    repeats = sorted({record["repeat"] for record in records})
    rows = []
    for metric, lower_is_better in metrics.items():
        for target in np.linspace(*shared, targets):
            at = {}
            for model in MODELS:
                at[model] = {}
                for repeat in repeats:
                    rates, values = _curve(records, model, repeat, metric)
                    if len(rates) >= 2 and rates[0] <= target <= rates[-1]:
                        at[model][repeat] = float(np.interp(target, rates, values))
            for model in (m for m in MODELS if m != REFERENCE):
                common = sorted(set(at[model]) & set(at[REFERENCE]))
                values = np.array([at[model][r] for r in common])
                reference = np.array([at[REFERENCE][r] for r in common])
                rows.append(
                    {
                        "metric": metric,
                        "I_target": float(target),
                        "model": model,
                        "model_mean": float(values.mean()) if common else None,
                        "vae_mean": float(reference.mean()) if common else None,
                        **paired_comparison(values, reference, lower_is_better=lower_is_better),
                    }
                )
    return rows, shared


def summary(matched: list[dict], shared: tuple[float, float] | None, records: list[dict]) -> str:
    """Where each model is better or worse than the VAE at matched rates (p < 0.05, paired t-test)."""
    failed = sum(record.get("status") != "ok" for record in records)
    tail = f" Failed runs: {failed} of {len(records)}."
    if shared is None:
        return "The models' measured I(x; z) ranges do not overlap: no matched-rate comparison." + tail
    lines = [f"Shared range of I_mc: {shared[0]:.2f} to {shared[1]:.2f} nats."]
    for model in (m for m in MODELS if m != REFERENCE):
        for metric in dict.fromkeys(row["metric"] for row in matched):
            rows = [row for row in matched if row["model"] == model and row["metric"] == metric and row["n"] > 1]
            better = [
                f"{row['I_target']:.2f}" for row in rows if row["p_t"] is not None and row["p_t"] < 0.05 and row["better"] > row["worse"]
            ]
            worse = [
                f"{row['I_target']:.2f}" for row in rows if row["p_t"] is not None and row["p_t"] < 0.05 and row["worse"] > row["better"]
            ]
            verdict = f"better at I = {', '.join(better)}" if better else "better at no matched rate"
            verdict += f"; worse at I = {', '.join(worse)}" if worse else ""
            lines.append(f"{model} vs vae, {metric}: {verdict} (p < 0.05, paired t-test).")
    return " ".join(lines) + tail


def _figure(records: list[dict], metrics: dict[str, bool], dataset: str, shared: tuple[float, float] | None) -> Figure:
    """One panel per metric against I_mc: each run as a dot, each cell's mean joined along beta, the
    cell's I bounds as a horizontal bar, the shared range shaded and log N dashed."""
    figure = Figure(figsize=(4.2 * len(metrics), 3.8))
    done = _ok(records)
    log_n = math.log(min(record["I_points"] for record in done)) if done else None
    rows = cell_rows(records)
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), index + 1)
        for number, model in enumerate(MODELS):
            colour = f"C{number}"
            runs = [record for record in done if record["model"] == model and record.get(metric) is not None]
            axes.scatter([r["I_mc"] for r in runs], [r[metric] for r in runs], s=6, alpha=0.35, color=colour)
            cells = [row for row in rows if row["model"] == model and row[metric] is not None]
            axes.errorbar(
                [row["I_mc"] for row in cells],
                [row[metric] for row in cells],
                xerr=[[row["I_mc"] - row["I_lower"] for row in cells], [row["I_upper"] - row["I_mc"] for row in cells]],
                color=colour,
                marker="o",
                markersize=3,
                linewidth=1,
                elinewidth=0.6,
                capsize=2,
                label=model,
            )
        if shared is not None:
            axes.axvspan(*shared, color="0.9", zorder=0)
        if log_n is not None:
            axes.axvline(log_n, color="0.4", linestyle="--", linewidth=0.8)
        axes.set_xlabel("I(x; z) of held-out codes (nats, MC)")
        axes.set_ylabel(metric)
        axes.set_title(f"{dataset}: {metric}", fontsize=9)
        axes.tick_params(labelsize=7)
        if index == 0:
            axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def report(result: dict) -> str:
    """What `ipae reproduce rate-matched` prints: the cells' table, then the matched-rate table and its summary."""
    text = markdown_table(result["cells"], CELL_COLUMNS)
    if result["matched"] is not None:
        text += markdown_table(result["matched"], MATCHED_COLUMNS) + result["summary"]
    return text
