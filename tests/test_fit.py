"""`ipae fit`, `encode` and `decode` on users' data: configs, continuing, checkpoints, images, logs, and bad input."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from ipae import fitting
from ipae.checkpoint import load_model, read_metadata
from ipae.cli import main
from ipae.data import arrays
from ipae.data.arrays import RowReader, load_array
from ipae.models import ModelSpec
from ipae.networks import MLP, Conv
from ipae.rates import InformationPotential, MonteCarlo
from ipae.runtime import native_bf16
from ipae.training import TrainConfig
from reliability import record

SMALL = ["--hidden", "16", "--n-components", "2", "--batch-size", "32"]


def ipae(*args: str, env=None) -> subprocess.CompletedProcess:
    """The command in a process of its own: what a user sees, warnings and tracebacks included."""
    return subprocess.run([sys.executable, "-m", "ipae.cli", *args], capture_output=True, text=True, env=env)


def run(capsys, *args: str) -> tuple[int, str]:
    """The command in this process (much faster than a new one): its exit code and stderr."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit:  # argparse exits on bad options
        code = exit.code
    return code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """Train where `ipae fit` would without CUDA: the runs compared here are equal bit for bit on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def data(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "x.npy"


@pytest.fixture
def always_mapped(monkeypatch):
    """`ipae fit` memory-maps every .npy file, however small (the library may load small files whole)."""
    monkeypatch.setattr(arrays, "MMAP_BYTES", 0, raising=False)


def _weights(directory):
    return load_file(directory / "model.safetensors")


def _same_weights(a, b) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


@contextmanager
def after_step(n: int, action):
    """Call `action(optimizer)` right after the n-th optimiser step of any training in the block: a
    kill (KeyboardInterrupt) or damage at a known step, whatever the code path to the training loop."""
    count = 0

    def hook(optimizer, args, kwargs):
        nonlocal count
        count += 1
        if count == n:
            action(optimizer)

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def kill(optimizer):
    raise KeyboardInterrupt


@torch.no_grad()
def poison(optimizer):
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.fill_(float("nan"))


def test_fit_writes_a_model_its_state_config_and_log(data, tmp_path, capsys):
    out = tmp_path / "model"
    args = ["fit", str(data), *SMALL, "--steps", "20", "--log-every", "5", "--log", str(tmp_path / "live.jsonl"), "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    assert "20 steps: loss" in capsys.readouterr().out
    names = ["config.toml", "metrics.json", "metrics.jsonl", "model.json", "model.safetensors", "training.json", "training.png"]
    assert sorted(p.name for p in out.iterdir()) == [*names, "training.safetensors"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [5, 10, 15, 20] and all(np.isfinite(line["loss"]) for line in lines)
    assert (tmp_path / "live.jsonl").read_text() == (out / "metrics.jsonl").read_text()
    model = load_model(out)
    assert model.architecture == MLP(input_shape=(3,), hidden=(16,), n_latent=2)
    assert model.rate.name == "ip" and model.rate.n_partners == 1 and model.beta == 0.01 and model.distortion == "mse"
    assert json.loads((out / "metrics.json").read_text())["steps"] == 20
    assert json.loads((out / "training.json").read_text())["step"] == 20


def test_the_written_config_reproduces_the_run_and_the_command_line_wins(data, tmp_path):
    first = tmp_path / "first"
    assert main(["fit", str(data), *SMALL, "--steps", "10", "--quiet", "--out", str(first)]) == 0
    again = tmp_path / "again"
    assert main(["fit", "--config", str(first / "config.toml"), "--quiet", "--out", str(again)]) == 0
    assert _same_weights(first, again)
    other = tmp_path / "other"
    assert main(["fit", "--config", str(first / "config.toml"), "--beta", "0.5", "--quiet", "--out", str(other)]) == 0
    assert load_model(other).beta == 0.5 and "beta = 0.5" in (other / "config.toml").read_text()
    assert not _same_weights(first, other)


def test_a_continued_fit_equals_one_long_fit(data, tmp_path):
    assert main(["fit", str(data), *SMALL, "--steps", "8", "--quiet", "--out", str(tmp_path / "short")]) == 0
    assert main(["fit", "--resume", str(tmp_path / "short"), "--steps", "20", "--quiet", "--out", str(tmp_path / "continued")]) == 0
    assert main(["fit", str(data), *SMALL, "--steps", "20", "--quiet", "--out", str(tmp_path / "long")]) == 0
    assert _same_weights(tmp_path / "continued", tmp_path / "long")
    assert not _same_weights(tmp_path / "short", tmp_path / "long")
    assert "steps = 20" in (tmp_path / "continued" / "config.toml").read_text()


def test_resume_restores_the_options_of_the_run_from_its_metadata(data, tmp_path, capsys):
    options = ["--rate", "vae", "--beta", "0.5", "--activation", "tanh", "--lr", "0.003", "--seed", "4"]
    assert main(["fit", str(data), *SMALL, *options, "--steps", "6", "--quiet", "--out", str(tmp_path / "short")]) == 0
    fit_options = read_metadata(tmp_path / "short")["fit"]
    assert fit_options["rate"] == "vae" and fit_options["activation"] == "tanh" and fit_options["seed"] == 4
    # Given only --resume and --steps, the continued run is the long run with all the other options.
    assert main(["fit", "--resume", str(tmp_path / "short"), "--steps", "9", "--quiet", "--out", str(tmp_path / "continued")]) == 0
    assert main(["fit", str(data), *SMALL, *options, "--steps", "9", "--quiet", "--out", str(tmp_path / "long")]) == 0
    assert _same_weights(tmp_path / "continued", tmp_path / "long")
    model = load_model(tmp_path / "continued")
    assert model.rate.name == "vae" and model.beta == 0.5 and model.architecture.activation == "tanh"
    config = (tmp_path / "continued" / "config.toml").read_text()
    assert 'rate = "vae"' in config and "seed = 4" in config and "steps = 9" in config
    # An option that changes the model cannot continue the run: one line, exit 2, nothing written.
    capsys.readouterr()
    assert main(["fit", "--resume", str(tmp_path / "short"), "--rate", "ip", "--steps", "9", "--out", str(tmp_path / "other")]) == 2
    error = capsys.readouterr().err
    assert "another model" in error and error.count("\n") == 1 and not (tmp_path / "other").exists()


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


@pytest.mark.parametrize("shape", [(12, 16, 16), (12, 3, 16, 17)], ids=["N,H,W", "N,C,H,W"])
def test_a_conv_fit_on_images_is_used_by_encode_and_decode(tmp_path, shape):
    images = np.random.default_rng(2).random(shape).astype(np.float32)  # pixels in [0, 1]
    np.save(tmp_path / "images.npy", images)
    args = ["fit", str(tmp_path / "images.npy"), "--arch", "conv", "--distortion", "bernoulli", "--n-components", "3"]
    assert main([*args, "--steps", "2", "--batch-size", "4", "--quiet", "--out", str(tmp_path / "m")]) == 0
    model = load_model(tmp_path / "m")
    assert model.architecture == Conv(input_shape=shape[1:], n_latent=3) and model.distortion == "bernoulli"
    assert 'arch = "conv"' in (tmp_path / "m" / "config.toml").read_text()
    assert main(["encode", str(tmp_path / "m"), str(tmp_path / "images.npy"), "--out", str(tmp_path / "z.npy")]) == 0
    codes = np.load(tmp_path / "z.npy")
    assert codes.shape == (12, 3)
    assert main(["decode", str(tmp_path / "m"), str(tmp_path / "z.npy"), "--out", str(tmp_path / "r.npy")]) == 0
    decoded = np.load(tmp_path / "r.npy")
    assert decoded.shape == shape and decoded.min() >= 0 and decoded.max() <= 1  # images, as probabilities
    with torch.no_grad():
        mu, _ = model.encode(torch.from_numpy(images))
        np.testing.assert_array_equal(codes, mu.numpy())
        np.testing.assert_array_equal(decoded, model.decode(mu).numpy())
    np.save(tmp_path / "other.npy", images[:, ..., :-1])  # images of another size
    assert main(["encode", str(tmp_path / "m"), str(tmp_path / "other.npy"), "--out", str(tmp_path / "z2.npy")]) == 2
    assert not (tmp_path / "z2.npy").exists()


def test_fit_reads_csv_and_npz(tmp_path):
    x = np.random.default_rng(1).normal(size=(50, 2))
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="u,v", comments="")
    np.savez(tmp_path / "x.npz", train=x, other=x[:3])
    assert main(["fit", str(tmp_path / "x.csv"), *SMALL, "--steps", "3", "--quiet", "--out", str(tmp_path / "a")]) == 0
    assert main(["fit", str(tmp_path / "x.npz"), "--key", "train", *SMALL, "--steps", "3", "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert _same_weights(tmp_path / "a", tmp_path / "b")  # the same numbers, as float32, give the same run


def test_precision_auto_is_accepted_and_recorded(data, tmp_path):
    common = ["fit", str(data), *SMALL, "--steps", "4", "--quiet"]
    assert main([*common, "--precision", "auto", "--out", str(tmp_path / "auto")]) == 0
    assert main([*common, "--precision", "fp32", "--out", str(tmp_path / "fp32")]) == 0
    assert 'precision = "auto"' in (tmp_path / "auto" / "config.toml").read_text()
    # auto is bf16 where the CPU computes it natively, else fp32 itself
    assert _same_weights(tmp_path / "auto", tmp_path / "fp32") == (not native_bf16(torch.device("cpu")))


def _bad_files(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    np.save(tmp_path / "inf.npy", np.array([[0.0, np.inf]]))
    np.save(tmp_path / "flat.npy", np.zeros(5))
    np.save(tmp_path / "deep.npy", np.zeros((2, 1, 1, 16, 16)))
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    np.save(tmp_path / "pairs.npy", np.zeros((5, 2)))
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
        (["{tmp}/flat.npy"], "of 2 to 4 dimensions"),
        (["{tmp}/deep.npy"], "of 2 to 4 dimensions"),
        (["{tmp}/words.csv"], "line 3: 'x' is not a number"),
        (["{tmp}/x.npy", "--beta", "-1"], "--beta: must be a finite number >= 0"),
        (["{tmp}/x.npy", "--rate", "pca"], "invalid choice: 'pca'"),
        (["{tmp}/x.npy", "--model", "vae"], "unrecognized arguments: --model"),
        (["{tmp}/x.npy", "--n-pairs", "2"], "unrecognized arguments: --n-pairs"),
        (["{tmp}/x.npy", "--arch", "rnn"], "invalid choice: 'rnn'"),
        (["{tmp}/x.npy", "--arch", "conv"], "the conv architecture takes images"),
        (["{tmp}/x.npy", "--rate", "vae", "--n-partners", "3"], "n_partners"),
        (["{tmp}/x.npy", "--n-partners", "0"], "--n-partners"),
        (["{tmp}/x.npy", "--precision", "fp16"], "invalid choice: 'fp16'"),
        (["{tmp}/x.npy", "--steps", "0"], "--steps: must be an integer >= 1"),
        (["{tmp}/x.npy", "--checkpoint-every", "0"], "--checkpoint-every: must be an integer >= 1"),
        (["{tmp}/x.npy", "--hidden", "16,,8"], "--hidden: must be layer sizes"),
        (["{tmp}/x.npy", "--resume", "{tmp}/nowhere"], "no such model directory"),
        (["{tmp}/x.npy", "--config", "{tmp}/nowhere.toml"], "no such config file"),
        (["{tmp}/x.npy", "--config", "{tmp}/words.csv"], "not valid TOML"),
        (["{tmp}/x.npy", "--distortion", "bernoulli"], "needs data in [0, 1]"),
        ([], "no data"),
        (["{tmp}/x.npy", "--monitor", "{tmp}/missing.npy"], "no such file"),
        (["{tmp}/x.npy", "--monitor", "{tmp}/pairs.npy"], "samples of shape (2,), the data's are (3,)"),
        (["{tmp}/x.npy", "--monitor", "{tmp}/nan.npy"], "NaN or infinite"),
        (["{tmp}/x.npy", "--monitor", "{tmp}/x.npy", "--monitor-every", "150"], "must be a multiple of log_every (100)"),
        (["{tmp}/x.npy", "--monitor-every", "100"], "apply with --monitor"),
        (["{tmp}/x.npy", "--monitor", "{tmp}/x.npy", "--monitor-samples", "0"], "--monitor-samples: must be an integer >= 1"),
    ],
)
def test_fit_refuses_bad_input_with_one_line_and_writes_nothing(data, tmp_path, capsys, args, message):
    _bad_files(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, error = run(capsys, "fit", *(arg.format(tmp=tmp_path) for arg in args), "--steps", "2", "--quiet", "--out", str(tmp_path / "out"))
    assert code == 2, error
    assert error.count("\n") == 1 and message in error and error.startswith("ipae: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_input_is_one_line_in_a_process_of_its_own(data, tmp_path):
    result = ipae("fit", str(data), "--arch", "conv", "--steps", "2", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "conv" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


@pytest.mark.parametrize(
    ("content", "names"),
    [("steps = 2\nwidth = 3\n", "width"), ('out = "elsewhere"\n', "out"), ("n_pairs = 2\n", "n_pairs"), ("model = 'vae'\n", "model")],
)
def test_unknown_config_options_are_refused(data, tmp_path, capsys, content, names):
    (tmp_path / "c.toml").write_text(content)
    code, error = run(capsys, "fit", str(data), "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out"))
    assert code == 2 and names in error and "is not an option a config file can set" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_config_file_sets_the_rate_and_its_options(data, tmp_path):
    (tmp_path / "c.toml").write_text(f'data = "{data}"\nhidden = [16]\nn-components = 2\nsteps = 3\nn_partners = "all"\nbeta = 0.2\n')
    assert main(["fit", "--config", str(tmp_path / "c.toml"), "--quiet", "--out", str(tmp_path / "m")]) == 0
    model = load_model(tmp_path / "m")
    assert model.rate.name == "ip" and model.rate.n_partners is None and model.beta == 0.2
    config = (tmp_path / "m" / "config.toml").read_text()
    assert 'n_partners = "all"' in config and "beta = 0.2" in config


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_encode_and_decode_refuse_a_missing_or_corrupt_model_dir(data, tmp_path, capsys, command):
    code, error = run(capsys, command, str(tmp_path / "nowhere"), str(data), "--out", str(tmp_path / "o.npy"))
    assert code == 2 and "not a model directory" in error and error.count("\n") == 1
    assert main(["fit", str(data), *SMALL, "--steps", "2", "--quiet", "--out", str(tmp_path / "m")]) == 0
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 20)
    code, error = run(capsys, command, str(tmp_path / "m"), str(data), "--out", str(tmp_path / "o.npy"))
    assert code == 2 and "model.safetensors: damaged" in error and error.count("\n") == 1
    assert not (tmp_path / "o.npy").exists()


def test_a_diverging_fit_exits_1_and_writes_nothing(tmp_path, capsys):
    np.save(tmp_path / "huge.npy", np.full((40, 2), 3e38, dtype=np.float32))
    code, error = run(capsys, "fit", str(tmp_path / "huge.npy"), *SMALL, "--steps", "3", "--log-every", "1", "--out", str(tmp_path / "out"))
    assert code == 1 and "diverged" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.checkpoint").exists()


def test_tensorboard_without_the_package_is_a_clear_error(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert main(["fit", str(data), "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "out")]) == 2
    assert "tensorboard" in capsys.readouterr().err
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
    assert not [entry for entry in written if entry[0].startswith("heldout/")]

    written.clear()
    args += ["--monitor", str(data), "--monitor-every", "4"]  # the training points themselves, for the test
    assert main([*args, "--out", str(tmp_path / "watched")]) == 0
    tags = ["I_mc", "I_loo", "I_lower", "I_upper", "log_N", "saturated", "distortion"]
    assert [entry for entry in written if entry[0].startswith("heldout/")] == [(f"heldout/{tag}", 4) for tag in tags]
    log = [json.loads(line) for line in (tmp_path / "watched" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log if "I_mc" in record] == [4]


def test_a_killed_fit_continues_from_its_checkpoint_as_if_never_stopped(data, tmp_path, capsys):
    common = ["fit", str(data), *SMALL, "--steps", "12", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    assert main([*common, "--checkpoint-every", "5", "--out", str(tmp_path / "pieces")]) == 0
    assert _same_weights(tmp_path / "pieces", tmp_path / "whole") and not (tmp_path / "pieces.checkpoint").exists()
    assert "checkpoint_every = 5" in (tmp_path / "pieces" / "config.toml").read_text()

    capsys.readouterr()
    with after_step(12, kill):  # in the last of the 12 steps, after the checkpoint of step 10
        assert main([*common, "--checkpoint-every", "5", "--out", str(tmp_path / "killed")]) == 130
    assert f"continue it with `ipae fit --resume {tmp_path / 'killed.checkpoint'}" in capsys.readouterr().err
    assert not (tmp_path / "killed").exists()
    assert json.loads((tmp_path / "killed.checkpoint" / "training.json").read_text())["step"] == 10
    assert main(["fit", "--resume", str(tmp_path / "killed.checkpoint"), "--quiet", "--out", str(tmp_path / "killed")]) == 0
    assert _same_weights(tmp_path / "killed", tmp_path / "whole")
    assert not (tmp_path / "killed.checkpoint").exists()  # the finished run needs it no more


def test_a_resumed_fit_keeps_checkpointing(data, tmp_path):
    common = ["fit", str(data), *SMALL, "--steps", "20", "--checkpoint-every", "5", "--quiet", "--out", str(tmp_path / "run")]
    checkpoint = tmp_path / "run.checkpoint"
    assert main(["fit", str(data), *SMALL, "--steps", "20", "--quiet", "--out", str(tmp_path / "whole")]) == 0
    with after_step(7, kill):
        assert main(common) == 130
    assert json.loads((checkpoint / "training.json").read_text())["step"] == 5
    assert read_metadata(checkpoint)["fit"]["checkpoint_every"] == 5
    resume = ["fit", "--resume", str(checkpoint), "--quiet", "--out", str(tmp_path / "run")]
    with after_step(8, kill):  # global step 13: the resumed run has saved step 10 on its own
        assert main(resume) == 130
    assert json.loads((checkpoint / "training.json").read_text())["step"] == 10
    assert read_metadata(checkpoint)["fit"]["checkpoint_every"] == 5
    assert main(resume) == 0
    assert _same_weights(tmp_path / "run", tmp_path / "whole") and not checkpoint.exists()
    assert "checkpoint_every = 5" in (tmp_path / "run" / "config.toml").read_text()


def test_reproduce_refuses_to_run_under_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["reproduce", "figure1", "--out", str(tmp_path / "out")]) == 2
    assert "without torchrun" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_fit_diverging_after_a_checkpoint_names_it(data, tmp_path, capsys):
    args = ["fit", str(data), *SMALL, "--steps", "12", "--checkpoint-every", "5", "--quiet", "--out", str(tmp_path / "out")]
    with after_step(7, poison):  # the weights turn NaN after step 7; the check at step 10 finds it
        assert main(args) == 1
    error = capsys.readouterr().err
    assert "diverged" in error and str(tmp_path / "out.checkpoint") in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists() and (tmp_path / "out.checkpoint" / "model.safetensors").exists()
    assert json.loads((tmp_path / "out.checkpoint" / "training.json").read_text())["step"] == 5


# memory-mapped data


def test_fit_trains_on_a_large_npy_by_rows_without_loading_it(data, tmp_path, always_mapped, monkeypatch):
    seen = []
    real_train = fitting.train

    def spy(model, source, *args, **kwargs):
        seen.append(source)
        return real_train(model, source, *args, **kwargs)

    monkeypatch.setattr(fitting, "train", spy)
    assert main(["fit", str(data), *SMALL, "--steps", "4", "--quiet", "--out", str(tmp_path / "mapped")]) == 0
    assert len(seen) == 1 and isinstance(seen[0], RowReader) and os.path.samefile(seen[0].path, data)
    monkeypatch.setattr(fitting, "train", real_train)
    # the same run from the array in memory
    spec = ModelSpec(MLP(hidden=(16,), n_latent=2))
    model, _ = fitting.fit(np.load(data), spec, TrainConfig(steps=4, batch_size=32, progress=False), seed=0)
    weights = _weights(tmp_path / "mapped")
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_from_a_file_by_rows_equals_training_from_the_array_in_memory(tmp_path, always_mapped, dtype):
    images = np.random.default_rng(3).random((40, 2, 16, 16)).astype(dtype)
    np.save(tmp_path / "x.npy", images)
    mapped = load_array(tmp_path / "x.npy", max_ndim=4, mmap=True)
    assert isinstance(mapped, RowReader) and mapped.dtype == dtype
    spec = ModelSpec(MLP(hidden=(8,), n_latent=2), distortion="bernoulli")
    config = TrainConfig(steps=5, batch_size=16, seed=3, progress=False)
    from_file, result_file = fitting.fit(mapped, spec, config, seed=1)
    in_memory, result_memory = fitting.fit(images.astype(np.float32), spec, config, seed=1)
    np.testing.assert_array_equal(result_file.loss, result_memory.loss)
    for (name, a), b in zip(from_file.state_dict().items(), in_memory.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_large_file_outside_0_1_is_refused_for_the_bernoulli_distortion(tmp_path, always_mapped):
    np.save(tmp_path / "x.npy", np.linspace(-1, 2, 40, dtype=np.float32).reshape(20, 2))
    mapped = load_array(tmp_path / "x.npy", mmap=True)
    assert isinstance(mapped, RowReader)
    with pytest.raises(ValueError, match=r"needs data in \[0, 1\]"):
        fitting.fit(mapped, ModelSpec(MLP(hidden=(4,), n_latent=2), distortion="bernoulli"), TrainConfig(steps=1, progress=False))


# a data file that changes under a fit: one line naming it, exit 2, nothing written; never a signal or other data


def written_earlier(path):
    """Date the file a minute back, as a file written before a run is: a rewrite within the same tick of
    the file system's clock would otherwise leave its modification time as it was."""
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - 60 * 10**9))
    return path


