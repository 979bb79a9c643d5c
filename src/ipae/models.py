"""Gaussian MLP autoencoder whose rate term (the bound on I(x; z)) is picked by name."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ipae.distributed import gather_batch, rank, world_size
from ipae.information import draw_partners, gaussian_kl, information_potential
from ipae.layers import ACTIVATIONS, Dense
from ipae.mixture import CHUNK_SIZE
from ipae.mixture import METHODS as MIXTURE_METHODS

__all__ = ["ModelConfig", "PRESETS", "AutoEncoder", "LossTerms", "Noise", "RATES", "DISTORTIONS"]

# logvar = LOGVAR_LIMIT * tanh(raw / LOGVAR_LIMIT): the identity near 0 (so a fresh encoder starts at
# sigma ~ 1 as usual) but bounded to [-15, 15], i.e. sigma^2 in [3e-7, 3.3e6]. Inside that range 1/sigma^2,
# exp(logvar) and the rate terms stay finite in float32, so sigma -> 0 or sigma -> inf cannot make the loss
# inf/NaN on its own; a loss that still turns non-finite (exploding weights) is caught by `train`.
LOGVAR_LIMIT = 15.0


class LossTerms(NamedTuple):
    """Scalars of one batch: loss = distortion + beta * rate, each a batch mean."""

    loss: Tensor
    distortion: Tensor
    rate: Tensor


# A rate term maps (mu (B, D), logvar (B, D), eps (K, B, D), partners (B, N_j) or None, generator) to the
# batch's bound on I(x; z) in nats, a scalar. Only "mc" draws from the generator; the partners of "ip"
# are drawn beforehand (`AutoEncoder.draw_noise`), so that the other terms are deterministic functions.
RateTerm = Callable[[Tensor, Tensor, Tensor, "Tensor | None", torch.Generator], Tensor]


def _prior_kl_rate(mu: Tensor, logvar: Tensor, eps: Tensor, partners: Tensor | None, generator: torch.Generator) -> Tensor:
    return gaussian_kl(mu, logvar).mean()


def _information_potential_rate(mu: Tensor, logvar: Tensor, eps: Tensor, partners: Tensor | None, generator: torch.Generator) -> Tensor:
    return information_potential(mu, logvar, eps, partners).mean()


def _mixture_rate(method: str) -> RateTerm:
    estimate = MIXTURE_METHODS[method]

    def rate(mu: Tensor, logvar: Tensor, eps: Tensor, partners: Tensor | None, generator: torch.Generator) -> Tensor:
        return estimate(mu, logvar, generator, eps.shape[0], CHUNK_SIZE)  # all pairs of the batch; "mc": K draws

    return rate


# "vae": beta-VAE's KL to N(0, I) (eq. 5); "ip": IPAE's information potential (eq. 10) with N_j partners;
# the rest are estimates of I(x; z) of the batch mixture over all its pairs (see ipae.mixture):
# "jensen" (eq. 10's closed-form expectation minus D/2), "pairwise-kl" (a tighter upper bound),
# "bhattacharyya" (a lower bound) and "mc" (Monte Carlo with K draws per sample).
RATES: dict[str, RateTerm] = {"vae": _prior_kl_rate, "ip": _information_potential_rate} | {
    method: _mixture_rate(method) for method in MIXTURE_METHODS
}


class Noise(NamedTuple):
    """The random draws of one training step: eps (K, R * B, D) for the global batch of R processes,
    and the partners (R * B, N_j) of the "ip" rate (None for all pairs, or for another rate)."""

    eps: Tensor
    partners: Tensor | None


class Distortion(NamedTuple):
    per_sample: Callable[[Tensor, Tensor], Tensor]  # (decoder output (N, F), x (N, F)) -> (N,)
    mean: Callable[[Tensor], Tensor]  # decoder output -> reconstruction in data space


def _squared_error(output: Tensor, x: Tensor) -> Tensor:
    return (output - x).square().sum(dim=-1)


def _bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=-1)


# "mse": squared error summed over dimensions (the toy task); "bernoulli": the cross-entropy of
# section 4.2 summed over pixels, computed from logits so that it is finite at saturated pixels.
DISTORTIONS: dict[str, Distortion] = {
    "mse": Distortion(_squared_error, lambda output: output),
    "bernoulli": Distortion(_bernoulli_nll, torch.sigmoid),
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and objective of an `AutoEncoder`. Defaults are the paper's toy model (IPAE)."""

    n_inputs: int = 2  # the toy data is 2-D
    hidden: tuple[int, ...] = (2048,)  # one hidden layer each in encoder and decoder, as in the paper
    n_latent: int = 16  # size of mu and of sigma (section 4.1)
    activation: str = "relu"  # section 4.1; the MNIST preset uses sigmoid
    distortion: str = "mse"  # d(x, g(z)) of eq. 11, a key of DISTORTIONS
    rate: str = "ip"  # the bound on I(x; z), a key of RATES
    beta: float = 0.01  # weight of the rate; near the toy task's best IPAE value

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        for name, names in (("rate", RATES), ("distortion", DISTORTIONS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in names:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose from {', '.join(sorted(names))}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        sizes = (self.n_inputs, self.n_latent, *self.hidden)
        if not self.hidden or any(s < 1 for s in sizes):
            raise ValueError(f"layer sizes must be >= 1, got n_inputs={self.n_inputs}, hidden={self.hidden}, n_latent={self.n_latent}")

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}


# The paper's two architectures: toy 2 -relu-> 2048 -> (16, 16) -> 2048 -relu-> 2 (section 4.1) and
# MNIST 784 -sigmoid-> 1024 -> (8, 8) -> 1024 -sigmoid-> 784 with the Bernoulli distortion (section 4.2).
PRESETS: dict[str, ModelConfig] = {
    "toy": ModelConfig(),
    "mnist": ModelConfig(n_inputs=784, hidden=(1024,), n_latent=8, activation="sigmoid", distortion="bernoulli", beta=1e-5),
}


def _mlp(sizes: tuple[int, ...], activation: str, generator: torch.Generator) -> nn.Sequential:
    return nn.Sequential(*(Dense(n_in, n_out, activation, generator=generator) for n_in, n_out in pairwise(sizes)))


class AutoEncoder(nn.Module):
    """Stochastic Gaussian encoder z = mu(x) + sigma(x) * eps (eq. 3) and an MLP decoder g(z).

    The objective (eq. 11 for IPAE, eq. 2 with eq. 5 for the VAE) is
    mean_i d(x_i, g(z_i)) + beta * mean_i rate_i, with the rate term picked by `config.rate`.
    """

    def __init__(self, config: ModelConfig = ModelConfig(), *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(seed)  # the initial weights, without global random state
        self.body = _mlp((config.n_inputs, *config.hidden), config.activation, generator)
        self.heads = Dense(config.hidden[-1], 2 * config.n_latent, generator=generator)  # mu and the raw logvar, side by side
        self.decoder = nn.Sequential(
            _mlp((config.n_latent, *config.hidden), config.activation, generator),
            Dense(config.hidden[-1], config.n_inputs, generator=generator),
        )

    @classmethod
    def from_preset(cls, name: str, *, seed: int = 0, **overrides) -> AutoEncoder:
        """A model of the paper's `"toy"` or `"mnist"` architecture, e.g. `rate="vae", beta=1.0`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
        return cls(replace(PRESETS[name], **overrides), seed=seed)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default Linear init (uniform, bound 1/sqrt(fan_in)), drawn from `generator`."""
        for module in self.modules():
            if isinstance(module, Dense):
                module.reset_parameters(generator)

    def save(self, directory, *, metadata: dict | None = None) -> None:
        """Write the model into `directory` (see `ipae.checkpoint`); `ipae.load(directory)` reads it back."""
        from ipae.checkpoint import save_model  # the checkpoint module builds on this one

        save_model(self, directory, metadata=metadata)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, n_inputs) -> mu (B, n_latent), logvar (B, n_latent), logvar bounded by LOGVAR_LIMIT.

        Both are float32 (float64 for a float64 model) also when the layers run under bf16 autocast.
        """
        mu, raw_logvar = self.heads(self.body(x)).to(x.dtype).chunk(2, dim=1)
        return mu, LOGVAR_LIMIT * torch.tanh(raw_logvar / LOGVAR_LIMIT)

    def decode(self, z: Tensor) -> Tensor:
        """(B, n_latent) -> reconstruction (B, n_inputs) in data space (probabilities for "bernoulli")."""
        return DISTORTIONS[self.config.distortion].mean(self.decoder(z).to(z.dtype))

    def draw_noise(self, batch_size: int, *, generator: torch.Generator, n_pairs: int | None = 1, n_samples: int = 1) -> Noise:
        """The noise (K = `n_samples` draws, in the parameters' dtype) and partners (N_j = `n_pairs`) of a
        batch of `batch_size` per process, drawn from `generator`, in this order, on its device."""
        global_batch, dtype = world_size() * batch_size, next(self.parameters()).dtype
        eps = torch.randn((n_samples, global_batch, self.config.n_latent), generator=generator, device=generator.device, dtype=dtype)
        wants_partners = self.config.rate == "ip" and n_pairs is not None
        return Noise(eps, draw_partners(global_batch, n_pairs, generator) if wants_partners else None)

    def objective(self, x: Tensor, noise: Noise, generator: torch.Generator) -> LossTerms:
        """The objective on a batch x (B, n_inputs) with the given noise; see `loss`.

        Deterministic given `noise` (the "mc" rate alone draws from `generator`), which is what lets
        `ipae.train` hand it to torch.compile.
        """
        mu, logvar = self.encode(x)  # (B, D) each
        batch, index = mu.shape[0], rank()
        eps = noise.eps[:, index * batch : (index + 1) * batch]  # (K, B, D): this process's share
        z = mu + (0.5 * logvar).exp() * eps  # (K, B, D)
        output = self.decoder(z.flatten(0, 1)).to(x.dtype)  # (K * B, n_inputs), float32 also under autocast
        with torch.autocast(x.device.type, enabled=False):  # the rate and the reductions stay in full precision
            distortion = DISTORTIONS[self.config.distortion].per_sample(output, x.repeat(noise.eps.shape[0], 1)).mean()
            rate = RATES[self.config.rate](gather_batch(mu), gather_batch(logvar), noise.eps, noise.partners, generator)
        return LossTerms(distortion + self.config.beta * rate, distortion, rate)

    def loss(self, x: Tensor, *, generator: torch.Generator, n_pairs: int | None = 1, n_samples: int = 1) -> LossTerms:
        """Objective on a batch x (B, n_inputs) with K = `n_samples` noise draws per sample.

        `n_pairs` is the paper's N_j, the partners per sample of the "ip" rate (None: all B);
        other rate terms ignore it. Noise and partners come from `generator`.
        Under torch.distributed (R processes, see ipae.distributed) x is this process's share of a
        global batch of R * B, the generator is in the same state on every process, and the noise is
        drawn for the global batch: the rate is that of the global batch, the distortion this share's.
        """
        noise = self.draw_noise(x.shape[0], generator=generator, n_pairs=n_pairs, n_samples=n_samples)
        return self.objective(x, noise, generator)

    forward = loss  # so that DistributedDataParallel, which hooks forward(), can wrap the model
