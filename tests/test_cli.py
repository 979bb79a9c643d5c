import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ipae.cli import main
from ipae.experiments import toy
from ipae.train import TrainingDiverged, TrainResult


def ipae(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipae.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "toy"
    assert main(["toy", "--model", "vae", "--beta", "1", "--steps", "20", "--quiet", "--out", str(out)]) == 0
    return out


def test_toy_end_to_end(trained_run, capsys):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert metrics["config"] == {
        "model": "vae",
        "beta": 1.0,
        "n_pairs": 1,
        "steps": 20,
        "batch_size": 512,
        "lr": 0.001,
        "seed": 0,
        "precision": "fp32",
        "compile": False,
        "rate": None,
    }
    assert {"E", "E_sampled", "E_identity", "train_seconds"} <= metrics.keys()
    assert sorted(p.name for p in trained_run.iterdir()) == [
        "metrics.json",
        "metrics.jsonl",
        "model.json",
        "model.safetensors",
        "reconstruction.png",
    ]


def test_encode_writes_the_mean_codes(trained_run, tmp_path):
    np.save(tmp_path / "x.npy", np.array([[0.0, 0.0], [2.0, -2.0], [4.0, 4.0]]))
    assert main(["encode", str(trained_run), str(tmp_path / "x.npy"), "--out", str(tmp_path / "codes.npy")]) == 0
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (3, 16) and codes.dtype == np.float32
    assert main(["encode", str(trained_run), str(tmp_path / "x.npy"), "--sampled", "--out", str(tmp_path / "sampled.npy")]) == 0
    assert not np.array_equal(np.load(tmp_path / "sampled.npy"), codes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npy", "sampled.npy", "x.npy"]


def test_reproduce_figure1_tiny(tmp_path):
    out = tmp_path / "fig1"
    result = ipae("reproduce", "figure1", "--steps", "3", "--jobs", "2", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "figure1.json").read_text())
    assert [(row["model"], row["beta"]) for row in rows] == [("vae", b) for b in toy_betas("vae")] + [
        ("ipae", b) for b in toy_betas("ipae")
    ]
    assert all(row["status"] == "ok" and row["E"] > 0 for row in rows)
    assert (out / "figure1.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "figure1.md").read_text().startswith("| model | beta |")
    assert len(list((out / "runs").iterdir())) == len(rows)


def toy_betas(model):
    from ipae.experiments.figure1 import IPAE_BETAS, VAE_BETAS

    return {"vae": VAE_BETAS, "ipae": IPAE_BETAS}[model]


def test_a_diverged_run_is_recorded_as_failed(tmp_path, monkeypatch, capsys):
    def diverging_train(*args, **kwargs):
        raise TrainingDiverged(7, TrainResult(np.zeros(8), np.zeros(8), np.zeros(8), 0.5))

    monkeypatch.setattr(toy, "train", diverging_train)
    assert main(["toy", "--steps", "10", "--quiet", "--out", str(tmp_path / "run")]) == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["failed_step"] == 7 and "E" not in metrics
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["toy", "--beta", "-1"], "--beta: must be a finite number >= 0"),
        (["toy", "--beta", "nan"], "--beta: must be a finite number >= 0"),
        (["toy", "--model", "gan"], "invalid choice: 'gan'"),
        (["toy", "--steps", "0"], "--steps: must be an integer >= 1"),
        (["toy", "--n-pairs", "some"], "--n-pairs"),
        (["toy", "--lr", "0"], "--lr: must be a finite number > 0"),
        (["reproduce", "figure9"], "invalid choice: 'figure9'"),
        (["toy", "--unknown-option", "1"], "unrecognized arguments"),
        (["toy", "--device", "tpu"], "unknown device 'tpu'"),
        (["toy", "--precision", "fp16"], "invalid choice: 'fp16'"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path, args, message):
    result = ipae(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_directory_is_not_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = ipae("toy", "--steps", "1", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "already exists" in result.stderr and result.stderr.count("\n") == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (np.zeros((4, 3)), "expected 2 features per row, got 3"),
        (np.zeros(4), "expected a 2-D array"),
        (np.array([[0.0, np.nan]]), "NaN or infinite"),
        (np.zeros((0, 2)), "no rows"),
    ],
)
def test_encode_refuses_bad_data_with_one_line(trained_run, tmp_path, content, message):
    data = tmp_path / "x.npy"
    if content is not None:
        np.save(data, content)
    result = ipae("encode", str(trained_run), str(data), "--out", str(tmp_path / "codes.npy"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "codes.npy").exists() and not list(tmp_path.glob(".*"))


def test_encode_refuses_a_missing_or_damaged_model(trained_run, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    result = ipae("encode", str(tmp_path / "nowhere"), str(tmp_path / "x.npy"), "--out", str(tmp_path / "codes.npy"))
    assert result.returncode == 2 and "not a model directory" in result.stderr and result.stderr.count("\n") == 1
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("model.json", "model.safetensors"):
        (damaged / name).write_bytes((trained_run / name).read_bytes()[:40])
    result = ipae("encode", str(damaged), str(tmp_path / "x.npy"), "--out", str(tmp_path / "codes.npy"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "codes.npy").exists()


def test_info_prints_the_sandwich_with_known_answers(trained_run, tmp_path, capsys):
    # Twenty copies of one point: every code is the same Gaussian, so I(x; z) = 0 by every estimate.
    np.save(tmp_path / "same.npy", np.tile([[1.0, -2.0]], (20, 1)))
    assert main(["info", str(trained_run), str(tmp_path / "same.npy"), "--samples", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    values = [float(line.split()[-1]) for line in lines[1:5]]
    assert values == pytest.approx([0.0] * 4, abs=1e-9)
    assert float(lines[5].split()[-1]) == pytest.approx(np.log(20), abs=1e-4)  # printed to 4 decimals
    # Points far apart relative to the model's sigma: the lower bound <= MC <= the upper bounds.
    np.save(tmp_path / "grid.npy", np.stack(np.meshgrid(np.arange(-4.0, 5, 2), np.arange(-4.0, 5, 2)), -1).reshape(-1, 2))
    assert main(["info", str(trained_run), str(tmp_path / "grid.npy"), "--samples", "64"]) == 0
    lower, mc, upper, jensen = (float(line.split()[-1]) for line in capsys.readouterr().out.splitlines()[1:5])
    assert lower <= upper <= jensen and lower - 0.05 <= mc <= upper + 0.05


def test_info_refuses_bad_input(trained_run, tmp_path):
    result = ipae("info", str(trained_run), str(tmp_path / "missing.npy"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no such file" in result.stderr


def test_toy_trains_with_a_chosen_rate_term(tmp_path):
    assert main(["toy", "--rate", "pairwise-kl", "--beta", "1", "--steps", "5", "--quiet", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["architecture"]["rate"] == "pairwise-kl" and metrics["config"]["rate"] == "pairwise-kl"
    result = ipae("toy", "--rate", "kde", "--out", str(tmp_path / "other"))
    assert result.returncode == 2 and "invalid choice: 'kde'" in result.stderr and not (tmp_path / "other").exists()


def test_reproduce_rate_distortion_on_a_small_grid(tmp_path, monkeypatch):
    from ipae.data.toy import gaussian_grid
    from ipae.experiments import rate_distortion

    monkeypatch.setattr(rate_distortion, "GRID", {"pairwise-kl": ("ipae", (1.0,)), "vae": ("vae", (1.0,))})
    monkeypatch.setattr(rate_distortion, "gaussian_grid", lambda seed: gaussian_grid(n_per_component=4, seed=seed))  # a quick evaluation
    out = tmp_path / "rd"
    assert main(["reproduce", "rate-distortion", "--steps", "3", "--jobs", "1", "--quiet", "--out", str(out)]) == 0
    rows = json.loads((out / "rate_distortion.json").read_text())
    assert [(row["rate"], row["status"]) for row in rows] == [("pairwise-kl", "ok"), ("vae", "ok")]
    for row in rows:
        assert row["I_bhattacharyya"] <= row["I_pairwise-kl"] <= row["I_jensen"] and row["distortion"] > 0
        assert row["I_pairwise-kl"] <= np.log(100) + 1e-9  # a mixture of 100 components
    assert (out / "rate_distortion.png").read_bytes().startswith(b"\x89PNG")


SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"the real MNIST files are not at {SHARED_MNIST}")
def test_mnist_end_to_end_on_the_real_files(tmp_path, capsys):
    out = tmp_path / "mnist"
    args = ["mnist", "--steps", "3", "--repeats", "1", "--jobs", "1", "--data-dir", str(SHARED_MNIST), "--quiet", "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"svm_error", "svm_error_std", "svm_errors", "failed_repeats", "train_seconds", "config"} <= metrics.keys()
    assert metrics["config"]["model"] == "ipae" and metrics["config"]["beta"] == 1e-5 and metrics["repeats"] == 1
    assert "linear-SVM test error" in capsys.readouterr().out


def test_mnist_refuses_missing_or_damaged_data_with_one_line(tmp_path):
    result = ipae("mnist", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (damaged / name).write_bytes(b"\x1f\x8b not really gzip")
    result = ipae("mnist", "--steps", "1", "--repeats", "1", "--data-dir", str(damaged), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "train-images-idx3-ubyte.gz" in result.stderr
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["damaged"]


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"the real MNIST files are not at {SHARED_MNIST}")
def test_reproduce_figure2_tiny_on_the_real_files_and_resumed(tmp_path, capsys):
    out = tmp_path / "fig2"
    args = ["reproduce", "figure2", "--steps", "2", "--repeats", "1", "--jobs", "1", "--data-dir", str(SHARED_MNIST), "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    table = (out / "figure2.md").read_text()
    assert table.count("\n| ") == 10 and "Lowest mean test error" in table  # one row per cell
    assert "Lowest mean test error" in capsys.readouterr().out
    assert main([*args, "--out", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    before = (out / "runs" / "vae-beta1e-05" / "repeat-0.json").stat().st_mtime_ns
    assert main([*args, "--resume", "--out", str(out)]) == 0
    assert (out / "runs" / "vae-beta1e-05" / "repeat-0.json").stat().st_mtime_ns == before


def test_figure2_options_are_refused_elsewhere_and_bad_data_writes_nothing(tmp_path):
    result = ipae("reproduce", "figure1", "--repeats", "2", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "apply to figure2 only" in result.stderr and result.stderr.count("\n") == 1
    result = ipae("reproduce", "figure2", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