def truncate(path):
    path.open("r+b").truncate(0)


def truncate_then_float64(path):
    """The rewrite measured on a 1.2 GB file: cut to nothing, then a float64 file of the same size."""
    size = path.stat().st_size
    truncate(path)
    np.save(path, np.full((50, 3), 7.0))  # 50 x 3 float64: the bytes of 100 x 3 float32
    assert path.stat().st_size == size


def the_same_again(path):
    np.save(path, np.load(path))


@pytest.mark.parametrize("rewrite", [truncate, truncate_then_float64, the_same_again])
def test_a_file_rewritten_in_place_while_training_stops_the_fit(data, tmp_path, capsys, always_mapped, rewrite):
    written_earlier(data)
    with after_step(3, lambda optimizer: rewrite(data)):
        code, error = run(capsys, "fit", str(data), *SMALL, "--steps", "8", "--quiet", "--out", str(tmp_path / "out"))
    assert code == 2 and error == f"ipae: error: {data}: the file was written to after ipae checked it (its size or modification time " + (
        "changed); nothing was trained on the new bytes; run again once it is no longer being written\n"
    )
    assert not (tmp_path / "out").exists()
    record(
        "bad input",
        "data file rewritten in place while ipae fit trains",
        tried=1,
        outcome="one line naming it, exit 2, nothing written",
        detail=rewrite.__name__.replace("_", " "),
    )


