"""Rate terms: the bound or estimate of I(x; z) that an autoencoder is regularised by, as objects.

A rate is a small `nn.Module` that holds its own options and maps the codes of a batch to one number
in nats:

    rate(mu, logvar, z, generator=None) -> scalar

with mu, logvar (B, D) the encoder's Gaussians and z (K, B, D) or (B, D) their samples
(`ipae.information.reparameterise`). A rate that draws (the partners of `InformationPotential`, the
samples of `MonteCarlo`) takes them from `generator` (None: torch's global generator, as `torch.randn`
does). Drop one into your own loss:

    loss = distortion + beta * InformationPotential(n_partners=8)(mu, logvar, z, generator=g)

`sample(shape, generator, dtype)` makes a rate's draws beforehand and `forward(..., draws=...)` uses
them: `ipae.train` draws before the objective so that the objective itself is deterministic (what
torch.compile needs) and every process of a distributed run draws the same.

`RATES` maps the names that the command line and configs use to the classes; `create(name, **options)`
builds one and `spec(rate)` gives back its name and options as JSON.

A rate of your own subclasses `Rate`: it sets `name` (one not in `RATES`), stores each option of its
`__init__` under the option's own name and implements `_rate`. It trains and saves as the built-in ones
do, and `ipae.load(directory, rate=...)` takes it back, as it takes networks of your own.
"""

from __future__ import annotations

import inspect
import json

import torch
from torch import Tensor, nn

from ipae._validation import check_positive_int
from ipae.information import draw_partners, gaussian_kl, information_potential
from ipae.mixture import CHUNK_SIZE, METHODS, draw_mc_noise

__all__ = ["RATES"]  # the rate classes themselves: ipae.Rate, ipae.InformationPotential, ...


class Rate(nn.Module):
    """A bound or estimate of I(x; z) of a batch, in nats. Subclasses set `name` and implement `_rate`;
    one that draws also implements `sample`. Options are keyword arguments of `__init__`, stored under
    their own names (what `spec` reads)."""

    name: str
    default_beta = 1.0  # a starting point where beta is not given; the right beta depends on the data
    # The weight of the distortion in the paper's objective with this rate (`ipae.models.paper_conventions`):
    # eq. 2, the VAE's, weights it by 1; a rate whose objective the paper prints otherwise says so here.
    paper_distortion_weight = 1.0

    def __init__(self) -> None:  # a rate without options; one with options takes them as keywords here
        super().__init__()

    def sample(self, shape: torch.Size, generator: torch.Generator | None, dtype: torch.dtype, device=None) -> Tensor | None:
        """The random draws of one batch of codes of `shape` (B, D); None for a deterministic rate."""
        return None

    def forward(
        self, mu: Tensor, logvar: Tensor, z: Tensor, *, generator: torch.Generator | None = None, draws: Tensor | None = None
    ) -> Tensor:
        """(B, D), (B, D), (K, B, D) or (B, D) -> scalar. `draws`: made by `sample` beforehand (else drawn here)."""
        if mu.ndim != 2 or 0 in mu.shape or logvar.shape != mu.shape:
            raise ValueError(f"mu and logvar must both have shape (B, D), got {tuple(mu.shape)} and {tuple(logvar.shape)}")
        if z.ndim not in (2, 3) or z.shape[-2:] != mu.shape:
            raise ValueError(f"z must have shape (K, B, D) or (B, D) with (B, D) = {tuple(mu.shape)}, got {tuple(z.shape)}")
        if draws is None:
            draws = self.sample(mu.shape, generator, mu.dtype, mu.device)
        return self._rate(mu, logvar, z, draws)

    def _rate(self, mu: Tensor, logvar: Tensor, z: Tensor, draws: Tensor | None) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in _options(self).items())


class InformationPotential(Rate):
    """IPAE's bound, eq. 10: the mean over samples i and partners j of 0.5 sum_d (mu_j - z_i)^2 / sigma_j^2.

    `n_partners` is the paper's N_j, drawn per sample uniformly with replacement from the batch
    (`ipae.information.draw_partners`); None uses all B partners (O(B D), never a (B, B, D) tensor).
    """

    name = "ip"
    default_beta = 0.01  # eq. 10 grows like Var(mu) / sigma^2, far faster than the KL: near the toy task's best
    paper_distortion_weight = 0.5  # eq. 11 sums d over the N partners inside its 1 / (2 K N^2)

    def __init__(self, n_partners: int | None = 1) -> None:
        super().__init__()
        check_positive_int("n_partners", n_partners, or_none="all pairs")
        self.n_partners = n_partners

    def sample(self, shape, generator, dtype, device=None):
        if self.n_partners is None:
            return None
        return draw_partners(shape[0], self.n_partners, generator, device)  # (B, N_j)

    def _rate(self, mu, logvar, z, draws):
        return information_potential(mu, logvar, z, draws).mean()


