"""What a trained model's codes say, for comparing models at the same information rate.

`diagnose(model, ...)` returns one flat dict of JSON numbers:

- I(x; z) of the codes of `N` held-out points (`information`): two Monte Carlo estimates on the same
  draws, with the mixture's lower (Bhattacharyya) and upper (pairwise-KL) bounds. `I_mc` keeps each
  point's own component in the mixture: a lower bound in expectation, capped at log N. `I_loo` leaves it
  out: an upper bound in expectation. Where they differ by more than `SATURATION_GAP` the codes are
  saturated: N points cannot tell how much they carry, and I_mc is a floor, not a value.
- the distortion d(x, g(z)) of the test points, one sampled code each (unweighted, per sample);
- the log-variance's min and max, and the fraction of values at the model's bound;
- with labels: the linear-SVM test error of the mean codes and of sampled codes (one draw per point,
  for training and test alike), and k-means (k = number of classes) NMI and ARI of the test mean codes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor

from ipae.evaluation import linear_svm_error
from ipae.information import reparameterise
from ipae.mixture import estimates

__all__ = ["information", "diagnose"]

INFORMATION_POINTS = 5000  # codes whose mixture I(x; z) is measured: at most log 5000 = 8.52 nats
MC_SAMPLES = 16  # Monte Carlo draws per point
# I_loo - I_mc above which the codes count as saturated. Known-truth simulations (D = 8, N = 5000,
# Gaussian and clustered codes, tests/test_diagnostics.py): the gap is 0.01-0.25 nats at a true 3 and 5
# nats, 0.8-1.0 at 7 and 2.8-3.0 at 9, and the truth lies between the two estimates, so below the gap
# their midpoint is within gap / 2 of it whatever the codes' shape, while I_mc alone reads up to 0.5
# nats low at 7 nats, by an amount that depends on the shape.
SATURATION_GAP = 0.5
AT_BOUND = 0.99  # |logvar| >= AT_BOUND * logvar_limit counts as at the bound (tanh never reaches it)
# The one name of each measured I(x; z) number, from the method of `ipae.mixture` that computes it:
# records, tables, logs and the command all use these keys.
ESTIMATE_KEYS = {"mc": "I_mc", "loo": "I_loo", "bhattacharyya": "I_lower", "pairwise-kl": "I_upper", "jensen": "I_jensen"}
INFORMATION_KEYS = (*ESTIMATE_KEYS.values(), "I_points", "I_log_n", "I_saturated")  # what `information` returns
ENCODE_CHUNK = 1024  # rows encoded at once, to bound memory


@torch.no_grad()
def in_chunks(function, x, *, like: Tensor, size: int = ENCODE_CHUNK, padded: bool = False) -> tuple[Tensor, ...]:
    """`function` over the rows of x (N, ...) (a tensor or an array), `size` rows at a time, each chunk
    in the device and dtype of `like` (a model's parameter); its outputs, each (N, ...), joined in
    float64 on the CPU. `padded`: the last chunk is filled up with zero rows to `size`, so that a row's
    output does not depend on N (a smaller last chunk may round differently)."""
    parts = []
    for i in range(0, len(x), size):
        rows = x[i : i + size]
        rows = (torch.tensor(rows) if isinstance(rows, np.ndarray) else rows).to(like.device, like.dtype)  # a copy: x may be read-only
        if padded and len(rows) < size:
            rows = torch.cat([rows, rows.new_zeros((size - len(rows), *rows.shape[1:]))])  # (size, ...)
        found = function(rows)
        parts.append([part[: min(size, len(x) - i)] for part in (found if isinstance(found, tuple) else (found,))])
    return tuple(torch.cat(outputs).double().cpu() for outputs in zip(*parts, strict=True))


def encode(model, x, *, size: int = ENCODE_CHUNK, padded: bool = False) -> tuple[Tensor, Tensor]:
    """mu, logvar (N, D) in float64 on the CPU of the rows of x (N, ...), encoded `size` rows at a time
    (`in_chunks`) in the model's device and dtype, in the mode the model is in."""
    mu, logvar = in_chunks(model.encode, x, like=next(model.parameters()), size=size, padded=padded)
    return mu, logvar


def information(mu: Tensor, logvar: Tensor, *, generator: torch.Generator, n_samples: int = MC_SAMPLES) -> dict:
    """I(x; z) in nats of the mixture of the N Gaussians (mu, logvar) (N, D): I_mc and I_loo (Monte
    Carlo with `n_samples` draws per point, the point's own component kept and left out), I_lower
    (Bhattacharyya), I_upper (pairwise KL), I_jensen (eq. 10 - D/2, looser), I_points (N), I_log_n
    (log N) and I_saturated (I_loo - I_mc > SATURATION_GAP). The keys are `ESTIMATE_KEYS`'s."""
    found = estimates(mu, logvar, generator=generator, n_samples=n_samples)
    log_n = math.log(len(mu))
    return {key: found[method] for method, key in ESTIMATE_KEYS.items()} | {
        "I_points": len(mu),
        "I_log_n": log_n,
        "I_saturated": bool(found["loo"] - found["mc"] > SATURATION_GAP),
    }


@torch.no_grad()
def sampled_distortion(model, x: Tensor, z: Tensor) -> float:
    """Mean d(x_i, g(z_i)) over the rows of x (N, ...) with their codes z (N, D), unweighted, per sample."""
    parameter = next(model.parameters())
    distortion = torch.cat(
        [
            model.distortion_per_sample(x[i : i + ENCODE_CHUNK].to(parameter), z[i : i + ENCODE_CHUNK].to(parameter))
            for i in range(0, len(x), ENCODE_CHUNK)
        ]
    )
    return float(distortion.double().mean())


def measure(model, x: Tensor, *, generator: torch.Generator, n_samples: int = MC_SAMPLES) -> dict:
    """`information` of the codes of x (N, ...) and their "distortion" with one sampled code each, the
    draws from `generator` in that order; the model must be in eval mode. Codes that are not finite
    (a model on its way to diverging) give None for every number."""
    mu, logvar = encode(model, x)
    if not (torch.isfinite(mu).all() and torch.isfinite(logvar).all()):
        return dict.fromkeys((*INFORMATION_KEYS, "distortion"))
    result = information(mu, logvar, generator=generator, n_samples=n_samples)
    z = reparameterise(mu, logvar, torch.randn(mu.shape, generator=generator, dtype=torch.float64))
    return result | {"distortion": sampled_distortion(model, x, z)}


def clusters(codes: np.ndarray, labels: np.ndarray, *, seed: int) -> dict:
    """k-means with k = the number of classes on codes (N, D); its NMI and ARI against the labels (N,)."""
    k = len(np.unique(labels))
    found = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(codes)
    return {"nmi": float(normalized_mutual_info_score(labels, found)), "ari": float(adjusted_rand_score(labels, found))}


def diagnose(
    model,
    x_test: Tensor,
    *,
    x_information: Tensor,
    seed: int,
    y_test: np.ndarray | None = None,
    x_train: Tensor | None = None,
    y_train: np.ndarray | None = None,
) -> dict:
    """Every diagnostic of the module docstring for a trained `model`.

    x_test (M, ...): the held-out points of the distortion, the log-variance and (given y_test (M,))
    the clustering; x_information (N, ...): the points whose I(x; z) is measured; x_train, y_train:
    the linear SVM's training points (its test error is on x_test, y_test). Draws come from `seed`.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    test_mu, test_logvar = encode(model, x_test)
    result = information(*encode(model, x_information), generator=generator)
    test_z = reparameterise(test_mu, test_logvar, torch.randn(test_mu.shape, generator=generator, dtype=torch.float64))
    limit = model.logvar_limit
    result |= {
        "distortion": sampled_distortion(model, x_test, test_z),
        "logvar_min": float(test_logvar.min()),
        "logvar_max": float(test_logvar.max()),
        "logvar_limit": limit,
        "logvar_at_bound": None if limit is None else float((test_logvar.abs() >= AT_BOUND * limit).double().mean()),
    }
    if y_test is not None:
        result |= clusters(test_mu.numpy(), y_test, seed=seed)
    if x_train is not None and y_train is not None and y_test is not None:
        train_mu, train_logvar = encode(model, x_train)
        train_z = reparameterise(train_mu, train_logvar, torch.randn(train_mu.shape, generator=generator, dtype=torch.float64))
        result["svm_error"] = linear_svm_error(train_mu.numpy(), y_train, test_mu.numpy(), y_test)
        result["svm_error_sampled"] = linear_svm_error(train_z.numpy(), y_train, test_z.numpy(), y_test)
    return result