def test_a_file_replaced_before_training_is_refused(tmp_path, capsys, always_mapped, monkeypatch):
    """The float64 file of 7.0s that came back as float32 [0, 2.4375, ...] when it was opened again by name."""
    data = tmp_path / "x.npy"
    np.save(data, np.full((50, 3), 7.0))
    real_build = fitting.build_model

    def replace_then_build(*args, **kwargs):  # between the checks and the first step
        np.save(tmp_path / "new.npy", np.random.default_rng(0).random((100, 3), dtype=np.float32))
        os.replace(tmp_path / "new.npy", data)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(fitting, "build_model", replace_then_build)
    code, error = run(capsys, "fit", str(data), *SMALL, "--steps", "4", "--quiet", "--out", str(tmp_path / "out"))
    assert code == 2 and error.startswith(f"ipae: error: {data}: the file was replaced or removed after ipae checked it")
    assert error.count("\n") == 1 and not (tmp_path / "out").exists()
    record("bad input", "data file replaced between its check and training", tried=1, outcome="one line naming it, exit 2, nothing written")


def test_a_file_cut_short_before_the_bernoulli_range_check_is_refused(tmp_path, capsys, always_mapped, monkeypatch):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((100, 3), dtype=np.float32))
    real_load = arrays.load_array

    def load_then_truncate(*args, **kwargs):  # another program cuts the file after it was checked
        loaded = real_load(*args, **kwargs)
        truncate(data)
        return loaded

    monkeypatch.setattr(arrays, "load_array", load_then_truncate)
    args = ["fit", str(data), *SMALL, "--distortion", "bernoulli", "--steps", "4", "--quiet", "--out", str(tmp_path / "out")]
    code, error = run(capsys, *args)
    assert code == 2 and error.startswith(f"ipae: error: {data}: the file was written to after ipae checked it")
    assert error.count("\n") == 1 and not (tmp_path / "out").exists()
    record(
        "bad input", "data file cut short before the bernoulli range check", tried=1, outcome="one line naming it, exit 2, nothing written"
    )


