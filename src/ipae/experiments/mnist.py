"""The paper's MNIST experiment (section 4.2): digits 1, 3, 4, linear-SVM error of the codes, repeats."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ipae.data.mnist import PAPER_DIGITS, PAPER_N_TRAIN, load_mnist
from ipae.evaluation import linear_svm_error, principal_components, within_class_fraction
from ipae.experiments.parallel import map_runs
from ipae.experiments.toy import MODELS, child_seeds, training_options
from ipae.models import AutoEncoder
from ipae.results import json_lines, save_png, write_atomic, write_json
from ipae.train import TrainingDiverged, train

__all__ = ["MnistRun", "run_mnist", "run_repeat", "summarise_repeats", "first_successful_repeat", "title", "draw_codes"]


@dataclass(frozen=True)
class MnistRun:
    """One configuration of the MNIST experiment. Defaults are the paper's training settings."""

    model: str = "ipae"  # a key of ipae.experiments.toy.MODELS
    beta: float = 1e-5  # the paper's best IPAE value
    n_pairs: int | None = 1  # N_j (None: all pairs)
    steps: int = 5000  # "the same learning procedure as that of the toy dataset"
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0  # every repeat draws new weights and a new training subset from this
    precision: str = "fp32"  # a key of ipae.train.PRECISIONS
    compile: bool = False  # torch.compile the objective (see ipae.train)
    rate: str | None = None  # a key of ipae.models.RATES; None: the model's own

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")


def run_repeat(run: MnistRun, data_dir: Path | None, out: Path, repeat: int, *, device: str | None = None) -> dict:
    """Train and evaluate repeat number `repeat` of `run`, writing out/repeat-<r>.json, its training log
    out/repeat-<r>.jsonl and, unless it failed, out/repeat-<r>-pca.npz (the test codes' 2-D PCA and
    labels). A finished repeat is not redone."""
    record = out / f"repeat-{repeat}.json"
    if record.exists():
        return json.loads(record.read_text())
    subset_seed, model_seed, train_seed = child_seeds(child_seeds(run.seed, repeat + 1)[repeat], 3)
    data = load_mnist(data_dir, digits=PAPER_DIGITS, n_train=PAPER_N_TRAIN, seed=subset_seed)
    model = AutoEncoder.from_preset("mnist", rate=run.rate or MODELS[run.model], beta=run.beta, seed=model_seed).to(device or "cpu")
    x_train = torch.from_numpy(data.x_train)
    metrics: dict = {"repeat": repeat, "n_train": len(x_train), "n_test": len(data.x_test)}
    try:
        with json_lines(out / f"repeat-{repeat}.jsonl") as log:
            result = train(model, x_train, seed=train_seed, progress=False, on_log=log, **training_options(run))
    except TrainingDiverged as diverged:
        metrics |= {"status": "failed", "error": str(diverged), "failed_step": diverged.step, "train_seconds": diverged.result.seconds}
        write_json(record, metrics)
        return metrics
    model.eval()
    with torch.no_grad():
        train_codes = model.encode(x_train.to(device or "cpu"))[0].cpu().double().numpy()
        test_codes = model.encode(torch.from_numpy(data.x_test).to(device or "cpu"))[0].cpu().double().numpy()
    metrics |= {
        "status": "ok",
        "svm_error": linear_svm_error(train_codes, data.y_train, test_codes, data.y_test),
        "train_seconds": result.seconds,
        "final_loss": float(result.loss[-1]),
    }
    pca = principal_components(test_codes).astype(np.float32)
    write_atomic(out / f"repeat-{repeat}-pca.npz", partial(_save_npz, pca=pca, labels=data.y_test))
    write_json(record, metrics)
    return metrics


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as file:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(file, **arrays)


def run_mnist(
    run: MnistRun,
    out: Path,
    *,
    repeats: int = 10,
    data_dir: Path | None = None,
    jobs: int = 1,
    device: str | None = None,
    progress: bool | None = None,
) -> dict:
    """All repeats of `run` into the existing directory `out` (finished ones are kept), then
    out/metrics.json and out/codes.png. Metrics: svm_error (mean test error in percent over the
    successful repeats), svm_error_std, svm_errors, failed_repeats, train_seconds (all loops), config."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    results = map_runs(
        partial(run_repeat, run, data_dir, out, device=device), list(range(repeats)), jobs=jobs, progress=progress, desc="repeats"
    )
    return summarise_repeats(run, results, out)


def summarise_repeats(run: MnistRun, results: list[dict], out: Path) -> dict:
    """The metrics of `run` over its repeats' `results` (the records of run_repeat), written to
    out/metrics.json, and out/codes.png from the first successful repeat. Returns the metrics; besides
    the errors, `pca_within_class`: the mean over repeats of `within_class_fraction` of the test codes'
    2-D PCA (the picture): smaller is more compact classes."""
    errors = [result["svm_error"] for result in results if result["status"] == "ok"]
    pictures = [np.load(out / f"repeat-{result['repeat']}-pca.npz") for result in results if result["status"] == "ok"]
    compactness = [within_class_fraction(picture["pca"], picture["labels"]) for picture in pictures]
    metrics = {
        "config": asdict(run),
        "repeats": len(results),
        "svm_error": statistics.mean(errors) if errors else None,
        "svm_error_std": statistics.stdev(errors) if len(errors) > 1 else (0.0 if errors else None),
        "svm_errors": errors,
        "failed_repeats": sum(result["status"] != "ok" for result in results),
        "train_seconds": sum(result["train_seconds"] for result in results),
        "pca_within_class": statistics.mean(compactness) if compactness else None,
    }
    write_json(out / "metrics.json", metrics)
    first = first_successful_repeat(results)
    if first is not None:
        figure = Figure(figsize=(4, 4))
        draw_codes(figure.add_subplot(), np.load(out / f"repeat-{first}-pca.npz"), title=title(run, metrics))
        save_png(figure, out / "codes.png")
    return metrics


def first_successful_repeat(results: list[dict]) -> int | None:
    return next((result["repeat"] for result in results if result["status"] == "ok"), None)


def title(run: MnistRun, metrics: dict) -> str:
    pairs = "all" if run.n_pairs is None else run.n_pairs
    rate = f", N_j={pairs}" if (run.rate or MODELS[run.model]) == "ip" else ""
    return f"{run.model} β={run.beta:g}{rate}\nerr {metrics['svm_error']:.2f} ± {metrics['svm_error_std']:.2f} %"


def draw_codes(axes, pca: dict, *, title: str) -> None:
    """The paper's Figure 2 panel: the test codes' first two principal components, coloured by digit."""
    for digit, colour in zip(PAPER_DIGITS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        points = pca["pca"][pca["labels"] == digit]
        axes.scatter(points[:, 0], points[:, 1], s=1, color=colour, label=str(digit), rasterized=True)
    axes.set_title(title, fontsize=9)
    axes.legend(markerscale=6, fontsize=7, loc="best")
    axes.tick_params(labelsize=7)
