"""Information terms of a Gaussian encoder, as pure tensor functions.

The encoder gives, for each of B samples, p(z | x_i) = N(mu_i, diag(exp(logvar_i))) in D dimensions.
Every function works in float32 and float64, on CPU and CUDA, and is differentiable.

A note on eq. 9 of the paper. As printed it reads H(z|x) = 1/(2N) sum_i log|2 pi diag(sigma_i^2)|,
but the exact entropy of a Gaussian is 0.5 * sum_d (log(2 pi e) + logvar_d): eq. 9 omits D/2 nats.
Eq. 10 is eq. 8 (the Jensen cross-entropy bound on H(z), which is exact algebra) minus eq. 9 as
printed, so it over-states the bound by that D/2: with the exact H(z|x), the Jensen bound on
I(x; z) is eq. 10 minus D/2. Eq. 10 remains a valid upper bound, only D/2 nats looser. The constant
has no gradient, so training with eq. 10 is unaffected. `information_potential` returns eq. 10 as
printed; `conditional_entropy` the exact entropy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ipae._validation import check_positive_int

__all__: list[str] = []  # users reach its public names through the package: the package's face: ipae.reparameterise, ipae.gaussian_kl, ...


def _check_gaussian(mu: Tensor, logvar: Tensor) -> None:
    if mu.ndim != 2 or mu.shape[0] == 0 or mu.shape[1] == 0:
        raise ValueError(f"mu must have shape (B, D) with B, D >= 1, got {tuple(mu.shape)}")
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar must have the shape of mu {tuple(mu.shape)}, got {tuple(logvar.shape)}")


def reparameterise(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """The codes z = mu + sigma * eps of a Gaussian encoder (eq. 3), sigma = exp(logvar / 2).

    mu, logvar: (B, D); eps: (..., B, D), e.g. (K, B, D) for K draws per sample -> z shaped like eps.
    """
    return mu + (0.5 * logvar).exp() * eps


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per sample, the VAE bound on I(x; z) of eq. 5.

    (B, D), (B, D) -> (B,)
    """
    _check_gaussian(mu, logvar)
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1.0).sum(dim=1)


def conditional_entropy(logvar: Tensor) -> Tensor:
    """Exact differential entropy of N(mu, diag exp(logvar)) per sample, in nats.

    0.5 * sum_d (log(2 pi e) + logvar_d); eq. 9 as printed omits the log(e) = 1 per dimension
    (see the module docstring).  (B, D) -> (B,)
    """
    if logvar.ndim != 2 or logvar.shape[0] == 0 or logvar.shape[1] == 0:
        raise ValueError(f"logvar must have shape (B, D) with B, D >= 1, got {tuple(logvar.shape)}")
    return 0.5 * (math.log(2.0 * math.pi * math.e) + logvar).sum(dim=1)


def information_potential(mu: Tensor, logvar: Tensor, z: Tensor, partners: Tensor | None = None) -> Tensor:
    """Per-sample summand of the IPAE bound on I(x; z), eq. 10.

    For sample i: the mean over noise draws k and partners j of
    0.5 * sum_d (mu_j - z[k, i])^2 / sigma_j^2, where z[k, i] = mu_i + sigma_i * eps[k, i]
    (`reparameterise`). Its batch mean is eq. 10 exactly as printed.

    mu, logvar: (B, D). z: (K, B, D), or (B, D) for K = 1: the codes of the batch.
    partners: None for all B samples of the batch (the paper's N_j = N), or integer (B, M):
    the partners j of each sample i (see `draw_partners`).
    Returns (B,).

    Memory: with `partners=None` the sum over j is expanded around the precision-weighted mean
    of the batch (parallel-axis theorem: sum_j w_j (mu_j - a)^2 = sum_j w_j (mu_j - m)^2 + W (a - m)^2,
    a sum of non-negative terms, so no cancellation), which needs O(K * B * D) memory and time,
    never a (B, B, D) tensor. With partners, O(K * B * M * D).
    """
    _check_gaussian(mu, logvar)
    if z.ndim == 2:
        z = z.unsqueeze(0)
    if z.ndim != 3 or z.shape[1:] != mu.shape:
        raise ValueError(f"z must have shape (K, B, D) or (B, D) with (B, D) = {tuple(mu.shape)}, got {tuple(z.shape)}")
    if z.shape[0] == 0:
        raise ValueError("z must hold at least one noise draw (K >= 1)")
    precision = (-logvar).exp()  # (B, D): 1 / sigma_j^2
    if partners is None:
        total_precision = precision.sum(dim=0)  # (D,)
        centre = (precision * mu).sum(dim=0) / total_precision  # (D,)
        spread = (precision * (mu - centre).square()).sum()  # scalar: sum_j,d w_jd (mu_jd - m_d)^2
        offset = (total_precision * (z - centre).square()).sum(dim=2)  # (K, B)
        return 0.5 * (spread + offset).mean(dim=0) / mu.shape[0]
    if partners.ndim != 2 or partners.shape[0] != mu.shape[0] or partners.shape[1] == 0:
        raise ValueError(f"partners must have shape (B, M) with B = {mu.shape[0]}, M >= 1, got {tuple(partners.shape)}")
    if partners.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"partners must be an integer tensor, got {partners.dtype}")
    diff = mu[partners].unsqueeze(0) - z.unsqueeze(2)  # (K, B, M, D)
    weighted = diff.square() * precision[partners].unsqueeze(0)  # (K, B, M, D)
    return 0.5 * weighted.sum(dim=3).mean(dim=(0, 2))


def draw_partners(
    batch_size: int, n_partners: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Draw `n_partners` partners per sample, uniformly with replacement from the whole batch.

    Each sample itself is a possible partner, so that the expectation of `information_potential`
    with these partners equals its all-pairs value. This is the paper's N_j.
    Returns int64 (batch_size, n_partners) on the generator's device (`device` when `generator` is
    None: then torch's global generator draws them, as for `torch.randint`).
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("n_partners", n_partners)
    device = generator.device if generator is not None else device
    return torch.randint(batch_size, (batch_size, n_partners), generator=generator, device=device)