def test_a_large_fortran_ordered_file_is_refused_in_one_line(tmp_path, capsys, always_mapped):
    data = tmp_path / "x.npy"
    np.save(data, np.asfortranarray(np.random.default_rng(0).random((100, 3))))
    code, error = run(capsys, "fit", str(data), *SMALL, "--steps", "4", "--quiet", "--out", str(tmp_path / "out"))
    assert code == 2 and error.startswith(f"ipae: error: {data}: the array is in Fortran order") and error.count("\n") == 1
    record("bad input", "large Fortran-ordered .npy", tried=1, outcome="one line naming it, exit 2")


# resuming: the right run on the right data


def test_a_fit_with_a_stopped_run_in_its_checkpoint_does_not_start_again(data, tmp_path, capsys):
    out, checkpoint = tmp_path / "out", tmp_path / "out.checkpoint"
    command = ["fit", str(data), *SMALL, "--steps", "12", "--checkpoint-every", "5", "--quiet", "--out", str(out)]
    with after_step(7, kill):
        assert main(command) == 130
    state = (checkpoint / "training.json").read_text()
    hint = f"continue it with `ipae fit --resume {checkpoint} --out {out}`"
    assert main(["fit", str(data), *SMALL, "--steps", "4", "--quiet", "--out", str(tmp_path / "short")]) == 0
    for again in (
        command,
        [*command[:-2], "--overwrite", "--out", str(out)],
        ["fit", "--resume", str(tmp_path / "short"), "--out", str(out)],
    ):
        code, error = run(capsys, *again)
        assert code == 2 and error.startswith(f"ipae: error: {checkpoint} holds a stopped run") and hint in error and error.count("\n") == 1
        assert (checkpoint / "training.json").read_text() == state and not out.exists()
    assert main(["fit", "--resume", str(checkpoint), "--quiet", "--out", str(out)]) == 0  # the command it names
    record("bad input", "ipae fit again without --resume over a stopped run", tried=3, outcome="one line naming the resume command, exit 2")


