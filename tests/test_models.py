"""Tests of ipae.models: configuration, the paper's presets, seeding, and the loss against an independent recomputation.

The reference forward pass below multiplies the layers' weights by hand (x @ W^T + b, then the activation by
name), so it does not go through `Dense`'s fused autograd function; the rate terms are recomputed with Python
loops on floats.
"""

import math

import pytest
import torch
from torch import nn

from ipae.layers import Dense
from ipae.models import LOGVAR_LIMIT, PRESETS, AutoEncoder, LossTerms, ModelConfig

F64 = torch.float64
ACTIVATION_FUNCTIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, None: lambda t: t}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dense_layers(module: nn.Module) -> list[Dense]:
    return [m for m in module.modules() if isinstance(m, Dense)]


def _architecture(module: nn.Module) -> list[tuple[tuple[int, ...], tuple[int, ...], str | None]]:
    """(weight shape, bias shape, activation) of each dense layer, in order."""
    return [(tuple(m.weight.shape), tuple(m.bias.shape), m.activation) for m in _dense_layers(module)]


def _apply(layers: list[Dense], x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = ACTIVATION_FUNCTIONS[layer.activation](x @ layer.weight.T + layer.bias)
    return x


def _reference_encode(model: AutoEncoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    head = _apply(_dense_layers(model.body) + _dense_layers(model.heads), x)
    d = model.config.n_latent
    return head[:, :d], LOGVAR_LIMIT * torch.tanh(head[:, d:] / LOGVAR_LIMIT)


def _reference_decoder_output(model: AutoEncoder, z: torch.Tensor) -> torch.Tensor:
    return _apply(_dense_layers(model.decoder), z)


def _distortion_by_loops(output: torch.Tensor, x: torch.Tensor, kind: str) -> list[float]:
    """Per-sample distortion: squared error summed over dims, or the Bernoulli cross-entropy of sigmoid(output)."""
    values = []
    for row_out, row_x in zip(output.tolist(), x.tolist(), strict=True):
        total = 0.0
        for o, t in zip(row_out, row_x, strict=True):
            if kind == "mse":
                total += (o - t) ** 2
            else:
                p = 1.0 / (1.0 + math.exp(-o))
                total += -(t * math.log(p) + (1.0 - t) * math.log(1.0 - p))
        values.append(total)
    return values


def _kl_rate_by_loops(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """Eq. 5: mean over i of 0.5 * sum_d (mu^2 + s^2 - log s^2 - 1)."""
    m, lv = mu.tolist(), logvar.tolist()
    return sum(0.5 * (m[i][c] ** 2 + math.exp(lv[i][c]) - lv[i][c] - 1.0) for i in range(len(m)) for c in range(len(m[0]))) / len(m)


def _potential_rate_by_loops(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, partners: torch.Tensor | None) -> float:
    """Eq. 10 (batch mean): mean over i, k and partners j of 0.5 * sum_d (mu_j - mu_i - s_i eps_ki)^2 / s_j^2."""
    m, lv, e = mu.tolist(), logvar.tolist(), eps.tolist()
    b, d = len(m), len(m[0])
    total = 0.0
    for i in range(b):
        js = list(range(b)) if partners is None else partners[i].tolist()
        per_sample = 0.0
        for k in range(len(e)):
            for j in js:
                for c in range(d):
                    per_sample += 0.5 * (m[j][c] - m[i][c] - math.exp(0.5 * lv[i][c]) * e[k][i][c]) ** 2 / math.exp(lv[j][c])
        total += per_sample / (len(e) * len(js))
    return total / b


def _tiny(rate: str = "ip", distortion: str = "mse", *, hidden=(5,), activation: str = "tanh", beta: float = 0.3, seed: int = 4):
    config = ModelConfig(n_inputs=3, hidden=hidden, n_latent=2, activation=activation, distortion=distortion, rate=rate, beta=beta)
    return AutoEncoder(config, seed=seed).double()


def _data(distortion: str, b: int = 6, seed: int = 5) -> torch.Tensor:
    x = torch.rand(b, 3, generator=_generator(seed), dtype=F64)
    if distortion == "bernoulli":
        x[:, 0] = x[:, 0].round()  # binary pixels beside grey ones
    else:
        x = 2 * x - 1
    return x


# --- ModelConfig ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"rate": "gan"}, "unknown rate"),
        ({"rate": "IP"}, "unknown rate"),
        ({"distortion": "l1"}, "unknown distortion"),
        ({"activation": "gelu"}, "unknown activation"),
        ({"beta": -0.1}, "beta must be"),
        ({"beta": math.nan}, "beta must be"),
        ({"beta": math.inf}, "beta must be"),
        ({"beta": -math.inf}, "beta must be"),
        ({"beta": "0.1"}, "beta must be"),
        ({"n_inputs": 0}, "layer sizes"),
        ({"n_latent": 0}, "layer sizes"),
        ({"n_latent": -3}, "layer sizes"),
        ({"hidden": (0,)}, "layer sizes"),
        ({"hidden": (4, 0)}, "layer sizes"),
        ({"hidden": ()}, "layer sizes"),
    ],
)
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_good_configs_are_accepted():
    assert ModelConfig(beta=0.0).beta == 0.0
    assert ModelConfig(beta=2).beta == 2
    config = ModelConfig(hidden=[4, 3], rate="vae", distortion="bernoulli", activation="sigmoid")
    assert config.hidden == (4, 3)  # a list becomes a tuple
    assert config.to_dict()["hidden"] == [4, 3]


# --- presets and architecture -------------------------------------------------------------------------------------


def test_toy_preset_is_the_papers_architecture():
    config = PRESETS["toy"]
    assert (config.n_inputs, config.hidden, config.n_latent, config.activation, config.distortion) == (2, (2048,), 16, "relu", "mse")
    model = AutoEncoder.from_preset("toy")
    # x -relu-> 2048 -> (mu 16, sigma 16) ... z -relu-> 2048 -> 2
    assert _architecture(model.body) == [((2048, 2), (2048,), "relu")]
    assert _architecture(model.heads) == [((32, 2048), (32,), None)]
    assert _architecture(model.decoder) == [((2048, 16), (2048,), "relu"), ((2, 2048), (2,), None)]
    assert not any(isinstance(m, nn.Linear | nn.ReLU | nn.Sigmoid | nn.Tanh) for m in model.modules())  # activations live in Dense
    # the activation is really a relu: the body's output is relu(x W^T + b) by hand
    x = torch.randn(5, 2, generator=_generator(1))
    layer = model.body[0]
    torch.testing.assert_close(model.body(x), (x @ layer.weight.T + layer.bias).clamp(min=0))
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 16)


