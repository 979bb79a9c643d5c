"""Tests of ipae.models: construction, the presets, seeding, and the loss against an independent recomputation.

The reference forward pass of the MLP presets multiplies the layers' weights by hand (x @ W^T + b, then
the activation by name), so it does not go through `Dense`'s fused autograd function. Networks of a
user's own (plain torch modules defined here) are called as they are, and what the model adds (the
log-variance bound, the reparameterisation, the distortion and the rate) is recomputed with Python
loops on floats.
"""

import ast
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import ipae
import ipae.models
from ipae.layers import Dense
from ipae.models import DISTORTIONS, LOGVAR_LIMIT, PRESETS, AutoEncoder, LossTerms, ModelSpec, Noise
from ipae.networks import MLP, Conv
from ipae.rates import InformationPotential, MonteCarlo, PairwiseKL, PriorKL, Rate

F64 = torch.float64
ACTIVATION_FUNCTIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, None: lambda t: t}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dense_layers(module: nn.Module) -> list[Dense]:
    return [m for m in module.modules() if isinstance(m, Dense)]


def _layers(module: nn.Module) -> list[tuple[tuple[int, ...], tuple[int, ...], str | None]]:
    """(weight shape, bias shape, activation) of each dense layer, in order."""
    return [(tuple(m.weight.shape), tuple(m.bias.shape), m.activation) for m in _dense_layers(module)]