def test_resume_on_a_directory_of_another_kind_says_what_it_is(tmp_path, capsys):
    from ipae import IPAE, save
    from ipae.checkpoint import save_model

    model = fitting.build_model(ModelSpec(MLP(hidden=(4,), n_latent=2)), (3,))
    save_model(model, tmp_path / "plain")  # as `ipae toy` saves its model
    estimator = IPAE(n_components=2, hidden=(4,), steps=2, batch_size=8, device="cpu").fit(np.ones((16, 3)))
    save(estimator, tmp_path / "estimator")
    for name, kind in (("plain", "a model saved otherwise"), ("estimator", "a saved estimator")):
        code, error = run(capsys, "fit", "--resume", str(tmp_path / name), "--out", str(tmp_path / "out"))
        assert code == 2 and error == (
            f"ipae: error: --resume {tmp_path / name}: not a run of `ipae fit` but {kind}"
            + (" (by `ipae toy`, `ipae.save`, ...)" if name == "plain" else "")
            + "; --resume continues a fit or its OUT.checkpoint\n"
        )
    record("bad input", "ipae fit --resume of a directory that is no fit", tried=2, outcome="one line saying what it is, exit 2")


@pytest.mark.parametrize("read", ["loaded", "by rows"])
def test_resuming_on_other_values_of_the_same_shape_is_refused(data, tmp_path, capsys, monkeypatch, read):
    if read == "by rows":
        monkeypatch.setattr(arrays, "MMAP_BYTES", 0)
    out, checkpoint = tmp_path / "out", tmp_path / "out.checkpoint"
    with after_step(7, kill):
        assert main(["fit", str(data), *SMALL, "--steps", "12", "--checkpoint-every", "5", "--quiet", "--out", str(out)]) == 130
    np.save(data, np.load(data)[::-1])  # the same rows in another order: the same size, shape and number of rows
    code, error = run(capsys, "fit", "--resume", str(checkpoint), "--quiet", "--out", str(out))
    assert (
        code == 2
        and error.startswith("ipae: error: cannot continue the run on other data: its 100 samples differ")
        and error.count("\n") == 1
    )
    np.save(data, np.load(data)[::-1])  # the data it was trained on: it goes on
    assert main(["fit", "--resume", str(checkpoint), "--quiet", "--out", str(out)]) == 0
    record("bad input", "ipae fit --resume on other values of the same shape", tried=1, outcome="one line, exit 2", detail=read)


