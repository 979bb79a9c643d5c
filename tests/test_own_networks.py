"""Acceptance test of the open model: a conv encoder and decoder of our own (not from ipae), trained with
InformationPotential(n_partners=8) through ipae.train from a DataLoader on real MNIST (all 10 digits):
the loss falls, and checkpoint -> kill -> resume gives the weights of an uninterrupted run bit for bit."""

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import ipae
from ipae.checkpoint import load_state
from ipae.data.mnist import load_mnist
from ipae.models import AutoEncoder
from ipae.rates import InformationPotential
from ipae.training import TrainConfig, train
from mnist_files import HAS_REAL_MNIST, MISSING, REAL_MNIST

N_LATENT = 8
N_TRAIN = 1024  # 16 batches of 64 an epoch: a 30-step run, and the replay of a resumed one, cross an epoch
CONFIG = TrainConfig(steps=30, batch_size=64, checkpoint_every=10, log_every=5, progress=False)
KILL_AT = 25  # the first log after the checkpoint of step 20


class Encoder(nn.Module):
    """x (B, 1, 28, 28) -> mu, raw_logvar (B, D) each."""

    def __init__(self, n_latent: int = N_LATENT) -> None:
        super().__init__()
        self.convolutions = nn.Sequential(
            nn.Conv2d(1, 8, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 4, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16 * 7 * 7, 2 * n_latent)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.convolutions(x).flatten(1)  # (B, 16 * 7 * 7)
        mu, raw_logvar = self.head(features).chunk(2, dim=1)  # (B, D) each
        return mu, raw_logvar


class Decoder(nn.Module):
    """z (B, D) -> logits (B, 1, 28, 28)."""

    def __init__(self, n_latent: int = N_LATENT) -> None:
        super().__init__()
        self.fully_connected = nn.Sequential(nn.Linear(n_latent, 16 * 7 * 7), nn.ReLU())
        self.deconvolutions = nn.Sequential(
            nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.deconvolutions(self.fully_connected(z).view(-1, 16, 7, 7))  # (B, 1, 28, 28)


def networks(seed: int = 0) -> tuple[Encoder, Decoder]:
    with torch.random.fork_rng(devices=[]):  # seeded weights, and the caller's random state left as it was
        torch.manual_seed(seed)
        return Encoder(), Decoder()


def build_model(seed: int = 0) -> AutoEncoder:
    encoder, decoder = networks(seed)
    return AutoEncoder(encoder, decoder, rate=InformationPotential(n_partners=8), distortion="bernoulli", beta=1e-3)


def mnist_subset() -> TensorDataset:
    splits = load_mnist(REAL_MNIST, n_train=N_TRAIN, seed=0)
    x = torch.from_numpy(splits.x_train).view(-1, 1, 28, 28)  # (N, 1, 28, 28) in [0, 1]
    return TensorDataset(x, torch.from_numpy(splits.y_train))


def loader(dataset: TensorDataset) -> DataLoader:
    return DataLoader(dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True)


# What the killed process runs: the same model and loader (this module's), checkpoints every 10 steps,
# then SIGKILL (no cleanup, no exception handlers) from the first log after the checkpoint of step 20.
SCRIPT = """
import os, signal, sys
import torch
sys.path.insert(0, {tests!r})
from test_own_networks import CONFIG, KILL_AT, build_model, loader, mnist_subset
from ipae.training import train

torch.set_num_threads(1)  # as the test process: the same arithmetic, bit for bit


def on_log(record):
    if record["step"] == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


train(build_model(), loader(mnist_subset()), CONFIG, checkpoint_dir={checkpoint!r}, on_log=on_log)
sys.exit("trained to the end without being killed")
"""


@pytest.fixture(scope="module")
def dataset():
    if not HAS_REAL_MNIST:
        pytest.skip(MISSING)
    return mnist_subset()


@pytest.fixture(scope="module")
def one_thread():
    """One thread here and in the killed process: the same arithmetic in both, and no spinning on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(dataset, one_thread):
    model = build_model()
    logs = []
    result = train(model, loader(dataset), CONFIG, on_log=logs.append)
    return model, result, logs


def test_the_networks_are_our_own():
    encoder, decoder = networks()
    assert not any(type(module).__module__.startswith("ipae") for module in [*encoder.modules(), *decoder.modules()])


def test_the_loss_falls(dataset, uninterrupted):
    assert set(dataset.tensors[1].tolist()) == set(range(10))  # all ten digits
    _, result, logs = uninterrupted
    assert result.loss.shape == (30,) and np.isfinite(result.loss).all()
    # an untrained decoder's logits are near 0: about 784 log 2 = 543 nats a digit
    assert 400 < result.distortion[0] < 700
    assert result.loss[-10:].mean() < 0.85 * result.loss[:10].mean()  # 0.73 measured
    assert result.rate[0] > 0
    np.testing.assert_allclose(result.loss, result.distortion + 1e-3 * result.rate, rtol=1e-5)
    assert [log["step"] for log in logs] == [5, 10, 15, 20, 25, 30]


def test_checkpoint_kill_resume_gives_the_uninterrupted_weights_bit_for_bit(dataset, uninterrupted, tmp_path):
    checkpoint = tmp_path / "run.checkpoint"
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(SCRIPT).format(tests=str(Path(__file__).parent), checkpoint=str(checkpoint)))
    killed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads((checkpoint / "training.json").read_text())["step"] == 20
    assert load_state(checkpoint).history.shape == (20, 3)
    assert not list(tmp_path.glob(".*"))  # no half-written staging directory beside it

    expected, expected_result, _ = uninterrupted
    model = build_model()  # as the killed process built it; the checkpoint's weights replace these
    result = train(model, loader(dataset), CONFIG, resume=checkpoint)
    for (name, weight), (_, reference) in zip(model.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(weight, reference), name
    np.testing.assert_array_equal(result.loss, expected_result.loss)
    # the history up to the checkpoint is what the killed process trained, not retrained here
    np.testing.assert_array_equal(load_state(checkpoint).history.double().numpy()[:, 0], expected_result.loss[:20])


def test_a_model_of_own_networks_saves_and_loads_into_new_networks(dataset, uninterrupted, tmp_path):
    model, _, _ = uninterrupted
    ipae.save(model, tmp_path / "model")
    record = json.loads((tmp_path / "model" / "model.json").read_text())["model"]
    assert record["architecture"] is None and record["rate"] == {"name": "ip", "n_partners": 8} and record["distortion"] == "bernoulli"
    with pytest.raises(ValueError, match="encoder= and decoder="):
        ipae.load(tmp_path / "model")
    encoder, decoder = networks(seed=1)  # other weights until loaded
    loaded = ipae.load(tmp_path / "model", encoder=encoder, decoder=decoder)
    assert isinstance(loaded, AutoEncoder) and loaded.encoder is encoder and not loaded.training
    assert isinstance(loaded.rate, InformationPotential) and loaded.rate.n_partners == 8 and loaded.beta == 1e-3
    x = dataset.tensors[0][:100]
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x)[0], model.encode(x)[0])
        assert torch.equal(loaded.decode(model.encode(x)[0]), model.decode(model.encode(x)[0]))
