"""Entropy of the batch mixture and I(x; z), by bounds and by Monte Carlo.

The encoder's codes of N samples define the mixture p(z) = 1/N sum_j p_j with p_j = N(mu_j, diag s_j),
s = exp(logvar); I(x; z) = H(p) - mean_i H(p_i). Methods, in nats:

- "jensen": the paper's bound (eqs. 7-10 with the exact H(z|x)): I <= mean_ij KL(p_i || p_j).
  It equals the expectation over eps of eq. 10 minus D/2.
- "pairwise-kl": the upper bound of Kolchinsky & Tracey (2017), I <= -mean_i log mean_j exp(-KL(p_i || p_j)).
- "bhattacharyya": their lower bound, I >= -mean_i log mean_j exp(-BD(p_i, p_j)), with the
  Bhattacharyya distance BD.
- "mc": Monte Carlo of eq. 7 before Jensen's inequality, as I = mean_ik log(p_i(z_ik) / p(z_ik)), z_ik ~ p_i.
  p includes p_i itself, so the estimate cannot exceed log N and reads low once the codes are nearly
  separable: it is the I of the N codes' mixture, a floor for the I of the population they come from.
- "loo": the same draws with p_i left out of the mixture, p_-i = 1/(N-1) sum_{j != i} p_j. Not capped at
  log N; it reads high where "mc" reads low, so where the two disagree the codes are saturated
  (`ipae.diagnostics.saturated`).

Pairwise quantities are never stored whole, so memory is O(N * D + chunk_size^2) and N = 100 000 fits.
Two codes compute them, with the same values (tests: 1e-6 relative in float64, in practice 1e-15):
- where autograd records (an input requires grad, grad mode on), block by block, chunk_size x chunk_size
  pairs at a time, with a running log-sum-exp over the partner blocks;
- otherwise in tiles of chunk_size partners and chunk_size^2 bytes that stay in the cache, each made by one
  matmul of augmented features (KL, Monte Carlo) or by a few passes per dimension (Bhattacharyya), with the
  exponents in base 2, then raised in place (exp2) and summed into their rows.
All functions are differentiable, deterministic (except "mc" and "loo", which draw from a generator), and
run in the input's dtype on its device. `mutual_information` and `mixture_entropy` also take NumPy arrays,
and then return a float.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ipae._validation import check_positive_int
from ipae.information import conditional_entropy, reparameterise

__all__ = ["mixture_entropy"]  # and ipae.mutual_information

CHUNK_SIZE = 1024  # 1024 x 1024 pairs a block: 8 MiB per float64 matrix; tiles of 1024 partners: 1 MiB
DEFAULT_SEED = 0  # "mc" and "loo" without a generator draw from a fresh one seeded with this: the same codes, the same value


def _as_tensors(mu: Tensor | np.ndarray, logvar: Tensor | np.ndarray) -> tuple[Tensor, Tensor, bool]:
    """mu and logvar as tensors, and whether they came as NumPy arrays (whose estimate is then returned as a float).
    Arrays keep float32 or float64 and are copied (they may be read-only); other dtypes become float64."""
    arrays = [isinstance(x, np.ndarray) for x in (mu, logvar)]
    if all(arrays):
        converted = (torch.tensor(x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)) for x in (mu, logvar))
        return *converted, True
    if any(arrays) or not all(isinstance(x, Tensor) for x in (mu, logvar)):
        raise TypeError(f"mu and logvar must both be tensors or both NumPy arrays, got {type(mu).__name__} and {type(logvar).__name__}")
    return mu, logvar, False


def _check(mu: Tensor, logvar: Tensor, chunk_size: int) -> None:
    if not (mu.is_floating_point() and logvar.is_floating_point()):
        raise ValueError(f"mu and logvar must be floating-point, got {mu.dtype} and {logvar.dtype}")
    if mu.ndim != 2 or mu.shape[0] == 0 or mu.shape[1] == 0:
        raise ValueError(f"mu must have shape (N, D) with N, D >= 1, got {tuple(mu.shape)}")
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar must have the shape of mu {tuple(mu.shape)}, got {tuple(logvar.shape)}")
    if not (torch.isfinite(mu).all() and torch.isfinite(logvar).all()):
        raise ValueError("mu and logvar must be finite (no NaN or inf)")
    check_positive_int("chunk_size", chunk_size)


def _weighted_square_distance(a: Tensor, b: Tensor, weight: Tensor) -> Tensor:
    """sum_d (a_id - b_jd)^2 * weight_jd for all i, j: (I, D), (J, D), (J, D) -> (I, J).

    Expanded into matmuls after centring both on b's weighted mean, so it stays accurate when the
    means share a large offset; round-off below zero is clipped.
    """
    centre = (weight * b).sum(dim=0) / weight.sum(dim=0)  # (D,)
    a, b = a - centre, b - centre
    squared = a.square() @ weight.T - 2 * a @ (weight * b).T + (weight * b.square()).sum(dim=1)  # (I, J)
    return squared.clamp_min(0)


def pairwise_kl(mu_i: Tensor, logvar_i: Tensor, mu_j: Tensor, logvar_j: Tensor) -> Tensor:
    """KL(p_i || p_j) for every pair of diagonal Gaussians: (I, D) x 2, (J, D) x 2 -> (I, J).

    0.5 * sum_d [logvar_j - logvar_i + (s_i + (mu_i - mu_j)^2) / s_j - 1].
    """
    precision_j = (-logvar_j).exp()  # (J, D)
    trace = logvar_i.exp() @ precision_j.T  # (I, J): sum_d s_i / s_j
    log_det = logvar_j.sum(dim=1) - logvar_i.sum(dim=1)[:, None]  # (I, J)
    return 0.5 * (log_det + trace + _weighted_square_distance(mu_i, mu_j, precision_j) - mu_i.shape[1])


def bhattacharyya_distance(mu_i: Tensor, logvar_i: Tensor, mu_j: Tensor, logvar_j: Tensor) -> Tensor:
    """BD(p_i, p_j) for every pair of diagonal Gaussians: (I, D) x 2, (J, D) x 2 -> (I, J).

    sum_d [(mu_i - mu_j)^2 / (4 (s_i + s_j)) + 0.5 log((s_i + s_j) / 2) - 0.25 (log s_i + log s_j)].
    The average variance couples i and j inside the log, so no matmul applies: the sum is accumulated
    one dimension at a time, in (I, J) memory.
    """
    variance_i, variance_j = logvar_i.exp(), logvar_j.exp()
    total = None
    for d in range(mu_i.shape[1]):
        total_variance = variance_i[:, d, None] + variance_j[None, :, d]  # (I, J): s_i + s_j
        difference = mu_i[:, d, None] - mu_j[None, :, d]  # (I, J)
        term = torch.addcdiv(0.5 * total_variance.log(), difference.square(), total_variance, value=0.25)
        total = term if total is None else total + term
    constant = 0.5 * math.log(2) * mu_i.shape[1]  # the 1/2 of the average variance, (s_i + s_j) / 2
    return total - 0.25 * (logvar_i.sum(dim=1)[:, None] + logvar_j.sum(dim=1)[None]) - constant


def _log_mean_exp_of_negative(
    divergence: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor], mu: Tensor, logvar: Tensor, chunk_size: int
) -> Tensor:
    """mean_i log mean_j exp(-divergence(p_i, p_j)), block by block with a running log-sum-exp."""
    n = mu.shape[0]
    total = mu.new_zeros(())
    for start in range(0, n, chunk_size):
        rows = slice(start, start + chunk_size)
        running = None  # (I,): log sum_j exp(-divergence) over the blocks seen so far
        for partner_start in range(0, n, chunk_size):
            columns = slice(partner_start, partner_start + chunk_size)
            block = torch.logsumexp(-divergence(mu[rows], logvar[rows], mu[columns], logvar[columns]), dim=1)  # (I,)
            running = block if running is None else torch.logaddexp(running, block)
        total = total + running.sum()
    return total / n - math.log(n)


def _jensen(mu: Tensor, logvar: Tensor, eps: Tensor | None, chunk_size: int) -> Tensor:
    """mean_ij KL(p_i || p_j) in closed form, O(N * D) time and memory: the double sum factorises."""
    n, d = mu.shape
    precision = (-logvar).exp()  # (N, D)
    total_precision = precision.sum(dim=0)  # (D,)
    centre = (precision * mu).sum(dim=0) / total_precision  # (D,)
    spread = (precision * (mu - centre).square()).sum(dim=0)  # (D,): sum_j w_j (mu_j - m)^2
    # mean_ij (mu_i - mu_j)^2 w_j = (1/N^2) sum_i [spread + W (mu_i - m)^2]   (parallel-axis theorem)
    square_term = (spread.sum() * n + (total_precision * (mu - centre).square()).sum()) / n**2
    trace_term = (logvar.exp().sum(dim=0) * total_precision).sum() / n**2  # mean_ij sum_d s_i / s_j
    # The log-determinant term, mean_ij sum_d (logvar_j - logvar_i), vanishes in the double mean.
    return 0.5 * (trace_term + square_term - d)


def _pairwise_kl(mu: Tensor, logvar: Tensor, eps: Tensor | None, chunk_size: int) -> Tensor:
    if _recording(mu, logvar):
        return -_log_mean_exp_of_negative(pairwise_kl, mu, logvar, chunk_size)
    return math.log(mu.shape[0]) - _fast_pairwise_kl(mu, logvar, chunk_size).mean()


def _bhattacharyya(mu: Tensor, logvar: Tensor, eps: Tensor | None, chunk_size: int) -> Tensor:
    # BD works on its (I, J) blocks element by element, D times over: blocks a quarter of chunk_size on a
    # side stay in the L2 cache (256 x 256 floats), 3.5 times faster than 1024 x 1024 on a 2-core Xeon.
    if _recording(mu, logvar):
        return -_log_mean_exp_of_negative(bhattacharyya_distance, mu, logvar, max(1, chunk_size // 4))
    return math.log(mu.shape[0]) - _fast_bhattacharyya(mu, logvar, chunk_size).mean()


def _log_sum_of_others(z: Tensor, own: Tensor, mu: Tensor, logvar: Tensor, chunk_size: int) -> Tensor:
    """log sum_{j != own_m} N(z_m; mu_j, s_j) for each row of z: (M, D), (M,) int64 -> (M,), block by
    block; component own_m is masked out of its row, so no cancellation against it is needed."""
    n, d = mu.shape
    log_normaliser = -0.5 * (d * math.log(2 * math.pi) + logvar.sum(dim=1))  # (N,)
    precision = (-logvar).exp()
    rows = torch.arange(len(z), device=z.device)
    running = None
    for start in range(0, n, chunk_size):
        columns = slice(start, start + chunk_size)
        log_density = log_normaliser[columns] - 0.5 * _weighted_square_distance(z, mu[columns], precision[columns])  # (M, J)
        inside = (own >= start) & (own < start + log_density.shape[1])  # (M,): rows whose own component is in this block
        log_density[rows[inside], own[inside] - start] = -math.inf
        block = torch.logsumexp(log_density, dim=1)
        running = block if running is None else torch.logaddexp(running, block)
    return running


# Without a graph to record, the pairwise terms of a tile of rows x chunk_size partners are written into one
# buffer that stays in the cache, exponentiated in place and summed into their rows: each term is written and read
# a few times while it is in the cache, where the block code above makes several chunk_size^2 temporaries.
# For KL and Monte Carlo the tile is one matmul of augmented features (K = 2 D + 2), so a pair costs a row of
# that matmul, one exp and one add. With a graph to record, the block code runs: autograd keeps its blocks.
# The tiles hold their exponents in base 2 (log2 e folded into the features) and are raised with exp2: torch's
# exp2 runs 2 to 3 times faster than its exp on CPUs where exp goes through MKL's vector library (AMD EPYC:
# 0.33 against 0.9 ns per float32), and the sums are the same sums of e^x.

LOG2E = 1 / math.log(2)


def _recording(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _tile_rows(chunk_size: int, dtype: torch.dtype) -> int:
    """Rows of a tile of chunk_size partners: chunk_size^2 bytes, 1 MiB for the default, about an L2 cache."""
    return max(1, chunk_size // (torch.finfo(dtype).bits // 8))


def _smallest_exponent(dtype: torch.dtype) -> float:
    """The floor of the base-2 exponents: powers that land at or below the smallest normal number take a slow path
    (x86, float32 and float64), so they are raised to 2 times it, which adds at most 2 N tiny to a row's sum; a sum
    is kept only where that is below its rounding error (`_log_sum_exp_rows`)."""
    return math.log2(torch.finfo(dtype).tiny) + 1


def _own_positions(own: Tensor, chunk_size: int) -> dict[int, tuple[Tensor, Tensor]]:
    """partner block -> (rows, columns in that block) of the entries own_i to mask: (I,) int64 -> dict."""
    block = torch.div(own, chunk_size, rounding_mode="floor")  # (I,)
    positions = {}
    for k in torch.unique(block).tolist():
        rows = (block == k).nonzero().squeeze(1)
        positions[k] = (rows, own[rows] - k * chunk_size)
    return positions


def _tile_pass(
    state, fill, own: Tensor | None, n_columns: int, chunk_size: int, buffer: Tensor, *, maximum: bool = False, shift: Tensor | None = None
) -> Tensor:
    """sum_j 2^(x_ij - shift_i), or max_j x_ij, over the partner blocks of one tile of rows, the entries (i, own_i)
    left out: -> (I,)."""
    masked = {} if own is None else _own_positions(own, chunk_size)
    smallest = _smallest_exponent(buffer.dtype)
    total = None
    for k, start in enumerate(range(0, n_columns, chunk_size)):
        width = min(chunk_size, n_columns - start)
        tile = fill(state, start, start + width, buffer)  # (I, width): x_ij, written into the buffer
        rows, columns = masked.get(k, (None, None))
        if maximum:
            if rows is not None:
                tile[rows, columns] = -math.inf
            block = tile.amax(dim=1)
            total = block if total is None else torch.maximum(total, block)
        else:
            if shift is not None:
                tile.sub_(shift[:, None])
            tile.clamp_min_(smallest).exp2_()
            if rows is not None:
                tile[rows, columns] = 0.0
            block = tile.sum(dim=1)
            total = block if total is None else total.add_(block)
    return total


def _log_sum_exp_rows(prepare, fill, n_rows: int, n_columns: int, chunk_size: int, rows: int, dtype: torch.dtype, device) -> Tensor:
    """ln sum_{j != own_i} 2^x_ij for every row of an (n_rows, n_columns) matrix x of base-2 exponents that is made
    tile by tile and never stored, `rows` x chunk_size entries at a time: prepare(index) -> (state, own or None) for
    a slice or an index of rows, fill(state, start, stop, buffer) -> x[rows, start:stop] written into the buffer.
    -> (n_rows,), natural logs.

    The entries are raised without a shift: the callers arrange x_ij <= 0 with a row's largest entry near
    0 (a component against itself, or the draw's own density). Rows whose sum overflows or is too small to hold
    its terms' digits (all partners far away) are done again with their maximum as the shift: a max pass, then
    the sum pass."""
    buffer = torch.empty(rows * chunk_size, dtype=dtype, device=device)
    sums = torch.empty(n_rows, dtype=dtype, device=device)
    for start in range(0, n_rows, rows):
        index = slice(start, min(start + rows, n_rows))
        state, own = prepare(index)
        sums[index] = _tile_pass(state, fill, own, n_columns, chunk_size, buffer)
    # below this, the raised terms could hold more than a rounding error of the sum
    retry = ~(sums >= n_columns * 2 ** _smallest_exponent(dtype) / torch.finfo(dtype).eps) | sums.isinf()
    log_sums = sums.log_()
    if retry.any():
        again = retry.nonzero().squeeze(1)
        for start in range(0, len(again), rows):
            index = again[start : start + rows]
            state, own = prepare(index)
            maxima = _tile_pass(state, fill, own, n_columns, chunk_size, buffer, maximum=True)  # (I,)
            shift = torch.where(maxima.isfinite(), maxima, 0.0)  # -inf: no partner at all, the sum is 0
            log_sums[index] = _tile_pass(state, fill, own, n_columns, chunk_size, buffer, shift=shift).log() + shift / LOG2E
    return log_sums


def _gemm_fill(partners: Tensor):
    """fill for x_ij = a_i . b_j: state a (I, K), partners b (N, K)."""

    def fill(a: Tensor, start: int, stop: int, buffer: Tensor) -> Tensor:
        tile = buffer[: len(a) * (stop - start)].view(len(a), stop - start)
        return torch.mm(a, partners[start:stop].T, out=tile)

    return fill


def _partner_features(mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """The features b_j = log2(e) [w_j, w_j m_j, -(sum_d w_j m_j^2 + logvar_j) / 2, 1] (N, 2 D + 2), w = exp(-logvar),
    of the means m = mu - centre, centred on the precision-weighted mean (D,) so that the expanded squares
    do not cancel when the means share an offset. The factor log2(e) makes a_i . b_j a base-2 exponent."""
    precision = (-logvar).exp()  # (N, D)
    centre = (precision * mu).sum(dim=0) / precision.sum(dim=0)  # (D,)
    weighted = precision * (mu - centre)  # (N, D)
    constant = -0.5 * ((weighted * (mu - centre)).sum(dim=1) + logvar.sum(dim=1))  # (N,)
    features = torch.cat([precision, weighted, constant[:, None], torch.ones_like(constant)[:, None]], dim=1)
    return features.mul_(LOG2E), centre


def _fast_pairwise_kl(mu: Tensor, logvar: Tensor, chunk_size: int) -> Tensor:
    """log sum_j exp(-KL(p_i || p_j)) per i: (N,). -KL_ij = a_i . b_j with a_i = [-(s_i + m_i^2) / 2, m_i, 1,
    (sum_d logvar_i + D) / 2] and b_j from `_partner_features`."""
    n, d = mu.shape
    partners, centre = _partner_features(mu, logvar)
    m = mu - centre
    rows = torch.cat([-0.5 * (logvar.exp() + m.square()), m, torch.ones_like(m[:, :1]), 0.5 * (logvar.sum(dim=1, keepdim=True) + d)], dim=1)
    tile_rows = _tile_rows(chunk_size, mu.dtype)
    return _log_sum_exp_rows(lambda index: (rows[index], None), _gemm_fill(partners), n, n, chunk_size, tile_rows, mu.dtype, mu.device)


def _fast_log_sum_of_others(mu: Tensor, logvar: Tensor, eps: Tensor, log_own: Tensor, chunk_size: int) -> Tensor:
    """log sum_{j != i} p_j(z_ik) for the S N draws z_ik = mu_i + s_i^0.5 eps_ik in the order of `_log_ratios`:
    (S * N,). The row of draw ik is a = [-z^2 / 2, z, 1, -log p_i(z_ik) - D log(2 pi) / 2], so its entries are
    log p_j(z_ik) - log p_i(z_ik): the own component, masked out, would read 0."""
    n, d = mu.shape
    partners, centre = _partner_features(mu, logvar)
    flat = eps.reshape(-1, d)  # (S * N, D)
    scale = (0.5 * logvar).exp()
    last = -log_own - 0.5 * d * math.log(2 * math.pi)  # (S * N,)

    def prepare(index):
        positions = torch.arange(index.start, index.stop, device=mu.device) if isinstance(index, slice) else index
        own = positions % n  # (I,)
        z = mu[own] - centre + scale[own] * flat[index]  # (I, D)
        return torch.cat([-0.5 * z.square(), z, torch.ones_like(z[:, :1]), last[index, None]], dim=1), own

    rows = _tile_rows(chunk_size, mu.dtype)
    return log_own + _log_sum_exp_rows(prepare, _gemm_fill(partners), len(flat), n, chunk_size, rows, mu.dtype, mu.device)


def _product_groups(logvar: Tensor, dtype: torch.dtype) -> list[list[int]]:
    """Runs of dimensions whose products of s_i + s_j (rescaled) can neither overflow nor reach the subnormals."""
    half_range = 0.5 * (logvar.amax(dim=0) - logvar.amin(dim=0))  # (D,): log t' lies in log 2 +- this
    finfo = torch.finfo(dtype)
    limit = min(math.log(finfo.max), -math.log(finfo.tiny)) - 2
    groups, used = [[]], 0.0
    for d, width in enumerate(half_range.tolist()):
        if groups[-1] and used + math.log(2) + width > limit:
            groups.append([])
            used = 0.0
        groups[-1].append(d)
        used += math.log(2) + width
    return groups


def _fast_bhattacharyya(mu: Tensor, logvar: Tensor, chunk_size: int) -> Tensor:
    """log sum_j exp(-BD(p_i, p_j)) per i: (N,).

    With s' = s / g and m' = m / g^0.5 for a scale g per dimension (the middle of logvar's range),
    -BD_ij = c_i + c_j - sum_d (m'_i - m'_j)^2 / (4 t'_d) - log(prod_d t'_d) / 2, t' = s'_i + s'_j and
    c = sum_d log(2 s') / 4: one log per run of dimensions (`_product_groups`) instead of one per dimension.
    The tiles hold -BD_ij log2(e), with log2 for the log."""
    n, d = mu.shape
    middle = 0.5 * (logvar.amax(dim=0) + logvar.amin(dim=0))  # (D,): log g
    variance = (logvar - middle).exp()  # (N, D): s'
    mean = (mu - mu.mean(dim=0)) * (-0.5 * middle).exp()  # (N, D): m'
    constant = 0.25 * LOG2E * (logvar - middle + math.log(2)).sum(dim=1)  # (N,): c log2(e)
    variance_t, mean_t = variance.T.contiguous(), mean.T.contiguous()  # (D, N): a dimension's partners in a row
    groups = _product_groups(logvar, mu.dtype)
    rows = _tile_rows(chunk_size, mu.dtype)
    scratch = torch.empty(3, rows * chunk_size, dtype=mu.dtype, device=mu.device)

    def prepare(index) -> tuple[tuple, None]:
        # a dimension's values as (I, 1) columns, made once per tile of rows
        return (variance[index].T[:, :, None].unbind(), mean[index].T[:, :, None].unbind(), constant[index, None]), None

    def fill(state: tuple, start: int, stop: int, buffer: Tensor) -> Tensor:
        variance_i, mean_i, constant_i = state  # D x (I, 1), D x (I, 1), (I, 1)
        size = (len(constant_i), stop - start)
        variance_j, mean_j = variance_t[:, None, start:stop].unbind(), mean_t[:, None, start:stop].unbind()  # D x (1, J)
        tile = buffer[: size[0] * size[1]].view(size)
        total, difference, product = (part[: tile.numel()].view(size) for part in scratch)
        torch.add(constant_i, constant[None, start:stop], out=tile)
        for group in groups:
            for k, dim in enumerate(group):
                t = total if k else product  # the group's first t' starts the product
                torch.add(variance_i[dim], variance_j[dim], out=t)
                torch.sub(mean_i[dim], mean_j[dim], out=difference)
                tile.addcdiv_(difference.mul_(difference), t, value=-0.25 * LOG2E)
                if k:
                    product.mul_(total)
            tile.add_(product.log2_(), alpha=-0.5)
        return tile

    return _log_sum_exp_rows(prepare, fill, n, n, chunk_size, rows, mu.dtype, mu.device)


def _log_ratios(mu: Tensor, logvar: Tensor, eps: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """log p_i(z_ik) and log sum_{j != i} p_j(z_ik) for z_ik = mu_i + s_i^0.5 eps_ik, eps (S, N, D):
    (S * N,) each, O(S N^2 D) time. The one pass that both Monte Carlo estimates share."""
    d = mu.shape[1]
    log_own = (-0.5 * (d * math.log(2 * math.pi) + logvar.sum(dim=1) + eps.square().sum(dim=2))).flatten()  # (S * N,): log p_i(z_ik)
    if not _recording(mu, logvar, eps):
        return log_own, _fast_log_sum_of_others(mu, logvar, eps, log_own, chunk_size)
    z = reparameterise(mu, logvar, eps).flatten(0, 1)  # (S * N, D)
    own = torch.arange(mu.shape[0], device=mu.device).repeat(eps.shape[0])  # (S * N,): i of row ik
    log_others = torch.cat(
        [
            _log_sum_of_others(z[start : start + chunk_size], own[start : start + chunk_size], mu, logvar, chunk_size)
            for start in range(0, len(z), chunk_size)
        ]
    )
    return log_own, log_others


def _monte_carlo(mu: Tensor, logvar: Tensor, eps: Tensor | None, chunk_size: int) -> Tensor:
    """I = mean_ik [log p_i(z_ik) - log p(z_ik)], p = 1/N sum_j p_j.

    The log-ratio form (rather than -mean log p(z) minus the exact H(z|x)) cancels the noise that both
    terms share: it is exact, sample by sample, for identical or for far-apart components.
    """
    return _mc_of(*_log_ratios(mu, logvar, eps, chunk_size), mu.shape[0])


def _mc_of(log_own: Tensor, log_others: Tensor, n: int) -> Tensor:
    """The "mc" estimate from `_log_ratios`'s two (S * N,) terms: the own component added back to the mixture."""
    return (log_own - torch.logaddexp(log_others, log_own)).mean() + math.log(n)


def _loo_of(log_own: Tensor, log_others: Tensor, n: int) -> Tensor:
    """The "loo" estimate from `_log_ratios`'s two (S * N,) terms, for n >= 2."""
    return (log_own - log_others).mean() + math.log(n - 1)


def _leave_one_out(mu: Tensor, logvar: Tensor, eps: Tensor | None, chunk_size: int) -> Tensor:
    """I = mean_ik [log p_i(z_ik) - log p_-i(z_ik)], p_-i = 1/(N-1) sum_{j != i} p_j; needs N >= 2."""
    if mu.shape[0] < 2:
        raise ValueError(f'method "loo" needs N >= 2 points, got {mu.shape[0]}')
    return _loo_of(*_log_ratios(mu, logvar, eps, chunk_size), mu.shape[0])


# name -> I(x; z) of the batch mixture, (mu, logvar, eps, chunk_size) -> scalar; only "mc" and "loo" read eps
# (S, N, D), its standard-normal draws (see `draw_mc_noise`), the others take None.
METHODS: dict[str, Callable[[Tensor, Tensor, Tensor | None, int], Tensor]] = {
    "jensen": _jensen,
    "pairwise-kl": _pairwise_kl,
    "bhattacharyya": _bhattacharyya,
    "mc": _monte_carlo,
    "loo": _leave_one_out,
}
DRAWING = ("mc", "loo")  # the methods that read standard-normal draws


def mutual_information(
    mu: Tensor | np.ndarray,
    logvar: Tensor | np.ndarray,
    *,
    method: str,
    generator: torch.Generator | None = None,
    n_samples: int = 1,
    chunk_size: int = CHUNK_SIZE,
) -> Tensor | float:
    """I(x; z) in nats of the mixture of N(mu_i, diag exp(logvar_i)): (N, D), (N, D) -> scalar, a 0-d tensor
    (differentiable) for tensors, a float for NumPy arrays.

    `method`: a key of METHODS. Cost: "jensen" O(N D) time and memory; "pairwise-kl" O(N^2 D) time,
    O(N D + chunk_size^2) memory; "bhattacharyya" the same;
    "mc" and "loo" O(n_samples N^2 D) time, O(n_samples N D + chunk_size^2) memory, draw n_samples points per
    code from `generator`, or without one from a fresh generator on mu's device seeded with DEFAULT_SEED: the
    same codes give the same value, and torch's global generator is neither read nor advanced.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    mu, logvar, arrays = _as_tensors(mu, logvar)
    _check(mu, logvar, chunk_size)
    eps = None
    if method in DRAWING:
        if generator is None:
            generator = torch.Generator(device=mu.device).manual_seed(DEFAULT_SEED)
        eps = draw_mc_noise(mu, n_samples, generator)
    value = METHODS[method](mu, logvar, eps, chunk_size)
    return float(value) if arrays else value


def draw_mc_noise(mu: Tensor, n_samples: int, generator: torch.Generator | None) -> Tensor:
    """The standard-normal draws of the "mc" estimate: (S, N, D) for mu (N, D), in mu's dtype, on its device."""
    check_positive_int("n_samples", n_samples)
    return torch.randn((n_samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)


def mixture_entropy(mu: Tensor | np.ndarray, logvar: Tensor | np.ndarray, **options) -> Tensor | float:
    """H(z) in nats of the mixture of N(mu_i, diag exp(logvar_i)): the mean exact conditional entropy plus
    I(x; z) by `mutual_information(mu, logvar, **options)` (method=..., generator, n_samples, chunk_size).
    (N, D), (N, D) -> scalar, a tensor or (for NumPy arrays) a float, as `mutual_information`'s."""
    mu, logvar, arrays = _as_tensors(mu, logvar)
    entropy = conditional_entropy(logvar).mean() + mutual_information(mu, logvar, **options)
    return float(entropy) if arrays else entropy


# The estimates `ipae info` and the experiments report: the lower bound, Monte Carlo, the upper bounds.
REPORTED = {
    "bhattacharyya": "lower bound (Bhattacharyya)",
    "mc": "Monte Carlo",
    "loo": "leave-one-out estimate (own component out)",
    "pairwise-kl": "upper bound (pairwise KL)",
    "jensen": "Jensen bound (eq. 10 - D/2)",
}


def estimates(mu: Tensor, logvar: Tensor, *, generator: torch.Generator, n_samples: int, chunk_size: int = CHUNK_SIZE) -> dict[str, float]:
    """I(x; z) by every method of REPORTED. "mc" and "loo" share one pass over the same `n_samples`
    draws per point, so their difference is not Monte Carlo noise between two draws."""
    _check(mu, logvar, chunk_size)
    found = {}
    for method in REPORTED:
        if method in DRAWING:
            continue
        found[method] = float(METHODS[method](mu, logvar, None, chunk_size))
    log_own, log_others = _log_ratios(mu, logvar, draw_mc_noise(mu, n_samples, generator), chunk_size)
    n = mu.shape[0]
    found["mc"] = float(_mc_of(log_own, log_others, n))
    found["loo"] = float(_loo_of(log_own, log_others, n)) if n > 1 else math.nan
    return {method: found[method] for method in REPORTED}
