"""Tests of ipae.information against Python-float loops, closed forms and torch.distributions.

information_potential takes the codes z = reparameterise(mu, logvar, eps); the loops below build each
z_ki = mu_i + sigma_i * eps_ki themselves from eps.

Every reference here is computed independently of the library's vectorised formulas: plain loops over
i, j, k and d with `math` on Python floats.
"""

import math

import pytest
import torch

from ipae.information import conditional_entropy, draw_partners, gaussian_kl, information_potential, reparameterise

F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussians(b: int, d: int, *, seed: int, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 means (around `offset`) and log-variances (sigma roughly in [0.2, 5])."""
    generator = _generator(seed)
    mu = offset + torch.randn(b, d, generator=generator, dtype=F64)
    logvar = 0.8 * torch.randn(b, d, generator=generator, dtype=F64)
    return mu, logvar


def _noise(shape: tuple[int, ...], *, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=_generator(seed), dtype=F64)


def _potential(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, partners: torch.Tensor | None = None) -> torch.Tensor:
    """information_potential of the codes z = reparameterise(mu, logvar, eps), as a model computes it."""
    return information_potential(mu, logvar, reparameterise(mu, logvar, eps), partners)


# --- references by loops --------------------------------------------------------------------------------------------


def _potential_by_loops(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, partners: torch.Tensor | None = None) -> list[float]:
    """Eq. 10's summand of each sample i: the mean over k and over the partners j of
    0.5 * sum_d (mu[j,d] - mu[i,d] - sigma[i,d] * eps[k,i,d])^2 / sigma[j,d]^2, sigma = exp(0.5 * logvar)."""
    m, lv = mu.tolist(), logvar.tolist()
    e = eps.tolist() if eps.ndim == 3 else [eps.tolist()]
    b, d = len(m), len(m[0])
    values = []
    for i in range(b):
        js = list(range(b)) if partners is None else [int(j) for j in partners[i].tolist()]
        total = 0.0
        for k in range(len(e)):
            for j in js:
                term = 0.0
                for c in range(d):
                    sigma_i = math.exp(0.5 * lv[i][c])
                    sigma_j = math.exp(0.5 * lv[j][c])
                    term += (m[j][c] - m[i][c] - sigma_i * e[k][i][c]) ** 2 / sigma_j**2
                total += 0.5 * term
        values.append(total / (len(e) * len(js)))
    return values


def _potential_expectation_by_loops(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[list[float], list[float]]:
    """E over eps of the all-pairs summand of each i, and its variance for one draw eps_i ~ N(0, I).

    Per dimension the summand is c - b * e + q * e^2 with e ~ N(0, 1), where (means over j)
    c = mean 0.5 (mu_j - mu_i)^2 / s_j^2, b = mean s_i (mu_j - mu_i) / s_j^2, q = mean 0.5 s_i^2 / s_j^2:
    its mean is c + q, i.e. mean_j 0.5 ((mu_j - mu_i)^2 + s_i^2) / s_j^2, and its variance b^2 + 2 q^2.
    """
    m, lv = mu.tolist(), logvar.tolist()
    n, d = len(m), len(m[0])
    means, variances = [], []
    for i in range(n):
        mean = variance = 0.0
        for c in range(d):
            s2_i = math.exp(lv[i][c])
            c_term = b_term = q_term = 0.0
            for j in range(n):
                s2_j = math.exp(lv[j][c])
                c_term += 0.5 * (m[j][c] - m[i][c]) ** 2 / s2_j / n
                b_term += math.sqrt(s2_i) * (m[j][c] - m[i][c]) / s2_j / n
                q_term += 0.5 * s2_i / s2_j / n
            mean += c_term + q_term
            variance += b_term**2 + 2 * q_term**2
        means.append(mean)
        variances.append(variance)
    return means, variances


def _tensor(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# --- reparameterise ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_shape", [(5, 3), (1, 5, 3), (4, 5, 3)])
def test_reparameterise_is_mu_plus_sigma_times_eps(noise_shape):
    mu, logvar = _gaussians(5, 3, seed=46, offset=2.0)
    logvar = logvar + 1.5  # sigma = exp(logvar / 2) well away from 1, so exp(logvar) or sqrt(2 pi) slips would show
    eps = _noise(noise_shape, seed=47)
    m, lv = mu.tolist(), logvar.tolist()
    draws = eps.tolist() if eps.ndim == 3 else [eps.tolist()]
    expected = [[[m[i][c] + math.exp(lv[i][c] / 2) * draws[k][i][c] for c in range(3)] for i in range(5)] for k in range(len(draws))]
    z = reparameterise(mu, logvar, eps)
    assert z.shape == noise_shape and z.dtype == F64
    torch.testing.assert_close(z, _tensor(expected).reshape(noise_shape), rtol=1e-14, atol=1e-14)
    # zero noise gives the means, unit noise mu + sigma
    torch.testing.assert_close(reparameterise(mu, logvar, torch.zeros_like(eps)), mu.expand(noise_shape), rtol=0, atol=0)
    sigma = _tensor([[math.sqrt(math.exp(v)) for v in row] for row in lv])
    torch.testing.assert_close(reparameterise(mu, logvar, torch.ones(5, 3, dtype=F64)), mu + sigma, rtol=1e-14, atol=1e-14)


# --- information_potential against loops ---------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 1000.0])  # a large common offset would expose cancellation in the all-pairs path
@pytest.mark.parametrize("shape", [(12, 4), (7, 1), (1, 3)])
def test_all_pairs_potential_with_one_draw_matches_loops(offset, shape):
    mu, logvar = _gaussians(*shape, seed=1, offset=offset)
    eps = _noise(shape, seed=2)  # K = 1 given as (B, D)
    expected = _tensor(_potential_by_loops(mu, logvar, eps))
    torch.testing.assert_close(_potential(mu, logvar, eps), expected, rtol=1e-10, atol=0)
    # (B, D) is the same as (1, B, D)
    torch.testing.assert_close(_potential(mu, logvar, eps[None]), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("offset", [0.0, 1000.0, -1000.0])
@pytest.mark.parametrize("k", [2, 3])
def test_all_pairs_potential_with_several_draws_matches_loops(offset, k):
    mu, logvar = _gaussians(10, 3, seed=3, offset=offset)
    eps = _noise((k, 10, 3), seed=4)
    expected = _tensor(_potential_by_loops(mu, logvar, eps))
    torch.testing.assert_close(_potential(mu, logvar, eps), expected, rtol=1e-10, atol=0)


def test_all_pairs_potential_with_very_unequal_variances_matches_loops():
    # precisions spanning ~1e-4 .. 1e4 make the precision-weighted centre sit close to the sharpest component
    mu, _ = _gaussians(8, 2, seed=5, offset=1000.0)
    logvar = torch.linspace(-9.0, 9.0, 16, dtype=F64).reshape(8, 2)
    eps = _noise((2, 8, 2), seed=6)
    expected = _tensor(_potential_by_loops(mu, logvar, eps))
    torch.testing.assert_close(_potential(mu, logvar, eps), expected, rtol=1e-10, atol=0)


# rows with repeated indices, a sample as its own partner, and a single partner repeated
PARTNERS = [[0, 0, 5], [7, 1, 1], [2, 3, 4], [6, 6, 6], [1, 2, 3], [4, 4, 0], [5, 7, 2], [3, 3, 7]]


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("k", [1, 3])
def test_partner_potential_matches_loops(offset, k):
    mu, logvar = _gaussians(8, 4, seed=7, offset=offset)
    eps = _noise((k, 8, 4), seed=8)
    partners = torch.tensor(PARTNERS)
    expected = _tensor(_potential_by_loops(mu, logvar, eps, partners))
    torch.testing.assert_close(_potential(mu, logvar, eps, partners), expected, rtol=1e-10, atol=0)
    # int32 partners give the same values
    torch.testing.assert_close(_potential(mu, logvar, eps, partners.int()), expected, rtol=1e-10, atol=0)
    if k == 1:  # and so does eps given as (B, D)
        torch.testing.assert_close(_potential(mu, logvar, eps[0], partners), expected, rtol=1e-10, atol=0)


def test_a_single_partner_per_sample_matches_loops():
    mu, logvar = _gaussians(5, 2, seed=9)
    eps = _noise((5, 2), seed=10)
    partners = torch.tensor([[4], [4], [0], [3], [1]])
    expected = _tensor(_potential_by_loops(mu, logvar, eps, partners))
    torch.testing.assert_close(_potential(mu, logvar, eps, partners), expected, rtol=1e-10, atol=0)


def test_partners_listing_the_whole_batch_once_give_the_all_pairs_value():
    mu, logvar = _gaussians(6, 3, seed=11, offset=1000.0)
    eps = _noise((2, 6, 3), seed=12)
    # every row a different permutation of 0..5
    partners = torch.stack([torch.randperm(6, generator=_generator(13 + i)) for i in range(6)])
    torch.testing.assert_close(_potential(mu, logvar, eps, partners), _potential(mu, logvar, eps), rtol=1e-10, atol=0)


# --- known answers ------------------------------------------------------------------------------------------------


def test_the_potential_averages_to_its_closed_form_over_the_noise():
    mu, logvar = _gaussians(12, 4, seed=14)
    means, variances = _potential_expectation_by_loops(mu, logvar)
    k = 20_000
    eps = _noise((k, 12, 4), seed=15)
    value = _potential(mu, logvar, eps)
    standard_error = (_tensor(variances) / k).sqrt()
    z_scores = (value - _tensor(means)) / standard_error
    assert z_scores.abs().max() < 5, z_scores


def test_the_closed_form_expectation_matches_an_explicit_gauss_hermite_average():
    # E over e ~ N(0, 1) of a quadratic is exact with 2-point Gauss-Hermite nodes e = +-1 (weights 1/2) per dimension;
    # averaging the loop summand over all 2^D sign patterns gives the expectation exactly.
    mu, logvar = _gaussians(6, 3, seed=16)
    means, _ = _potential_expectation_by_loops(mu, logvar)
    patterns = torch.tensor([[(p >> c) & 1 for c in range(3)] for p in range(8)], dtype=F64) * 2 - 1  # (8, 3) of +-1
    eps = patterns[:, None, :].expand(8, 6, 3)  # the same sign pattern for every sample of a draw
    torch.testing.assert_close(_tensor(_potential_by_loops(mu, logvar, eps)), _tensor(means), rtol=1e-12, atol=0)
    torch.testing.assert_close(_potential(mu, logvar, eps), _tensor(means), rtol=1e-10, atol=0)


def test_identical_components_have_potential_d_over_2_in_expectation():
    b, d = 6, 4
    centre = torch.randn(d, generator=_generator(17), dtype=F64)
    mu = centre.expand(b, d).clone()
    logvar = (0.5 * torch.randn(d, generator=_generator(18), dtype=F64)).expand(b, d).clone()  # equal sigma across samples
    means, variances = _potential_expectation_by_loops(mu, logvar)
    torch.testing.assert_close(_tensor(means), torch.full((b,), d / 2, dtype=F64), rtol=1e-12, atol=0)  # the closed form is D/2
    torch.testing.assert_close(_tensor(variances), torch.full((b,), d / 2, dtype=F64), rtol=1e-12, atol=0)  # 2 * D * (1/2)^2
    # for any draw, the summand is exactly 0.5 * mean_k |eps_ki|^2
    k = 20_000
    eps = _noise((k, b, d), seed=19)
    value = _potential(mu, logvar, eps)
    torch.testing.assert_close(value, 0.5 * eps.square().sum(dim=2).mean(dim=0), rtol=1e-10, atol=0)
    # and its batch mean is D/2 within a few standard errors, sqrt(D / 2 / (B K))
    assert abs(float(value.mean()) - d / 2) < 5 * math.sqrt(d / 2 / (b * k))


def test_a_point_mass_batch_with_zero_noise_has_zero_potential():
    mu = torch.full((4, 3), 7.0, dtype=F64)
    logvar = torch.randn(3, generator=_generator(20), dtype=F64).expand(4, 3).clone()
    zero = torch.zeros(2, 4, 3, dtype=F64)
    torch.testing.assert_close(_potential(mu, logvar, zero), torch.zeros(4, dtype=F64), rtol=0, atol=1e-12)
    partners = torch.tensor([[1], [2], [3], [0]])
    torch.testing.assert_close(_potential(mu, logvar, zero, partners), torch.zeros(4, dtype=F64), rtol=0, atol=0)


# --- draw_partners ----------------------------------------------------------------------------------------------


def test_random_partners_are_unbiased_for_all_pairs():
    b, d, m = 6, 2, 20_000
    mu, logvar = _gaussians(b, d, seed=21)
    eps = _noise((b, d), seed=22)  # fixed noise: the partners are the only randomness
    partners = draw_partners(b, m, _generator(23))
    value = _potential(mu, logvar, eps, partners)
    all_pairs = _potential(mu, logvar, eps)
    # the spread over a uniform partner j of the per-pair term g_i(j), by loops
    per_pair = [[_potential_by_loops(mu, logvar, eps, torch.tensor([[j]] * b))[i] for j in range(b)] for i in range(b)]
    mean_over_j = [sum(row) / b for row in per_pair]
    torch.testing.assert_close(_tensor(mean_over_j), all_pairs, rtol=1e-10, atol=0)  # all pairs = the mean over j
    standard_error = [math.sqrt(sum((g - mean) ** 2 for g in row) / b / m) for row, mean in zip(per_pair, mean_over_j, strict=True)]
    z_scores = (value - all_pairs) / _tensor(standard_error)
    assert z_scores.abs().max() < 5, z_scores


def test_averaging_over_many_partner_draws_recovers_all_pairs():
    b, d = 5, 3
    mu, logvar = _gaussians(b, d, seed=24, offset=1000.0)
    eps = _noise((2, b, d), seed=25)
    generator = _generator(26)
    draws = torch.stack([_potential(mu, logvar, eps, draw_partners(b, 8, generator)) for _ in range(2000)])
    torch.testing.assert_close(draws.mean(dim=0), _potential(mu, logvar, eps), rtol=0.03, atol=0)


def test_draw_partners_shape_dtype_range_and_uniformity():
    b, m = 6, 3000
    partners = draw_partners(b, m, _generator(27))
    assert partners.shape == (b, m) and partners.dtype == torch.int64
    assert int(partners.min()) >= 0 and int(partners.max()) < b
    # chi-square against uniform over the batch, overall (5 dof) and row by row (5 dof each); loose bounds
    counts = torch.bincount(partners.flatten(), minlength=b).double()  # m expected of each index
    chi2 = float(((counts - m) ** 2 / m).sum())
    assert chi2 < 30, chi2  # P(chi2_5 > 30) ~ 1.5e-5
    for row in partners:
        row_counts = torch.bincount(row, minlength=b).double()
        row_chi2 = float(((row_counts - m / b) ** 2 / (m / b)).sum())
        assert row_chi2 < 30, row_chi2
    # every sample can be its own partner
    assert all(bool((partners[i] == i).any()) for i in range(b))


def test_draw_partners_is_reproducible_from_the_generator():
    first = draw_partners(7, 50, _generator(28))
    assert torch.equal(first, draw_partners(7, 50, _generator(28)))
    assert not torch.equal(first, draw_partners(7, 50, _generator(29)))
    # it draws exactly torch.randint(B, (B, M)) from the generator, and advances it
    assert torch.equal(first, torch.randint(7, (7, 50), generator=_generator(28)))
    generator = _generator(28)
    draw_partners(7, 50, generator)
    assert not torch.equal(draw_partners(7, 50, generator), first)


def test_a_batch_of_one_is_its_own_partner():
    partners = draw_partners(1, 4, _generator(30))
    assert torch.equal(partners, torch.zeros(1, 4, dtype=torch.int64))


# --- gaussian_kl and conditional_entropy ------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_gaussian_kl_matches_the_closed_form_by_loops(offset):
    mu, logvar = _gaussians(9, 4, seed=31, offset=offset)
    expected = []
    for row_mu, row_lv in zip(mu.tolist(), logvar.tolist(), strict=True):
        total = 0.0
        for m, lv in zip(row_mu, row_lv, strict=True):
            s2 = math.exp(lv)
            # KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2
            total += -0.5 * math.log(s2) + (s2 + m * m) / 2 - 0.5
        expected.append(total)
    torch.testing.assert_close(gaussian_kl(mu, logvar), _tensor(expected), rtol=1e-10, atol=0)


def test_gaussian_kl_against_torch_distributions_and_zero_at_the_prior():
    mu, logvar = _gaussians(5, 3, seed=32)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, prior).sum(dim=1), rtol=1e-10, atol=1e-14)
    assert torch.equal(gaussian_kl(torch.zeros(2, 4, dtype=F64), torch.zeros(2, 4, dtype=F64)), torch.zeros(2, dtype=F64))


def test_conditional_entropy_matches_the_closed_form_by_loops():
    _, logvar = _gaussians(9, 4, seed=33)
    expected = [sum(0.5 * math.log(2 * math.pi * math.e * math.exp(lv)) for lv in row) for row in logvar.tolist()]
    torch.testing.assert_close(conditional_entropy(logvar), _tensor(expected), rtol=1e-10, atol=1e-14)


def test_conditional_entropy_matches_torch_distributions():
    mu, logvar = _gaussians(9, 4, seed=34)
    reference = torch.distributions.Normal(mu, (0.5 * logvar).exp()).entropy().sum(-1)
    torch.testing.assert_close(conditional_entropy(logvar), reference, rtol=1e-10, atol=1e-14)
    # unit variance: D/2 log(2 pi e)
    torch.testing.assert_close(conditional_entropy(torch.zeros(1, 3, dtype=F64)), _tensor([1.5 * math.log(2 * math.pi * math.e)]))


# --- gradients, dtypes, devices -------------------------------------------------------------------------------------


def _leaves(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().clone().requires_grad_() for t in tensors)


def test_gaussian_kl_and_conditional_entropy_pass_gradcheck():
    mu, logvar = _leaves(*_gaussians(4, 3, seed=35))
    assert torch.autograd.gradcheck(gaussian_kl, (mu, logvar))
    assert torch.autograd.gradcheck(conditional_entropy, (logvar,))


@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("k", [1, 2])
def test_information_potential_passes_gradcheck(offset, k):
    mu, logvar = _gaussians(5, 2, seed=36, offset=offset)
    eps = _noise((k, 5, 2), seed=37)
    mu, logvar, eps = _leaves(mu, logvar, eps)
    partners = torch.tensor([[1, 1], [0, 4], [2, 3], [3, 0], [4, 2]])
    # through the codes z = reparameterise(mu, logvar, eps), as in training, and with z itself as the input
    assert torch.autograd.gradcheck(_potential, (mu, logvar, eps))
    assert torch.autograd.gradcheck(lambda m, lv, e: _potential(m, lv, e, partners), (mu, logvar, eps))
    z = reparameterise(mu, logvar, eps).detach().requires_grad_()
    assert torch.autograd.gradcheck(information_potential, (mu, logvar, z))
    assert torch.autograd.gradcheck(lambda m, lv, codes: information_potential(m, lv, codes, partners), (mu, logvar, z))


def test_all_pairs_gradient_matches_the_gradient_of_a_direct_pairwise_formula():
    # autograd of the (B, B, D) formula, written directly, against the library's parallel-axis form
    mu, logvar = _gaussians(6, 3, seed=38, offset=1000.0)
    eps = _noise((2, 6, 3), seed=39)
    mu1, lv1, eps1 = _leaves(mu, logvar, eps)
    _potential(mu1, lv1, eps1).sum().backward()
    mu2, lv2, eps2 = _leaves(mu, logvar, eps)
    z = mu2 + (0.5 * lv2).exp() * eps2  # (K, B, D)
    direct = 0.5 * ((mu2[None, None, :, :] - z[:, :, None, :]).square() / lv2.exp()[None, None, :, :]).sum(dim=3)  # (K, B_i, B_j)
    direct.mean(dim=(0, 2)).sum().backward()
    for a, b in ((mu1, mu2), (lv1, lv2), (eps1, eps2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10)


def test_float32_agrees_with_float64():
    mu, logvar = _gaussians(12, 4, seed=40, offset=2.0)
    eps = _noise((3, 12, 4), seed=41)
    mu, logvar, eps = (t.float().double() for t in (mu, logvar, eps))  # inputs exactly representable in float32
    partners = draw_partners(12, 3, _generator(42))
    for function, args in (
        (_potential, (mu, logvar, eps)),
        (lambda m, lv, e: _potential(m, lv, e, partners), (mu, logvar, eps)),
        (reparameterise, (mu, logvar, eps)),
        (gaussian_kl, (mu, logvar)),
        (conditional_entropy, (logvar,)),
    ):
        single = function(*(a.float() for a in args))
        assert single.dtype == torch.float32
        torch.testing.assert_close(single.double(), function(*args), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_agrees_with_cpu():
    mu, logvar = _gaussians(12, 4, seed=43, offset=1000.0)
    eps = _noise((3, 12, 4), seed=44)
    partners = draw_partners(12, 5, _generator(45))
    cuda_partners = draw_partners(12, 5, torch.Generator(device="cuda").manual_seed(45))
    assert cuda_partners.device.type == "cuda" and cuda_partners.dtype == torch.int64
    assert int(cuda_partners.min()) >= 0 and int(cuda_partners.max()) < 12
    for dtype, rtol in ((F64, 1e-10), (torch.float32, 1e-5)):
        for args in ((mu, logvar, eps), (mu, logvar, eps, partners)):
            cpu = _potential(*(a.to(dtype) if a.is_floating_point() else a for a in args))
            cuda = _potential(*(a.to("cuda", dtype) if a.is_floating_point() else a.cuda() for a in args))
            torch.testing.assert_close(cuda.cpu(), cpu, rtol=rtol, atol=0 if dtype == F64 else 1e-6)
        torch.testing.assert_close(
            gaussian_kl(mu.to("cuda", dtype), logvar.to("cuda", dtype)).cpu(), gaussian_kl(mu.to(dtype), logvar.to(dtype))
        )
        torch.testing.assert_close(conditional_entropy(logvar.to("cuda", dtype)).cpu(), conditional_entropy(logvar.to(dtype)))


# --- errors -------------------------------------------------------------------------------------------------------


def _z(*shape: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: gaussian_kl(_z(3), _z(3)), r"mu must have shape \(B, D\)"),
        (lambda: gaussian_kl(_z(3, 2), _z(3, 3)), "logvar must have the shape of mu"),
        (lambda: gaussian_kl(_z(3, 2), _z(2, 2)), "logvar must have the shape of mu"),
        (lambda: gaussian_kl(_z(0, 2), _z(0, 2)), r"B, D >= 1"),
        (lambda: gaussian_kl(_z(3, 0), _z(3, 0)), r"B, D >= 1"),
        (lambda: conditional_entropy(_z(3)), r"logvar must have shape \(B, D\)"),
        (lambda: conditional_entropy(_z(0, 2)), r"B, D >= 1"),
        (lambda: information_potential(_z(3), _z(3), _z(3)), r"mu must have shape \(B, D\)"),
        (lambda: information_potential(_z(3, 2), _z(3, 3), _z(3, 2)), "logvar must have the shape of mu"),
        (lambda: information_potential(_z(0, 2), _z(0, 2), _z(0, 2)), r"B, D >= 1"),
        (lambda: information_potential(_z(3, 2), _z(3, 2), _z(3, 3)), "z must have shape"),
        (lambda: information_potential(_z(3, 2), _z(3, 2), _z(2, 4, 2)), "z must have shape"),
        (lambda: information_potential(_z(3, 2), _z(3, 2), _z(6)), "z must have shape"),
        (lambda: information_potential(_z(3, 2), _z(3, 2), _z(1, 1, 3, 2)), "z must have shape"),
        (lambda: information_potential(_z(3, 2), _z(3, 2), _z(0, 3, 2)), r"K >= 1"),
        (lambda: information_potential(_z(3, 2), _z(3, 2), _z(3, 2), _z(2, 1, dtype=torch.int64)), "partners must have shape"),
        (lambda: information_potential(_z(3, 2), _z(3, 2), _z(3, 2), _z(3, 0, dtype=torch.int64)), "partners must have shape"),
        (lambda: information_potential(_z(3, 2), _z(3, 2), _z(3, 2), _z(3, dtype=torch.int64)), "partners must have shape"),
        (lambda: information_potential(_z(3, 2), _z(3, 2), _z(3, 2), _z(3, 1)), "integer"),
        (lambda: information_potential(_z(3, 2), _z(3, 2), _z(3, 2), _z(3, 1, dtype=torch.float32)), "integer"),
        (lambda: draw_partners(0, 1, torch.Generator()), r"must be an integer >= 1"),
        (lambda: draw_partners(3, 0, torch.Generator()), r"must be an integer >= 1"),
        (lambda: draw_partners(-2, 3, torch.Generator()), r"must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
