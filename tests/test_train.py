import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from ipae.data.toy import gaussian_grid
from ipae.models import AutoEncoder, ModelConfig
from ipae.train import TrainingDiverged, check_data, train

SMALL = ModelConfig(n_inputs=2, hidden=(32,), n_latent=4, beta=0.01)


@pytest.fixture(scope="module")
def toy_x():
    return gaussian_grid(n_per_component=8).x


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_same_seed_same_result_and_other_seed_differs(toy_x):
    runs = []
    for seed in (3, 3, 4):
        model = AutoEncoder(SMALL, seed=0)
        runs.append((train(model, toy_x, steps=30, batch_size=64, seed=seed), _weights(model)))
    np.testing.assert_array_equal(runs[0][0].loss, runs[1][0].loss)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)
    assert not np.array_equal(runs[0][0].loss, runs[2][0].loss)


@pytest.mark.parametrize("rate", ["ip", "vae"])
def test_history_is_consistent_and_training_lowers_the_loss(toy_x, rate):
    config = ModelConfig(n_inputs=2, hidden=(64,), n_latent=4, rate=rate, beta=0.05)
    result = train(AutoEncoder(config), toy_x, steps=300, batch_size=128, lr=3e-3, n_pairs=None)
    assert result.loss.shape == result.distortion.shape == result.rate.shape == (300,)
    np.testing.assert_allclose(result.loss, result.distortion + 0.05 * result.rate, rtol=1e-5)
    # The inputs' variance is about 8 per axis, so an untrained decoder's squared error is about 16+.
    assert result.distortion[:10].mean() > 10
    assert result.loss[-50:].mean() < 0.5 * result.loss[:10].mean()
    assert result.seconds > 0


def test_divergence_is_reported_at_the_first_non_finite_step(toy_x):
    model = AutoEncoder(SMALL)
    original = model.objective
    calls = {"n": 0}

    def loss_turning_nan(*args, **kwargs):
        terms = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 150:
            return terms._replace(loss=terms.loss * math.nan)
        return terms

    model.objective = loss_turning_nan  # what the training loop calls (in one process)
    with pytest.raises(TrainingDiverged, match="step 150") as caught:
        train(model, toy_x, steps=400, batch_size=32, log_every=100)
    assert caught.value.step == 150
    assert caught.value.result.loss.shape == (151,)
    assert np.isfinite(caught.value.result.loss[:150]).all() and np.isnan(caught.value.result.loss[150])


def test_a_batch_larger_than_the_data_is_cut_to_it():
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    result = train(AutoEncoder(SMALL), x, steps=5, batch_size=512)
    assert np.isfinite(result.loss).all()


@pytest.mark.parametrize(
    "data, message",
    [
        (torch.zeros(5, 3), r"shape \(N, 2\)"),
        (torch.zeros(5), r"shape \(N, 2\)"),
        (torch.zeros(0, 2), "empty"),
        (torch.zeros(5, 2, dtype=torch.int64), "floating point"),
        (torch.tensor([[0.0, math.nan]]), "NaN"),
        (torch.tensor([[0.0, math.inf]]), "NaN or infinite"),
        (np.zeros((5, 2)), "torch.Tensor"),
    ],
)
def test_bad_data_is_refused(data, message):
    with pytest.raises(ValueError, match=message):
        check_data(data, 2)
    with pytest.raises(ValueError, match=message):
        train(AutoEncoder(SMALL), data, steps=1)


@pytest.mark.parametrize("option", [{"steps": 0}, {"batch_size": 0}, {"lr": 0.0}, {"lr": -1.0}, {"n_pairs": 0}, {"n_samples": 0}])
def test_bad_options_are_refused(toy_x, option):
    with pytest.raises(ValueError):
        train(AutoEncoder(SMALL), toy_x, **option)


# torch.compile changes the rounding, not the computation: same noise, partners and batches.
@pytest.mark.parametrize("precision, rtol, atol", [("fp32", 1e-5, 1e-6), ("bf16", 1e-3, 1e-3)])
@pytest.mark.parametrize("rate, n_pairs", [("ip", 2), ("vae", None)])
def test_compiled_training_matches_eager_training(toy_x, precision, rtol, atol, rate, n_pairs):
    config = replace(SMALL, rate=rate)
    eager, compiled = AutoEncoder(config), AutoEncoder(config)
    expected = train(eager, toy_x, steps=30, batch_size=64, n_pairs=n_pairs, precision=precision)
    torch._dynamo.reset()  # so that this test compiles afresh, whatever ran before it
    graphs = counters["stats"]["unique_graphs"]
    result = train(compiled, toy_x, steps=30, batch_size=64, n_pairs=n_pairs, precision=precision, compile=True)
    assert counters["stats"]["unique_graphs"] > graphs  # the objective did go through the compiler
    np.testing.assert_allclose(result.loss, expected.loss, rtol=rtol)
    torch.testing.assert_close(_weights(compiled), _weights(eager), rtol=0, atol=atol)


def test_compile_is_refused_under_torch_distributed(toy_x, monkeypatch):
    monkeypatch.setattr(sys.modules["ipae.train"], "world_size", lambda: 2)
    with pytest.raises(ValueError, match="compile=True is not supported under torch.distributed"):
        train(AutoEncoder(SMALL), toy_x, steps=1, compile=True)
