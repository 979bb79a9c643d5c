"""The autoencoder: any encoder and decoder, a rate term (a bound on I(x; z)) and a distortion.

`AutoEncoder(encoder, decoder, rate=..., distortion=..., beta=...)` computes its objective and nothing
else: batches, noise, distributed training, checkpoints and logs belong to `ipae.train`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ipae.information import reparameterise
from ipae.networks import MLP, Conv, architecture_from_dict
from ipae.rates import RATES, Rate, create
from ipae.rates import spec as rate_spec

__all__: list[str] = []  # users reach its public names through the package: ipae.AutoEncoder, ipae.PRESETS

# logvar = LOGVAR_LIMIT * tanh(raw / LOGVAR_LIMIT): the identity near 0 (so a fresh encoder starts at
# sigma ~ 1 as usual) but bounded to [-15, 15], i.e. sigma^2 in [3e-7, 3.3e6]. Inside that range 1/sigma^2,
# exp(logvar) and the rate terms stay finite in float32, so sigma -> 0 or sigma -> inf cannot make the loss
# inf/NaN on its own; a loss that still turns non-finite (exploding weights) is caught by `ipae.train`.
LOGVAR_LIMIT = 15.0


class LossTerms(NamedTuple):
    """Scalars of one batch: loss = distortion_weight * distortion + beta * rate, each a batch mean."""

    loss: Tensor
    distortion: Tensor
    rate: Tensor


class Noise(NamedTuple):
    """The random draws of one step: eps (K, B, D), and the rate's own draws (None for most rates)."""

    eps: Tensor
    draws: Tensor | None


class Distortion(NamedTuple):
    per_sample: Callable[[Tensor, Tensor], Tensor]  # (decoder output (N, ...), x (N, ...)) -> (N,)
    mean: Callable[[Tensor], Tensor]  # decoder output -> reconstruction in data space


def _squared_error(output: Tensor, x: Tensor) -> Tensor:
    return (output - x).square().flatten(1).sum(dim=1)


def _mean_squared_error(output: Tensor, x: Tensor) -> Tensor:
    return (output - x).square().flatten(1).mean(dim=1)


def _bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)


# "mse": squared error summed over a sample's values (the toy task); "mean-mse": the mean over them
# instead, section 4.1's "mean square error" as printed (the paper-exact toy); "bernoulli": the
# cross-entropy of section 4.2 summed over pixels, from logits so that it is finite at saturated pixels.
DISTORTIONS: dict[str, Distortion] = {
    "mse": Distortion(_squared_error, lambda output: output),
    "mean-mse": Distortion(_mean_squared_error, lambda output: output),
    "bernoulli": Distortion(_bernoulli_nll, torch.sigmoid),
}


def _same(tensor: Tensor) -> Tensor:
    return tensor


def _check_terms(distortion: str, beta: float, logvar_limit: float | None, distortion_weight: float) -> None:
    """ValueError unless these are options an AutoEncoder takes (its own and `ModelSpec`'s one check)."""
    if distortion not in DISTORTIONS:
        raise ValueError(f"unknown distortion {distortion!r}; choose from {', '.join(DISTORTIONS)}")
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if logvar_limit is not None and (
        isinstance(logvar_limit, bool) or not (isinstance(logvar_limit, (int, float)) and 0 < logvar_limit < math.inf)
    ):
        raise ValueError(f"logvar_limit must be a finite number > 0 or None, got {logvar_limit!r}")
    if isinstance(distortion_weight, bool) or not (
        isinstance(distortion_weight, (int, float)) and math.isfinite(distortion_weight) and distortion_weight > 0
    ):
        raise ValueError(f"distortion_weight must be a finite number > 0, got {distortion_weight!r}")


