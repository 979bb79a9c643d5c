"""Encoder and decoder networks: the paper's MLPs and a convolutional pair for images, as builders.

The contract an `AutoEncoder` asks of its networks (any `nn.Module` meets it, these are examples):
- encoder: x (B, ...) -> (mu, raw_logvar), each (B, D);
- decoder: z (B, D) -> an output shaped like x (logits for the "bernoulli" distortion).

An architecture is a frozen dataclass that builds the pair from a `torch.Generator`, so that the
initial weights are drawn without global random state; `to_dict` and `ARCHITECTURES` let a saved
model be built again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from ipae._validation import check_positive_ints
from ipae.layers import ACTIVATIONS, Dense

__all__: list[str] = []  # users reach its public names through the package: ipae.MLP, ipae.Conv


def _positive_sizes(**sizes: tuple[int, ...]) -> None:
    for name, values in sizes.items():
        check_positive_ints(name, values)


class _MLPEncoder(nn.Module):
    def __init__(self, sizes: tuple[int, ...], n_latent: int, activation: str, generator: torch.Generator) -> None:
        super().__init__()
        self.body = nn.Sequential(*(Dense(a, b, activation, generator=generator) for a, b in pairwise(sizes)))
        self.heads = Dense(sizes[-1], 2 * n_latent, generator=generator)  # mu and the raw logvar, side by side

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw_logvar = self.heads(self.body(x.flatten(1))).chunk(2, dim=1)  # (B, D) each
        return mu, raw_logvar


class _MLPDecoder(nn.Module):
    def __init__(self, sizes: tuple[int, ...], output_shape: tuple[int, ...], activation: str, generator: torch.Generator) -> None:
        super().__init__()
        self.hidden = nn.Sequential(*(Dense(a, b, activation, generator=generator) for a, b in pairwise(sizes)))
        self.output = Dense(sizes[-1], math.prod(output_shape), generator=generator)
        self.output_shape = output_shape

    def forward(self, z: Tensor) -> Tensor:
        return self.output(self.hidden(z)).view(z.shape[0], *self.output_shape)


@dataclass(frozen=True)
class MLP:
    """The paper's fully connected pair: input -> hidden... -> (mu, logvar) and code -> hidden... -> output,
    the activation after every hidden layer. Inputs of any shape are flattened; the output takes their shape.

    Toy (section 4.1): 2 -relu-> 2048 -> (16, 16); MNIST (section 4.2): 784 -sigmoid-> 1024 -> (8, 8).
    """

    input_shape: tuple[int, ...] = (2,)  # a sample's shape; the toy data is 2-D
    hidden: tuple[int, ...] = (2048,)  # one hidden layer each in encoder and decoder, as in the paper
    n_latent: int = 16  # size of mu and of sigma (section 4.1)
    activation: str = "relu"  # section 4.1; the MNIST preset uses sigmoid

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        _positive_sizes(input_shape=self.input_shape, hidden=self.hidden, n_latent=(self.n_latent,))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {', '.join(sorted(ACTIVATIONS))}")

    def check_input(self, shape: tuple[int, ...]) -> None:
        """ValueError unless a sample of `shape` fits (any shape of as many values)."""
        if math.prod(shape) != math.prod(self.input_shape):
            raise ValueError(f"the model takes samples of shape {self.input_shape}, the data has samples of shape {shape}")

    def build(self, generator: torch.Generator) -> tuple[nn.Module, nn.Module]:
        """(encoder, decoder), their weights drawn from `generator` in the order encoder, decoder."""
        n_inputs = math.prod(self.input_shape)
        encoder = _MLPEncoder((n_inputs, *self.hidden), self.n_latent, self.activation, generator)
        decoder = _MLPDecoder((self.n_latent, *self.hidden), self.input_shape, self.activation, generator)
        return encoder, decoder

    def to_dict(self) -> dict:
        return {"kind": "mlp", **asdict(self), "input_shape": list(self.input_shape), "hidden": list(self.hidden)}


class _ConvEncoder(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], grid: tuple[int, int], width: int, fc: int, n_latent: int) -> None:
        super().__init__()
        self.input_shape, channels = input_shape, input_shape[0]
        layers: list[nn.Module] = []
        for index in range(4):
            layers += [nn.Conv2d(channels if index == 0 else width, width, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        self.convolutions = nn.Sequential(*layers)
        self.fully_connected = nn.Sequential(Dense(width * grid[0] * grid[1], fc, "relu"), Dense(fc, fc, "relu"), Dense(fc, 2 * n_latent))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.convolutions(x.view(x.shape[0], *self.input_shape)).flatten(1)  # (B, width * h * w); (B, H, W) as C = 1
        mu, raw_logvar = self.fully_connected(features).chunk(2, dim=1)  # (B, D) each
        return mu, raw_logvar


class _ConvDecoder(nn.Module):
    def __init__(self, output_shape: tuple[int, ...], sizes: list[tuple[int, int]], width: int, fc: int, n_latent: int) -> None:
        super().__init__()
        self.grid, self.output_shape = sizes[-1], output_shape
        channels = output_shape[0] if len(output_shape) == 3 else 1
        self.fully_connected = nn.Sequential(
            Dense(n_latent, fc, "relu"), Dense(fc, fc, "relu"), Dense(fc, width * self.grid[0] * self.grid[1], "relu")
        )
        layers: list[nn.Module] = []
        for index, (small, large) in enumerate(pairwise(reversed(sizes))):
            # (in - 1) * 2 - 2 + 4 = 2 * in; output_padding restores an odd size that the encoder halved down
            padding = (large[0] - 2 * small[0], large[1] - 2 * small[1])
            last = index == len(sizes) - 2
            layers.append(
                nn.ConvTranspose2d(width, channels if last else width, kernel_size=4, stride=2, padding=1, output_padding=padding)
            )
            if not last:
                layers.append(nn.ReLU())
        self.deconvolutions = nn.Sequential(*layers)
        self.width = width

    def forward(self, z: Tensor) -> Tensor:
        features = self.fully_connected(z).view(z.shape[0], self.width, *self.grid)  # (B, width, h, w)
        return self.deconvolutions(features).view(z.shape[0], *self.output_shape)  # (B, C, H, W), or (B, H, W)


@dataclass(frozen=True)
class Conv:
    """The convolutional pair used for beta-VAE on images by Burgess et al. (2018), "Understanding
    disentangling in beta-VAE", appendix A.1:

    - encoder: 4 convolutions of 32 channels, 4 x 4 kernels, stride 2 (padding 1), each with ReLU;
      2 fully connected layers of 256 units with ReLU; a linear layer to 2 * n_latent (mu, logvar);
    - decoder: the transpose: fully connected 256, 256 and 32 * h * w with ReLU, then 4 transposed
      convolutions (32 channels, 4 x 4, stride 2; ReLU except after the last, which gives C channels).

    Images of 28 x 28 pass through 14, 7, 3 and 1 pixels (32 x 32: 16, 8, 4, 2); the decoder's output
    padding restores the odd sizes. Any H, W >= 16 works. Samples (C, H, W), or (H, W) for one channel.
    """

    input_shape: tuple[int, ...] = (1, 28, 28)  # (C, H, W); MNIST
    n_latent: int = 10  # Burgess et al.'s 10 latents
    width: int = 32  # channels of every convolution
    fc: int = 256  # units of the fully connected layers

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape)
        object.__setattr__(self, "input_shape", shape)
        _positive_sizes(input_shape=shape, n_latent=(self.n_latent,), width=(self.width,), fc=(self.fc,))
        if len(shape) not in (2, 3) or min(shape[-2:]) < 16:
            raise ValueError(f"the conv architecture takes images (C, H, W) or (H, W) with H, W >= 16, got {shape}")

    def _images(self) -> tuple[int, int, int]:
        """(C, H, W): (H, W) images have one channel."""
        return (1, *self.input_shape) if len(self.input_shape) == 2 else self.input_shape

    def _sizes(self) -> list[tuple[int, int]]:
        sizes = [tuple(self.input_shape[-2:])]
        for _ in range(4):
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))  # kernel 4, stride 2, padding 1 halves, rounding down
        return sizes

    def check_input(self, shape: tuple[int, ...]) -> None:
        """ValueError unless a sample has this shape."""
        if shape != self.input_shape:
            raise ValueError(f"the model takes images of shape {self.input_shape}, the data has samples of shape {shape}")

    def build(self, generator: torch.Generator) -> tuple[nn.Module, nn.Module]:
        """(encoder, decoder), PyTorch's default initialisation drawn from `generator`."""
        sizes = self._sizes()
        with torch.random.fork_rng(devices=[]):  # torch's layers draw from the global generator when built: leave it as it was
            encoder = _ConvEncoder(self._images(), sizes[-1], self.width, self.fc, self.n_latent)
            decoder = _ConvDecoder(self.input_shape, sizes, self.width, self.fc, self.n_latent)
        for module in (*encoder.modules(), *decoder.modules()):
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, Dense)):
                _default_init(module, generator)
        return encoder, decoder

    def to_dict(self) -> dict:
        return {"kind": "conv", **asdict(self), "input_shape": list(self.input_shape)}


@torch.no_grad()
def _default_init(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of the module (uniform, bound 1 / sqrt(fan_in)), from `generator`."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
    bound = 1.0 / math.sqrt(fan_in)
    module.weight.uniform_(-bound, bound, generator=generator)
    module.bias.uniform_(-bound, bound, generator=generator)


ARCHITECTURES = {"mlp": MLP, "conv": Conv}


def architecture_from_dict(record: dict) -> MLP | Conv:
    """The architecture that `to_dict` described; ValueError for an unknown kind or field."""
    record = dict(record)
    kind = record.pop("kind", None)
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {kind!r}; choose from {', '.join(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[kind](**record)
    except TypeError as error:
        raise ValueError(f"not a valid {kind} architecture ({error})") from None