# torch.compile


@pytest.mark.slow
def test_fit_with_compile_matches_the_eager_fit_and_records_it(data, tmp_path):
    assert main(["fit", str(data), *SMALL, "--steps", "10", "--quiet", "--out", str(tmp_path / "eager")]) == 0
    assert main(["fit", str(data), *SMALL, "--steps", "10", "--compile", "--quiet", "--out", str(tmp_path / "compiled")]) == 0
    assert "compile = true" in (tmp_path / "compiled" / "config.toml").read_text()
    for name, weight in _weights(tmp_path / "compiled").items():
        torch.testing.assert_close(weight, _weights(tmp_path / "eager")[name], rtol=0, atol=1e-5)


@pytest.mark.slow  # a process of its own (the compiler is read from its environment): half a minute
def test_fit_with_compile_but_no_compiler_is_one_line_and_writes_nothing(data, tmp_path):
    environment = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    result = ipae("fit", str(data), *SMALL, "--steps", "3", "--compile", "--quiet", "--out", str(tmp_path / "m"), env=environment)
    assert result.returncode == 1
    assert result.stderr.startswith("ipae: torch.compile failed") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def _log(directory):
    """metrics.jsonl without its timing field: "seconds" is the wall time of the run that wrote a line."""
    return [
        {key: value for key, value in json.loads(line).items() if key != "seconds"}
        for line in (directory / "metrics.jsonl").read_text().splitlines()
    ]


