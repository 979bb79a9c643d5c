"""Tests of ipae.rates: every rate against an independent float64 computation on the same batch.

The references are Python-float loops over samples, partners, noise draws and dimensions (eq. 10, the
closed-form KL of eq. 5, the pairwise KL and Bhattacharyya distances, eq. 7 by Monte Carlo).
"""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import ipae
from ipae.information import draw_partners, reparameterise
from ipae.models import AutoEncoder
from ipae.rates import RATES, Bhattacharyya, InformationPotential, Jensen, MonteCarlo, PairwiseKL, PriorKL, Rate, create, spec
from ipae.training import TrainConfig, train
from references import bhattacharyya, kl

F64 = torch.float64
B, D = 9, 3


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussians(b: int = B, d: int = D, *, seed: int, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 means and log-variances (sigma roughly in [0.3, 3])."""
    generator = _generator(seed)
    mu = offset + torch.randn(b, d, generator=generator, dtype=F64)
    logvar = 0.6 * torch.randn(b, d, generator=generator, dtype=F64)
    return mu, logvar


def _noise(shape: tuple[int, ...], *, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=_generator(seed), dtype=F64)


# --- references by loops ----------------------------------------------------------------------------------------------


def _ip_by_loops(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, partners: list[list[int]] | None = None) -> float:
    """Eq. 10: the mean over draws k, samples i and partners j of 0.5 * sum_d (mu_j - z_ki)^2 / sigma_j^2,
    with z_ki = mu_i + sigma_i * eps_ki built here; all B partners when `partners` is None."""
    m, lv = mu.tolist(), logvar.tolist()
    draws = eps.tolist() if eps.ndim == 3 else [eps.tolist()]
    b, d = len(m), len(m[0])
    total, count = 0.0, 0
    for e in draws:
        for i in range(b):
            z = [m[i][c] + math.exp(0.5 * lv[i][c]) * e[i][c] for c in range(d)]
            for j in range(b) if partners is None else partners[i]:
                total += 0.5 * sum((m[j][c] - z[c]) ** 2 / math.exp(lv[j][c]) for c in range(d))
                count += 1
    return total / count


def _kl_to_prior_by_loops(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """Eq. 5: mean_i KL(N(mu_i, s_i) || N(0, I)) = mean_i sum_d 0.5 (mu^2 + s - log s - 1)."""
    rows = [
        sum(0.5 * (m * m + math.exp(lv) - lv - 1) for m, lv in zip(mr, lr, strict=True))
        for mr, lr in zip(mu.tolist(), logvar.tolist(), strict=True)
    ]
    return sum(rows) / len(rows)


_kl, _bd = kl, bhattacharyya


def _mixture_by_loops(name: str, mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """jensen: mean_ij KL(p_i || p_j); pairwise-kl / bhattacharyya: -mean_i log mean_j exp(-KL or -BD)."""
    m, lv, n = mu.tolist(), logvar.tolist(), len(mu)
    if name == "jensen":
        return sum(_kl(m[i], lv[i], m[j], lv[j]) for i in range(n) for j in range(n)) / n**2
    distance = _kl if name == "pairwise-kl" else _bd
    return -sum(math.log(sum(math.exp(-distance(m[i], lv[i], m[j], lv[j])) for j in range(n)) / n) for i in range(n)) / n


# --- InformationPotential -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 1000.0])  # a large common offset would expose cancellation
@pytest.mark.parametrize("k", [1, 3])
def test_all_pairs_ip_matches_a_double_loop_over_pairs(offset, k):
    mu, logvar = _gaussians(seed=1, offset=offset)
    eps = _noise((k, B, D), seed=2)
    rate = InformationPotential(n_partners=None)
    assert rate.sample(mu.shape, _generator(0), F64) is None  # all pairs: nothing to draw
    value = rate(mu, logvar, reparameterise(mu, logvar, eps))
    assert value.shape == () and value.dtype == F64
    assert float(value) == pytest.approx(_ip_by_loops(mu, logvar, eps), rel=1e-10)
    if k == 1:  # z given as (B, D)
        assert float(rate(mu, logvar, reparameterise(mu, logvar, eps[0]))) == pytest.approx(_ip_by_loops(mu, logvar, eps), rel=1e-10)


# rows with repeated partners, a sample as its own partner, and one partner repeated throughout
PARTNERS = [[(3 * i + 5 * r) % B if r % 3 else i for r in range(8)] for i in range(B)]
PARTNERS[4] = [7] * 8


@pytest.mark.parametrize("k", [1, 2])
def test_ip_with_given_partners_matches_a_loop_over_them(k):
    mu, logvar = _gaussians(seed=3, offset=10.0)
    eps = _noise((k, B, D), seed=4)
    z = reparameterise(mu, logvar, eps)
    partners = torch.tensor(PARTNERS)  # (B, 8)
    value = InformationPotential(8)(mu, logvar, z, draws=partners)
    assert float(value) == pytest.approx(_ip_by_loops(mu, logvar, eps, PARTNERS), rel=1e-10)
    # the partners matter: all pairs give another value
    assert float(value) != pytest.approx(_ip_by_loops(mu, logvar, eps), rel=1e-3)


def test_ip_draws_its_partners_from_the_generator():
    mu, logvar = _gaussians(seed=5)
    z = reparameterise(mu, logvar, _noise((2, B, D), seed=6))
    rate = InformationPotential(8)
    draws = rate.sample(mu.shape, _generator(7), F64)
    assert draws.shape == (B, 8) and draws.dtype == torch.int64
    assert torch.equal(draws, draw_partners(B, 8, _generator(7)))
    value = rate(mu, logvar, z, generator=_generator(7))
    assert torch.equal(value, rate(mu, logvar, z, draws=rate.sample(mu.shape, _generator(7), F64)))
    assert float(value) == pytest.approx(_ip_by_loops(mu, logvar, _noise((2, B, D), seed=6), draws.tolist()), rel=1e-10)
    # another seed, other partners, another value; the same generator advances between calls
    assert float(rate(mu, logvar, z, generator=_generator(8))) != pytest.approx(float(value), rel=1e-6)
    generator = _generator(7)
    first, second = rate(mu, logvar, z, generator=generator), rate(mu, logvar, z, generator=generator)
    assert torch.equal(first, value) and not torch.equal(second, value)


def test_ip_partners_average_to_all_pairs():
    mu, logvar = _gaussians(seed=9)
    z = reparameterise(mu, logvar, _noise((B, D), seed=10))
    generator = _generator(11)
    estimates = torch.stack([InformationPotential(8)(mu, logvar, z, generator=generator) for _ in range(1000)])
    all_pairs = float(InformationPotential(None)(mu, logvar, z))
    standard_error = float(estimates.std()) / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - all_pairs) < 5 * standard_error


def test_ip_without_a_generator_draws_from_torch_global_generator():
    mu, logvar = _gaussians(seed=12)
    z = reparameterise(mu, logvar, _noise((B, D), seed=13))
    with torch.random.fork_rng(devices=[]):  # leave the global state of the other tests alone
        torch.manual_seed(14)
        value = InformationPotential(8)(mu, logvar, z)
        torch.manual_seed(14)
        partners = torch.randint(B, (B, 8))
    assert value.shape == () and bool(torch.isfinite(value))
    assert float(value) == pytest.approx(_ip_by_loops(mu, logvar, _noise((B, D), seed=13), partners.tolist()), rel=1e-10)


def test_a_rate_given_a_generator_leaves_the_global_generator_alone():
    mu, logvar = _gaussians(seed=15)
    z = reparameterise(mu, logvar, _noise((B, D), seed=16))
    before = torch.get_rng_state()
    for rate in (InformationPotential(8), MonteCarlo(2)):
        rate(mu, logvar, z, generator=_generator(17))
    assert torch.equal(torch.get_rng_state(), before)


# --- PriorKL and the mixture estimates ------------------------------------------------------------------------------------


def test_prior_kl_is_the_closed_form_kl_and_ignores_z():
    mu, logvar = _gaussians(seed=18, offset=1.5)
    rate = PriorKL()
    assert rate.sample(mu.shape, _generator(0), F64) is None
    value = rate(mu, logvar, reparameterise(mu, logvar, _noise((2, B, D), seed=19)))
    assert float(value) == pytest.approx(_kl_to_prior_by_loops(mu, logvar), rel=1e-12)
    assert torch.equal(rate(mu, logvar, torch.zeros(B, D, dtype=F64)), value)
    # zero at the prior
    assert float(rate(torch.zeros(B, D, dtype=F64), torch.zeros(B, D, dtype=F64), torch.zeros(B, D, dtype=F64))) == 0.0


@pytest.mark.parametrize("rate", [Jensen(), PairwiseKL(), Bhattacharyya()], ids=lambda rate: rate.name)
def test_deterministic_mixture_rates_match_loops(rate):
    mu, logvar = _gaussians(seed=20)
    z = reparameterise(mu, logvar, _noise((B, D), seed=21))
    assert rate.sample(mu.shape, _generator(0), F64) is None
    value = rate(mu, logvar, z, generator=_generator(22))
    assert float(value) == pytest.approx(_mixture_by_loops(rate.name, mu, logvar), rel=1e-10)
    assert torch.equal(rate(mu, logvar, mu), value)  # a function of the Gaussians alone: not of z, not of the generator


def test_jensen_is_eq10_averaged_over_the_noise_minus_d_over_2():
    # eq. 10 is quadratic in eps: its expectation is exact over the 2^D sign patterns eps = +-1 per dimension
    mu, logvar = _gaussians(seed=23)
    patterns = torch.tensor([[(p >> c) & 1 for c in range(D)] for p in range(2**D)], dtype=F64) * 2 - 1  # (2^D, D)
    eps = patterns[:, None, :].expand(2**D, B, D)  # (K, B, D): one pattern per draw
    expectation = float(InformationPotential(None)(mu, logvar, reparameterise(mu, logvar, eps)))
    assert float(Jensen()(mu, logvar, mu)) == pytest.approx(expectation - D / 2, rel=1e-10)


def _monte_carlo_by_loops(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> float:
    """Eq. 7 by Monte Carlo: mean over draws s and samples i of log p_i(z_si) - log (1/B sum_j p_j(z_si)),
    z_si = mu_i + sigma_i * eps_si, p_j = N(mu_j, diag exp(logvar_j))."""
    m, lv, draws = mu.tolist(), logvar.tolist(), eps.tolist()
    b, d = len(m), len(m[0])

    def log_density(z: list[float], j: int) -> float:
        return sum(-0.5 * (math.log(2 * math.pi) + lv[j][c] + (z[c] - m[j][c]) ** 2 / math.exp(lv[j][c])) for c in range(d))

    total = 0.0
    for e in draws:
        for i in range(b):
            z = [m[i][c] + math.exp(0.5 * lv[i][c]) * e[i][c] for c in range(d)]
            total += log_density(z, i) - math.log(sum(math.exp(log_density(z, j)) for j in range(b)) / b)
    return total / (len(draws) * b)


def test_monte_carlo_is_eq_7_by_loops_over_its_own_draws():
    mu, logvar = _gaussians(seed=24)
    z = reparameterise(mu, logvar, _noise((B, D), seed=25))
    rate = MonteCarlo(n_samples=3)
    draws = rate.sample(mu.shape, _generator(26), F64)
    assert draws.shape == (3, B, D) and draws.dtype == F64
    expected = _monte_carlo_by_loops(mu, logvar, draws)
    assert float(rate(mu, logvar, z, draws=draws)) == pytest.approx(expected, rel=1e-10)
    # drawn inside from a generator: the same draws as `sample` makes from that generator
    assert float(rate(mu, logvar, z, generator=_generator(26))) == pytest.approx(expected, rel=1e-10)
    other = rate.sample(mu.shape, _generator(27), F64)
    assert float(rate(mu, logvar, z, generator=_generator(27))) == pytest.approx(_monte_carlo_by_loops(mu, logvar, other), rel=1e-10)
    assert _monte_carlo_by_loops(mu, logvar, other) != pytest.approx(expected, rel=1e-6)  # the draws matter


def test_the_estimates_are_ordered_on_a_batch():
    # Bhattacharyya <= I <= pairwise KL <= Jensen; here 0.88 <= 1.19 <= 1.79 <= 5.49, Monte Carlo's standard error ~0.01
    generator = _generator(0)
    mu = torch.randn(16, 2, generator=generator, dtype=F64)
    logvar = -1 + 0.3 * torch.randn(16, 2, generator=generator, dtype=F64)
    values = {
        rate.name: float(rate(mu, logvar, mu, generator=_generator(28)))
        for rate in (Bhattacharyya(), MonteCarlo(500), PairwiseKL(), Jensen())
    }
    assert values["bhattacharyya"] + 0.1 < values["mc"] < values["pairwise-kl"] - 0.1
    assert values["pairwise-kl"] < values["jensen"]


# --- registry ----------------------------------------------------------------------------------------------------------

DEFAULT_SPECS = {
    "ip": {"name": "ip", "n_partners": 1},
    "vae": {"name": "vae"},
    "jensen": {"name": "jensen"},
    "pairwise-kl": {"name": "pairwise-kl"},
    "bhattacharyya": {"name": "bhattacharyya"},
    "mc": {"name": "mc", "n_samples": 1},
}


def test_the_registry_names_every_rate():
    assert RATES == {
        "ip": InformationPotential,
        "vae": PriorKL,
        "jensen": Jensen,
        "pairwise-kl": PairwiseKL,
        "bhattacharyya": Bhattacharyya,
        "mc": MonteCarlo,
    }
    assert all(cls.name == name for name, cls in RATES.items())
    assert InformationPotential.default_beta == 0.01 and PriorKL.default_beta == 1.0


@pytest.mark.parametrize(
    "name, options",
    [(name, {}) for name in RATES] + [("ip", {"n_partners": 8}), ("ip", {"n_partners": None}), ("mc", {"n_samples": 5})],
)
def test_create_and_spec_round_trip(name, options):
    rate = create(name, **options)
    assert type(rate) is RATES[name] and rate.name == name
    expected = {**DEFAULT_SPECS[name], **options}
    assert spec(rate) == expected
    again = create(**json.loads(json.dumps(spec(rate))))  # through JSON, as configs and model.json store it
    assert type(again) is type(rate) and spec(again) == expected
    for option, value in options.items():
        assert getattr(again, option) == value


def test_create_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown rate 'kde'") as error:
        create("kde")
    assert all(name in str(error.value) for name in RATES)  # it lists the choices


@pytest.mark.parametrize(
    "name, options, unknown",
    [
        ("vae", {"n_partners": 8}, "n_partners"),
        ("ip", {"n_samples": 2}, "n_samples"),
        ("mc", {"n_samples": 2, "beta": 1.0}, "beta"),
        ("jensen", {"x": 1}, "x"),
    ],
)
def test_create_refuses_an_unknown_option(name, options, unknown):
    with pytest.raises(ValueError, match=rf"rate '{name}' has no option {unknown}\b"):
        create(name, **options)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "8"])
def test_bad_n_partners_and_n_samples_are_refused(value):
    with pytest.raises(ValueError, match="n_partners"):
        InformationPotential(n_partners=value)
    with pytest.raises(ValueError, match="n_partners"):
        create("ip", n_partners=value)
    with pytest.raises(ValueError, match="n_samples"):
        MonteCarlo(n_samples=value)
    with pytest.raises(ValueError, match="n_samples"):
        create("mc", n_samples=value)


def test_monte_carlo_needs_a_number_of_samples():
    with pytest.raises(ValueError, match="n_samples"):
        MonteCarlo(n_samples=None)


# --- shapes ------------------------------------------------------------------------------------------------------------

ALL_RATES = [InformationPotential(8), InformationPotential(None), PriorKL(), Jensen(), PairwiseKL(), Bhattacharyya(), MonteCarlo(2)]


def _rate_id(rate) -> str:
    return "-".join(str(value) for value in spec(rate).values())


@pytest.mark.parametrize("rate", ALL_RATES, ids=_rate_id)
@pytest.mark.parametrize("z_shape", [(B, D + 1), (B + 1, D), (2, B + 1, D), (2, B, D + 1), (D,), (B * D,), (1, 1, B, D)])
def test_codes_of_the_wrong_shape_are_refused(rate, z_shape):
    mu, logvar = _gaussians(seed=29)
    with pytest.raises(ValueError, match=r"z must have shape \(K, B, D\) or \(B, D\)"):
        rate(mu, logvar, torch.zeros(z_shape, dtype=F64), generator=_generator(30))


@pytest.mark.parametrize("rate", ALL_RATES, ids=_rate_id)
@pytest.mark.parametrize(
    "mu_shape, logvar_shape", [((B,), (B,)), ((B, D), (B, D + 1)), ((B, D), (B - 1, D)), ((0, D), (0, D)), ((B, 0), (B, 0))]
)
def test_gaussians_of_the_wrong_shape_are_refused(rate, mu_shape, logvar_shape):
    with pytest.raises(ValueError, match="mu and logvar must both have shape"):
        rate(
            torch.zeros(mu_shape, dtype=F64),
            torch.zeros(logvar_shape, dtype=F64),
            torch.zeros(mu_shape, dtype=F64),
            generator=_generator(31),
        )


# --- gradients and precision --------------------------------------------------------------------------------------------


def _fixed_draws(rate, mu: torch.Tensor) -> torch.Tensor | None:
    return rate.sample(mu.shape, _generator(32), mu.dtype)


@pytest.mark.parametrize("rate", ALL_RATES, ids=_rate_id)
def test_gradcheck_through_the_codes(rate):
    mu, logvar = _gaussians(5, 2, seed=33)
    eps = _noise((2, 5, 2), seed=34)
    draws = _fixed_draws(rate, mu)
    leaves = tuple(t.detach().clone().requires_grad_() for t in (mu, logvar, eps))
    assert torch.autograd.gradcheck(lambda m, lv, e: rate(m, lv, reparameterise(m, lv, e), draws=draws), leaves)


def test_ip_gradient_reaches_the_means_variances_and_codes():
    mu, logvar = _gaussians(seed=35)
    mu, logvar = mu.requires_grad_(), logvar.requires_grad_()
    z = reparameterise(mu, logvar, _noise((B, D), seed=36)).detach().requires_grad_()
    InformationPotential(8)(mu, logvar, z, generator=_generator(37)).backward()
    assert all(t.grad is not None and float(t.grad.abs().sum()) > 0 for t in (mu, logvar, z))


@pytest.mark.parametrize("rate", ALL_RATES, ids=_rate_id)
def test_float32_agrees_with_float64(rate):
    mu, logvar = (t.float().double() for t in _gaussians(seed=38))  # exactly representable in float32
    z = reparameterise(mu, logvar, _noise((2, B, D), seed=39).float().double())
    draws = _fixed_draws(rate, mu)
    draws32 = draws.float() if draws is not None and draws.is_floating_point() else draws
    single = rate(mu.float(), logvar.float(), z.float(), draws=draws32)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), rate(mu, logvar, z, draws=draws), rtol=1e-5, atol=1e-5)


# --- a user's own training loop ------------------------------------------------------------------------------------------


def _train_own_loop(beta: float, steps: int = 50) -> tuple[float, float]:
    """A tiny linear encoder and decoder trained by the user's own SGD loop with the rate in the loss.

    Returns eq. 10 over all pairs of the batch before and after training, averaged over fixed noise."""
    generator = _generator(40)
    x = torch.randn(64, 4, generator=generator)
    encoder, decoder = nn.Linear(4, 4), nn.Linear(2, 4)  # encoder: x -> (mu, logvar) in 2 dimensions
    with torch.no_grad():  # weights from the generator, not torch's global one
        for layer in (encoder, decoder):
            layer.weight.copy_(0.5 * torch.randn(layer.weight.shape, generator=generator))
            layer.bias.zero_()
        encoder.bias[2:] = -2.0  # sigma^2 ~ 0.14 against means of spread ~1: eq. 10 starts at ~25, its minimum is D/2 = 1
    optimizer = torch.optim.SGD([*encoder.parameters(), *decoder.parameters()], lr=3e-3)
    rate = InformationPotential(8)
    fixed = torch.randn(16, 64, 2, generator=_generator(41))

    def all_pairs() -> float:
        with torch.no_grad():
            mu, logvar = encoder(x).chunk(2, dim=1)
            return float(InformationPotential(None)(mu, logvar, reparameterise(mu, logvar, fixed)))

    before = all_pairs()
    for _ in range(steps):
        mu, logvar = encoder(x).chunk(2, dim=1)  # (64, 2) each
        z = reparameterise(mu, logvar, torch.randn(mu.shape, generator=generator))
        loss = (decoder(z) - x).square().sum(dim=1).mean() + beta * rate(mu, logvar, z, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, all_pairs()


def test_a_users_own_loop_lowers_the_rate_when_beta_is_large():
    before, after = _train_own_loop(beta=10.0)
    assert before > 20
    assert 0.9 < after < 2  # near its minimum D/2 = 1, from ~25
    # without the rate's gradient (beta = 0: the reconstruction alone) it stays far higher
    _, without = _train_own_loop(beta=0.0)
    assert without > 10


# --- a rate of the user's own ------------------------------------------------------------------------------------------------


class MeanSquare(Rate):
    """A user's rate: `weight` times the mean over samples of |mu|^2 (not a bound on I; any scalar of the codes trains)."""

    name = "mean-square"

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def _rate(self, mu, logvar, z, draws):
        return self.weight * mu.square().sum(dim=1).mean()


def _own_rate_model() -> AutoEncoder:
    return AutoEncoder.from_preset("toy", hidden=(16,), n_latent=3, rate=MeanSquare(0.5), beta=0.2).double()


def test_a_rate_of_ones_own_trains_saves_and_loads_with_the_same_codes_and_loss(tmp_path):
    model = _own_rate_model()
    x = torch.randn(128, 2, generator=_generator(50), dtype=F64)
    result = train(model, x, TrainConfig(steps=20, batch_size=32, progress=False))
    assert np.isfinite(result.loss).all() and len(result.loss) == 20
    with torch.no_grad():
        mu, _ = model.encode(x)
        terms = model.loss(x, generator=_generator(51))
    # the loss holds the user's rate: 0.5 * mean |mu|^2 by a loop over samples and dimensions
    by_loops = 0.5 * sum(sum(value**2 for value in row) for row in mu.tolist()) / len(x)
    assert float(terms.rate) == pytest.approx(by_loops, rel=1e-12)
    assert float(terms.loss) == pytest.approx(float(terms.distortion) + 0.2 * by_loops, rel=1e-12)

    ipae.save(model, tmp_path / "own")
    assert json.loads((tmp_path / "own" / "model.json").read_text())["model"]["rate"] == {"name": "mean-square", "weight": 0.5}
    loaded = ipae.load(tmp_path / "own", rate=MeanSquare(0.5))
    assert type(loaded.rate) is MeanSquare and loaded.rate.weight == 0.5 and loaded.beta == 0.2
    with torch.no_grad():
        assert torch.equal(loaded.encode(x)[0], mu)
        again = loaded.loss(x, generator=_generator(51))
    assert torch.equal(again.loss, terms.loss) and torch.equal(again.rate, terms.rate)


def test_a_rate_of_ones_own_is_refused_clearly_without_it_or_with_other_options(tmp_path):
    ipae.save(_own_rate_model(), tmp_path / "own")
    with pytest.raises(ValueError, match=r"model\.json: the rate .*mean-square.* is not one of ipae's .*rate="):
        ipae.load(tmp_path / "own")
    with pytest.raises(ValueError, match=r"saved with rate .*'weight': 0.5.*passed is .*'weight': 0.25"):
        ipae.load(tmp_path / "own", rate=MeanSquare(0.25))
    with pytest.raises(ValueError, match="saved with rate"):
        ipae.load(tmp_path / "own", rate=PriorKL())
    with pytest.raises(ValueError, match="must be an ipae.rates.Rate"):
        ipae.load(tmp_path / "own", rate="mean-square")


def test_a_built_in_rate_may_be_passed_when_it_is_the_saved_one(tmp_path):
    model = AutoEncoder.from_preset("toy", hidden=(8,), rate=InformationPotential(8))
    ipae.save(model, tmp_path / "ip")
    assert ipae.load(tmp_path / "ip", rate=InformationPotential(8)).rate.n_partners == 8
    with pytest.raises(ValueError, match="saved with rate"):
        ipae.load(tmp_path / "ip", rate=InformationPotential(1))


class Nameless(Rate):
    def _rate(self, mu, logvar, z, draws):
        return mu.sum()


class SecondIP(InformationPotential):  # keeps InformationPotential's name
    def _rate(self, mu, logvar, z, draws):
        return 2 * super()._rate(mu, logvar, z, draws)


class Unstored(Rate):
    name = "unstored"

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self._scale = scale

    def _rate(self, mu, logvar, z, draws):
        return self._scale * mu.sum()


class NotJSON(MeanSquare):
    name = "not-json"


@pytest.mark.parametrize(
    "rate, message",
    [
        (Nameless(), "Nameless has no name"),
        (SecondIP(8), "SecondIP has the name 'ip' of InformationPotential"),
        (Unstored(2.0), "Unstored must store its option scale"),
        (NotJSON(torch.tensor(1.0)), "options of rate 'not-json' must be JSON"),
    ],
    ids=["nameless", "a-built-in-name", "unstored-option", "not-json"],
)
def test_a_rate_that_could_not_be_loaded_back_is_refused_before_anything_is_written(rate, message, tmp_path):
    model = AutoEncoder.from_preset("toy", hidden=(8,), rate=rate)
    with pytest.raises(ValueError, match=message):
        ipae.save(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


class HalfWeighted(MeanSquare):
    name = "half-weighted"
    paper_distortion_weight = 0.25


def test_the_paper_exact_distortion_weight_is_the_rates_own():
    assert AutoEncoder.from_preset("toy", hidden=(8,), rate=InformationPotential(1), paper_exact=True).distortion_weight == 0.5
    assert AutoEncoder.from_preset("toy", hidden=(8,), rate=PriorKL(), paper_exact=True).distortion_weight == 1.0
    assert AutoEncoder.from_preset("toy", hidden=(8,), rate=MeanSquare(), paper_exact=True).distortion_weight == 1.0
    assert AutoEncoder.from_preset("toy", hidden=(8,), rate=HalfWeighted(), paper_exact=True).distortion_weight == 0.25
