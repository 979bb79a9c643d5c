"""`ipae fit`, `encode` and `decode` on users' data: configs, continuing, logs, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ipae.checkpoint import load_model
from ipae.cli import main

SMALL = ["--hidden", "16", "--n-components", "2", "--batch-size", "32"]


def ipae(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipae.cli", *args], capture_output=True, text=True)


@pytest.fixture
def data(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "x.npy"


def _weights(directory):
    return load_file(directory / "model.safetensors")


def _same_weights(a, b) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def test_fit_writes_a_model_its_state_config_and_log(data, tmp_path, capsys):
    out = tmp_path / "model"
    assert (
        main(
            [
                "fit",
                str(data),
                *SMALL,
                "--steps",
                "20",
                "--log-every",
                "5",
                "--log",
                str(tmp_path / "live.jsonl"),
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "20 steps: loss" in capsys.readouterr().out
    names = ["config.toml", "metrics.json", "metrics.jsonl", "model.json", "model.safetensors", "training.json", "training.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == names
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [5, 10, 15, 20] and all(np.isfinite(line["loss"]) for line in lines)
    assert (tmp_path / "live.jsonl").read_text() == (out / "metrics.jsonl").read_text()
    model = load_model(out)
    assert model.config.n_inputs == 3 and model.config.n_latent == 2 and model.config.hidden == (16,) and model.config.rate == "ip"
    assert json.loads((out / "metrics.json").read_text())["steps"] == 20


def test_the_written_config_reproduces_the_run_and_the_command_line_wins(data, tmp_path):
    first = tmp_path / "first"
    assert main(["fit", str(data), *SMALL, "--steps", "10", "--quiet", "--out", str(first)]) == 0
    again = tmp_path / "again"
    assert main(["fit", "--config", str(first / "config.toml"), "--quiet", "--out", str(again)]) == 0
    assert _same_weights(first, again)
    other = tmp_path / "other"
    assert main(["fit", "--config", str(first / "config.toml"), "--beta", "0.5", "--quiet", "--out", str(other)]) == 0
    assert load_model(other).config.beta == 0.5 and "beta = 0.5" in (other / "config.toml").read_text()


def test_a_continued_fit_equals_one_long_fit(data, tmp_path):
    assert main(["fit", str(data), *SMALL, "--steps", "8", "--quiet", "--out", str(tmp_path / "short")]) == 0
    assert main(["fit", "--resume", str(tmp_path / "short"), "--steps", "20", "--quiet", "--out", str(tmp_path / "continued")]) == 0
    assert main(["fit", str(data), *SMALL, "--steps", "20", "--quiet", "--out", str(tmp_path / "long")]) == 0
    assert _same_weights(tmp_path / "continued", tmp_path / "long")
    assert "steps = 20" in (tmp_path / "continued" / "config.toml").read_text()


def test_encode_and_decode_round_trip_through_files(data, tmp_path):
    assert main(["fit", str(data), *SMALL, "--steps", "5", "--quiet", "--out", str(tmp_path / "m")]) == 0
    assert main(["encode", str(tmp_path / "m"), str(data), "--out", str(tmp_path / "z.npy")]) == 0
    assert main(["decode", str(tmp_path / "m"), str(tmp_path / "z.npy"), "--out", str(tmp_path / "r.npy")]) == 0
    model = load_model(tmp_path / "m")
    with torch.no_grad():
        mu, _ = model.encode(torch.from_numpy(np.load(data)))
        expected = model.decode(mu).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), mu.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), expected)


def test_fit_reads_csv_and_npz(tmp_path):
    x = np.random.default_rng(1).normal(size=(50, 2))
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="u,v", comments="")
    np.savez(tmp_path / "x.npz", train=x, other=x[:3])
    assert main(["fit", str(tmp_path / "x.csv"), *SMALL, "--steps", "3", "--quiet", "--out", str(tmp_path / "a")]) == 0
    assert main(["fit", str(tmp_path / "x.npz"), "--key", "train", *SMALL, "--steps", "3", "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert _same_weights(tmp_path / "a", tmp_path / "b")  # the same numbers, as float32, give the same run


def _bad_files(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    np.save(tmp_path / "inf.npy", np.array([[0.0, np.inf]]))
    np.save(tmp_path / "flat.npy", np.zeros(5))
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "nan.npy").read_bytes()[:70])
    (tmp_path / "words.csv").write_text("a,b\n1,2\n3,x\n")
    (tmp_path / "zero.csv").write_text("")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing.npy"], "no such file"),
        (["{tmp}/zero.csv"], "no rows"),
        (["{tmp}/empty.npy"], "no rows"),
        (["{tmp}/truncated.npy"], "not a readable"),
        (["{tmp}/nan.npy"], "NaN or infinite"),
        (["{tmp}/inf.npy"], "NaN or infinite"),
        (["{tmp}/flat.npy"], "2-D array"),
        (["{tmp}/words.csv"], "line 3: 'x' is not a number"),
        (["{tmp}/x.npy", "--beta", "-1"], "--beta: must be a finite number >= 0"),
        (["{tmp}/x.npy", "--model", "pca"], "invalid choice: 'pca'"),
        (["{tmp}/x.npy", "--steps", "0"], "--steps: must be an integer >= 1"),
        (["{tmp}/x.npy", "--hidden", "16,,8"], "--hidden: must be layer sizes"),
        (["{tmp}/x.npy", "--resume", "{tmp}/nowhere"], "no such config file"),
        (["{tmp}/x.npy", "--config", "{tmp}/words.csv"], "not valid TOML"),
        (["{tmp}/x.npy", "--distortion", "bernoulli"], "needs values in [0, 1]"),
        ([], "no data"),
    ],
)
def test_fit_refuses_bad_input_with_one_line_and_writes_nothing(data, tmp_path, args, message):
    _bad_files(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = ipae("fit", *(arg.format(tmp=tmp_path) for arg in args), "--steps", "2", "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unknown_config_options_are_refused(data, tmp_path):
    (tmp_path / "c.toml").write_text("steps = 2\nwidth = 3\n")
    result = ipae("fit", str(data), "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "'width' is not an option a config file can set" in result.stderr
    (tmp_path / "c.toml").write_text('out = "elsewhere"\n')
    result = ipae("fit", str(data), "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "'out' is not an option" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_encode_and_decode_refuse_a_missing_or_corrupt_model_dir(data, tmp_path, command):
    result = ipae(command, str(tmp_path / "nowhere"), str(data), "--out", str(tmp_path / "o.npy"))
    assert result.returncode == 2 and "not a model directory" in result.stderr and result.stderr.count("\n") == 1
    assert main(["fit", str(data), *SMALL, "--steps", "2", "--quiet", "--out", str(tmp_path / "m")]) == 0
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 20)
    result = ipae(command, str(tmp_path / "m"), str(data), "--out", str(tmp_path / "o.npy"))
    assert result.returncode == 2 and "model.safetensors: damaged" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "o.npy").exists()


def test_a_diverging_fit_exits_1_and_writes_nothing(tmp_path):
    np.save(tmp_path / "huge.npy", np.full((40, 2), 3e38, dtype=np.float32))
    result = ipae("fit", str(tmp_path / "huge.npy"), *SMALL, "--steps", "3", "--log-every", "1", "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "diverged" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_tensorboard_without_the_package_is_a_clear_error(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert main(["fit", str(data), "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "tb").exists()


def test_tensorboard_gets_the_logged_scalars(data, tmp_path, monkeypatch):
    import types

    written = []

    class SummaryWriter:  # stands in for torch.utils.tensorboard's, which needs the tensorboard package
        def __init__(self, directory):
            written.append(("open", directory))

        def add_scalar(self, tag, value, step):
            written.append((tag, step))

        def close(self):
            written.append(("close", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    args = ["fit", str(data), *SMALL, "--steps", "4", "--log-every", "2", "--tensorboard", str(tmp_path / "tb"), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert written[0] == ("open", str(tmp_path / "tb")) and written[-1] == ("close", None)
    assert [entry for entry in written[1:-1] if entry[0] == "train/loss"] == [("train/loss", 2), ("train/loss", 4)]


def test_a_killed_fit_continues_from_its_checkpoint_as_if_never_stopped(data, tmp_path, monkeypatch, capsys):
    training = sys.modules["ipae.train"]  # the module: `ipae.train` is the function

    common = ["fit", str(data), *SMALL, "--steps", "12", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    assert main([*common, "--checkpoint-every", "5", "--out", str(tmp_path / "pieces")]) == 0
    assert _same_weights(tmp_path / "pieces", tmp_path / "whole") and not (tmp_path / "pieces.checkpoint").exists()

    real_train, calls = training.train, []

    def killed_in_the_third_piece(*args, **kwargs):
        calls.append(kwargs["stop_at"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", killed_in_the_third_piece)
    assert main([*common, "--checkpoint-every", "5", "--out", str(tmp_path / "killed")]) == 130
    assert calls == [5, 10, 12] and not (tmp_path / "killed").exists()
    assert f"continue it with `ipae fit --resume {tmp_path / 'killed.checkpoint'}" in capsys.readouterr().err
    assert json.loads((tmp_path / "killed.checkpoint" / "training.json").read_text())["step"] == 10
    monkeypatch.setattr(training, "train", real_train)
    assert main(["fit", "--resume", str(tmp_path / "killed.checkpoint"), "--quiet", "--out", str(tmp_path / "killed")]) == 0
    assert _same_weights(tmp_path / "killed", tmp_path / "whole")


def test_reproduce_refuses_to_run_under_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["reproduce", "figure1", "--out", str(tmp_path / "out")]) == 2
    assert "without torchrun" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_fit_diverging_after_a_checkpoint_names_it(data, tmp_path, monkeypatch, capsys):
    from ipae.train import TrainingDiverged, TrainResult

    training = sys.modules["ipae.train"]
    real_train = training.train

    def diverging_in_the_second_piece(*args, **kwargs):
        if kwargs["stop_at"] > 5:
            raise TrainingDiverged(7, TrainResult(np.zeros(8), np.zeros(8), np.zeros(8), 0.1))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train", diverging_in_the_second_piece)
    args = ["fit", str(data), *SMALL, "--steps", "12", "--checkpoint-every", "5", "--quiet", "--out", str(tmp_path / "out")]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert f"the run up to step 5 is in {tmp_path / 'out.checkpoint'}" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists() and (tmp_path / "out.checkpoint" / "model.safetensors").exists()


def test_fit_with_compile_matches_the_eager_fit_and_records_it(data, tmp_path):
    assert main(["fit", str(data), *SMALL, "--steps", "10", "--quiet", "--out", str(tmp_path / "eager")]) == 0
    assert main(["fit", str(data), *SMALL, "--steps", "10", "--compile", "--quiet", "--out", str(tmp_path / "compiled")]) == 0
    assert "compile = true" in (tmp_path / "compiled" / "config.toml").read_text()
    for name, weight in _weights(tmp_path / "compiled").items():
        torch.testing.assert_close(weight, _weights(tmp_path / "eager")[name], rtol=0, atol=1e-5)


def test_fit_with_compile_but_no_compiler_is_one_line_and_writes_nothing(data, tmp_path):
    environment = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    command = ["fit", str(data), *SMALL, "--steps", "3", "--compile", "--quiet", "--out", str(tmp_path / "m")]
    result = subprocess.run([sys.executable, "-m", "ipae.cli", *command], capture_output=True, text=True, env=environment)
    assert result.returncode == 1
    assert result.stderr.startswith("ipae: torch.compile failed") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
