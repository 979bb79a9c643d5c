import json
import math
import operator
from pathlib import Path

import numpy as np
import pytest
import torch

from ipae.experiments.figure1 import IPAE_BETAS, VAE_BETAS, figure1_runs, summary
from ipae.experiments.parallel import map_runs
from ipae.experiments.toy import ToyRun, run_toy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_short_toy_run_writes_its_metrics_panel_and_model(tmp_path):
    outcome = run_toy(ToyRun(model="ipae", beta=0.01, steps=20), tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["config"]["steps"] == 20 and metrics["architecture"]["rate"] == "ip"
    assert metrics["E_identity"] == pytest.approx(math.sqrt(0.1 * math.pi / 2), abs=0.01)
    assert 0 < metrics["E"] < 10 and 0 < metrics["E_sampled"] < 10 and metrics["train_seconds"] > 0
    assert outcome.metrics["E"] == metrics["E"] and outcome.reconstruction.shape == (5000, 2)
    assert (tmp_path / "run" / "reconstruction.png").read_bytes().startswith(PNG_MAGIC)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [20] and {"loss", "distortion", "rate", "seconds"} <= log[0].keys()
    assert (tmp_path / "run" / "model.safetensors").exists() and (tmp_path / "run" / "model.json").exists()


def test_a_bf16_toy_run_trains_in_bf16_and_reports_float_metrics(tmp_path):
    outcome = run_toy(ToyRun(model="vae", beta=1.0, steps=30, precision="bf16"), tmp_path / "run", progress=False)
    assert outcome.metrics["status"] == "ok" and outcome.metrics["config"]["precision"] == "bf16"
    assert outcome.reconstruction.dtype == torch.float32 and 0 < outcome.metrics["E"] < 10


def test_the_figure1_grid_covers_both_models_fairly():
    runs = figure1_runs(steps=7)
    assert [run.beta for run in runs if run.model == "vae"] == list(VAE_BETAS)
    assert [run.beta for run in runs if run.model == "ipae"] == list(IPAE_BETAS)
    assert min(VAE_BETAS) <= 0.01 and max(VAE_BETAS) >= 3 and len(IPAE_BETAS) >= 3
    assert all(run.steps == 7 for run in runs) and all(run.n_pairs == 1 for run in runs if run.model == "ipae")


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        ToyRun(model="gan")


@pytest.mark.parametrize("jobs", [1, 2])
def test_map_runs_keeps_the_order(jobs):
    assert map_runs(operator.neg, [3, 1, 2], jobs=jobs, progress=False) == [-3, -1, -2]


def test_summary_names_each_models_best_and_the_ratio():
    rows = [
        {"model": "vae", "beta": 1.0, "status": "ok", "E": 0.4},
        {"model": "vae", "beta": 0.1, "status": "failed"},
        {"model": "ipae", "beta": 0.01, "status": "ok", "E": 0.3},
        {"model": "ipae", "beta": 0.1, "status": "ok", "E": 0.35},
    ]
    assert summary(rows) == "Best E: vae 0.400 at β = 1; ipae 0.300 at β = 0.01; ratio ipae / vae = 0.750."
    assert summary(rows[1:2]) == "Best E: no run succeeded."


SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"the real MNIST files are not at {SHARED_MNIST}")


@needs_mnist
def test_a_tiny_mnist_run_on_the_real_files_and_its_resumption(tmp_path, monkeypatch):
    from ipae.experiments import mnist

    metrics = mnist.run_mnist(mnist.MnistRun(steps=3), tmp_path, repeats=1, data_dir=SHARED_MNIST, progress=False)
    record = json.loads((tmp_path / "repeat-0.json").read_text())
    assert record["status"] == "ok" and record["n_train"] == 18000 and record["n_test"] == 3127
    assert metrics["svm_errors"] == [record["svm_error"]] and 0 <= metrics["svm_error"] < 100 and metrics["failed_repeats"] == 0
    assert (tmp_path / "codes.png").read_bytes().startswith(PNG_MAGIC)
    pca = np.load(tmp_path / "repeat-0-pca.npz")
    assert pca["pca"].shape == (3127, 2) and sorted(set(pca["labels"].tolist())) == [1, 3, 4]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished repeat was trained again")

    monkeypatch.setattr(mnist, "train", no_training)
    assert mnist.run_mnist(mnist.MnistRun(steps=3), tmp_path, repeats=1, data_dir=SHARED_MNIST, progress=False) == metrics