def test_the_log_of_a_continued_fit_is_the_whole_run(data, tmp_path):
    """A fit killed and resumed from its checkpoint, or continued from a finished shorter fit, logs every
    step from the first, in the windows of an uninterrupted run (3 steps here; resumed at steps 5 and 8)."""
    common = ["fit", str(data), *SMALL, "--log-every", "3", "--quiet"]
    assert main([*common, "--steps", "20", "--out", str(tmp_path / "whole")]) == 0
    whole = _log(tmp_path / "whole")
    assert [line["step"] for line in whole] == [3, 6, 9, 12, 15, 18, 20]
    with after_step(7, kill):  # after the checkpoint of step 5
        assert main([*common, "--steps", "20", "--checkpoint-every", "5", "--out", str(tmp_path / "killed")]) == 130
    assert main(["fit", "--resume", str(tmp_path / "killed.checkpoint"), "--quiet", "--out", str(tmp_path / "killed")]) == 0
    assert _log(tmp_path / "killed") == whole
    assert main([*common, "--steps", "8", "--out", str(tmp_path / "short")]) == 0
    assert main(["fit", "--resume", str(tmp_path / "short"), "--steps", "20", "--quiet", "--out", str(tmp_path / "continued")]) == 0
    assert _log(tmp_path / "continued") == whole
    replayed = [json.loads(line) for line in (tmp_path / "continued" / "metrics.jsonl").read_text().splitlines()]
    assert [line["seconds"] is None for line in replayed] == [True, True, False, False, False, False, False]  # steps 3, 6: from the state


def test_resume_of_a_missing_directory_says_so_in_one_line(data, tmp_path, capsys):
    code, error = run(capsys, "fit", "--resume", str(tmp_path / "gone"), "--out", str(tmp_path / "out"))
    assert code == 2 and error == f"ipae: error: --resume {tmp_path / 'gone'}: no such model directory\n"
    code, error = run(capsys, "fit", "--resume", str(tmp_path / "gone"), "--config", str(tmp_path / "gone" / "config.toml"), "--out", "o")
    assert code == 2 and "--resume" in error and "no such model directory" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()
    record("bad input", "ipae fit --resume of a missing directory", tried=2, outcome="one line naming it, exit 2, nothing written")


def test_a_batch_larger_than_the_data_is_recorded_as_it_ran(data, tmp_path, capsys):
    """100 samples and --batch-size 1000: every step trains on all 100, and config.toml says 100, so that
    the config, and a resume from it, describe the run that happened."""
    common = ["fit", str(data), "--hidden", "16", "--n-components", "2", "--steps", "4", "--quiet"]
    code, error = run(capsys, *common, "--batch-size", "1000", "--out", str(tmp_path / "big"))
    assert code == 0 and error == "ipae: note: --batch-size 1000 is more than the 100 samples; trained on batches of 100\n"
    assert "batch_size = 100\n" in (tmp_path / "big" / "config.toml").read_text()
    assert read_metadata(tmp_path / "big")["fit"]["batch_size"] == 100
    assert main([*common, "--batch-size", "100", "--out", str(tmp_path / "exact")]) == 0
    assert _same_weights(tmp_path / "big", tmp_path / "exact")
    assert main(["fit", "--config", str(tmp_path / "big" / "config.toml"), "--quiet", "--out", str(tmp_path / "again")]) == 0
    assert _same_weights(tmp_path / "again", tmp_path / "big")


def test_threads_sets_the_threads_of_the_command_and_main_restores_them(data, tmp_path):
    before, seen = torch.get_num_threads(), []
    try:
        torch.set_num_threads(2)
        with after_step(1, lambda optimizer: seen.append(torch.get_num_threads())):
            assert main(["fit", str(data), *SMALL, "--steps", "2", "--threads", "1", "--quiet", "--out", str(tmp_path / "m")]) == 0
        assert seen == [1] and torch.get_num_threads() == 2  # main leaves the process as it found it
    finally:
        torch.set_num_threads(before)


