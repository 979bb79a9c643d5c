"""The `ipae` command: toy, mnist, encode, info and reproduce (fit has tests/test_fit.py).

Most commands run in this process (`main`), which is much faster than a new one; a few run as a
process of their own to see exactly what a user sees."""

import argparse
import importlib
import inspect
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from ipae import IPAE, BetaVAE, cli
from ipae.checkpoint import load_model
from ipae.cli import _build_parser, _parse, main
from ipae.commands.experiment import run_of
from ipae.data.toy import gaussian_grid
from ipae.experiments import conv_mnist, figure2, rate_matched, toy
from ipae.experiments.figure1 import IPAE_BETAS, VAE_BETAS
from ipae.experiments.runs import LOCK_NAME, claim_sweep
from ipae.rates import RATES, InformationPotential, PairwiseKL, PriorKL
from mnist_files import REAL_MNIST, needs_mnist
from reliability import record

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def ipae(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The command in a process of its own: what a user sees, warnings and tracebacks included."""
    return subprocess.run([sys.executable, "-m", "ipae.cli", *args], capture_output=True, text=True, cwd=cwd)


def run(capsys, *args: str) -> tuple[int, str, str]:
    """The command in this process: its exit code, stdout and stderr."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit:  # argparse exits on bad options
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "toy"
    assert main(["toy", "--rate", "vae", "--beta", "1", "--steps", "20", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.fixture
def small_toy_data(monkeypatch):
    """The toy task with 4 samples per centre (100 points): quick runs."""
    monkeypatch.setattr(toy, "gaussian_grid", lambda seed: gaussian_grid(n_per_component=4, seed=seed))


def test_toy_end_to_end(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    config = metrics["config"]
    assert config["model"]["rate"] == {"name": "vae"} and config["model"]["beta"] == 1.0 and config["seed"] == 0
    training = {key: config["training"][key] for key in ("steps", "batch_size", "lr", "n_samples", "precision", "compile")}
    assert training == {"steps": 20, "batch_size": 512, "lr": 0.001, "n_samples": 1, "precision": "fp32", "compile": False}
    assert config["model"]["architecture"]["kind"] == "mlp" and config["model"]["architecture"]["hidden"] == [2048]
    assert {"E", "E_sampled", "E_identity", "train_seconds"} <= metrics.keys()
    assert sorted(p.name for p in trained_run.iterdir()) == [
        "metrics.json",
        "metrics.jsonl",
        "model.json",
        "model.safetensors",
        "reconstruction.png",
    ]


@pytest.mark.parametrize(
    ("options", "rate", "beta"),
    [
        ([], {"name": "ip", "n_partners": 1}, InformationPotential.default_beta),
        (["--n-partners", "all"], {"name": "ip", "n_partners": None}, 0.01),
        (["--n-partners", "4", "--beta", "0.5"], {"name": "ip", "n_partners": 4}, 0.5),
        (["--rate", "vae"], {"name": "vae"}, PriorKL.default_beta),
        (["--rate", "mc", "--mc-samples", "2"], {"name": "mc", "n_samples": 2}, 1.0),
    ],
)
def test_toy_takes_the_rate_its_options_and_its_default_beta(tmp_path, small_toy_data, options, rate, beta):
    assert main(["toy", *options, "--steps", "2", "--seed", "3", "--quiet", "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]
    assert config["model"]["rate"] == rate and config["model"]["beta"] == beta and config["seed"] == 3 and config["training"]["steps"] == 2
    model = json.loads((tmp_path / "run" / "model.json").read_text())["model"]
    assert model == config["model"]  # the record describes the model saved


def test_toy_trains_with_a_chosen_rate_term(tmp_path, small_toy_data, capsys):
    assert main(["toy", "--rate", "pairwise-kl", "--beta", "1", "--steps", "5", "--quiet", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["model"]["rate"] == {"name": PairwiseKL.name}
    code, _, error = run(capsys, "toy", "--rate", "kde", "--out", str(tmp_path / "other"))
    assert code == 2 and "invalid choice: 'kde'" in error and not (tmp_path / "other").exists()


def test_encode_writes_the_mean_codes(trained_run, tmp_path):
    np.save(tmp_path / "x.npy", np.array([[0.0, 0.0], [2.0, -2.0], [4.0, 4.0]]))
    assert main(["encode", str(trained_run), str(tmp_path / "x.npy"), "--out", str(tmp_path / "codes.npy")]) == 0
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (3, 16) and codes.dtype == np.float32
    from ipae.checkpoint import load_model

    with torch.no_grad():
        mu, _ = load_model(trained_run).encode(torch.tensor([[0.0, 0.0], [2.0, -2.0], [4.0, 4.0]]))
    np.testing.assert_array_equal(codes, mu.numpy())
    assert main(["encode", str(trained_run), str(tmp_path / "x.npy"), "--sampled", "--out", str(tmp_path / "sampled.npy")]) == 0
    assert not np.array_equal(np.load(tmp_path / "sampled.npy"), codes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npy", "sampled.npy", "x.npy"]


@pytest.mark.slow  # eleven toy runs: two minutes on two busy cores
def test_reproduce_figure1_tiny(tmp_path):
    out = tmp_path / "fig1"
    result = ipae("reproduce", "figure1", "--steps", "3", "--jobs", "2", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "figure1.json").read_text())
    assert [(row["rate"], row["beta"]) for row in rows] == [("vae", b) for b in VAE_BETAS] + [("ip", b) for b in IPAE_BETAS]
    assert all(row["status"] == "ok" and row["E"] > 0 for row in rows)
    assert (out / "figure1.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "figure1.md").read_text().startswith("| rate | options | beta |")
    cells = json.loads((out / "cells.json").read_text())
    assert len(cells) == len(rows) and sorted(cells) == sorted(p.name for p in (out / "runs").iterdir())
    assert [cell["E"] for cell in cells.values()] == [row["E"] for row in rows]
    assert "Best E:" in result.stdout


def test_a_diverged_run_is_recorded_as_failed(tmp_path, small_toy_data, capsys):
    @torch.no_grad()
    def poison(optimizer, args, kwargs):  # the weights turn NaN after every step
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.fill_(math.nan)

    handle = register_optimizer_step_post_hook(poison)
    try:
        code, _, error = run(capsys, "toy", "--steps", "10", "--quiet", "--out", str(tmp_path / "run"))
    finally:
        handle.remove()
    assert code == 1 and error.count("\n") == 1 and "diverged" in error
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["failed_step"] == 1 and "E" not in metrics


@pytest.mark.parametrize(
    "args, message",
    [
        (["toy", "--beta", "-1"], "--beta: must be a finite number >= 0"),
        (["toy", "--beta", "nan"], "--beta: must be a finite number >= 0"),
        (["toy", "--rate", "gan"], "invalid choice: 'gan'"),
        (["toy", "--model", "vae"], "unrecognized arguments: --model"),
        (["toy", "--n-pairs", "2"], "unrecognized arguments: --n-pairs"),
        (["toy", "--steps", "0"], "--steps: must be an integer >= 1"),
        (["toy", "--n-partners", "some"], "--n-partners"),
        (["toy", "--n-partners", "0"], "--n-partners"),
        (["toy", "--mc-samples", "0"], "--mc-samples: must be an integer >= 1"),
        (["toy", "--rate", "vae", "--n-partners", "3"], "n_partners"),
        (["toy", "--rate", "ip", "--mc-samples", "3"], "n_samples"),
        (["toy", "--lr", "0"], "--lr: must be a finite number > 0"),
        (["reproduce", "figure9"], "invalid choice: 'figure9'"),
        (["reproduce", "--jobs", "2", "figure1"], "name the experiment before its options: `ipae reproduce EXPERIMENT [options]`"),
        (["toy", "--unknown-option", "1"], "unrecognized arguments"),
        (["toy", "--device", "tpu"], "unknown device 'tpu'"),
        (["toy", "--precision", "fp16"], "invalid choice: 'fp16'"),
        (["mnist", "--repeats", "0"], "--repeats: must be an integer >= 1"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    code, _, error = run(capsys, *args, "--out", str(tmp_path / "out"))
    assert code == 2
    assert error.count("\n") == 1 and message in error and error.startswith("ipae: error:")
    assert list(tmp_path.iterdir()) == []


def test_bad_options_are_one_line_in_a_process_of_its_own(tmp_path):
    result = ipae("toy", "--rate", "vae", "--n-partners", "3", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "n_partners" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_precision_auto_is_accepted(tmp_path, small_toy_data):
    assert main(["toy", "--precision", "auto", "--steps", "2", "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["training"]["precision"] == "auto"


def test_an_existing_output_directory_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, _, error = run(capsys, "toy", "--steps", "1", "--out", str(tmp_path / "out"))
    assert code == 2 and "already exists" in error and error.count("\n") == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (np.zeros((4, 3)), "samples of shape (3,)"),
        (np.zeros(4), "of 2 to 4 dimensions"),
        (np.array([[0.0, np.nan]]), "NaN or infinite"),
        (np.zeros((0, 2)), "no rows"),
    ],
)
def test_encode_refuses_bad_data_with_one_line(trained_run, tmp_path, capsys, content, message):
    data = tmp_path / "x.npy"
    if content is not None:
        np.save(data, content)
    code, _, error = run(capsys, "encode", str(trained_run), str(data), "--out", str(tmp_path / "codes.npy"))
    assert code == 2
    assert error.count("\n") == 1 and message in error
    assert not (tmp_path / "codes.npy").exists() and not list(tmp_path.glob(".*"))


def test_encode_refuses_a_missing_or_damaged_model(trained_run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    code, _, error = run(capsys, "encode", str(tmp_path / "nowhere"), str(tmp_path / "x.npy"), "--out", str(tmp_path / "codes.npy"))
    assert code == 2 and "not a model directory" in error and error.count("\n") == 1
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("model.json", "model.safetensors"):
        (damaged / name).write_bytes((trained_run / name).read_bytes()[:40])
    code, _, error = run(capsys, "encode", str(damaged), str(tmp_path / "x.npy"), "--out", str(tmp_path / "codes.npy"))
    assert code == 2 and error.count("\n") == 1 and "model.json" in error
    assert not (tmp_path / "codes.npy").exists()


def _information(output: str) -> dict[str, float]:
    """The estimates `ipae info` prints, by the key words of their labels."""
    lines = output.splitlines()[1:]
    labels = {
        "lower": "lower bound",
        "mc": "Monte Carlo",
        "loo": "leave-one-out",
        "upper": "upper bound",
        "jensen": "Jensen",
        "log_n": "log N",
    }
    found = {key: [float(line.split()[-1]) for line in lines if label in line] for key, label in labels.items()}
    assert all(len(values) == 1 for values in found.values()), output
    return {key: values[0] for key, values in found.items()}


def test_info_prints_the_sandwich_with_known_answers(trained_run, tmp_path, capsys):
    # Twenty copies of one point: every code is the same Gaussian, so I(x; z) = 0 by every estimate.
    np.save(tmp_path / "same.npy", np.tile([[1.0, -2.0]], (20, 1)))
    code, out, _ = run(capsys, "info", str(trained_run), str(tmp_path / "same.npy"), "--samples", "4")
    assert code == 0
    values = _information(out)
    assert [values[key] for key in ("lower", "mc", "loo", "upper", "jensen")] == pytest.approx([0.0] * 5, abs=1e-9)
    assert values["log_n"] == pytest.approx(np.log(20), abs=1e-4)  # printed to 4 decimals
    # Points far apart relative to the model's sigma: the lower bound <= MC <= the upper bounds.
    np.save(tmp_path / "grid.npy", np.stack(np.meshgrid(np.arange(-4.0, 5, 2), np.arange(-4.0, 5, 2)), -1).reshape(-1, 2))
    code, out, _ = run(capsys, "info", str(trained_run), str(tmp_path / "grid.npy"), "--samples", "64")
    assert code == 0
    values = _information(out)
    assert values["lower"] <= values["upper"] <= values["jensen"] and values["lower"] - 0.05 <= values["mc"] <= values["upper"] + 0.05
    assert values["upper"] <= values["log_n"] + 1e-4 and values["loo"] >= values["mc"]


def test_info_refuses_bad_input(trained_run, tmp_path, capsys):
    code, _, error = run(capsys, "info", str(trained_run), str(tmp_path / "missing.npy"))
    assert code == 2 and error.count("\n") == 1 and "no such file" in error


def test_reproduce_rate_distortion_on_a_small_grid(tmp_path, small_toy_data, monkeypatch):
    from ipae.experiments import rate_distortion

    monkeypatch.setattr(rate_distortion, "GRID", {"pairwise-kl": (PairwiseKL(), (1.0,)), "vae": (PriorKL(), (1.0,))})
    monkeypatch.setattr(rate_distortion, "gaussian_grid", lambda seed: gaussian_grid(n_per_component=4, seed=seed))  # a quick evaluation
    out = tmp_path / "rd"
    assert main(["reproduce", "rate-distortion", "--steps", "3", "--jobs", "1", "--quiet", "--out", str(out)]) == 0
    rows = json.loads((out / "rate_distortion.json").read_text())
    assert [(row["rate"], row["status"]) for row in rows] == [("pairwise-kl", "ok"), ("vae", "ok")]
    for row in rows:
        assert row["I_lower"] <= row["I_upper"] <= row["I_jensen"] and row["distortion"] > 0
        assert row["I_upper"] <= np.log(100) + 1e-9  # a mixture of 100 components
    cells = json.loads((out / "cells.json").read_text())
    assert list(cells) == ["pairwise-kl-beta1", "vae-beta1"]
    assert [cell["I_mc"] for cell in cells.values()] == [row["I_mc"] for row in rows]
    assert (out / "rate_distortion.png").read_bytes().startswith(b"\x89PNG")


@needs_mnist
def test_mnist_end_to_end_on_the_real_files(tmp_path, capsys):
    out = tmp_path / "mnist"
    args = ["mnist", "--steps", "3", "--repeats", "1", "--jobs", "1", "--data-dir", str(REAL_MNIST), "--quiet", "--out", str(out)]
    code, stdout, _ = run(capsys, *args)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"svm_error", "svm_error_std", "svm_errors", "failed_repeats", "train_seconds", "config"} <= metrics.keys()
    # --beta defaults to the rate's default_beta (0.01 for ip), not the paper's MNIST 1e-5
    model = metrics["config"]["model"]
    assert model["rate"] == {"name": "ip", "n_partners": 1} and model["beta"] == InformationPotential.default_beta
    assert metrics["repeats"] == 1 and "linear-SVM test error" in stdout


def test_mnist_refuses_missing_or_damaged_data_with_one_line(tmp_path, capsys):
    code, _, error = run(capsys, "mnist", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert code == 2 and error.count("\n") == 1 and "missing MNIST files" in error
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in MNIST_FILES:
        (damaged / name).write_bytes(b"\x1f\x8b not really gzip")
    code, _, error = run(capsys, "mnist", "--steps", "1", "--repeats", "1", "--data-dir", str(damaged), "--out", str(tmp_path / "out"))
    assert code == 2 and error.count("\n") == 1 and "train-images-idx3-ubyte.gz" in error
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["damaged"]


@needs_mnist
@pytest.mark.slow  # ten cells on the real files
def test_reproduce_figure2_tiny_on_the_real_files_and_resumed(tmp_path, capsys):
    out = tmp_path / "fig2"
    args = ["reproduce", "figure2", "--steps", "2", "--repeats", "1", "--jobs", "1", "--data-dir", str(REAL_MNIST), "--quiet"]
    code, stdout, _ = run(capsys, *args, "--out", str(out))
    assert code == 0
    table = (out / "figure2.md").read_text()
    assert table.count("\n| ") == 10 and "Lowest mean test error" in table  # one row per cell
    assert "Lowest mean test error" in stdout
    assert len(json.loads((out / "cells.json").read_text())) == 10
    code, _, error = run(capsys, *args, "--out", str(out))
    assert code == 2 and "pass --resume" in error
    before = (out / "runs" / "vae-beta1e-05" / "repeat-0.json").stat().st_mtime_ns
    assert run(capsys, *args, "--resume", "--out", str(out))[0] == 0
    assert (out / "runs" / "vae-beta1e-05" / "repeat-0.json").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["figure1", "--repeats", "2"], "unrecognized arguments: --repeats 2 (see `ipae reproduce figure1 --help`)"),
        (["rate-distortion", "--resume"], "unrecognized arguments: --resume (see `ipae reproduce rate-distortion --help`)"),
        (["conv-mnist", "--seed", "1"], "unrecognized arguments: --seed 1 (see `ipae reproduce conv-mnist --help`)"),
        (["conv-mnist", "--paper-exact"], "unrecognized arguments: --paper-exact"),
        (["rate-matched", "--dataset", "toy", "--device", "cpu"], "unrecognized arguments: --device cpu"),
        (["figure2", "--dataset", "toy"], "unrecognized arguments: --dataset toy"),
        (["figure1", "--cells", "vae-beta1"], "unrecognized arguments: --cells vae-beta1"),
        (["rate-matched"], "the following arguments are required: --dataset"),
        (["rate-matched", "--dataset", "mnist9"], "invalid choice: 'mnist9'"),
    ],
)
def test_each_experiment_takes_only_its_own_options(tmp_path, capsys, args, message):
    code, _, error = run(capsys, "reproduce", *args, "--out", str(tmp_path / "out"))
    assert code == 2 and error.startswith("ipae: error: ") and message in error and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("figure", ["figure2", "conv-mnist", "rate-matched"])
def test_a_sweep_on_missing_data_or_with_both_resume_and_overwrite_writes_nothing(tmp_path, capsys, figure):
    dataset = ["--dataset", "mnist134"] if figure == "rate-matched" else []
    code, _, error = run(capsys, "reproduce", figure, *dataset, "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert code == 2 and error.count("\n") == 1 and "missing MNIST files" in error
    code, _, error = run(capsys, "reproduce", figure, *dataset, "--resume", "--overwrite", "--out", str(tmp_path / "out"))
    assert code == 2 and error.count("\n") == 1 and "choose one" in error
    assert not (tmp_path / "out").exists()


@needs_mnist
@pytest.mark.slow  # the conv preset on all 70 000 images, twice
def test_reproduce_conv_mnist_tiny_on_the_real_files(tmp_path, capsys):
    out = tmp_path / "conv"
    args = ["reproduce", "conv-mnist", "--steps", "2", "--repeats", "1", "--jobs", "2", "--data-dir", str(REAL_MNIST), "--quiet"]
    code, stdout, _ = run(capsys, *args, "--out", str(out))
    assert code == 0, stdout
    rows = json.loads((out / "conv_mnist.json").read_text())
    assert [(row["rate"], row["options"], row["seeds"], row["failed"]) for row in rows] == [("ip", "n_partners=8", 1, 0), ("vae", "", 1, 0)]
    assert all(0 <= row["svm_error"] <= 100 and row["I_lower"] <= row["I_mc"] + 0.05 for row in rows)
    assert list(json.loads((out / "cells.json").read_text())) == ["ip-n_partners8-beta1e-05", "vae-beta1"]


# defaults, data errors and sweeps that are interrupted or contended


def test_the_default_beta_is_the_rates_own_in_every_entry_point(tmp_path, capsys):
    """One default per rate, set in one place (each rate's default_beta): toy, mnist, fit, the estimators and --help."""
    parser = _build_parser()
    for name, cls in RATES.items():
        for command in ("toy", "mnist"):
            assert run_of(parser.parse_args([command, "--rate", name, "--out", str(tmp_path / "o")])).beta == cls.default_beta, (
                command,
                name,
            )
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32))
    for name in ("ip", "vae"):
        args = ["fit", str(tmp_path / "x.npy"), "--rate", name, "--hidden", "8", "--n-components", "2", "--steps", "1", "--quiet"]
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        assert load_model(tmp_path / name).beta == RATES[name].default_beta
    assert IPAE().beta == RATES["ip"].default_beta and BetaVAE().beta == RATES["vae"].default_beta
    for command in ("toy", "mnist", "fit"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert all(f"{name} {cls.default_beta:g}" in text for name, cls in RATES.items()), command


def test_mnist_errors_name_the_command_line_and_a_failed_download_leaves_no_cache(tmp_path, monkeypatch, capsys):
    from ipae.data import mnist

    def unreachable(url, destination):
        raise OSError("network is unreachable")

    monkeypatch.setattr(mnist, "_fetch", unreachable)
    monkeypatch.setenv("IPAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("IPAE_NO_DOWNLOAD", "1")
    tried = 0
    for command in (["mnist"], ["reproduce", "figure2"]):
        code, _, error = run(capsys, *command, "--out", str(tmp_path / "out"))
        assert code == 2 and error.count("\n") == 1 and "--data-dir" in error and "IPAE_NO_DOWNLOAD" in error, error
        code, _, error = run(capsys, *command, "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
        assert code == 2 and error.count("\n") == 1 and "missing MNIST files" in error and "--data-dir" in error, error
        tried += 2
    monkeypatch.delenv("IPAE_NO_DOWNLOAD")
    for command in (["mnist"], ["reproduce", "figure2"]):
        code, _, error = run(capsys, *command, "--out", str(tmp_path / "out"))
        assert code == 2 and error.count("\n") == 1 and "could not download train-images-idx3-ubyte.gz" in error, error
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # no empty cache left to look like a place that holds MNIST
        tried += 1
    record("bad input", "ipae mnist / reproduce without the MNIST files", tried=tried, outcome="one line naming --data-dir, exit 2")
    record("bad input", "MNIST download failing on every mirror", tried=2, outcome="one line, exit 2, no empty cache folder left")


def test_an_interrupted_overwrite_of_a_sweep_leaves_the_old_sweep(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fig2"
    out.mkdir()
    (out / "sweep.json").write_text("{}")
    (out / "repeat-0.json").write_text("old")
    seen = []

    def interrupted(where, training, **options):
        seen.append(where)
        (where / "repeat-0.json").write_text("new, unfinished")
        raise KeyboardInterrupt

    monkeypatch.setattr("ipae.data.mnist.mnist_directory", lambda data_dir: tmp_path)
    monkeypatch.setattr(figure2, "reproduce_figure2", interrupted)
    code, _, error = run(capsys, "reproduce", "figure2", "--overwrite", "--out", str(out))
    assert code == 130 and error == f"ipae: interrupted; {out} was left as it was\n"
    assert seen and seen[0] != out  # the new sweep ran beside the old one
    assert (out / "repeat-0.json").read_text() == "old" and (out / "sweep.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig2"]  # no staging directory left either

    def finished(where, training, **options):
        (where / "repeat-0.json").write_text("new")
        return []

    monkeypatch.setattr(figure2, "reproduce_figure2", finished)
    assert run(capsys, "reproduce", "figure2", "--overwrite", "--out", str(out))[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["repeat-0.json"] and (out / "repeat-0.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig2"]


HOLD_THE_LOCK = """
import fcntl, os, sys, time
file = open(sys.argv[1], "a+")
fcntl.flock(file, fcntl.LOCK_EX)  # as ipae.experiments.runs.lock_sweep takes it
file.truncate(0)
file.write(f"{os.getpid()}\\n")
file.flush()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_sweep_another_process_runs_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fig2"
    out.mkdir()
    settings = {"steps": 5000, "seed": 0, "precision": "fp32", "paper_exact": False}
    (out / "sweep.json").write_text(json.dumps(settings))
    monkeypatch.setattr("ipae.data.mnist.mnist_directory", lambda data_dir: tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(out / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        refusal = f"ipae: error: {out}: another process (pid {holder.pid}) is running this sweep; wait for it to end, or stop it\n"
        for option in ("--resume", "--overwrite"):
            code, _, error = run(capsys, "reproduce", "figure2", option, "--out", str(out))
            assert (code, error) == (2, refusal), option
        assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, "sweep.json"])  # untouched
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fig2"]
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    claim_sweep(out, settings, tuple(settings), kind="figure-2")  # the lock went with its holder: this process takes it
    claim_sweep(out, settings, tuple(settings), kind="figure-2")  # and may take it again
    record(
        "bad input", "ipae reproduce of a sweep that another process runs", tried=2, outcome="one line naming its pid, exit 2, untouched"
    )


def test_a_monitored_toy_run_logs_information_trains_the_same_weights_and_plots(tmp_path, small_toy_data, capsys):
    common = ["toy", "--rate", "vae", "--beta", "1", "--steps", "200", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--monitor", "--monitor-every", "100", "--monitor-samples", "2", "--out", str(tmp_path / "watched")]) == 0
    plain, watched = (load_file(tmp_path / name / "model.safetensors") for name in ("plain", "watched"))
    assert all(torch.equal(plain[key], watched[key]) for key in plain)
    log = [json.loads(line) for line in (tmp_path / "watched" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log if "I_mc" in record] == [100, 200] and log[0]["I_points"] == 100  # the held-out draw
    metrics = json.loads((tmp_path / "watched" / "metrics.json").read_text())
    assert metrics["E"] == json.loads((tmp_path / "plain" / "metrics.json").read_text())["E"]
    code, out, error = run(capsys, "plot", str(tmp_path / "plain"), str(tmp_path / "watched"), "--out", str(tmp_path / "plane.png"))
    assert code == 0 and error == "" and "2 runs" in out
    assert (tmp_path / "plane.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/nowhere", "--out", "{tmp}/f.png"], "no such run directory or training log"),
        (["{tmp}", "--out", "{tmp}/f.png"], "holds no training log"),
        (["{tmp}/run", "--out", "{tmp}/f.pdf"], "--out must end in .png"),
        (["{tmp}/run", "--out", "{tmp}/run/metrics.jsonl"], "must end in .png"),
        (["{tmp}/run", "--out", "{tmp}/taken.png"], "already exists"),
        (["{tmp}/run/bad.jsonl", "--out", "{tmp}/f.png"], "bad.jsonl:2: not valid JSON"),
        (["--out", "{tmp}/f.png"], "the following arguments are required: RUN"),
        (["{tmp}/run"], "the following arguments are required: --out"),
    ],
)
def test_plot_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (tmp_path / "run" / "bad.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2,\n')
    (tmp_path / "taken.png").write_bytes(b"mine")
    before = sorted(tmp_path.rglob("*"))
    code, _, error = run(capsys, "plot", *(arg.format(tmp=tmp_path) for arg in args))
    assert code == 2 and error.count("\n") == 1 and message in error and error.startswith("ipae: error:"), error
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "taken.png").read_bytes() == b"mine"


def test_monitor_options_of_toy_need_monitor_and_a_multiple_of_the_log(tmp_path, capsys):
    for args, message in (
        (["--monitor-every", "100"], "apply with --monitor"),
        (["--monitor", "--monitor-every", "150"], "must be a multiple of log_every (100)"),
    ):
        code, _, error = run(capsys, "toy", *args, "--out", str(tmp_path / "out"))
        assert code == 2 and error.count("\n") == 1 and message in error
    assert not (tmp_path / "out").exists()


def test_reproduce_figure2_refuses_an_unknown_cell_before_looking_for_mnist(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IPAE_NO_DOWNLOAD", "1")
    monkeypatch.setenv("IPAE_DATA", str(tmp_path / "nothing"))  # no MNIST here: a data error would name it
    code, _, error = run(capsys, "reproduce", "figure2", "--cells", "ip-beta1", "--steps", "2", "--out", str(tmp_path / "out"))
    assert code == 2 and error.count("\n") == 1 and "no cell ip-beta1" in error
    assert not (tmp_path / "out").exists()


# the parser: every option explained, every documented command line accepted, nothing process-wide changed

ROOT = Path(__file__).resolve().parents[1]


def _commands(parser: argparse.ArgumentParser, name: str = "ipae") -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its command line, `ipae reproduce figure2` and the like; each has a one-line description."""
    found = {name: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            described = {choice.dest: choice.help for choice in action._choices_actions}
            for command, subparser in action.choices.items():
                assert described.get(command) and "\n" not in described[command], f"{name} {command}: no one-line description"
                found |= _commands(subparser, f"{name} {command}")
    return found


def test_every_option_has_help_that_shows_its_default():
    commands = _commands(_build_parser())
    assert {f"ipae reproduce {name}" for name in ("figure1", "figure2", "rate-distortion", "conv-mnist", "rate-matched")} <= set(commands)
    checked = 0
    for name, parser in commands.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            shown = formatter._expand_help(action)  # as --help prints it, defaults filled in
            if action.option_strings and action.nargs != 0 and not action.required:  # a value that may be left out
                assert "(default: " in shown, f"{name} {action.option_strings}: {shown!r} does not say its default"
                checked += 1
        assert parser.format_help()
    assert checked >= 80


def test_the_sweeps_default_repeats_are_the_experiments_own():
    commands = _commands(_build_parser())
    signature = inspect.signature
    figure2_repeats = signature(figure2.reproduce_figure2).parameters["repeats"].default
    assert commands["ipae reproduce figure2"].get_default("repeats") == figure2_repeats
    assert (
        commands["ipae reproduce conv-mnist"].get_default("seeds") == signature(conv_mnist.reproduce_conv_mnist).parameters["seeds"].default
    )
    assert f"(default: {rate_matched.REPEATS}, the pilot's 1)" in " ".join(commands["ipae reproduce rate-matched"].format_help().split())


def _documented_command_lines() -> list[str]:
    """The whole `ipae` command lines of README.md and docs: in code blocks, in `Generated by` lines, and inline with --out."""
    lines = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
            for line in block.replace("\\\n", " ").splitlines():
                command = re.match(r"(?:[A-Z_]+=\S*\s+)*(?:ipae|torchrun .*-m ipae\.cli)\s(.*)", line)  # OMP_NUM_THREADS=1 ipae ...
                if command:
                    lines.append(shlex.join(["ipae", *shlex.split(command[1], comments=True)]))
        lines += [span for span in re.findall(r"`(ipae [^`]*)`", text) if "--out" in span.split()]
    return sorted(set(lines))


BRIEFED = [  # command lines that sweeps in progress resume with
    "ipae reproduce figure2 --paper-exact --cells vae-beta1e-05 --resume --jobs 1 --threads 1 --quiet --data-dir D --out O",
    "ipae reproduce rate-matched --dataset toy --resume --jobs 1 --threads 1 --quiet --out O",
]


@pytest.mark.parametrize("line", [*_documented_command_lines(), *BRIEFED])
def test_documented_command_lines_parse(line):
    assert callable(_parse(shlex.split(line)[1:]).handler)


def test_the_docs_hold_many_command_lines_of_every_command():
    lines = _documented_command_lines()
    assert len(lines) >= 30
    commands = {" ".join(line.split()[1:3]) if line.split()[1] == "reproduce" else line.split()[1] for line in lines}
    every = {"toy", "mnist", "fit", "encode", "decode", "plot", "info"} | {
        f"reproduce {name}" for name in ("figure1", "figure2", "rate-distortion", "conv-mnist", "rate-matched")
    }
    assert commands == every


def test_main_changes_nothing_process_wide_and_the_console_script_tunes_the_allocator(tmp_path, small_toy_data, monkeypatch):
    tuned = []
    monkeypatch.setattr(importlib.import_module("ipae.runtime"), "keep_freed_memory", lambda: tuned.append(True))
    threads = torch.get_num_threads()
    assert main(["toy", "--steps", "2", "--threads", "1", "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert tuned == [] and torch.get_num_threads() == threads
    monkeypatch.setattr(cli, "main", lambda: 7)
    with pytest.raises(SystemExit) as exit:
        cli.run()
    assert exit.value.code == 7 and tuned == [True]
    assert 'ipae = "ipae.cli:run"' in (ROOT / "pyproject.toml").read_text()