@dataclass(frozen=True)
class ModelSpec:
    """What a model is, as data: the one description that the presets, `ipae fit`, the estimators, a
    model directory's model.json and an experiment's record all use. `build` makes the model it
    describes; `to_dict` and `from_dict` are its JSON form (model.json's "model", format version 2);
    `AutoEncoder.spec` is a model's own."""

    architecture: MLP | Conv | None = MLP()  # the networks' builder; None: networks of your own, given to `build`
    rate: str = "ip"  # the rate's name: a key of ipae.rates.RATES, or the `name` of a Rate subclass of your own
    rate_options: dict = field(default_factory=dict)  # the rate's own, e.g. {"n_partners": 8}
    distortion: str = "mse"  # a key of DISTORTIONS; "bernoulli" for data in [0, 1]
    beta: float | None = None  # the rate's weight; None: the rate's default_beta (a registered rate only)
    logvar_limit: float | None = LOGVAR_LIMIT  # the log-variance's bound (see LOGVAR_LIMIT); None: none, as printed
    distortion_weight: float = 1.0  # 1/2 for IPAE as printed (eq. 11); see paper_conventions

    def __post_init__(self) -> None:
        if self.architecture is not None and not isinstance(self.architecture, (MLP, Conv)):
            raise ValueError(f"architecture must be an ipae.networks.MLP or Conv, or None, got {type(self.architecture).__name__}")
        if not isinstance(self.rate, str) or not self.rate:
            raise ValueError(f"rate must be the name of a rate, got {self.rate!r}")
        if not isinstance(self.rate_options, dict) or "name" in self.rate_options:
            raise ValueError(f"rate_options must be a dict of the rate's options, got {self.rate_options!r}")
        if self.rate in RATES:  # the options checked, and all of them named: the description of a model is one
            options = rate_spec(create(self.rate, **self.rate_options))
            object.__setattr__(self, "rate_options", {name: value for name, value in options.items() if name != "name"})
        if self.beta is None:
            if self.rate not in RATES:
                raise ValueError(f"beta must be given for the rate {self.rate!r}, which is not one of ipae's")
            object.__setattr__(self, "beta", RATES[self.rate].default_beta)
        _check_terms(self.distortion, self.beta, self.logvar_limit, self.distortion_weight)

    def to_dict(self) -> dict:
        """As JSON: the architecture's `to_dict` (None for networks of your own), the rate as `ipae.rates.spec` writes it."""
        return {
            "architecture": None if self.architecture is None else self.architecture.to_dict(),
            "rate": {"name": self.rate, **self.rate_options},
            "distortion": self.distortion,
            "beta": self.beta,
            "logvar_limit": self.logvar_limit,
            "distortion_weight": self.distortion_weight,
        }

    @classmethod
    def from_dict(cls, record: dict) -> ModelSpec:
        """The description that `to_dict` wrote; a ValueError saying what is wrong otherwise."""
        try:
            fields = dict(record)
            rate = dict(fields.pop("rate"))
            architecture = fields.pop("architecture")
            fields.setdefault("distortion_weight", 1.0)  # older model.json files lack it: 1
            return cls(
                architecture=None if architecture is None else architecture_from_dict(architecture),
                rate=rate.pop("name"),
                rate_options=rate,
                **fields,
            )
        except (KeyError, TypeError, AttributeError, OverflowError) as error:
            reason = f"no {error}" if isinstance(error, KeyError) else " ".join(str(error).split())
            raise ValueError(f"{type(error).__name__}: {reason}") from None

    def build(
        self, *, seed: int = 0, encoder: nn.Module | None = None, decoder: nn.Module | None = None, rate: Rate | None = None
    ) -> AutoEncoder:
        """The model described, its weights drawn from `seed`; into `encoder` and `decoder` (built as when
        the model was described) for networks of your own. `rate`: the rate object to use, of this name and
        options (needed for a rate of your own; a registered one is built from the description)."""
        described = {"name": self.rate, **self.rate_options}
        if rate is None:
            if self.rate not in RATES:
                raise Mismatch(
                    f"the rate {_short(described)} is not one of ipae's ({', '.join(RATES)}); "
                    "a rate of your own loads with rate= built as when it was saved"
                )
            rate = create(self.rate, **self.rate_options)
        elif not isinstance(rate, Rate):
            raise Mismatch(f"rate must be an ipae.rates.Rate, got {type(rate).__name__}")
        elif json.loads(json.dumps(rate_spec(rate))) != json.loads(json.dumps(described)):  # as JSON holds them: a tuple reads as a list
            raise Mismatch(f"the model was saved with rate {_short(described)}; the rate passed is {_short(rate_spec(rate))}")
        options = {"rate": rate, "distortion": self.distortion, "beta": self.beta}
        options |= {"logvar_limit": self.logvar_limit, "distortion_weight": self.distortion_weight}
        if self.architecture is None:
            if encoder is None or decoder is None:
                raise Mismatch("the model has networks of its own; load it with encoder= and decoder= modules built as when it was saved")
            return AutoEncoder(encoder, decoder, **options)
        if encoder is not None or decoder is not None:
            raise Mismatch(f"the model builds its own networks ({self.architecture.to_dict()['kind']}); pass no encoder or decoder")
        return AutoEncoder.from_architecture(self.architecture, seed=seed, **options)


class Mismatch(ValueError):
    """`ModelSpec.build`'s refusal of the networks or the rate given: they are not those described."""


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


