import math

import pytest
import torch

from ipae.information import conditional_entropy, draw_partners, gaussian_kl, information_potential

F64 = torch.float64


def _gaussians(b: int, d: int, *, seed: int = 0, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mu = offset + torch.randn(b, d, generator=generator, dtype=F64)
    logvar = 0.7 * torch.randn(b, d, generator=generator, dtype=F64)
    return mu, logvar


def _potential_by_loops(mu, logvar, eps, partners=None) -> list[float]:
    """Eq. 10's summand for each i, with Python floats: mean over k and j of
    0.5 * sum_d (mu_j - mu_i - sigma_i * eps_ki)^2 / sigma_j^2."""
    mu, logvar, eps = mu.tolist(), logvar.tolist(), eps.tolist()
    b, d = len(mu), len(mu[0])
    values = []
    for i in range(b):
        js = range(b) if partners is None else partners[i].tolist()
        total = 0.0
        for k in range(len(eps)):
            for j in js:
                total += 0.5 * sum(
                    (mu[j][e] - mu[i][e] - math.exp(0.5 * logvar[i][e]) * eps[k][i][e]) ** 2 / math.exp(logvar[j][e]) for e in range(d)
                )
        values.append(total / (len(eps) * len(js)))
    return values


@pytest.mark.parametrize("offset", [0.0, 1000.0])  # a large common offset would expose cancellation
@pytest.mark.parametrize("k", [1, 3])
def test_all_pairs_potential_matches_loops(offset, k):
    mu, logvar = _gaussians(9, 4, offset=offset)
    eps = torch.randn(k, 9, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    expected = torch.tensor(_potential_by_loops(mu, logvar, eps), dtype=F64)
    torch.testing.assert_close(information_potential(mu, logvar, eps), expected, rtol=1e-10, atol=0)


def test_a_single_noise_draw_may_be_given_as_a_matrix():
    mu, logvar = _gaussians(6, 3)
    eps = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(information_potential(mu, logvar, eps), information_potential(mu, logvar, eps[None]), rtol=0, atol=0)
    expected = torch.tensor(_potential_by_loops(mu, logvar, eps[None]), dtype=F64)
    torch.testing.assert_close(information_potential(mu, logvar, eps), expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("k", [1, 2])
def test_partner_potential_matches_loops(k):
    mu, logvar = _gaussians(8, 3, seed=3)
    eps = torch.randn(k, 8, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    partners = torch.tensor([[0, 0, 5], [7, 1, 1], [2, 3, 4], [6, 6, 6], [1, 2, 3], [4, 4, 0], [5, 7, 2], [3, 3, 7]])
    expected = torch.tensor(_potential_by_loops(mu, logvar, eps, partners), dtype=F64)
    torch.testing.assert_close(information_potential(mu, logvar, eps, partners), expected, rtol=1e-10, atol=0)


def test_the_potential_averages_to_its_closed_form_over_the_noise():
    # E_eps of the summand = mean_j 0.5 * sum_d ((mu_j - mu_i)^2 + sigma_i^2) / sigma_j^2.
    mu, logvar = _gaussians(5, 2, seed=5)
    m, lv = mu.tolist(), logvar.tolist()
    expected = [
        sum(0.5 * sum(((m[j][e] - m[i][e]) ** 2 + math.exp(lv[i][e])) / math.exp(lv[j][e]) for e in range(2)) for j in range(5)) / 5
        for i in range(5)
    ]
    eps = torch.randn(200_000, 5, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    # 200000 draws: the standard error is below 0.3% of each value here.
    torch.testing.assert_close(information_potential(mu, logvar, eps), torch.tensor(expected, dtype=F64), rtol=0.01, atol=0)


def test_identical_unit_gaussians_have_potential_d_over_2_in_expectation():
    mu, logvar = torch.zeros(4, 3, dtype=F64), torch.zeros(4, 3, dtype=F64)
    eps = torch.randn(100_000, 4, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    assert float(information_potential(mu, logvar, eps).mean()) == pytest.approx(3 / 2, rel=0.01)


def test_random_partners_are_unbiased_for_all_pairs():
    mu, logvar = _gaussians(6, 2, seed=8)
    eps = torch.randn(6, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    partners = draw_partners(6, 20_000, torch.Generator().manual_seed(10))
    torch.testing.assert_close(information_potential(mu, logvar, eps, partners), information_potential(mu, logvar, eps), rtol=0.03, atol=0)


def test_draw_partners_is_uniform_over_the_batch_and_reproducible():
    partners = draw_partners(5, 4000, torch.Generator().manual_seed(11))
    assert partners.shape == (5, 4000) and partners.dtype == torch.int64
    counts = torch.bincount(partners.flatten(), minlength=5).double()
    # 20000 draws over 5 values: each count is 4000 +- 57 (one standard deviation).
    assert ((counts - 4000).abs() < 300).all() and partners.min() == 0 and partners.max() == 4
    assert torch.equal(partners, draw_partners(5, 4000, torch.Generator().manual_seed(11)))
    with pytest.raises(ValueError):
        draw_partners(0, 1, torch.Generator())
    with pytest.raises(ValueError):
        draw_partners(3, 0, torch.Generator())


def test_gaussian_kl_matches_the_closed_form_by_loops():
    mu, logvar = _gaussians(6, 3, seed=12)
    m, lv = mu.tolist(), logvar.tolist()
    expected = [sum(0.5 * (m[i][e] ** 2 + math.exp(lv[i][e]) - lv[i][e] - 1) for e in range(3)) for i in range(6)]
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)
    assert float(gaussian_kl(torch.zeros(1, 4, dtype=F64), torch.zeros(1, 4, dtype=F64))) == 0.0


def test_conditional_entropy_is_the_gaussian_entropy():
    _, logvar = _gaussians(6, 3, seed=13)
    expected = [sum(0.5 * math.log(2 * math.pi * math.e * math.exp(v)) for v in row) for row in logvar.tolist()]
    torch.testing.assert_close(conditional_entropy(logvar), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=0)
    reference = torch.distributions.Normal(torch.zeros_like(logvar), (0.5 * logvar).exp()).entropy().sum(dim=1)
    torch.testing.assert_close(conditional_entropy(logvar), reference, rtol=1e-12, atol=0)


def test_gradients_pass_gradcheck_in_float64():
    mu, logvar = (t.requires_grad_() for t in _gaussians(5, 2, seed=14))
    eps = torch.randn(2, 5, 2, generator=torch.Generator().manual_seed(15), dtype=F64, requires_grad=True)
    partners = torch.tensor([[1, 1], [0, 4], [2, 3], [3, 0], [4, 2]])
    assert torch.autograd.gradcheck(gaussian_kl, (mu, logvar))
    assert torch.autograd.gradcheck(conditional_entropy, (logvar,))
    assert torch.autograd.gradcheck(information_potential, (mu, logvar, eps))
    assert torch.autograd.gradcheck(lambda m, lv, e: information_potential(m, lv, e, partners), (mu, logvar, eps))


def test_float32_agrees_with_float64():
    mu, logvar = _gaussians(64, 8, seed=16, offset=3.0)
    eps = torch.randn(64, 8, generator=torch.Generator().manual_seed(17), dtype=F64)
    for function, args in (
        (information_potential, (mu, logvar, eps)),
        (gaussian_kl, (mu, logvar)),
        (conditional_entropy, (logvar,)),
    ):
        torch.testing.assert_close(function(*(a.float() for a in args)).double(), function(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_agrees_with_cpu():
    mu, logvar = _gaussians(32, 4, seed=18)
    eps = torch.randn(32, 4, generator=torch.Generator().manual_seed(19), dtype=F64)
    partners = draw_partners(32, 3, torch.Generator().manual_seed(20))
    for args in ((mu, logvar, eps), (mu, logvar, eps, partners)):
        torch.testing.assert_close(information_potential(*(a.cuda() for a in args)).cpu(), information_potential(*args), rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: gaussian_kl(torch.zeros(3), torch.zeros(3)), "shape \\(B, D\\)"),
        (lambda: gaussian_kl(torch.zeros(3, 2), torch.zeros(3, 3)), "shape of mu"),
        (lambda: gaussian_kl(torch.zeros(0, 2), torch.zeros(0, 2)), "B, D >= 1"),
        (lambda: conditional_entropy(torch.zeros(3)), "shape \\(B, D\\)"),
        (lambda: information_potential(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 3)), "eps must have shape"),
        (lambda: information_potential(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(0, 3, 2)), "K >= 1"),
        (
            lambda: information_potential(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 1, dtype=torch.int64)),
            "partners",
        ),
        (lambda: information_potential(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 1)), "integer"),
    ],
)
def test_bad_shapes_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_nan_inputs_propagate_rather_than_vanish():
    # Pure functions do not hide a NaN: it reaches the loss, where `train` reports it.
    mu = torch.tensor([[0.0, math.nan], [1.0, 2.0]])
    assert torch.isnan(information_potential(mu, torch.zeros(2, 2), torch.zeros(2, 2))).all()
    assert torch.isnan(gaussian_kl(mu, torch.zeros(2, 2)))[0]