def test_a_failed_mnist_repeat_is_counted_not_fatal(tmp_path, monkeypatch):
    from ipae.experiments import mnist
    from ipae.train import TrainingDiverged, TrainResult

    def diverging(*args, **kwargs):
        raise TrainingDiverged(2, TrainResult(np.zeros(3), np.zeros(3), np.zeros(3), 0.1))

    monkeypatch.setattr(mnist, "train", diverging)
    monkeypatch.setattr(mnist, "load_mnist", lambda *args, **kwargs: _fake_mnist())
    metrics = mnist.run_mnist(mnist.MnistRun(model="vae", beta=1e-5, steps=3), tmp_path, repeats=2, progress=False)
    assert metrics["failed_repeats"] == 2 and metrics["svm_error"] is None and metrics["svm_errors"] == []


def _fake_mnist(n: int = 30):
    from ipae.data.mnist import MnistSplits

    generator = np.random.default_rng(0)
    images = generator.random((n, 784), dtype=np.float32)
    labels = np.repeat([1, 3, 4], n // 3)
    return MnistSplits(images, labels, images, labels)


def test_the_figure2_grid_is_the_papers():
    from ipae.experiments.figure2 import figure2_runs, run_name

    runs = figure2_runs(steps=7, precision="bf16")
    cells = {(run.model, run.beta, run.n_pairs) for run in runs}
    assert cells == {("vae", beta, None) for beta in (1e-5, 1e-4, 1e-3, 1e-2)} | {
        ("ipae", 1e-5, 1),
        ("ipae", 1e-4, 1),
        ("ipae", 1e-3, 1),
        ("ipae", 1e-5, 8),
        ("ipae", 1e-5, 64),
        ("ipae", 1e-5, None),
    }
    assert len(runs) == 10 and len({run_name(run) for run in runs}) == 10
    assert all(run.steps == 7 and run.precision == "bf16" and run.batch_size == 512 and run.lr == 1e-3 for run in runs)


def test_the_figure2_sweep_keeps_finished_repeats_and_refuses_other_settings(tmp_path, monkeypatch):
    from ipae.experiments import figure2, mnist

    monkeypatch.setattr(mnist, "load_mnist", lambda *args, **kwargs: _fake_mnist(n=600))
    trained = []
    real_train = mnist.train
    monkeypatch.setattr(mnist, "train", lambda *args, **kwargs: trained.append(1) or real_train(*args, **kwargs))
    rows = figure2.reproduce_figure2(tmp_path / "sweep", steps=2, repeats=1, progress=False)
    assert len(trained) == 10 and len(rows) == 10 and all(row["repeats"] == 1 for row in rows)
    assert json.loads((tmp_path / "sweep" / "figure2.json").read_text())[0]["svm_error"] == rows[0]["svm_error"]
    assert (tmp_path / "sweep" / "figure2.png").read_bytes().startswith(PNG_MAGIC)
    assert "Lowest mean test error: vae" in (tmp_path / "sweep" / "figure2.md").read_text()

    more = figure2.reproduce_figure2(tmp_path / "sweep", steps=2, repeats=2, progress=False)
    assert len(trained) == 20  # only the new repeat of each cell
    assert [row["svm_errors"][0] for row in more] == [row["svm_errors"][0] for row in rows]
    with pytest.raises(ValueError, match="steps 2 there, 3 now"):
        figure2.reproduce_figure2(tmp_path / "sweep", steps=3, repeats=1, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not hold a figure-2 sweep"):
        figure2.reproduce_figure2(tmp_path / "other", steps=2, repeats=1, progress=False)


def test_figure2_summary_makes_the_papers_comparison():
    from ipae.experiments.figure2 import summary

    def row(model, beta, pairs, error, failed=0):
        return {"model": model, "beta": beta, "N_j": pairs, "svm_error": error, "repeats": 10, "failed_repeats": failed}

    rows = [row("vae", 1e-5, "", None, failed=10), row("vae", 1e-3, "", 3.0), row("ipae", 1e-5, "8", 2.5), row("ipae", 1e-5, "all", 2.0)]
    assert summary(rows) == (
        "Lowest mean test error: vae 3.00 % (β = 0.001); ipae 2.00 % (β = 1e-05, N_j = all)."
        " IPAE with β = 1e-5, N_j = 8: 2.50 %, below the best VAE. Failed repeats (non-finite loss): 10 of 40."
    )
