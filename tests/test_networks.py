"""Tests of ipae.networks: the MLP and Conv builders, their layer sizes, seeded initialisation and records.

The reference forward passes below recompute the networks in float64 from their weights with plain
functional calls (x @ W^T + b, `F.conv2d`, `F.conv_transpose2d`) and the activation by name, so they
check how the layers are wired (order, activations, flattening, output padding), not PyTorch's kernels.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ipae.layers import Dense
from ipae.networks import ARCHITECTURES, MLP, Conv, architecture_from_dict

F64 = torch.float64
SHAPES = [(1, 28, 28), (28, 28), (3, 32, 32), (3, 64, 64)]
ACTIVATION_FUNCTIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, None: lambda t: t}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _of_type(module: nn.Module, kind) -> list:
    return [m for m in module.modules() if isinstance(m, kind)]


def _small(kind: str, shape: tuple[int, ...]):
    """Small networks of each kind for `shape` (the Conv keeps its 4 stride-2 layers)."""
    return MLP(shape, hidden=(16,), n_latent=3) if kind == "mlp" else Conv(shape, n_latent=3, width=4, fc=8)


# --- shapes --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("shape", SHAPES)
def test_encoder_gives_codes_and_decoder_gives_back_the_input_shape(kind, shape):
    encoder, decoder = _small(kind, shape).build(_generator(0))
    x = torch.rand(5, *shape, generator=_generator(1))
    mu, raw_logvar = encoder(x)
    assert mu.shape == raw_logvar.shape == (5, 3)
    assert decoder(mu).shape == (5, *shape)
    assert torch.isfinite(decoder(mu)).all()


@pytest.mark.parametrize("shape", [(1, 17, 19), (16, 16), (2, 33, 47)])
def test_conv_restores_odd_and_unequal_image_sizes(shape):
    encoder, decoder = Conv(shape, n_latent=2, width=4, fc=8).build(_generator(0))
    mu, _ = encoder(torch.rand(2, *shape, generator=_generator(1)))
    assert decoder(mu).shape == (2, *shape)


# --- layer sizes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, grids", [((1, 28, 28), [(14, 14), (7, 7), (3, 3), (1, 1)]), ((3, 32, 32), [(16, 16), (8, 8), (4, 4), (2, 2)])]
)
def test_conv_has_the_layers_its_docstring_states(shape, grids):
    channels = shape[0]
    encoder, decoder = Conv(shape, n_latent=10).build(_generator(0))
    # encoder: 4 convolutions of 32 channels, kernel 4, stride 2, padding 1, each followed by a ReLU
    convolutions = _of_type(encoder, nn.Conv2d)
    assert [(c.in_channels, c.out_channels) for c in convolutions] == [(channels, 32), (32, 32), (32, 32), (32, 32)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convolutions)
    layers = list(encoder.convolutions)
    assert [type(m) for m in layers] == [nn.Conv2d, nn.ReLU] * 4
    # the spatial sizes the docstring states, seen by hooks on the convolutions
    seen = []
    hooks = [c.register_forward_hook(lambda m, i, out: seen.append(tuple(out.shape[-2:]))) for c in convolutions]
    encoder(torch.rand(2, *shape, generator=_generator(1)))
    for hook in hooks:
        hook.remove()
    assert seen == grids
    h, w = grids[-1]
    # fully connected 256, 256 (ReLU) and a linear layer to 2 * n_latent
    dense = [(m.in_features, m.out_features, m.activation) for m in _of_type(encoder, Dense)]
    assert dense == [(32 * h * w, 256, "relu"), (256, 256, "relu"), (256, 20, None)]
    # decoder: 256, 256, 32 * h * w (ReLU), then 4 transposed convolutions, ReLU except after the last
    dense = [(m.in_features, m.out_features, m.activation) for m in _of_type(decoder, Dense)]
    assert dense == [(10, 256, "relu"), (256, 256, "relu"), (256, 32 * h * w, "relu")]
    transposed = _of_type(decoder, nn.ConvTranspose2d)
    assert [(c.in_channels, c.out_channels) for c in transposed] == [(32, 32), (32, 32), (32, 32), (32, channels)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in transposed)
    assert [type(m) for m in decoder.deconvolutions] == [nn.ConvTranspose2d, nn.ReLU] * 3 + [nn.ConvTranspose2d]
    assert not _of_type(encoder, nn.Linear) and not _of_type(decoder, nn.Linear)


def test_mlp_has_the_layers_its_docstring_states():
    encoder, decoder = MLP((3, 4), hidden=(7, 5), n_latent=2, activation="tanh").build(_generator(0))
    dense = [(m.in_features, m.out_features, m.activation) for m in _of_type(encoder, Dense)]
    assert dense == [(12, 7, "tanh"), (7, 5, "tanh"), (5, 4, None)]  # input -> hidden... -> (mu, logvar)
    dense = [(m.in_features, m.out_features, m.activation) for m in _of_type(decoder, Dense)]
    assert dense == [(2, 7, "tanh"), (7, 5, "tanh"), (5, 12, None)]  # code -> hidden... -> output


def _reference_mlp(encoder, decoder, x, z, activation):
    layers = _of_type(encoder, Dense)
    h = x.flatten(1)
    for layer in layers:
        h = ACTIVATION_FUNCTIONS[layer.activation](h @ layer.weight.T + layer.bias)
    out = z
    for layer in _of_type(decoder, Dense):
        out = ACTIVATION_FUNCTIONS[layer.activation](out @ layer.weight.T + layer.bias)
    return h, out.reshape(z.shape[0], *x.shape[1:])


def test_mlp_matches_a_float64_reference():
    encoder, decoder = MLP((2, 3), hidden=(5,), n_latent=2, activation="sigmoid").build(_generator(4))
    encoder, decoder = encoder.double(), decoder.double()
    x = torch.randn(4, 2, 3, generator=_generator(5), dtype=F64)
    z = torch.randn(4, 2, generator=_generator(6), dtype=F64)
    with torch.no_grad():
        head, output = _reference_mlp(encoder, decoder, x, z, "sigmoid")
        mu, raw_logvar = encoder(x)
        torch.testing.assert_close(mu, head[:, :2], rtol=1e-12, atol=1e-14)  # mu first, then the raw logvar
        torch.testing.assert_close(raw_logvar, head[:, 2:], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(decoder(z), output, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(2, 17, 19), (16, 18)])
def test_conv_matches_a_float64_reference(shape):
    encoder, decoder = Conv(shape, n_latent=3, width=4, fc=8).build(_generator(7))
    encoder, decoder = encoder.double(), decoder.double()
    x = torch.randn(3, *shape, generator=_generator(8), dtype=F64)
    z = torch.randn(3, 3, generator=_generator(9), dtype=F64)
    with torch.no_grad():
        h = x.reshape(3, -1, *shape[-2:])  # (B, C, H, W)
        for conv in _of_type(encoder, nn.Conv2d):
            h = torch.relu(F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1))
        grid = h.shape[-2:]
        h = h.flatten(1)
        for layer in _of_type(encoder, Dense):
            h = ACTIVATION_FUNCTIONS[layer.activation](h @ layer.weight.T + layer.bias)
        mu, raw_logvar = encoder(x)
        torch.testing.assert_close(torch.cat([mu, raw_logvar], dim=1), h, rtol=1e-12, atol=1e-14)

        out = z
        for layer in _of_type(decoder, Dense):
            out = ACTIVATION_FUNCTIONS[layer.activation](out @ layer.weight.T + layer.bias)
        out = out.reshape(3, 4, *grid)
        # the sizes each transposed convolution must restore: the encoder's, in reverse
        sizes = [tuple(shape[-2:])]
        for _ in range(4):
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
        transposed = _of_type(decoder, nn.ConvTranspose2d)
        for index, conv in enumerate(transposed):
            target = sizes[3 - index]
            padding = (target[0] - 2 * out.shape[-2], target[1] - 2 * out.shape[-1])
            out = F.conv_transpose2d(out, conv.weight, conv.bias, stride=2, padding=1, output_padding=padding)
            if index < 3:
                out = torch.relu(out)
        torch.testing.assert_close(decoder(z), out.reshape(3, *shape), rtol=1e-12, atol=1e-14)
        assert (decoder(z) < 0).any()  # no ReLU after the last layer


# --- initialisation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "architecture", [MLP((3, 4), hidden=(16,), n_latent=2), Conv((2, 16, 16), n_latent=2, width=4, fc=8)], ids=["mlp", "conv"]
)
def test_weights_come_from_the_generator_alone(architecture):
    state = torch.get_rng_state()
    first, second, other = (architecture.build(_generator(seed)) for seed in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), state)  # torch's global generator is untouched
    pairs = list(zip(*(nn.ModuleList(networks).parameters() for networks in (first, second, other)), strict=True))
    assert len(pairs) > 0
    for a, b, c in pairs:
        assert torch.equal(a, b) and not torch.equal(a, c)


def _fan_in(module: nn.Module) -> int:
    """PyTorch's fan_in of a layer's weight: in_features, in_channels * k * k for Conv2d, and for
    ConvTranspose2d (weight (in, out, k, k)) out_channels * k * k."""
    if isinstance(module, Dense):
        return module.in_features
    k = module.kernel_size[0] * module.kernel_size[1]
    return (module.in_channels if isinstance(module, nn.Conv2d) else module.out_channels) * k


@pytest.mark.parametrize(
    "architecture", [MLP((5, 8), hidden=(64,), n_latent=4), Conv((2, 16, 16), n_latent=4, width=8, fc=64)], ids=["mlp", "conv"]
)
def test_initial_weights_are_uniform_within_pytorchs_default_bound(architecture):
    encoder, decoder = architecture.build(_generator(5))
    layers = [m for m in (*encoder.modules(), *decoder.modules()) if isinstance(m, (Dense, nn.Conv2d, nn.ConvTranspose2d))]
    assert len(layers) >= 4
    for layer in layers:
        bound = 1.0 / math.sqrt(_fan_in(layer))
        weight, bias = layer.weight.detach(), layer.bias.detach()
        assert float(weight.abs().max()) <= bound and float(bias.abs().max()) <= bound
        if weight.numel() >= 200:  # uniform(-bound, bound): the extremes come close, the spread is bound / sqrt(3)
            assert float(weight.abs().max()) > 0.9 * bound
            assert float(weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.15)
    # PyTorch's own layers of the same shapes have the same bound
    reference = nn.Conv2d(2, 8, 4, stride=2, padding=1), nn.ConvTranspose2d(8, 2, 4, stride=2, padding=1)
    for layer in reference:
        bound = 1.0 / math.sqrt(_fan_in(layer))
        assert float(layer.weight.detach().abs().max()) <= bound and float(layer.weight.detach().abs().max()) > 0.8 * bound


# --- checks --------------------------------------------------------------------------------------------------------


def test_mlp_check_input_takes_any_shape_of_as_many_values():
    architecture = MLP((1, 28, 28), hidden=(16,))
    for shape in [(1, 28, 28), (28, 28), (784,)]:
        architecture.check_input(shape)
    for shape in [(27, 28), (2, 28, 28), (785,)]:
        with pytest.raises(ValueError, match=r"takes samples of shape \(1, 28, 28\)"):
            architecture.check_input(shape)


def test_conv_check_input_takes_its_own_shape_only():
    Conv((3, 32, 32)).check_input((3, 32, 32))
    Conv((28, 28)).check_input((28, 28))
    for shape in [(1, 32, 32), (3, 32, 31), (32, 32, 3), (3 * 32 * 32,)]:
        with pytest.raises(ValueError, match=r"takes images of shape \(3, 32, 32\)"):
            Conv((3, 32, 32)).check_input(shape)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Conv((1, 15, 28)), "H, W >= 16"),
        (lambda: Conv((28, 15)), "H, W >= 16"),
        (lambda: Conv((1, 1, 28, 28)), "H, W >= 16"),
        (lambda: Conv((784,)), "H, W >= 16"),
        (lambda: Conv(()), "non-empty"),
        (lambda: Conv((0, 28, 28)), "input_shape"),
        (lambda: Conv((1, 0, 28)), "input_shape"),
        (lambda: Conv(n_latent=0), "n_latent"),
        (lambda: Conv(width=0), "width"),
        (lambda: Conv(fc=-1), "fc"),
        (lambda: Conv((1, 28.0, 28)), "input_shape"),
        (lambda: MLP((0,)), "input_shape"),
        (lambda: MLP((3, 0)), "input_shape"),
        (lambda: MLP(()), "input_shape"),
        (lambda: MLP(hidden=()), "hidden"),
        (lambda: MLP(hidden=(4, 0)), "hidden"),
        (lambda: MLP(n_latent=0), "n_latent"),
        (lambda: MLP(n_latent=True), "n_latent"),
        (lambda: MLP(activation="gelu"), "unknown activation 'gelu'"),
        (lambda: MLP(activation=None), "unknown activation"),
    ],
)
def test_invalid_architectures_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# --- records -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "architecture", [MLP(), MLP((28, 28), (64, 32), 8, "sigmoid"), Conv(), Conv((28, 28), 4, 16, 64), Conv((3, 64, 64))], ids=str
)
def test_to_dict_round_trips_through_json(architecture):
    record = json.loads(json.dumps(architecture.to_dict()))
    assert record["kind"] in ARCHITECTURES
    rebuilt = architecture_from_dict(record)
    assert rebuilt == architecture and type(rebuilt) is type(architecture)
    assert isinstance(rebuilt.input_shape, tuple)


def test_records_of_unknown_kinds_or_fields_are_refused():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        architecture_from_dict({"kind": "resnet"})
    with pytest.raises(ValueError, match="unknown architecture None"):
        architecture_from_dict(MLP().to_dict() | {"kind": None})
    record = MLP().to_dict()
    del record["kind"]
    with pytest.raises(ValueError, match="unknown architecture"):
        architecture_from_dict(record)
    with pytest.raises(ValueError, match="not a valid conv architecture"):
        architecture_from_dict(Conv().to_dict() | {"depth": 5})
    with pytest.raises(ValueError, match="H, W >= 16"):
        architecture_from_dict(Conv().to_dict() | {"input_shape": [1, 8, 8]})
    record = Conv().to_dict()
    architecture_from_dict(record)
    assert record["kind"] == "conv"  # the caller's record is left as it was