# The paper's two models: toy 2 -relu-> 2048 -> (16, 16) -> 2048 -relu-> 2 (section 4.1) and MNIST
# 784 -sigmoid-> 1024 -> (8, 8) -> 1024 -sigmoid-> 784 with the Bernoulli distortion (section 4.2);
# and the convolutional pair of Burgess et al. (2018) for 28 x 28 images (`input_shape` for others).
# Each with IPAE's rate (N_j = 1); `AutoEncoder.from_preset` takes another.
PRESETS: dict[str, ModelSpec] = {
    "toy": ModelSpec(MLP(), distortion="mse", beta=0.01),
    "mnist": ModelSpec(MLP((784,), (1024,), 8, "sigmoid"), distortion="bernoulli", beta=1e-5),
    "conv": ModelSpec(Conv(), distortion="bernoulli", beta=1e-5),
}
"""The models by name, for `AutoEncoder.from_preset(name)`: the paper's two, toy 2 -relu-> 2048 ->
(16, 16) -> 2048 -relu-> 2 (section 4.1) and MNIST 784 -sigmoid-> 1024 -> (8, 8) -> 1024 -sigmoid-> 784
with the Bernoulli distortion (section 4.2); and "conv", the convolutional pair of Burgess et al. (2018)
for 28 x 28 images (`input_shape` for others)."""


def paper_conventions(options: dict) -> dict:
    """The model options that follow the paper as printed, for a model of `options` (rate, distortion):
    no log-variance bound (a plain linear log-variance), "mean-mse" for "mse" (section 4.1's "mean
    square error"), and the rate's `paper_distortion_weight` (1/2 for IPAE: eq. 11 sums d over the N
    partners inside its 1 / (2 K N^2); 1 for the VAE's eq. 2). docs/reproducing.md tables what each does to beta."""
    rate = create(options["rate"]) if isinstance(options["rate"], str) else options["rate"]
    return {
        "logvar_limit": None,
        "distortion": "mean-mse" if options["distortion"] == "mse" else options["distortion"],
        "distortion_weight": rate.paper_distortion_weight,
    }