class PriorKL(Rate):
    """The beta-VAE's bound, eq. 5: the mean over samples of KL(N(mu, sigma^2) || N(0, I))."""

    name = "vae"

    def _rate(self, mu, logvar, z, draws):
        return gaussian_kl(mu, logvar).mean()


class _Mixture(Rate):
    """An estimate of I(x; z) of the batch mixture over all its pairs (see `ipae.mixture`)."""

    def _rate(self, mu, logvar, z, draws):
        return METHODS[self.name](mu, logvar, draws, CHUNK_SIZE)


class Jensen(_Mixture):
    """The paper's bound with the exact H(z|x): eq. 10's expectation over the noise minus D/2 (an upper bound)."""

    name = "jensen"


class PairwiseKL(_Mixture):
    """The tighter upper bound of Kolchinsky & Tracey (2017): -mean_i log mean_j exp(-KL(p_i || p_j))."""

    name = "pairwise-kl"


class Bhattacharyya(_Mixture):
    """Their lower bound, with the Bhattacharyya distance (a lower bound: not one to minimise)."""

    name = "bhattacharyya"


class MonteCarlo(_Mixture):
    """Monte Carlo estimate of I(x; z) of the batch mixture with `n_samples` draws per sample."""

    name = "mc"

    def __init__(self, n_samples: int = 1) -> None:
        super().__init__()
        check_positive_int("n_samples", n_samples)
        self.n_samples = n_samples

    def sample(self, shape, generator, dtype, device=None):
        return draw_mc_noise(torch.empty(shape, dtype=dtype, device=device), self.n_samples, generator)  # (S, B, D)


RATES: dict[str, type[Rate]] = {cls.name: cls for cls in (InformationPotential, PriorKL, Jensen, PairwiseKL, Bhattacharyya, MonteCarlo)}
"""The built-in rate classes by their `name` ("ip", "vae", "jensen", "pairwise-kl", "bhattacharyya",
"mc"): the names that `ipae fit --rate` and saved models use."""


def _options(rate: Rate) -> dict:
    names = [name for name in inspect.signature(type(rate).__init__).parameters if name != "self"]
    missing = [name for name in names if not hasattr(rate, name)]
    if missing:
        raise ValueError(f"{type(rate).__name__} must store its option {', '.join(missing)} under that name (spec reads it there)")
    return {name: getattr(rate, name) for name in names}


def create(name: str, **options) -> Rate:
    """The rate registered as `name` with `options`, e.g. `create("ip", n_partners=8)`; a clear
    ValueError for an unknown name or an option that this rate does not take."""
    if name not in RATES:
        raise ValueError(f"unknown rate {name!r}; choose from {', '.join(RATES)}")
    cls = RATES[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        takes = f"takes {', '.join(sorted(accepted))}" if accepted else "takes no options"
        raise ValueError(f"rate {name!r} has no option {', '.join(unknown)} (it {takes})")
    return cls(**options)


def spec(rate: Rate) -> dict:
    """The rate's name and options, as JSON: `create(**spec(rate))` builds the same rate again (for a
    registered name). A clear ValueError for a rate that has no name of its own, takes a registered
    one that is not its class's (loading would build that class instead), or has options that are not
    stored under their names or are not JSON."""
    cls = type(rate)
    name = getattr(rate, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} has no name: a Rate subclass sets `name`, a string that model.json records")
    if name in RATES and cls is not RATES[name]:
        raise ValueError(f"{cls.__name__} has the name {name!r} of {RATES[name].__name__}: give it a name of its own")
    record = {"name": name, **_options(rate)}
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as error:
        kinds = "finite numbers, strings, booleans, lists, None"
        raise ValueError(f"the options of rate {name!r} must be JSON values ({kinds}): {error}") from None
    return record