def test_mnist_preset_is_the_papers_architecture():
    config = PRESETS["mnist"]
    assert (config.n_inputs, config.hidden, config.n_latent, config.activation, config.distortion) == (
        784,
        (1024,),
        8,
        "sigmoid",
        "bernoulli",
    )
    model = AutoEncoder.from_preset("mnist")
    # x -sigmoid-> 1024 -> (mu 8, sigma 8) ... z -sigmoid-> 1024 -> 784, Bernoulli distortion (logits out)
    assert _architecture(model.body) == [((1024, 784), (1024,), "sigmoid")]
    assert _architecture(model.heads) == [((16, 1024), (16,), None)]
    assert _architecture(model.decoder) == [((1024, 8), (1024,), "sigmoid"), ((784, 1024), (784,), None)]
    z = torch.randn(3, 8, generator=_generator(2))
    first = model.decoder[0][0]
    hidden = 1.0 / (1.0 + torch.exp(-(z @ first.weight.T + first.bias)))  # the sigmoid by hand
    torch.testing.assert_close(model.decoder[0](z), hidden)


def test_from_preset_applies_overrides_and_refuses_unknown_names():
    model = AutoEncoder.from_preset("toy", rate="vae", beta=2.0)
    assert model.config == ModelConfig(rate="vae", beta=2.0)
    assert (model.config.rate, model.config.beta, model.config.hidden, model.config.n_latent) == ("vae", 2.0, (2048,), 16)
    mnist = AutoEncoder.from_preset("mnist", rate="vae", beta=2.0, seed=3)
    assert mnist.config == ModelConfig(784, (1024,), 8, "sigmoid", "bernoulli", "vae", 2.0)
    for a, b in zip(mnist.parameters(), AutoEncoder(mnist.config, seed=3).parameters(), strict=True):
        assert torch.equal(a, b)
    assert PRESETS["toy"].rate == "ip" and PRESETS["toy"].beta == 0.01  # the preset itself is unchanged
    with pytest.raises(ValueError, match="unknown preset"):
        AutoEncoder.from_preset("cifar")
    with pytest.raises(ValueError, match="unknown rate"):
        AutoEncoder.from_preset("toy", rate="gan")


# --- seeding ----------------------------------------------------------------------------------------------------