def test_a_monitored_fit_logs_information_every_n_steps_and_trains_the_weights_of_an_unmonitored_one(data, tmp_path):
    held_out = tmp_path / "held_out.npy"
    np.save(held_out, np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32))
    common = ["fit", str(data), *SMALL, "--steps", "20", "--log-every", "5", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--monitor", str(held_out), "--monitor-every", "10", "--out", str(tmp_path / "watched")]) == 0
    plain, watched = (load_file(tmp_path / name / "model.safetensors") for name in ("plain", "watched"))
    assert plain.keys() == watched.keys() and all(torch.equal(plain[key], watched[key]) for key in plain)
    log = [json.loads(line) for line in (tmp_path / "watched" / "metrics.jsonl").read_text().splitlines()]
    plain_log = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert [record["loss"] for record in log] == [record["loss"] for record in plain_log]
    assert [record["step"] for record in log if "I_mc" in record] == [10, 20]
    information = ("I_mc", "I_loo", "I_lower", "I_upper", "I_points", "I_log_n", "I_saturated", "heldout_distortion")
    assert all(record["I_points"] == 40 and record["I_lower"] <= record["I_upper"] for record in log if "I_mc" in record)
    metrics = json.loads((tmp_path / "watched" / "metrics.json").read_text())
    assert {key: metrics[key] for key in information} == {key: log[-1][key] for key in information}
    assert not set(information) & set(json.loads((tmp_path / "plain" / "metrics.json").read_text()))
    assert (tmp_path / "watched" / "config.toml").read_text().count(f'monitor = "{held_out}"') == 1
    # continued from its checkpoint, the run keeps monitoring the same points, and its log is the whole run's
    assert main([*common, "--steps", "30", "--out", str(tmp_path / "longer"), "--resume", str(tmp_path / "watched")]) == 0
    longer = [json.loads(line) for line in (tmp_path / "longer" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in longer if "I_mc" in record] == [10, 20, 30]
    assert [record.get("I_mc") for record in longer[:4]] == [record.get("I_mc") for record in log]


# config.toml: every option the run used


def _toml(path) -> dict:
    return fitting.tomllib.loads(path.read_text())


def _changed_default(monkeypatch, cls, name: str, value) -> None:
    """`cls(...)` without `name` takes `value` from now on: a default that a later release might change."""
    init = cls.__init__
    if init.__kwdefaults__ and name in init.__kwdefaults__:
        monkeypatch.setattr(init, "__kwdefaults__", {**init.__kwdefaults__, name: value})
        return
    names = [field.name for field in dataclasses.fields(cls) if field.init and not field.kw_only]
    defaults = list(init.__defaults__)
    defaults[names.index(name) - (len(names) - len(defaults))] = value
    monkeypatch.setattr(init, "__defaults__", tuple(defaults))


def test_config_toml_records_every_option_the_run_used_defaults_included(data, tmp_path, monkeypatch):
    first = tmp_path / "first"
    assert main(["fit", str(data), *SMALL, "--steps", "6", "--quiet", "--out", str(first)]) == 0
    spec, training = ModelSpec(), TrainConfig()
    given = {"data": str(data), "hidden": [16], "n_components": 2, "batch_size": 32, "steps": 6}
    defaults = {"arch": "mlp", "activation": spec.architecture.activation, "distortion": spec.distortion, "rate": spec.rate}
    defaults |= {name: getattr(training, name) for name in ("lr", "seed", "precision", "compile", "log_every")}
    defaults |= {"beta": InformationPotential.default_beta, "n_partners": InformationPotential().n_partners}
    recorded = _toml(first / "config.toml")
    assert recorded == given | defaults and read_metadata(first)["fit"] == recorded
    # what a run did not use is not recorded: another rate's options, an mlp's layers for conv, a monitor's settings
    np.save(tmp_path / "images.npy", np.random.default_rng(0).random((8, 16, 16), dtype=np.float32))
    conv = ["fit", str(tmp_path / "images.npy"), "--rate", "mc", "--arch", "conv", "--steps", "1", "--quiet"]
    assert main([*conv, "--out", str(tmp_path / "mc")]) == 0
    mc = _toml(tmp_path / "mc" / "config.toml")
    assert mc["mc_samples"] == MonteCarlo().n_samples and mc["beta"] == MonteCarlo.default_beta
    assert not {"n_partners", "hidden", "activation", "monitor_every", "checkpoint_every"} & set(mc)
    # so the run is the same when the defaults change, and a later rate on the command line takes its own beta
    _changed_default(monkeypatch, TrainConfig, "lr", 0.5)
    assert TrainConfig().lr == 0.5
    assert main(["fit", "--config", str(first / "config.toml"), "--quiet", "--out", str(tmp_path / "again")]) == 0
    assert _same_weights(first, tmp_path / "again")
    assert main(["fit", "--config", str(first / "config.toml"), *SMALL, "--quiet", "--out", str(tmp_path / "new")]) == 0
    assert _toml(tmp_path / "new" / "config.toml")["lr"] == 0.001  # recorded, not the new default
    assert main(["fit", "--config", str(first / "config.toml"), "--rate", "vae", "--quiet", "--out", str(tmp_path / "vae")]) == 0
    vae = _toml(tmp_path / "vae" / "config.toml")
    assert vae["rate"] == "vae" and vae["beta"] == 1.0 and "n_partners" not in vae


def test_ctrl_c_before_the_first_checkpoint_says_none_exists(data, tmp_path, capsys):
    common = ["fit", str(data), *SMALL, "--steps", "12", "--quiet"]
    for options, when in (([], "--checkpoint-every N saves one"), (["--checkpoint-every", "10"], "the first is at step 10")):
        with after_step(7, kill):
            code, error = run(capsys, *common, *options, "--out", str(tmp_path / "out"))
        assert code == 130 and error == f"ipae: interrupted; no checkpoint of this run exists yet ({when}), so nothing was kept\n"
        assert sorted(tmp_path.iterdir()) == [data]


@pytest.mark.parametrize("checkpoint", [False, True])
def test_sigint_to_a_fit_says_whether_it_can_be_resumed(data, tmp_path, checkpoint):
    """A real Ctrl-C (SIGINT) to `ipae fit` in a process of its own, while it trains."""
    out, log = tmp_path / "out", tmp_path / "log.jsonl"
    every = ["--checkpoint-every", "10" if checkpoint else "1000000"]
    command = ["fit", str(data), *SMALL, "--steps", "1000000", "--log-every", "10", *every, "--log", str(log), "--quiet", "--out", str(out)]
    # Ctrl-C reaches the command as a terminal delivers it: a shell without job control starts background jobs
    # (a CI script run with `&`) with SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    default_sigint = partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    process = subprocess.Popen(
        [sys.executable, "-m", "ipae.cli", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    try:
        ready = (tmp_path / "out.checkpoint" / "training.json") if checkpoint else log
        deadline = time.monotonic() + 120
        while not (ready.exists() and log.exists() and log.read_text()) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, error = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130 and error.count("\n") == 1 and error.startswith("ipae: interrupted; "), error
    if checkpoint:
        assert f"continue it with `ipae fit --resume {tmp_path / 'out.checkpoint'} --out {out}`" in error
    else:
        assert "no checkpoint of this run exists yet (the first is at step 1000000)" in error
        assert sorted(path.name for path in tmp_path.iterdir()) == ["log.jsonl", "x.npy"]
    assert not out.exists()
