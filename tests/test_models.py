import math

import pytest
import torch

from ipae.layers import Dense
from ipae.models import LOGVAR_LIMIT, PRESETS, AutoEncoder, ModelConfig

F64 = torch.float64


def _layers(module) -> list[tuple[int, int, str | None]]:
    return [(m.in_features, m.out_features, m.activation) for m in module.modules() if isinstance(m, Dense)]


def test_presets_are_the_papers_architectures():
    toy = AutoEncoder.from_preset("toy")
    assert _layers(toy.body) == [(2, 2048, "relu")] and _layers(toy.heads) == [(2048, 32, None)]
    assert _layers(toy.decoder) == [(16, 2048, "relu"), (2048, 2, None)]
    assert PRESETS["toy"].distortion == "mse"
    mnist = AutoEncoder.from_preset("mnist")
    assert _layers(mnist.body) == [(784, 1024, "sigmoid")] and _layers(mnist.heads) == [(1024, 16, None)]
    assert _layers(mnist.decoder) == [(8, 1024, "sigmoid"), (1024, 784, None)]
    assert PRESETS["mnist"].distortion == "bernoulli"


def test_presets_take_overrides_and_refuse_unknown_names():
    model = AutoEncoder.from_preset("toy", rate="vae", beta=2.0)
    assert model.config.rate == "vae" and model.config.beta == 2.0 and model.config.hidden == (2048,)
    with pytest.raises(ValueError, match="unknown preset"):
        AutoEncoder.from_preset("cifar")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"rate": "gan"}, "unknown rate"),
        ({"distortion": "l1"}, "unknown distortion"),
        ({"activation": "gelu"}, "unknown activation"),
        ({"beta": -0.1}, "beta must be"),
        ({"beta": math.nan}, "beta must be"),
        ({"beta": math.inf}, "beta must be"),
        ({"n_latent": 0}, "layer sizes"),
        ({"hidden": ()}, "layer sizes"),
    ],
)
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_the_seed_alone_fixes_the_initial_weights():
    state = torch.get_rng_state()
    first, second, other = AutoEncoder(seed=1), AutoEncoder(seed=1), AutoEncoder(seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b, c in zip(first.parameters(), second.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b) and not torch.equal(a, c)


def _reference_terms(model: AutoEncoder, x: torch.Tensor, eps: torch.Tensor, partners: torch.Tensor | None) -> tuple[float, float]:
    """Distortion and rate recomputed by hand from the model's layers, with Python loops for the rate."""
    hidden = model.body(x)
    head = hidden @ model.heads.weight.T + model.heads.bias
    d = model.config.n_latent
    mu, logvar = head[:, :d], LOGVAR_LIMIT * torch.tanh(head[:, d:] / LOGVAR_LIMIT)
    distortions = []
    for k in range(eps.shape[0]):
        z = mu + (0.5 * logvar).exp() * eps[k]
        output = model.decoder(z)
        if model.config.distortion == "mse":
            distortions.append(((output - x) ** 2).sum(dim=1))
        else:
            p = torch.sigmoid(output)
            distortions.append(-(x * p.log() + (1 - x) * (1 - p).log()).sum(dim=1))
    distortion = float(torch.stack(distortions).mean())
    m, lv = mu.tolist(), logvar.tolist()
    if model.config.rate == "vae":
        rate = sum(0.5 * (m[i][e] ** 2 + math.exp(lv[i][e]) - lv[i][e] - 1) for i in range(len(m)) for e in range(d)) / len(m)
        return distortion, rate
    total = 0.0
    for i in range(len(m)):
        js = range(len(m)) if partners is None else partners[i].tolist()
        for k in range(eps.shape[0]):
            for j in js:
                total += sum(
                    0.5 * (m[j][e] - m[i][e] - math.exp(0.5 * lv[i][e]) * float(eps[k, i, e])) ** 2 / math.exp(lv[j][e]) for e in range(d)
                ) / (eps.shape[0] * len(js))
    return distortion, total / len(m)


@pytest.mark.parametrize(
    "rate, distortion, n_pairs, n_samples",
    [("ip", "mse", None, 1), ("ip", "mse", 3, 2), ("ip", "bernoulli", 1, 1), ("vae", "mse", 1, 3), ("vae", "bernoulli", 1, 1)],
)
def test_loss_matches_an_independent_recomputation(rate, distortion, n_pairs, n_samples):
    config = ModelConfig(n_inputs=3, hidden=(5,), n_latent=2, activation="tanh", distortion=distortion, rate=rate, beta=0.3)
    model = AutoEncoder(config, seed=4).double()
    x = torch.rand(6, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    generator = torch.Generator().manual_seed(6)
    replay = torch.Generator().set_state(generator.get_state())
    with torch.no_grad():
        terms = model.loss(x, generator=generator, n_pairs=n_pairs, n_samples=n_samples)
    eps = torch.randn((n_samples, 6, 2), generator=replay, dtype=F64)  # drawn first, then the partners
    partners = torch.randint(6, (6, n_pairs), generator=replay) if (rate == "ip" and n_pairs is not None) else None
    with torch.no_grad():
        expected_distortion, expected_rate = _reference_terms(model, x, eps, partners)
    assert float(terms.distortion) == pytest.approx(expected_distortion, rel=1e-10)
    assert float(terms.rate) == pytest.approx(expected_rate, rel=1e-10)
    assert float(terms.loss) == pytest.approx(expected_distortion + 0.3 * expected_rate, rel=1e-10)


def test_decode_gives_data_space_means():
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(7))
    mnist = AutoEncoder.from_preset("mnist")
    probabilities = mnist.decode(z)
    torch.testing.assert_close(probabilities, torch.sigmoid(mnist.decoder(z)), rtol=0, atol=0)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    toy = AutoEncoder(ModelConfig(hidden=(8,)))
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(toy.decode(z), toy.decoder(z), rtol=0, atol=0)


@pytest.mark.parametrize("rate", ["ip", "vae"])
@pytest.mark.parametrize("bias", [1e4, -1e4])
def test_logvar_stays_bounded_and_the_loss_finite(rate, bias):
    model = AutoEncoder(ModelConfig(hidden=(8,), n_latent=3, rate=rate))
    with torch.no_grad():
        model.heads.bias[3:] = bias  # the raw logvar
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(9))
    _, logvar = model.encode(x)
    assert (logvar.abs() <= LOGVAR_LIMIT).all()
    terms = model.loss(x, generator=torch.Generator().manual_seed(10), n_pairs=None)
    assert all(torch.isfinite(t) for t in terms)