def _apply(layers: list[Dense], x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = ACTIVATION_FUNCTIONS[layer.activation](x @ layer.weight.T + layer.bias)
    return x


def _bound(raw: torch.Tensor, limit: float | None) -> torch.Tensor:
    """limit * tanh(raw / limit), value by value with math.tanh."""
    if limit is None:
        return raw
    return torch.tensor([[limit * math.tanh(v / limit) for v in row] for row in raw.tolist()], dtype=raw.dtype)


def _reference_encode(model: AutoEncoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    head = _apply(_dense_layers(model.encoder), x.flatten(1))
    d = head.shape[1] // 2
    return head[:, :d], _bound(head[:, d:], model.logvar_limit)


def _reference_decoder_output(model: AutoEncoder, z: torch.Tensor) -> torch.Tensor:
    return _apply(_dense_layers(model.decoder), z)


def _distortion_by_loops(output: torch.Tensor, x: torch.Tensor, kind: str) -> list[float]:
    """Per-sample distortion over all of a sample's values: squared error, or the Bernoulli cross-entropy of sigmoid(output)."""
    values = []
    for row_out, row_x in zip(output.flatten(1).tolist(), x.flatten(1).tolist(), strict=True):
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


def _potential_rate_by_loops(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, partners: torch.Tensor | None) -> float:
    """Eq. 10 (batch mean): mean over i, k and partners j of 0.5 * sum_d (mu_j - z_ki)^2 / s_j^2."""
    m, lv, zs = mu.tolist(), logvar.tolist(), z.tolist()
    b, d = len(m), len(m[0])
    total = 0.0
    for i in range(b):
        js = list(range(b)) if partners is None else partners[i].tolist()
        per_sample = 0.0
        for k in range(len(zs)):
            for j in js:
                for c in range(d):
                    per_sample += 0.5 * (m[j][c] - zs[k][i][c]) ** 2 / math.exp(lv[j][c])
        total += per_sample / (len(zs) * len(js))
    return total / b


def _pairwise_kl_rate_by_loops(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """Kolchinsky & Tracey's bound: -mean_i log mean_j exp(-KL(p_i || p_j)), KL of diagonal Gaussians."""
    m, lv = mu.tolist(), logvar.tolist()
    b, d = len(m), len(m[0])
    total = 0.0
    for i in range(b):
        terms = []
        for j in range(b):
            kl = 0.5 * sum(
                lv[j][c] - lv[i][c] + (math.exp(lv[i][c]) + (m[i][c] - m[j][c]) ** 2) / math.exp(lv[j][c]) - 1.0 for c in range(d)
            )
            terms.append(math.exp(-kl))
        total += math.log(sum(terms) / b)
    return -total / b


def _codes(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps for every draw, value by value: (K, B, D)."""
    m, lv, e = mu.tolist(), logvar.tolist(), eps.tolist()
    return torch.tensor(
        [[[m[i][c] + math.exp(0.5 * lv[i][c]) * e[k][i][c] for c in range(len(m[0]))] for i in range(len(m))] for k in range(len(e))],
        dtype=F64,
    )


def _tiny(rate: Rate | str = "ip", distortion: str = "mse", *, hidden=(5,), activation: str = "tanh", beta: float = 0.3, seed: int = 4):
    return AutoEncoder.from_architecture(MLP((3,), hidden, 2, activation), seed=seed, rate=rate, distortion=distortion, beta=beta).double()


def _data(distortion: str, b: int = 6, seed: int = 5, shape: tuple[int, ...] = (3,)) -> torch.Tensor:
    x = torch.rand(b, *shape, generator=_generator(seed), dtype=F64)
    if distortion == "bernoulli":
        x.view(b, -1)[:, 0] = x.view(b, -1)[:, 0].round()  # binary pixels beside grey ones
    else:
        x = 2 * x - 1
    return x


def _rate(name: str, n_partners: int | None) -> Rate:
    return InformationPotential(n_partners) if name == "ip" else PriorKL()


# --- networks of one's own ----------------------------------------------------------------------------------------


class ImageEncoder(nn.Module):
    """(B, C, H, W) -> (mu, raw logvar), each (B, D): a convolution, then a linear layer."""

    def __init__(self, shape=(2, 3, 3), n_latent: int = 2, *, scale: float = 1.0) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(shape[0], 3, kernel_size=3, padding=1)
        self.linear = nn.Linear(3 * shape[1] * shape[2], 2 * n_latent)
        self.scale, self.n_latent = scale, n_latent

    def forward(self, x):
        out = self.linear(torch.tanh(self.convolution(x)).flatten(1))
        return out[:, : self.n_latent], self.scale * out[:, self.n_latent :]


class ImageDecoder(nn.Module):
    """(B, D) -> (B, C, H, W)."""

    def __init__(self, shape=(2, 3, 3), n_latent: int = 2) -> None:
        super().__init__()
        self.hidden, self.output = nn.Linear(n_latent, 7), nn.Linear(7, math.prod(shape))
        self.shape = shape

    def forward(self, z):
        return self.output(torch.relu(self.hidden(z))).view(z.shape[0], *self.shape)


def _image_networks(seed: int = 0, **options) -> tuple[nn.Module, nn.Module]:
    with torch.random.fork_rng(devices=[]):  # plain torch modules draw from the global generator
        torch.manual_seed(seed)
        return ImageEncoder(**options).double(), ImageDecoder().double()


# --- construction ------------------------------------------------------------------------------------------------


def test_rate_may_be_a_name_or_an_object():
    encoder, decoder = _image_networks()
    assert isinstance(AutoEncoder(encoder, decoder).rate, InformationPotential)  # the default, "ip"
    by_name = AutoEncoder(encoder, decoder, rate="vae")
    assert type(by_name.rate) is PriorKL and by_name.rate in list(by_name.modules())
    rate = InformationPotential(n_partners=8)
    model = AutoEncoder(encoder, decoder, rate=rate)
    assert model.rate is rate and model.rate.n_partners == 8
    assert (model.encoder, model.decoder, model.distortion, model.beta, model.logvar_limit, model.architecture) == (
        encoder,
        decoder,
        "mse",
        0.01,
        LOGVAR_LIMIT,
        None,
    )
    # "ip" by name is InformationPotential(n_partners=1): the same draws give the same loss, all pairs another
    x = _data("mse", shape=(2, 3, 3))
    losses = [
        AutoEncoder(encoder, decoder, rate=r).loss(x, generator=_generator(1)).loss
        for r in ("ip", InformationPotential(1), InformationPotential(None))
    ]
    assert torch.equal(losses[0], losses[1]) and not torch.equal(losses[0], losses[2])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rate": "gan"}, "unknown rate 'gan'"),
        ({"rate": "IP"}, "unknown rate"),
        ({"rate": 3}, "rate must be an ipae.rates.Rate or its name"),
        ({"rate": PriorKL}, "rate must be"),  # the class, not a rate
        ({"rate": nn.Identity()}, "rate must be"),
        ({"distortion": "l1"}, "unknown distortion 'l1'"),
        ({"distortion": "MSE"}, "unknown distortion"),
        ({"beta": -0.1}, "beta must be"),
        ({"beta": math.nan}, "beta must be"),
        ({"beta": math.inf}, "beta must be"),
        ({"beta": "0.1"}, "beta must be"),
        ({"beta": None}, "beta must be"),
        ({"beta": True}, "beta must be"),
        ({"logvar_limit": 0}, "logvar_limit must be"),
        ({"logvar_limit": -1.0}, "logvar_limit must be"),
        ({"logvar_limit": math.inf}, "logvar_limit must be"),
        ({"logvar_limit": math.nan}, "logvar_limit must be"),
        ({"logvar_limit": "15"}, "logvar_limit must be"),
        ({"logvar_limit": True}, "logvar_limit must be"),
    ],
)
def test_bad_options_are_refused(options, message):
    encoder, decoder = _image_networks()
    with pytest.raises(ValueError, match=message):
        AutoEncoder(encoder, decoder, **options)


def test_good_options_are_accepted():
    encoder, decoder = _image_networks()
    assert AutoEncoder(encoder, decoder, beta=0).beta == 0.0
    assert AutoEncoder(encoder, decoder, beta=2).beta == 2.0 and isinstance(AutoEncoder(encoder, decoder, beta=2).beta, float)
    assert AutoEncoder(encoder, decoder, logvar_limit=None).logvar_limit is None
    assert AutoEncoder(encoder, decoder, logvar_limit=3).logvar_limit == 3
    assert set(DISTORTIONS) == {"mse", "mean-mse", "bernoulli"}


# --- presets and architecture -------------------------------------------------------------------------------------


def test_presets_are_the_papers_models():
    assert PRESETS["toy"].architecture == MLP((2,), (2048,), 16, "relu")
    assert (PRESETS["toy"].distortion, PRESETS["toy"].beta) == ("mse", 0.01)
    assert PRESETS["mnist"].architecture == MLP((784,), (1024,), 8, "sigmoid")
    assert (PRESETS["mnist"].distortion, PRESETS["mnist"].beta) == ("bernoulli", 1e-5)
    assert PRESETS["conv"].architecture == Conv((1, 28, 28), 10, 32, 256)
    assert PRESETS["conv"].distortion == "bernoulli"


def test_toy_preset_builds_the_papers_architecture():
    model = AutoEncoder.from_preset("toy")
    assert model.architecture == PRESETS["toy"].architecture and isinstance(model.rate, InformationPotential)
    # x -relu-> 2048 -> (mu 16, sigma 16) ... z -relu-> 2048 -> 2
    assert _layers(model.encoder) == [((2048, 2), (2048,), "relu"), ((32, 2048), (32,), None)]
    assert _layers(model.decoder) == [((2048, 16), (2048,), "relu"), ((2, 2048), (2,), None)]
    assert not any(isinstance(m, nn.Linear | nn.ReLU | nn.Sigmoid | nn.Tanh) for m in model.modules())  # activations live in Dense
    # the activation is really a relu: the first layer's output is relu(x W^T + b) by hand
    x = torch.randn(5, 2, generator=_generator(1))
    layer = _dense_layers(model.encoder)[0]
    torch.testing.assert_close(layer(x), (x @ layer.weight.T + layer.bias).clamp(min=0))
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 16)
    assert model.decode(mu).shape == (5, 2)


def test_mnist_preset_builds_the_papers_architecture():
    model = AutoEncoder.from_preset("mnist")
    # x -sigmoid-> 1024 -> (mu 8, sigma 8) ... z -sigmoid-> 1024 -> 784, Bernoulli distortion (logits out)
    assert _layers(model.encoder) == [((1024, 784), (1024,), "sigmoid"), ((16, 1024), (16,), None)]
    assert _layers(model.decoder) == [((1024, 8), (1024,), "sigmoid"), ((784, 1024), (784,), None)]
    assert (model.distortion, model.beta) == ("bernoulli", 1e-5)
    z = torch.randn(3, 8, generator=_generator(2))
    first = _dense_layers(model.decoder)[0]
    hidden = 1.0 / (1.0 + torch.exp(-(z @ first.weight.T + first.bias)))  # the sigmoid by hand
    torch.testing.assert_close(first(z), hidden)


def test_conv_preset_takes_images():
    model = AutoEncoder.from_preset("conv", input_shape=(3, 32, 32), n_latent=4, rate="vae")
    assert model.architecture == Conv((3, 32, 32), 4) and (model.distortion, model.beta) == ("bernoulli", 1e-5)
    x = torch.rand(2, 3, 32, 32, generator=_generator(3))
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (2, 4)
    reconstruction = model.decode(mu)
    assert reconstruction.shape == x.shape and ((reconstruction > 0) & (reconstruction < 1)).all()  # probabilities


def test_from_preset_applies_overrides_and_refuses_unknown_names():
    model = AutoEncoder.from_preset("toy", rate="vae", beta=2.0, hidden=(16,), n_latent=3)
    assert isinstance(model.rate, PriorKL) and model.beta == 2.0 and model.distortion == "mse"
    assert model.architecture == MLP((2,), (16,), 3, "relu")
    assert AutoEncoder.from_preset("toy", rate="vae", hidden=(16,)).beta == 0.01  # the preset's beta, whatever the rate
    assert AutoEncoder.from_preset("toy", distortion="bernoulli", hidden=(16,)).distortion == "bernoulli"
    rate = InformationPotential(None)
    assert AutoEncoder.from_preset("toy", rate=rate, hidden=(16,)).rate is rate
    mnist = AutoEncoder.from_preset("mnist", rate="vae", beta=2.0, seed=3, hidden=(16,))
    again = AutoEncoder.from_architecture(MLP((784,), (16,), 8, "sigmoid"), seed=3, rate="vae", beta=2.0, distortion="bernoulli")
    for a, b in zip(mnist.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert PRESETS["toy"].architecture.hidden == (2048,) and PRESETS["toy"].beta == 0.01  # the preset itself is unchanged
    with pytest.raises(ValueError, match="unknown preset 'cifar'"):
        AutoEncoder.from_preset("cifar")
    with pytest.raises(ValueError, match="unknown rate"):
        AutoEncoder.from_preset("toy", rate="gan", hidden=(16,))
    with pytest.raises(ValueError, match="preset 'toy'.*depth"):
        AutoEncoder.from_preset("toy", depth=3)
    with pytest.raises(ValueError, match="H, W >= 16"):
        AutoEncoder.from_preset("conv", input_shape=(1, 8, 8))


def test_a_preset_is_a_model_description_that_builds_its_model():
    for name, preset in PRESETS.items():
        assert isinstance(preset, ModelSpec) and ModelSpec.from_dict(preset.to_dict()) == preset, name
        model = preset.build(seed=3)
        assert model.spec == preset, name  # the description of the model built is the preset
        again = AutoEncoder.from_preset(name, seed=3)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    assert PRESETS["toy"] == ModelSpec()  # the defaults are the paper's toy model


def test_a_model_description_round_trips_through_json_and_names_every_rate_option():
    import json

    spec = ModelSpec(MLP((5,), (7, 3), 2, "tanh"), "mc", {"n_samples": 4}, "bernoulli", 0.25, None, 0.5)
    record = json.loads(json.dumps(spec.to_dict()))
    assert record == {
        "architecture": {"kind": "mlp", "input_shape": [5], "hidden": [7, 3], "n_latent": 2, "activation": "tanh"},
        "rate": {"name": "mc", "n_samples": 4},
        "distortion": "bernoulli",
        "beta": 0.25,
        "logvar_limit": None,
        "distortion_weight": 0.5,
    }
    assert ModelSpec.from_dict(record) == spec and spec.build().spec == spec
    assert ModelSpec(rate="ip").rate_options == {"n_partners": 1}  # the default filled in: one description, one form
    assert ModelSpec(rate="vae").beta == PriorKL.default_beta and ModelSpec(rate="ip").beta == InformationPotential.default_beta
    own = ModelSpec(None, "mean-square", {"weight": 0.5}, beta=0.2)  # a rate of one's own, networks of one's own
    assert ModelSpec.from_dict(json.loads(json.dumps(own.to_dict()))) == own


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"architecture": "mlp"}, "architecture must be an ipae.networks.MLP or Conv, or None, got str"),
        ({"rate": "gan"}, "beta must be given for the rate 'gan'"),
        ({"rate": "ip", "rate_options": {"n_pairs": 2}}, "rate 'ip' has no option n_pairs"),
        ({"rate": 3}, "rate must be the name of a rate, got 3"),
        ({"distortion": "l1"}, "unknown distortion 'l1'"),
        ({"beta": -1.0}, "beta must be a finite number >= 0, got -1.0"),
        ({"logvar_limit": 0}, "logvar_limit must be a finite number > 0 or None, got 0"),
        ({"distortion_weight": float("nan")}, "distortion_weight must be a finite number > 0, got nan"),
    ],
)
def test_a_model_description_is_checked_when_made(fields, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        ModelSpec(**fields)


def test_from_dict_refuses_a_record_that_is_no_description():
    record = PRESETS["toy"].to_dict()
    for damaged, message in [
        ({key: value for key, value in record.items() if key != "rate"}, "KeyError: no 'rate'"),
        (record | {"rate": {"n_partners": 1}}, "KeyError: no 'name'"),
        (record | {"colour": "red"}, "unexpected keyword argument 'colour'"),
        (record | {"architecture": {"kind": "resnet"}}, "unknown architecture 'resnet'"),
        (record | {"beta": 10**400}, "OverflowError"),
        ([1, 2], "TypeError"),
    ]:
        with pytest.raises(ValueError, match=message):
            ModelSpec.from_dict(damaged)


def test_build_takes_the_networks_and_the_rate_the_description_names():
    from test_rates import MeanSquare

    own = ModelSpec(None, "mean-square", {"weight": 0.5}, beta=0.2)
    encoder, decoder = MLP(hidden=(4,)).build(torch.Generator())
    rate = MeanSquare(0.5)
    model = own.build(encoder=encoder, decoder=decoder, rate=rate)
    assert model.encoder is encoder and model.rate is rate and model.spec == own
    with pytest.raises(ValueError, match="has networks of its own; load it with encoder= and decoder="):
        own.build(rate=rate)
    with pytest.raises(ValueError, match="'mean-square'.* is not one of ipae's"):
        own.build(encoder=encoder, decoder=decoder)
    with pytest.raises(ValueError, match="saved with rate .*'weight': 0.5.*passed is .*'weight': 0.25"):
        own.build(encoder=encoder, decoder=decoder, rate=MeanSquare(0.25))
    with pytest.raises(ValueError, match=r"builds its own networks \(mlp\); pass no encoder or decoder"):
        PRESETS["toy"].build(encoder=encoder, decoder=decoder)


# --- seeding ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, overrides", [("toy", {"hidden": (16,)}), ("conv", {"width": 4, "fc": 8})])
def test_the_seed_alone_fixes_the_initial_weights_without_the_global_rng(preset, overrides):
    state = torch.get_rng_state()
    first, second, other = (AutoEncoder.from_preset(preset, seed=seed, **overrides) for seed in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), state)
    weights = list(zip(first.state_dict().values(), second.state_dict().values(), other.state_dict().values(), strict=True))
    assert len(weights) > 0
    for a, b, c in weights:
        assert torch.equal(a, b) and not torch.equal(a, c)
    # the seed's generator builds exactly these networks
    encoder, decoder = first.architecture.build(_generator(1))
    for a, b in zip(first.state_dict().values(), (*encoder.state_dict().values(), *decoder.state_dict().values()), strict=True):
        assert torch.equal(a, b)


# --- loss against an independent recomputation ------------------------------------------------------------------


LOSS_CASES = [
    # rate, n_partners, distortion, n_samples, hidden, activation
    ("ip", None, "mse", 1, (5,), "tanh"),
    ("ip", None, "mse", 3, (5,), "relu"),
    ("ip", 3, "mse", 2, (5,), "tanh"),
    ("ip", 1, "mse", 1, (70,), "relu"),  # 3 -> 70 is a "widening" Dense layer (bias folded into the matmul)
    ("ip", 1, "bernoulli", 1, (5,), "sigmoid"),
    ("ip", None, "bernoulli", 2, (4, 5), "sigmoid"),
    ("ip", 4, "bernoulli", 3, (5,), "tanh"),
    ("vae", None, "mse", 1, (5,), "tanh"),
    ("vae", None, "mse", 3, (70,), "relu"),
    ("vae", None, "bernoulli", 2, (5,), "sigmoid"),
]


@pytest.mark.parametrize("rate, n_partners, distortion, n_samples, hidden, activation", LOSS_CASES)
def test_loss_matches_an_independent_recomputation(rate, n_partners, distortion, n_samples, hidden, activation):
    model = _tiny(_rate(rate, n_partners), distortion, hidden=hidden, activation=activation, beta=0.3)
    x = _data(distortion)
    b = x.shape[0]
    generator = _generator(6)
    replay = torch.Generator().set_state(generator.get_state())
    terms = model.loss(x, generator=generator, n_samples=n_samples)
    assert isinstance(terms, LossTerms) and all(t.dtype == F64 and t.ndim == 0 for t in terms)

    # the same draws: eps (K, B, D) first, then (for "ip" with N_j partners) the partners (B, M)
    eps = torch.randn((n_samples, b, 2), generator=replay, dtype=F64)
    partners = torch.randint(b, (b, n_partners), generator=replay) if (rate == "ip" and n_partners is not None) else None
    assert torch.equal(generator.get_state(), replay.get_state())  # the loss drew exactly these, nothing more

    with torch.no_grad():
        mu, logvar = _reference_encode(model, x)
        torch.testing.assert_close(model.encode(x), (mu, logvar), rtol=1e-12, atol=1e-14)
        z = _codes(mu, logvar, eps)
        per_draw = [_distortion_by_loops(_reference_decoder_output(model, z[k]), x, distortion) for k in range(n_samples)]
    distortion_value = sum(sum(row) for row in per_draw) / (n_samples * b)  # mean over the K draws and the batch
    rate_value = _kl_rate_by_loops(mu, logvar) if rate == "vae" else _potential_rate_by_loops(mu, logvar, z, partners)

    expected = torch.tensor([distortion_value + 0.3 * rate_value, distortion_value, rate_value], dtype=F64)
    torch.testing.assert_close(torch.stack(list(terms)).detach(), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("distortion", ["mse", "bernoulli"])
@pytest.mark.parametrize("rate, n_partners, n_samples", [("ip", None, 1), ("ip", 3, 2), ("vae", None, 2)])
@pytest.mark.parametrize("logvar_limit", [LOGVAR_LIMIT, 0.5])
def test_loss_of_networks_of_ones_own_on_images_matches_an_independent_recomputation(distortion, rate, n_partners, n_samples, logvar_limit):
    encoder, decoder = _image_networks(seed=2, scale=10.0)  # raw logvar up to a few units: the 0.5 bound bites
    model = AutoEncoder(encoder, decoder, rate=_rate(rate, n_partners), distortion=distortion, beta=0.7, logvar_limit=logvar_limit)
    x = _data(distortion, b=5, shape=(2, 3, 3))  # (B, C, H, W)
    generator = _generator(7)
    replay = torch.Generator().set_state(generator.get_state())
    terms = model.loss(x, generator=generator, n_samples=n_samples)

    eps = torch.randn((n_samples, 5, 2), generator=replay, dtype=F64)
    partners = torch.randint(5, (5, n_partners), generator=replay) if n_partners is not None else None
    with torch.no_grad():
        mu, raw_logvar = encoder(x)  # the user's network, as the user wrote it
        logvar = _bound(raw_logvar, logvar_limit)
        if logvar_limit == 0.5:
            assert raw_logvar.abs().max() > 1.0  # the bound changes these values
        z = _codes(mu, logvar, eps)
        per_draw = [_distortion_by_loops(decoder(z[k]), x, distortion) for k in range(n_samples)]  # over C * H * W values
    distortion_value = sum(sum(row) for row in per_draw) / (n_samples * 5)
    rate_value = _kl_rate_by_loops(mu, logvar) if rate == "vae" else _potential_rate_by_loops(mu, logvar, z, partners)
    expected = torch.tensor([distortion_value + 0.7 * rate_value, distortion_value, rate_value], dtype=F64)
    torch.testing.assert_close(torch.stack(list(terms)).detach(), expected, rtol=1e-10, atol=0)


def test_without_a_logvar_limit_the_raw_logvar_is_used():
    encoder, decoder = _image_networks(seed=3, scale=100.0)  # raw logvar of tens: far beyond any bound
    x = _data("mse", b=4, shape=(2, 3, 3))
    with torch.no_grad():
        mu_raw, raw = encoder(x)
    assert raw.abs().max() > 40
    unbounded = AutoEncoder(encoder, decoder, logvar_limit=None, rate="vae")
    mu, logvar = unbounded.encode(x)
    assert torch.equal(mu, mu_raw) and torch.equal(logvar, raw)
    bounded = AutoEncoder(encoder, decoder, logvar_limit=4.0, rate="vae")
    torch.testing.assert_close(bounded.encode(x)[1], _bound(raw, 4.0), rtol=1e-14, atol=1e-14)
    assert bounded.encode(x)[1].abs().max() <= 4.0
    # the rate follows the logvar it was given: the closed-form KL of the raw values
    eps = torch.randn((1, 4, 2), generator=_generator(8), dtype=F64)
    assert float(unbounded.objective(x, eps).rate.detach()) == pytest.approx(_kl_rate_by_loops(mu_raw, raw), rel=1e-12)


@pytest.mark.parametrize("rate, n_partners", [("ip", None), ("ip", 2), ("vae", None)])
def test_loss_gradients_match_autograd_of_a_reference_loss(rate, n_partners):
    # Dense runs a hand-written backward; the reference goes through plain torch ops and autograd.
    model = _tiny(_rate(rate, n_partners), "bernoulli", hidden=(70,), activation="sigmoid", beta=0.7)
    x = _data("bernoulli", b=5)
    generator = _generator(9)
    replay = torch.Generator().set_state(generator.get_state())
    model.zero_grad()
    model.loss(x, generator=generator, n_samples=2).loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]

    eps = torch.randn((2, 5, 2), generator=replay, dtype=F64)
    partners = torch.randint(5, (5, n_partners), generator=replay) if n_partners is not None else torch.arange(5).expand(5, 5)
    model.zero_grad()
    head = _apply(_dense_layers(model.encoder), x)
    mu, logvar = head[:, :2], LOGVAR_LIMIT * torch.tanh(head[:, 2:] / LOGVAR_LIMIT)
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
    model = _tiny(InformationPotential(2), "mse")
    x = _data("mse")
    first = model.loss(x, generator=_generator(10), n_samples=2)
    again = model.loss(x, generator=_generator(10), n_samples=2)
    other = model.loss(x, generator=_generator(11), n_samples=2)
    assert torch.equal(torch.stack(list(first)), torch.stack(list(again)))
    assert not torch.equal(first.loss, other.loss)


def test_beta_zero_leaves_only_the_distortion():
    model = _tiny(InformationPotential(None), "mse", beta=0.0)
    terms = model.loss(_data("mse"), generator=_generator(12))
    assert float(terms.rate.detach()) > 0
    torch.testing.assert_close(terms.loss, terms.distortion, rtol=0, atol=0)


# --- noise and the objective ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate, shape", [(PriorKL(), None), (InformationPotential(3), (6, 3)), (MonteCarlo(4), (4, 6, 2))])
def test_draw_noise_draws_eps_then_the_rates_draws(rate, shape):
    model = _tiny(rate)
    generator = _generator(13)
    replay = torch.Generator().set_state(generator.get_state())
    noise = model.draw_noise((6, 2), generator=generator, n_samples=3)
    assert isinstance(noise, Noise)
    assert torch.equal(noise.eps, torch.randn((3, 6, 2), generator=replay, dtype=F64))  # in the parameters' dtype
    if shape is None:
        assert noise.draws is None
    else:
        assert noise.draws.shape == shape
        assert torch.equal(noise.draws, rate.sample(torch.Size((6, 2)), replay, F64))
    assert torch.equal(generator.get_state(), replay.get_state())
    assert model.draw_noise((6, 2), generator=_generator(13)).eps.shape == (1, 6, 2)


@pytest.mark.parametrize("rate", [InformationPotential(2), PriorKL(), MonteCarlo(2)])
def test_loss_is_the_objective_on_the_models_own_noise(rate):
    model = _tiny(rate, "bernoulli")
    x = _data("bernoulli")
    noise = model.draw_noise((6, 2), generator=_generator(14), n_samples=2)
    terms = model.objective(x, noise.eps, noise.draws)
    assert torch.equal(torch.stack(list(terms)), torch.stack(list(model.loss(x, generator=_generator(14), n_samples=2))))
    assert torch.equal(torch.stack(list(model(x, noise.eps, noise.draws))), torch.stack(list(terms)))  # forward = objective


class _Recording:
    """A gather that records what it is given and duplicates the batch along dim -2."""

    def __init__(self) -> None:
        self.seen = []

    def __call__(self, tensor):
        self.seen.append(tensor)
        return torch.cat([tensor, tensor], dim=-2)


@pytest.mark.parametrize("rate", [InformationPotential(None), PriorKL(), PairwiseKL()])
def test_gather_sees_mu_logvar_and_z_and_a_duplicated_batch_leaves_an_all_pairs_rate(rate):
    model = _tiny(rate, "mse", beta=0.5)
    x = _data("mse")
    eps = torch.randn((2, 6, 2), generator=_generator(15), dtype=F64)
    gather = _Recording()
    terms = model.objective(x, eps, gather=gather)
    plain = model.objective(x, eps)
    with torch.no_grad():
        mu, logvar = model.encode(x)
    assert len(gather.seen) == 3
    torch.testing.assert_close(gather.seen[0], mu, rtol=0, atol=0)
    torch.testing.assert_close(gather.seen[1], logvar, rtol=0, atol=0)
    torch.testing.assert_close(gather.seen[2], mu + (0.5 * logvar).exp() * eps, rtol=0, atol=0)  # z (K, B, D)
    # every sample twice: the all-pairs means, the KL mean and the batch mixture are those of the batch itself
    doubled = torch.cat([mu, mu]), torch.cat([logvar, logvar])
    if isinstance(rate, InformationPotential):
        expected = _potential_rate_by_loops(*doubled, _codes(mu, logvar, eps).repeat(1, 2, 1), None)
    elif isinstance(rate, PriorKL):
        expected = _kl_rate_by_loops(*doubled)
    else:
        expected = _pairwise_kl_rate_by_loops(*doubled)
    assert float(terms.rate.detach()) == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(terms.rate, plain.rate, rtol=1e-12, atol=0)
    assert torch.equal(terms.distortion, plain.distortion)  # the distortion is this share's
    torch.testing.assert_close(terms.loss, terms.distortion + 0.5 * terms.rate, rtol=1e-15, atol=0)


@pytest.mark.parametrize("rate", [InformationPotential(None), InformationPotential(3), PriorKL(), PairwiseKL()])
def test_gather_makes_the_rate_that_of_the_gathered_batch_and_leaves_the_distortion(rate):
    # a gather as under torch.distributed: this share's codes, then another process's (fixed here)
    model = _tiny(rate, "mse", beta=0.5)
    x = _data("mse", b=4)
    eps = torch.randn((2, 4, 2), generator=_generator(16), dtype=F64)
    other_mu = torch.randn(3, 2, generator=_generator(17), dtype=F64)
    other_logvar = 0.5 * torch.randn(3, 2, generator=_generator(18), dtype=F64)
    other_z = other_mu + (0.5 * other_logvar).exp() * torch.randn((2, 3, 2), generator=_generator(19), dtype=F64)
    shares = iter([other_mu, other_logvar, other_z])

    def gather(tensor):
        return torch.cat([tensor, next(shares)], dim=-2)

    draws = rate.sample(torch.Size((7, 2)), _generator(20), F64)  # (B_global, M) partners for InformationPotential(3)
    terms = model.objective(x, eps, draws, gather=gather)
    plain = model.objective(x, eps, rate.sample(torch.Size((4, 2)), _generator(20), F64))
    with torch.no_grad():
        mu, logvar = _reference_encode(model, x)
    union = torch.cat([mu, other_mu]), torch.cat([logvar, other_logvar])
    if isinstance(rate, InformationPotential):
        expected = _potential_rate_by_loops(*union, torch.cat([_codes(mu, logvar, eps), other_z], dim=1), draws)
    elif isinstance(rate, PriorKL):
        expected = _kl_rate_by_loops(*union)
    else:
        expected = _pairwise_kl_rate_by_loops(*union)
    assert float(terms.rate.detach()) == pytest.approx(expected, rel=1e-10)
    assert abs(float(terms.rate.detach()) - float(plain.rate.detach())) > 1e-3  # the other share counts
    assert torch.equal(terms.distortion, plain.distortion)
    torch.testing.assert_close(terms.loss, terms.distortion + 0.5 * terms.rate, rtol=1e-15, atol=0)


# --- decode ----------------------------------------------------------------------------------------------------


def test_decode_gives_probabilities_for_bernoulli():
    model = _tiny("ip", "bernoulli", activation="sigmoid")
    z = 3 * torch.randn(20, 2, generator=_generator(21), dtype=F64)
    probabilities = model.decode(z)
    expected = [[1.0 / (1.0 + math.exp(-o)) for o in row] for row in _reference_decoder_output(model, z).tolist()]
    torch.testing.assert_close(probabilities.detach(), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_decode_gives_the_raw_output_for_mse():
    model = _tiny("ip", "mse", activation="relu")
    z = 3 * torch.randn(20, 2, generator=_generator(22), dtype=F64)
    output = model.decode(z)
    torch.testing.assert_close(output, _reference_decoder_output(model, z), rtol=1e-12, atol=1e-14)
    assert (output < 0).any()  # not squashed into (0, 1)


# --- bounded logvar ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("rate, n_partners", [("ip", None), ("ip", 2), ("vae", None)])
@pytest.mark.parametrize("bias", [1e4, -1e4])
def test_logvar_stays_bounded_and_the_loss_finite(bias, rate, n_partners, dtype):
    model = AutoEncoder.from_preset("toy", hidden=(8,), n_latent=3, rate=_rate(rate, n_partners), seed=15).to(dtype)
    with torch.no_grad():
        model.encoder.heads.bias[3:] = bias  # the raw logvar half of the heads
    x = torch.randn(12, 2, generator=_generator(16), dtype=dtype)
    mu, logvar = model.encode(x)
    # LOGVAR_LIMIT * tanh(raw / LOGVAR_LIMIT): tanh saturates to +-1 in floating point, so the bound is reached, not passed
    assert ((logvar >= -LOGVAR_LIMIT) & (logvar <= LOGVAR_LIMIT)).all()
    torch.testing.assert_close(logvar, torch.full_like(logvar, math.copysign(LOGVAR_LIMIT, bias)), rtol=0, atol=0)
    terms = model.loss(x, generator=_generator(17), n_samples=2)
    assert all(bool(torch.isfinite(t)) for t in terms)
    terms.loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    if rate == "vae":  # the rate at the bound, by closed form
        expected = _kl_rate_by_loops(mu.double(), logvar.double())
        assert float(terms.rate.detach()) == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-10)


def test_logvar_is_the_identity_near_zero():
    model = _tiny("ip", "mse")
    with torch.no_grad():
        model.encoder.heads.weight.zero_()
        model.encoder.heads.bias.copy_(torch.tensor([0.5, -0.25, 0.01, -0.02], dtype=F64))
    mu, logvar = model.encode(_data("mse"))
    torch.testing.assert_close(mu, torch.tensor([[0.5, -0.25]], dtype=F64).expand(6, 2))
    expected = [LOGVAR_LIMIT * math.tanh(v / LOGVAR_LIMIT) for v in (0.01, -0.02)]
    torch.testing.assert_close(logvar, torch.tensor([expected], dtype=F64).expand(6, 2), rtol=1e-14, atol=0)
    torch.testing.assert_close(logvar, torch.tensor([[0.01, -0.02]], dtype=F64).expand(6, 2), rtol=1e-5, atol=0)


# --- bf16 --------------------------------------------------------------------------------------------------------


def test_under_bf16_autocast_the_layers_run_in_bf16_and_the_rate_and_reductions_in_float32():
    model = AutoEncoder.from_architecture(MLP((3,), (70,), 2, "relu"), seed=23, rate=PairwiseKL(), beta=0.3)
    x = torch.randn(16, 3, generator=_generator(24))
    eps = torch.randn((1, 16, 2), generator=_generator(25))
    with torch.no_grad():
        mu32, logvar32 = model.encode(x)
        fp32 = model.objective(x, eps)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mu, logvar = model.encode(x)
            terms = model.objective(x, eps)
            z = mu + (0.5 * logvar).exp() * eps[0]
            output = model.decoder(z)
    assert mu.dtype == logvar.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms)  # x's dtype
    assert output.dtype == torch.bfloat16 and not torch.equal(mu, mu32)  # the layers really ran in bf16
    torch.testing.assert_close(mu, mu32, rtol=5e-2, atol=5e-2)
    # the rate of the codes the bf16 layers gave, in full precision (pairwise KL runs matmuls: in bf16 it would be off by ~1e-2)
    assert float(terms.rate.detach()) == pytest.approx(_pairwise_kl_rate_by_loops(mu.double(), logvar.double()), rel=1e-5)
    # the distortion of the bf16 decoder output, reduced in float32
    expected = sum(_distortion_by_loops(output.double(), x.double(), "mse")) / 16
    assert float(terms.distortion.detach()) == pytest.approx(expected, rel=1e-5)
    # and the whole objective stays near the float32 one
    torch.testing.assert_close(torch.stack(list(terms)), torch.stack(list(fp32)), rtol=5e-2, atol=5e-2)


# --- what the model module depends on ----------------------------------------------------------------------------

FORBIDDEN = {"ipae.training", "ipae.checkpoint", "ipae.distributed"}


def test_the_model_module_imports_nothing_of_training_checkpoints_or_distribution():
    tree = ast.parse(Path(ipae.models.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            imported.add(node.module)
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    assert "ipae.rates" in imported  # the parse did see the module's imports
    assert not imported & FORBIDDEN, imported & FORBIDDEN
    assert not any(name.startswith(tuple(f"{f}." for f in FORBIDDEN)) for name in imported)


def test_importing_the_model_module_loads_nothing_of_training_checkpoints_or_distribution():
    # The package's __init__ imports everything (train included) for `import ipae`; stand in an empty
    # package so that only ipae.models and what it imports, directly or not, get loaded.
    code = (
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('ipae')\n"
        "package = types.ModuleType('ipae')\n"
        "package.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['ipae'] = package\n"
        "import ipae.models\n"
        "print(' '.join(sorted(name for name in sys.modules if name.startswith('ipae'))))\n"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert {"ipae.models", "ipae.rates", "ipae.networks"} <= loaded
    assert not loaded & FORBIDDEN, loaded & FORBIDDEN


# paper-exact mode: the objective as printed


def test_paper_exact_ipae_is_eq_11_as_printed():
    """Eq. 11 term by term in float64 with loops: 1 / (2 K N^2) sum_i sum_k sum_j (d_ik + beta * sum_d
    (mu_j - mu_i - sigma_i eps_k)^2 / sigma_j^2), d the mean squared error (section 4.1), all N partners."""
    torch.manual_seed(0)
    model = AutoEncoder.from_preset("toy", rate=InformationPotential(None), beta=0.3, paper_exact=True, hidden=(8,)).double()
    assert model.logvar_limit is None and model.distortion == "mean-mse" and model.distortion_weight == 0.5
    x = torch.randn(5, 2, dtype=torch.float64)
    eps = torch.randn(3, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        terms = model.objective(x, eps)
        mu, logvar = model.encoder(x)  # no bound: the raw linear log-variance
    sigma = (0.5 * logvar).exp()
    n, k = len(x), len(eps)
    total = 0.0
    for i in range(n):
        for s in range(k):
            z = mu[i] + sigma[i] * eps[s, i]
            with torch.no_grad():
                d = float(((model.decoder(z[None])[0] - x[i]) ** 2).mean())
            for j in range(n):
                total += d + 0.3 * float((((mu[j] - z) ** 2) / sigma[j] ** 2).sum())
    assert float(terms.loss) == pytest.approx(total / (2 * k * n * n), rel=1e-12)


def test_paper_exact_vae_keeps_eq_2_and_mnist_keeps_its_cross_entropy():
    vae = AutoEncoder.from_preset("toy", rate="vae", paper_exact=True)
    assert (vae.logvar_limit, vae.distortion, vae.distortion_weight) == (None, "mean-mse", 1.0)
    mnist = AutoEncoder.from_preset("mnist", rate="ip", paper_exact=True)
    assert (mnist.logvar_limit, mnist.distortion, mnist.distortion_weight) == (None, "bernoulli", 0.5)
    default = AutoEncoder.from_preset("toy")
    assert (default.logvar_limit, default.distortion, default.distortion_weight) == (LOGVAR_LIMIT, "mse", 1.0)
    with pytest.raises(ValueError, match="distortion_weight"):
        AutoEncoder(*MLP(hidden=(4,)).build(torch.Generator()), distortion_weight=0)


def test_paper_exact_models_save_and_load_as_they_are(tmp_path):
    model = AutoEncoder.from_preset("toy", rate="ip", paper_exact=True, hidden=(8,))
    ipae.save(model, tmp_path / "m")
    loaded = ipae.load(tmp_path / "m")
    assert (loaded.logvar_limit, loaded.distortion, loaded.distortion_weight) == (None, "mean-mse", 0.5)


# the mixture rates as training objectives


@pytest.mark.parametrize("name", ["pairwise-kl", "bhattacharyya", "jensen", "mc"])
@pytest.mark.parametrize("logvar_limit", [LOGVAR_LIMIT, 0.5])
def test_mixture_rates_in_the_loss_are_the_mixture_estimates_of_the_batch_codes(name, logvar_limit):
    """The rate inside the model's loss is ipae.mixture's I(x; z) of the batch's (bounded) Gaussians,
    with the same draws for "mc"; the loss is distortion + beta * that rate, and its gradient is finite."""
    from ipae.mixture import mutual_information
    from ipae.rates import create

    options = {"n_samples": 3} if name == "mc" else {}
    model = AutoEncoder.from_architecture(
        MLP((3,), (6,), 2, "tanh"), seed=4, rate=create(name, **options), beta=0.7, logvar_limit=logvar_limit
    ).double()
    with torch.no_grad():  # raw log-variances of a few units, so that the 0.5 bound bites
        model.encoder.heads.weight.mul_(8.0)
    x = torch.randn(9, 3, generator=_generator(8), dtype=F64)
    generator = _generator(9)
    replay = torch.Generator().set_state(generator.get_state())
    terms = model.loss(x, generator=generator)
    torch.randn((1, 9, 2), generator=replay, dtype=F64)  # the loss draws eps first, then the rate's draws
    with torch.no_grad():
        mu, logvar = model.encode(x)
        if logvar_limit == 0.5:
            assert logvar.abs().max() > 0.4  # the bound is in play
        expected = mutual_information(
            mu, logvar, method=name, generator=replay if name == "mc" else None, n_samples=options.get("n_samples", 1)
        )
    assert float(terms.rate.detach()) == pytest.approx(float(expected), rel=1e-12)
    assert float(terms.loss.detach()) == pytest.approx(float(terms.distortion.detach()) + 0.7 * float(expected), rel=1e-12)
    terms.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