class AutoEncoder(nn.Module):
    """Stochastic Gaussian encoder z = mu(x) + sigma(x) * eps (eq. 3) and a decoder g(z).

    `encoder`: any module mapping x (B, ...) to (mu, raw_logvar), each (B, D); the model bounds the
    log-variance smoothly to (-logvar_limit, logvar_limit) (None: no bound), so the encoder need not.
    `decoder`: any module mapping z (B, D) to an output shaped like x (logits for "bernoulli").
    `rate`: a `ipae.rates.Rate` or its name (`"ip"`, `"vae"`, ...). The objective (eq. 11 for IPAE,
    eq. 2 with eq. 5 for the VAE) is distortion_weight * mean_i d(x_i, g(z_i)) + beta * rate.
    `distortion_weight`: 1 by default; eq. 11 as printed puts d inside its 1 / (2 K N^2) sum over
    N partners, which weights it by 1/2 (`from_preset(..., paper_exact=True)` sets that for IPAE).
    `architecture`: the builder the networks came from (set by `from_preset`), so that saving can
    record it; None for networks of your own (then loading takes them back: `ipae.load(path, encoder=..., decoder=...)`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        rate: Rate | str = "ip",
        distortion: str = "mse",
        beta: float = 0.01,
        logvar_limit: float | None = LOGVAR_LIMIT,
        distortion_weight: float = 1.0,
        architecture: MLP | Conv | None = None,
    ) -> None:
        super().__init__()
        rate = create(rate) if isinstance(rate, str) else rate
        if not isinstance(rate, Rate):
            raise ValueError(f"rate must be an ipae.rates.Rate or its name, got {type(rate).__name__}")
        _check_terms(distortion, beta, logvar_limit, distortion_weight)
        self.distortion_weight = float(distortion_weight)
        self.encoder, self.decoder, self.rate = encoder, decoder, rate
        self.distortion, self.beta, self.logvar_limit, self.architecture = distortion, float(beta), logvar_limit, architecture

    @classmethod
    def from_preset(
        cls,
        name: str,
        *,
        seed: int = 0,
        rate: Rate | str = "ip",
        beta: float | None = None,
        distortion: str | None = None,
        paper_exact: bool = False,
        **architecture,
    ) -> AutoEncoder:
        """A model of a named architecture (`PRESETS`): `"toy"`, `"mnist"` (the paper's MLPs) or `"conv"`.

        Keyword arguments beyond these change the architecture, e.g. `input_shape=(3, 32, 32)` for
        `"conv"` or `hidden=(512, 256)` for an MLP. The initial weights come from `seed`.
        `paper_exact`: switch off what the paper does not do (`paper_conventions`): no log-variance
        bound, the toy distortion as the mean squared error, and eq. 11's weight 1/2 on IPAE's distortion.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
        preset = PRESETS[name]
        try:
            built = replace(preset.architecture, **architecture)
        except TypeError as error:
            raise ValueError(f"preset {name!r}: {error}") from None
        rate = create(rate) if isinstance(rate, str) else rate
        options = {"rate": rate, "beta": preset.beta if beta is None else beta, "distortion": distortion or preset.distortion}
        options |= {"logvar_limit": preset.logvar_limit, "distortion_weight": preset.distortion_weight}
        return cls.from_architecture(built, seed=seed, **(options | (paper_conventions(options) if paper_exact else {})))

    @classmethod
    def from_architecture(cls, architecture: MLP | Conv, *, seed: int = 0, **options) -> AutoEncoder:
        """A model whose networks `architecture` builds, the weights drawn from `seed` (no global random state)."""
        encoder, decoder = architecture.build(torch.Generator().manual_seed(seed))
        return cls(encoder, decoder, architecture=architecture, **options)

    @property
    def spec(self) -> ModelSpec:
        """The model's description (what model.json records): enough to build it again, with the
        networks and the rate object for those of your own. A ValueError for a rate that cannot be
        described (`ipae.rates.spec`)."""
        options = rate_spec(self.rate)
        name = options.pop("name")
        return ModelSpec(self.architecture, name, options, self.distortion, self.beta, self.logvar_limit, self.distortion_weight)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, ...) -> mu (B, D), logvar (B, D), in x's dtype also when the layers run under bf16 autocast."""
        mu, raw_logvar = self.encoder(x)
        mu, raw_logvar = mu.to(x.dtype), raw_logvar.to(x.dtype)
        if self.logvar_limit is None:
            return mu, raw_logvar
        return mu, self.logvar_limit * torch.tanh(raw_logvar / self.logvar_limit)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, D) -> reconstruction (B, ...) in data space (probabilities for "bernoulli")."""
        return DISTORTIONS[self.distortion].mean(self.decoder(z).to(z.dtype))

    def distortion_per_sample(self, x: Tensor, z: Tensor) -> Tensor:
        """d(x_i, g(z_i)) of each sample, unweighted: x (B, ...), z (B, D) -> (B,)."""
        return DISTORTIONS[self.distortion].per_sample(self.decoder(z).to(x.dtype), x)

    def draw_noise(self, shape: tuple[int, int], *, generator: torch.Generator | None, n_samples: int = 1) -> Noise:
        """The draws of a batch of codes of `shape` (B, D): eps (K = `n_samples`, B, D) in the parameters'
        dtype, then the rate's own draws, from `generator` in that order, on its device."""
        dtype = next(self.parameters()).dtype
        device = generator.device if generator is not None else next(self.parameters()).device
        eps = torch.randn((n_samples, *shape), generator=generator, device=device, dtype=dtype)
        return Noise(eps, self.rate.sample(torch.Size(shape), generator, dtype, device))

    def objective(self, x: Tensor, eps: Tensor, draws: Tensor | None = None, gather: Callable[[Tensor], Tensor] = _same) -> LossTerms:
        """The objective on a batch x (B, ...) with noise eps (K, B, D) and the rate's `draws`.

        Deterministic (what lets `ipae.train` compile it). `gather` maps this batch's codes (..., B, D) to
        those of the batch the rate sees: `ipae.train` passes an all-gather under torch.distributed,
        so that the rate is that of the global batch while the distortion is this share's.
        """
        mu, logvar = self.encode(x)  # (B, D) each
        return self._terms(x, mu, logvar, eps, draws, gather)

    forward = objective  # DistributedDataParallel hooks forward()

    def loss(self, x: Tensor, *, generator: torch.Generator | None = None, n_samples: int = 1) -> LossTerms:
        """The objective on a batch x (B, ...) with K = `n_samples` noise draws per sample from `generator`."""
        mu, logvar = self.encode(x)
        noise = self.draw_noise(tuple(mu.shape), generator=generator, n_samples=n_samples)
        return self._terms(x, mu, logvar, noise.eps, noise.draws, _same)

    def _terms(self, x: Tensor, mu: Tensor, logvar: Tensor, eps: Tensor, draws: Tensor | None, gather) -> LossTerms:
        z = reparameterise(mu, logvar, eps)  # (K, B, D)
        output = self.decoder(z.flatten(0, 1)).to(x.dtype)  # (K * B, ...), float32 also under autocast
        with torch.autocast(x.device.type, enabled=False):  # the rate and the reductions stay in full precision
            target = x.expand(eps.shape[0], *x.shape).flatten(0, 1)  # (K * B, ...)
            distortion = DISTORTIONS[self.distortion].per_sample(output, target).mean()
            rate = self.rate(gather(mu), gather(logvar), gather(z), draws=draws)
        return LossTerms(self.distortion_weight * distortion + self.beta * rate, distortion, rate)
