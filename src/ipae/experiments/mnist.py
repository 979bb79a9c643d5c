"""The paper's MNIST experiment (section 4.2): digits 1, 3, 4, linear-SVM error of the codes, repeats."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ipae._files import write_atomic, write_json
from ipae._validation import check_positive_int
from ipae.data.mnist import PAPER_DIGITS, PAPER_N_TRAIN, MnistSplits, load_mnist, subset_index
from ipae.diagnostics import INFORMATION_POINTS, diagnose
from ipae.evaluation import principal_components, within_class_fraction
from ipae.experiments.parallel import map_runs
from ipae.experiments.runs import Run, child_seeds, run_provenance, train_logged
from ipae.reporting import save_png

__all__: list[str] = []  # internal

# Section 4.2: "the same learning procedure as that of the toy dataset", 5000 steps of 512.
MNIST_TRAINING = {"steps": 5000, "batch_size": 512, "lr": 1e-3}

# The training sets: digits kept (None: all ten) and training images drawn from them. "mnist134" is
# the paper's; "mnist10" the same size drawn from all ten digits.
SUBSETS = {"mnist134": (PAPER_DIGITS, PAPER_N_TRAIN), "mnist10": (None, PAPER_N_TRAIN)}


def held_out(dataset: str, data_dir: Path | None, seed: int) -> tuple[MnistSplits, np.ndarray]:
    """The repeat's training subset of `dataset` (`SUBSETS`) drawn with `seed`, as load_mnist's splits,
    and the training split's images of the same digits that the subset left out (U, 784): never trained
    on, so held-out points beside the test set."""
    digits, n_train = SUBSETS[dataset]
    full = load_mnist(data_dir, digits=digits)
    index = subset_index(len(full.y_train), n_train, seed)
    unused = np.ones(len(full.y_train), dtype=bool)
    unused[index] = False
    return MnistSplits(full.x_train[index], full.y_train[index], full.x_test, full.y_test), full.x_train[unused]


def information_points(x_test: np.ndarray, x_unused: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to INFORMATION_POINTS held-out rows whose I(x; z) is measured, drawn from the test images and
    the training split's images outside the run's subset (`held_out`), none of which the run trained on.
    Digits 1, 3, 4 have 3127 test and 715 unused images: 3842 points, log N = 8.25."""
    pool = np.concatenate([x_test, x_unused])
    return pool[np.sort(rng.choice(len(pool), min(len(pool), INFORMATION_POINTS), replace=False))]


def run_repeat(
    run: Run,
    data_dir: Path | None,
    out: Path,
    repeat: int,
    *,
    device: str | None = None,
    dataset: str = "mnist134",
    monitor: bool = False,
) -> dict:
    """Train and evaluate repeat number `repeat` of `run` on `dataset` (`SUBSETS`), writing
    out/repeat-<r>.json (the settings, the training status and `ipae.diagnostics.diagnose`'s numbers),
    its training log out/repeat-<r>.jsonl and, unless it failed, out/repeat-<r>-pca.npz (the test
    codes' 2-D PCA and labels). A finished repeat is not redone. The subset, the initial weights and
    the batches depend on `run.seed` and `repeat` only, so the repeats of different models are paired.
    `monitor`: the training log also holds I(x; z) and the distortion of the held-out points whose I(x; z)
    the record measures (`information_points`) every `run.training.monitor_every` steps (`ipae.train.train`'s
    monitor); the weights, and so the record, are the same either way."""
    record = out / f"repeat-{repeat}.json"
    if record.exists():
        return json.loads(record.read_text())
    subset_seed, model_seed, train_seed, evaluation_seed = child_seeds(child_seeds(run.seed, repeat + 1)[repeat], 4)
    data, x_unused = held_out(dataset, data_dir, subset_seed)
    model = run.model("mnist").build(seed=model_seed, rate=run.rate).to(device or "cpu")
    x_train = torch.from_numpy(data.x_train)
    metrics: dict = {"repeat": repeat, "dataset": dataset, **run.row(), "n_train": len(x_train), "n_test": len(data.x_test)}
    metrics |= run_provenance(device or "cpu")
    training = replace(run.training, seed=train_seed, progress=False)
    metrics["train_seed"] = train_seed
    x_information = information_points(data.x_test, x_unused, np.random.default_rng(evaluation_seed))
    watched = torch.from_numpy(x_information) if monitor else None
    result, status = train_logged(model, x_train, training, out / f"repeat-{repeat}.jsonl", monitor=watched)
    metrics |= status
    if result is None:
        write_json(record, metrics)
        return metrics
    found = diagnose(
        model,
        torch.from_numpy(data.x_test),
        y_test=data.y_test,
        x_train=x_train,
        y_train=data.y_train,
        x_information=torch.from_numpy(x_information),
        seed=evaluation_seed,
    )
    metrics |= found | {
        "train_seconds": result.seconds,
        "final_loss": float(result.loss[-1]),
    }
    with torch.no_grad():
        test_codes = model.encode(torch.from_numpy(data.x_test).to(device or "cpu"))[0].cpu().double().numpy()
    pca = principal_components(test_codes).astype(np.float32)
    write_atomic(out / f"repeat-{repeat}-pca.npz", partial(_save_npz, pca=pca, labels=data.y_test))
    write_json(record, metrics)
    return metrics


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as file:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(file, **arrays)


def run_mnist(
    run: Run,
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
    check_positive_int("repeats", repeats)
    results = map_runs(
        partial(run_repeat, run, data_dir, out, device=device), list(range(repeats)), jobs=jobs, progress=progress, desc="repeats"
    )
    return summarise_repeats(run, results, out)


def summarise_repeats(run: Run, results: list[dict], out: Path) -> dict:
    """The metrics of `run` over its repeats' `results` (the records of run_repeat), written to
    out/metrics.json, and out/codes.png from the first successful repeat. Returns the metrics; besides
    the errors, `pca_within_class`: the mean over repeats of `within_class_fraction` of the test codes'
    2-D PCA (the picture): smaller is more compact classes."""
    errors = [result["svm_error"] for result in results if result["status"] == "ok"]
    pictures = [np.load(out / f"repeat-{result['repeat']}-pca.npz") for result in results if result["status"] == "ok"]
    compactness = [within_class_fraction(picture["pca"], picture["labels"]) for picture in pictures]
    metrics = {
        "config": run.to_dict("mnist"),
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


def title(run: Run, metrics: dict) -> str:
    options = run.row()["options"]
    error = f"err {metrics['svm_error']:.2f} ± {metrics['svm_error_std']:.2f} %"
    return f"{run.rate.name} β={run.beta:g}{' ' + options if options else ''}\n{error}"


def draw_codes(axes, pca: dict, *, title: str) -> None:
    """The paper's Figure 2 panel: the test codes' first two principal components, coloured by digit."""
    for index, digit in enumerate(np.unique(pca["labels"])):
        points = pca["pca"][pca["labels"] == digit]
        axes.scatter(points[:, 0], points[:, 1], s=1, color=f"C{index}", label=str(digit), rasterized=True)
    axes.set_title(title, fontsize=9)
    axes.legend(markerscale=6, fontsize=7, loc="best")
    axes.tick_params(labelsize=7)