def test_the_seed_alone_fixes_the_initial_weights_without_the_global_rng():
    config = ModelConfig(hidden=(70,), n_latent=3)
    state = torch.get_rng_state()
    first, second, other = AutoEncoder(config, seed=1), AutoEncoder(config, seed=1), AutoEncoder(config, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b, c in zip(first.parameters(), second.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b) and not torch.equal(a, c)
    # PyTorch's default Linear init: uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)]
    for layer in _dense_layers(first):
        bound = 1.0 / math.sqrt(layer.in_features)
        assert float(layer.weight.detach().abs().max()) <= bound and float(layer.bias.detach().abs().max()) <= bound
        assert float(layer.weight.detach().abs().max()) > 0.5 * bound


def test_reset_parameters_reproduces_the_seeded_init():
    config = ModelConfig(hidden=(6,), n_latent=2)
    model = AutoEncoder(config, seed=7)
    fresh = [p.clone() for p in model.parameters()]
    model.reset_parameters(_generator(8))
    assert not torch.equal(next(model.parameters()), fresh[0])
    model.reset_parameters(_generator(7))
    for a, b in zip(model.parameters(), fresh, strict=True):
        assert torch.equal(a, b)


# --- loss against an independent recomputation ------------------------------------------------------------------


LOSS_CASES = [
    # rate, distortion, n_pairs, n_samples, hidden, activation
    ("ip", "mse", None, 1, (5,), "tanh"),
    ("ip", "mse", None, 3, (5,), "relu"),
    ("ip", "mse", 3, 2, (5,), "tanh"),
    ("ip", "mse", 1, 1, (70,), "relu"),  # 3 -> 70 is a "widening" Dense layer (bias folded into the matmul)
    ("ip", "bernoulli", 1, 1, (5,), "sigmoid"),
    ("ip", "bernoulli", None, 2, (4, 5), "sigmoid"),
    ("ip", "bernoulli", 4, 3, (5,), "tanh"),
    ("vae", "mse", None, 1, (5,), "tanh"),
    ("vae", "mse", 1, 3, (70,), "relu"),
    ("vae", "bernoulli", 2, 2, (5,), "sigmoid"),
]


@pytest.mark.parametrize("rate, distortion, n_pairs, n_samples, hidden, activation", LOSS_CASES)
def test_loss_matches_an_independent_recomputation(rate, distortion, n_pairs, n_samples, hidden, activation):
    model = _tiny(rate, distortion, hidden=hidden, activation=activation, beta=0.3)
    x = _data(distortion)
    b = x.shape[0]
    generator = _generator(6)
    replay = torch.Generator().set_state(generator.get_state())
    terms = model.loss(x, generator=generator, n_pairs=n_pairs, n_samples=n_samples)
    assert isinstance(terms, LossTerms) and all(t.dtype == F64 and t.ndim == 0 for t in terms)

    # the same draws: eps (K, B, D) first, then (for "ip" with N_j partners) the partners (B, M)
    eps = torch.randn((n_samples, b, 2), generator=replay, dtype=F64)
    partners = torch.randint(b, (b, n_pairs), generator=replay) if (rate == "ip" and n_pairs is not None) else None
    assert torch.equal(generator.get_state(), replay.get_state())  # the loss drew exactly these, nothing more

    with torch.no_grad():
        mu, logvar = _reference_encode(model, x)
        torch.testing.assert_close(model.encode(x), (mu, logvar), rtol=1e-12, atol=1e-14)
        per_draw = []
        for k in range(n_samples):
            z = mu + (0.5 * logvar).exp() * eps[k]
            per_draw.append(_distortion_by_loops(_reference_decoder_output(model, z), x, distortion))
    distortion_value = sum(sum(row) for row in per_draw) / (n_samples * b)  # mean over the K draws and the batch
    rate_value = _kl_rate_by_loops(mu, logvar) if rate == "vae" else _potential_rate_by_loops(mu, logvar, eps, partners)

    expected = torch.tensor([distortion_value + 0.3 * rate_value, distortion_value, rate_value], dtype=F64)
    torch.testing.assert_close(torch.stack(list(terms)).detach(), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("rate, n_pairs", [("ip", None), ("ip", 2), ("vae", 1)])
def test_loss_gradients_match_autograd_of_a_reference_loss(rate, n_pairs):
    # Dense runs a hand-written backward; the reference goes through plain torch ops and autograd.
    model = _tiny(rate, "bernoulli", hidden=(70,), activation="sigmoid", beta=0.7)
    x = _data("bernoulli", b=5)
    generator = _generator(9)
    replay = torch.Generator().set_state(generator.get_state())
    model.zero_grad()
    model.loss(x, generator=generator, n_pairs=n_pairs, n_samples=2).loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]

    eps = torch.randn((2, 5, 2), generator=replay, dtype=F64)
    partners = torch.randint(5, (5, n_pairs), generator=replay) if n_pairs is not None else torch.arange(5).expand(5, 5)
    model.zero_grad()
    mu, logvar = _reference_encode(model, x)
    z = mu + (0.5 * logvar).exp() * eps  # (K, B, D)
    p = torch.sigmoid(_reference_decoder_output(model, z.reshape(-1, 2)))
    targets = x.repeat(2, 1)
    distortion = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum(dim=1).mean()
    if rate == "vae":
        rate_value = 0.5 * (mu.square() + logvar.exp() - logvar - 1).sum(dim=1).mean()
    else:
        rate_value = 0.5 * ((mu[partners][None] - z[:, :, None]).square() / logvar.exp()[partners][None]).sum(dim=3).mean()
    (distortion + 0.7 * rate_value).backward()
    for got, param in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(got, param.grad, rtol=1e-8, atol=1e-12)


def test_loss_is_reproducible_from_the_generator_and_depends_on_it():
    model = _tiny("ip", "mse")
    x = _data("mse")
    first = model.loss(x, generator=_generator(10), n_pairs=2, n_samples=2)
    again = model.loss(x, generator=_generator(10), n_pairs=2, n_samples=2)
    other = model.loss(x, generator=_generator(11), n_pairs=2, n_samples=2)
    assert torch.equal(torch.stack(list(first)), torch.stack(list(again)))
    assert not torch.equal(first.loss, other.loss)


def test_beta_zero_leaves_only_the_distortion():
    model = _tiny("ip", "mse", beta=0.0)
    terms = model.loss(_data("mse"), generator=_generator(12), n_pairs=None)
    assert float(terms.rate.detach()) > 0
    torch.testing.assert_close(terms.loss, terms.distortion, rtol=0, atol=0)


# --- decode ----------------------------------------------------------------------------------------------------


def test_decode_gives_probabilities_for_bernoulli():
    model = _tiny("ip", "bernoulli", activation="sigmoid")
    z = 3 * torch.randn(20, 2, generator=_generator(13), dtype=F64)
    probabilities = model.decode(z)
    expected = [[1.0 / (1.0 + math.exp(-o)) for o in row] for row in _reference_decoder_output(model, z).tolist()]
    torch.testing.assert_close(probabilities.detach(), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_decode_gives_the_raw_output_for_mse():
    model = _tiny("ip", "mse", activation="relu")
    z = 3 * torch.randn(20, 2, generator=_generator(14), dtype=F64)
    output = model.decode(z)
    torch.testing.assert_close(output, _reference_decoder_output(model, z), rtol=1e-12, atol=1e-14)
    assert (output < 0).any()  # not squashed into (0, 1)


# --- bounded logvar ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("rate, n_pairs", [("ip", None), ("ip", 2), ("vae", 1)])
@pytest.mark.parametrize("bias", [1e4, -1e4])
def test_logvar_stays_bounded_and_the_loss_finite(bias, rate, n_pairs, dtype):
    model = AutoEncoder(ModelConfig(hidden=(8,), n_latent=3, rate=rate), seed=15).to(dtype)
    with torch.no_grad():
        model.heads.bias[3:] = bias  # the raw logvar half of the heads
    x = torch.randn(12, 2, generator=_generator(16), dtype=dtype)
    mu, logvar = model.encode(x)
    # LOGVAR_LIMIT * tanh(raw / LOGVAR_LIMIT): tanh saturates to +-1 in floating point, so the bound is reached, not passed
    assert ((logvar >= -LOGVAR_LIMIT) & (logvar <= LOGVAR_LIMIT)).all()
    torch.testing.assert_close(logvar, torch.full_like(logvar, math.copysign(LOGVAR_LIMIT, bias)), rtol=0, atol=0)
    terms = model.loss(x, generator=_generator(17), n_pairs=n_pairs, n_samples=2)
    assert all(bool(torch.isfinite(t)) for t in terms)
    terms.loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    if rate == "vae":  # the rate at the bound, by closed form
        expected = _kl_rate_by_loops(mu.double(), logvar.double())
        assert float(terms.rate.detach()) == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-10)


def test_logvar_is_the_identity_near_zero():
    model = _tiny("ip", "mse")
    with torch.no_grad():
        model.heads.weight.zero_()
        model.heads.bias.copy_(torch.tensor([0.5, -0.25, 0.01, -0.02], dtype=F64))
    mu, logvar = model.encode(_data("mse"))
    torch.testing.assert_close(mu, torch.tensor([[0.5, -0.25]], dtype=F64).expand(6, 2))
    expected = [LOGVAR_LIMIT * math.tanh(v / LOGVAR_LIMIT) for v in (0.01, -0.02)]
    torch.testing.assert_close(logvar, torch.tensor([expected], dtype=F64).expand(6, 2), rtol=1e-14, atol=0)
    torch.testing.assert_close(logvar, torch.tensor([[0.01, -0.02]], dtype=F64).expand(6, 2), rtol=1e-5, atol=0)
