"""The convolutional preset on all ten MNIST digits: linear-SVM error of IPAE and beta-VAE codes.

Each (rate, seed) run trains `AutoEncoder.from_preset("conv")` (Burgess et al.'s 4-conv / 4-deconv
pair) on the 60 000 training images as (1, 28, 28), checkpointing as it goes, then fits the linear
SVM of section 4.2 on the training codes and scores the 10 000 test codes. I(x; z) of 5000 test codes
is measured as well (Monte Carlo with its lower and upper bounds), since equal beta is not equal
compression. Runs are resumable: a finished run is kept, a killed one continues from its checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ipae._files import json_lines, staged_directory, write_json
from ipae.checkpoint import has_state, save_model
from ipae.data.mnist import load_mnist
from ipae.diagnostics import INFORMATION_POINTS, encode, information
from ipae.evaluation import linear_svm_error
from ipae.experiments.parallel import map_runs
from ipae.experiments.runs import Run, child_seeds
from ipae.rates import InformationPotential, PriorKL
from ipae.reporting import write_table
from ipae.training import TrainConfig, TrainingDiverged, train

__all__ = ["reproduce_conv_mnist"]

COLUMNS = ("rate", "options", "beta", "steps", "precision", "seeds", "failed", "svm_error", "svm_error_std", "I_mc", "I_lower", "I_upper")


def conv_runs(training: TrainConfig, *, seeds: int = 3) -> list[Run]:
    """IPAE (N_j = 8, beta 1e-5: the paper's best MNIST setting) and the VAE (beta 1), `seeds` seeds each."""
    return [Run(rate, beta, seed, training) for rate, beta in ((InformationPotential(8), 1e-5), (PriorKL(), 1.0)) for seed in range(seeds)]


def _images(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).view(-1, 1, 28, 28)


def run_conv(run: Run, data_dir: Path | None, out: Path) -> dict:
    """Train and score one run into `out` (created): metrics.json, metrics.jsonl, the model. Kept if finished."""
    record = out / "metrics.json"
    if record.exists():
        return json.loads(record.read_text())
    model_seed, train_seed, info_seed = child_seeds(run.seed, 3)
    data = load_mnist(data_dir)
    model = run.model("conv").build(seed=model_seed, rate=run.rate)
    config = replace(run.training, seed=train_seed, checkpoint_every=run.training.checkpoint_every or 500)
    checkpoint = out.with_name(out.name + ".checkpoint")
    resume = checkpoint if has_state(checkpoint) else None
    metrics: dict = {"config": run.to_dict("conv")}
    try:
        with json_lines(
            out.with_name(out.name + ".jsonl")
        ) as log:  # beside the run; a resumed run first logs the steps before its resume step again
            result = train(model, _images(data.x_train), config, resume=resume, checkpoint_dir=checkpoint, on_log=log)
    except TrainingDiverged as diverged:
        metrics |= {"status": "failed", "error": str(diverged), "failed_step": diverged.step}
        out.mkdir(parents=True, exist_ok=True)
        write_json(record, metrics)
        return metrics
    model.eval()
    train_mu, _ = encode(model, _images(data.x_train), size=2048)
    test_mu, test_logvar = encode(model, _images(data.x_test), size=2048)
    generator = torch.Generator().manual_seed(info_seed)
    which = torch.randperm(len(test_mu), generator=generator)[:INFORMATION_POINTS]
    measured = information(test_mu[which], test_logvar[which], generator=generator)  # I_mc, I_lower, I_upper, ...
    metrics |= {
        "status": "ok",
        "svm_error": linear_svm_error(train_mu.numpy(), data.y_train, test_mu.numpy(), data.y_test),
        **measured,
        "information_points": len(which),
        "distortion": float(result.distortion[-100:].mean()),
        "train_seconds": result.seconds,
    }
    with staged_directory(out, overwrite=True) as stage:
        save_model(model, stage)
        write_json(stage / "metrics.json", metrics)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return metrics


def _run_into(runs_directory: Path, data_dir: Path | None, run: Run) -> dict:
    return run_conv(run, data_dir, runs_directory / f"{run.name()}-seed{run.seed}")


def reproduce_conv_mnist(
    out: Path, training: TrainConfig, *, seeds: int = 3, data_dir: Path | None = None, jobs: int = 1, progress: bool | None = None
) -> list[dict]:
    """Every run of `conv_runs` into out/runs (kept across calls), then cells.json and conv_mnist.{md,csv,json}."""
    runs = conv_runs(training, seeds=seeds)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results = map_runs(partial(_run_into, out / "runs", data_dir), runs, jobs=jobs, progress=progress, desc="conv mnist")
    rows, cells = [], {}
    for model_runs in (runs[:seeds], runs[seeds:]):
        records = [results[runs.index(run)] for run in model_runs]
        done = [record for record in records if record["status"] == "ok"]
        row = {**model_runs[0].row(), "seeds": len(records), "failed": len(records) - len(done)}
        errors = [record["svm_error"] for record in done]
        row["svm_error"] = statistics.mean(errors) if errors else None
        row["svm_error_std"] = statistics.stdev(errors) if len(errors) > 1 else None
        for key in ("I_mc", "I_lower", "I_upper"):
            row[key] = statistics.mean(record[key] for record in done) if done else None
        rows.append(row)
        cells[model_runs[0].name()] = records
    write_json(out / "cells.json", cells)
    note = (
        f"Linear-SVM test error (%) of the mean codes, all 10 digits, mean ± std over seeds; I(x; z) in nats of "
        f"{INFORMATION_POINTS} test codes (at most log {INFORMATION_POINTS} = {math.log(INFORMATION_POINTS):.2f})."
    )
    write_table(out, "conv_mnist", rows, COLUMNS, note=note)
    return rows


def summary(rows: list[dict]) -> str:
    """One line: each rate's mean error and I(x; z)."""
    parts = [f"{row['rate']} {row['svm_error']:.2f} % at I = {row['I_mc']:.2f} nats" for row in rows if row["svm_error"] is not None]
    return "Linear-SVM test error: " + ("; ".join(parts) if parts else "no run succeeded") + "."
