import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ipae.information import information_potential, reparameterise
from ipae.mixture import (
    CHUNK_SIZE,
    DEFAULT_SEED,
    METHODS,
    bhattacharyya_distance,
    draw_mc_noise,
    mixture_entropy,
    mutual_information,
    pairwise_kl,
)
from references import bhattacharyya, kl

F64 = torch.float64
DETERMINISTIC = ("jensen", "pairwise-kl", "bhattacharyya")


def _gaussians(n: int, d: int, *, seed: int = 0, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, generator=generator, dtype=F64), 0.6 * torch.randn(n, d, generator=generator, dtype=F64)


# Independent references with Python floats and explicit loops.
_kl, _bd = kl, bhattacharyya


def _log_normal(z, m, lv) -> float:
    return sum(-0.5 * (math.log(2 * math.pi) + lv[d] + (z[d] - m[d]) ** 2 / math.exp(lv[d])) for d in range(len(z)))


def _reference(method: str, mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> float:
    m, lv, n = mu.tolist(), logvar.tolist(), len(mu)
    if method == "jensen":
        return sum(_kl(m[i], lv[i], m[j], lv[j]) for i in range(n) for j in range(n)) / n**2
    if method in ("pairwise-kl", "bhattacharyya"):
        distance = _kl if method == "pairwise-kl" else _bd
        return -sum(math.log(sum(math.exp(-distance(m[i], lv[i], m[j], lv[j])) for j in range(n)) / n) for i in range(n)) / n
    total, count = 0.0, 0
    others = [j for j in range(n)] if method == "mc" else None  # "loo": all but the point's own component
    for k in range(eps.shape[0]):
        for i in range(n):
            z = [m[i][d] + math.exp(0.5 * lv[i][d]) * float(eps[k, i, d]) for d in range(len(m[i]))]
            partners = others if others is not None else [j for j in range(n) if j != i]
            mixture = math.log(sum(math.exp(_log_normal(z, m[j], lv[j])) for j in partners) / len(partners))
            total += _log_normal(z, m[i], lv[i]) - mixture
            count += 1
    return total / count


@pytest.mark.parametrize("chunk_size", [1024, 3])  # one block, and blocks that do not divide N
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_matches_loops(method, chunk_size):
    mu, logvar = _gaussians(7, 3, seed=1)
    generator = torch.Generator().manual_seed(2)
    replay = torch.Generator().set_state(generator.get_state())
    value = mutual_information(mu, logvar, method=method, generator=generator, n_samples=3, chunk_size=chunk_size)
    eps = torch.randn((3, 7, 3), generator=replay, dtype=F64) if method in ("mc", "loo") else None
    expected = _reference(method, mu, logvar, eps)
    assert float(value) == pytest.approx(expected, rel=1e-10)
    # the method itself, called as METHODS[name](mu, logvar, eps or None, chunk_size)
    assert float(METHODS[method](mu, logvar, eps, chunk_size)) == pytest.approx(expected, rel=1e-10)


def test_the_methods_are_the_five_estimators_and_only_mc_and_loo_read_their_noise():
    assert set(METHODS) == {"jensen", "pairwise-kl", "bhattacharyya", "mc", "loo"}
    mu, logvar = _gaussians(6, 2, seed=13)
    eps = draw_mc_noise(mu, 2, torch.Generator().manual_seed(14))
    for method in DETERMINISTIC:
        assert torch.equal(METHODS[method](mu, logvar, eps, CHUNK_SIZE), METHODS[method](mu, logvar, None, CHUNK_SIZE))
    other = draw_mc_noise(mu, 2, torch.Generator().manual_seed(15))
    first, second = METHODS["mc"](mu, logvar, eps, CHUNK_SIZE), METHODS["mc"](mu, logvar, other, CHUNK_SIZE)
    assert float(first) == pytest.approx(_reference("mc", mu, logvar, eps), rel=1e-10)
    assert float(second) == pytest.approx(_reference("mc", mu, logvar, other), rel=1e-10)
    assert float(first) != pytest.approx(float(second), rel=1e-6)  # different draws, different estimates


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_draw_mc_noise_is_standard_normal_from_the_generator(dtype):
    mu = torch.zeros(50, 4, dtype=dtype)
    noise = draw_mc_noise(mu, 3, torch.Generator().manual_seed(16))
    assert noise.shape == (3, 50, 4) and noise.dtype == dtype and noise.device == mu.device
    # exactly torch.randn((S, N, D)) from that generator, which it advances
    assert torch.equal(noise, torch.randn((3, 50, 4), generator=torch.Generator().manual_seed(16), dtype=dtype))
    generator = torch.Generator().manual_seed(16)
    draw_mc_noise(mu, 3, generator)
    assert not torch.equal(draw_mc_noise(mu, 3, generator), noise)
    # and mutual_information(method="mc") uses these draws
    mu, logvar = _gaussians(50, 4, seed=17)
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    value = mutual_information(mu, logvar, method="mc", generator=torch.Generator().manual_seed(18), n_samples=3)
    eps = draw_mc_noise(mu, 3, torch.Generator().manual_seed(18))
    assert torch.equal(value, METHODS["mc"](mu, logvar, eps, CHUNK_SIZE))
    # mean 0 and variance 1 within 5 standard errors
    many = draw_mc_noise(torch.zeros(1000, 10, dtype=dtype), 4, torch.Generator().manual_seed(19)).double()
    assert abs(float(many.mean())) < 5 / math.sqrt(many.numel())
    assert abs(float(many.var()) - 1) < 5 * math.sqrt(2 / many.numel())


def test_pairwise_divergences_match_loops():
    mu, logvar = _gaussians(5, 2, seed=3, scale=100.0)  # large means: the expansion must not cancel
    m, lv = mu.tolist(), logvar.tolist()
    kl = torch.tensor([[_kl(m[i], lv[i], m[j], lv[j]) for j in range(5)] for i in range(5)], dtype=F64)
    bd = torch.tensor([[_bd(m[i], lv[i], m[j], lv[j]) for j in range(5)] for i in range(5)], dtype=F64)
    torch.testing.assert_close(pairwise_kl(mu, logvar, mu, logvar), kl, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(bhattacharyya_distance(mu, logvar, mu, logvar), bd, rtol=1e-9, atol=1e-9)


def test_jensen_is_the_expectation_of_eq10_minus_d_over_2():
    mu, logvar = _gaussians(6, 3, seed=4)
    m, lv = mu.tolist(), logvar.tolist()
    # E_eps of eq. 10 = mean_ij 0.5 * sum_d ((mu_j - mu_i)^2 + s_i) / s_j, in closed form
    expected_eq10 = (
        sum(
            0.5 * sum(((m[j][d] - m[i][d]) ** 2 + math.exp(lv[i][d])) / math.exp(lv[j][d]) for d in range(3))
            for i in range(6)
            for j in range(6)
        )
        / 36
    )
    assert float(mutual_information(mu, logvar, method="jensen")) == pytest.approx(expected_eq10 - 3 / 2, rel=1e-12)
    eps = torch.randn(100_000, 6, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert float(information_potential(mu, logvar, reparameterise(mu, logvar, eps)).mean()) == pytest.approx(expected_eq10, rel=0.01)


def test_gaussian_channel():
    # x ~ N(0, I_2), z = x + 0.5 * noise: I = D/2 log(1 + 1/sigma^2) = log 5.
    # (N = 1000 and 8 draws: 3 s; N = 2000 and 16 draws gave the same within 0.01 nats in 15 s)
    generator = torch.Generator().manual_seed(6)
    mu = torch.randn(1000, 2, generator=generator, dtype=F64)
    logvar = torch.full_like(mu, math.log(0.25))
    values = {m: float(mutual_information(mu, logvar, method=m, generator=generator, n_samples=8)) for m in METHODS}
    assert values["mc"] == pytest.approx(math.log(5), rel=0.05)
    assert values["bhattacharyya"] <= values["mc"] <= values["pairwise-kl"] <= values["jensen"]
    assert values["jensen"] == pytest.approx(7.9, abs=0.2)  # eq. 10's looseness on this channel
    # with equal variances s the bound is mean_ij |mu_i - mu_j|^2 / (2 s) = sum_d Var(mu_d) / s (Var with 1/N); E = D / 0.25 = 8
    variance = sum(mu[:, d].var(unbiased=False).item() for d in range(2))
    assert values["jensen"] == pytest.approx(variance / 0.25, rel=1e-10)


def test_far_apart_components_carry_log_n_and_identical_ones_nothing():
    generator = torch.Generator().manual_seed(7)
    far = 1000.0 * torch.arange(50, dtype=F64)[:, None].repeat(1, 3)
    same = torch.full((50, 3), 2.5, dtype=F64)
    logvar = torch.zeros(50, 3, dtype=F64)
    for method in ("pairwise-kl", "bhattacharyya", "mc"):
        assert float(mutual_information(far, logvar, method=method, generator=generator, n_samples=2)) == pytest.approx(
            math.log(50), abs=0.01
        )
    assert float(mutual_information(far, logvar, method="jensen")) > 1e5
    for method in METHODS:
        assert float(mutual_information(same, logvar, method=method, generator=generator, n_samples=2)) == pytest.approx(0.0, abs=0.01)


def test_mixture_entropy_adds_the_exact_conditional_entropy():
    mu, logvar = _gaussians(6, 2, seed=8)
    conditional = sum(0.5 * (math.log(2 * math.pi * math.e) + v) for row in logvar.tolist() for v in row) / 6
    for method in DETERMINISTIC:
        entropy = float(mixture_entropy(mu, logvar, method=method))
        assert entropy == pytest.approx(conditional + float(mutual_information(mu, logvar, method=method)), rel=1e-12)
    # For one component the mixture is that Gaussian: its entropy, exactly, by every bound.
    single = float(mixture_entropy(mu[:1], logvar[:1], method="pairwise-kl"))
    assert single == pytest.approx(sum(0.5 * (math.log(2 * math.pi * math.e) + v) for v in logvar[0].tolist()), rel=1e-12)


@settings(max_examples=30, deadline=None, derandomize=True)  # the same examples on every run
@given(n=st.integers(2, 8), d=st.integers(1, 3), seed=st.integers(0, 10_000), scale=st.floats(0.1, 5.0))
def test_bounds_are_ordered_and_invariant(n, d, seed, scale):
    mu, logvar = _gaussians(n, d, seed=seed, scale=scale)
    generator = torch.Generator().manual_seed(seed)
    values = {m: float(mutual_information(mu, logvar, method=m, generator=generator, n_samples=400)) for m in METHODS}
    tolerance = 0.05 * max(values["pairwise-kl"], 0.05)  # Monte Carlo noise of 400 draws per component
    assert values["bhattacharyya"] <= values["pairwise-kl"] + 1e-12 <= values["jensen"] + 2e-12
    assert values["bhattacharyya"] - tolerance <= values["mc"] <= values["pairwise-kl"] + tolerance
    assert -1e-12 <= values["bhattacharyya"] and values["pairwise-kl"] <= math.log(n) + 1e-12
    order = torch.randperm(n, generator=generator)
    shift = torch.randn(d, generator=generator, dtype=F64) * 10
    for method in DETERMINISTIC:
        for moved in ((mu[order], logvar[order]), (mu + shift, logvar)):
            assert float(mutual_information(*moved, method=method)) == pytest.approx(values[method], rel=1e-9, abs=1e-12)


def test_deterministic_methods_are_exactly_repeatable():
    mu, logvar = _gaussians(40, 3, seed=9)
    for method in DETERMINISTIC:
        assert torch.equal(
            mutual_information(mu, logvar, method=method, chunk_size=16), mutual_information(mu, logvar, method=method, chunk_size=16)
        )


@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck(method):
    mu, logvar = (t.requires_grad_() for t in _gaussians(5, 2, seed=10))

    def estimate(m, lv):
        return mutual_information(m, lv, method=method, generator=torch.Generator().manual_seed(0), n_samples=2, chunk_size=3)

    assert torch.autograd.gradcheck(estimate, (mu, logvar))
    # the method itself, with fixed noise for "mc"
    eps = draw_mc_noise(mu, 2, torch.Generator().manual_seed(0)) if method in ("mc", "loo") else None
    assert torch.autograd.gradcheck(lambda m, lv: METHODS[method](m, lv, eps, 3), (mu, logvar))


def test_float32_agrees_with_float64():
    mu, logvar = _gaussians(300, 4, seed=11, scale=3.0)
    for method in DETERMINISTIC:
        value32 = float(mutual_information(mu.float(), logvar.float(), method=method, chunk_size=128))
        assert value32 == pytest.approx(float(mutual_information(mu, logvar, method=method)), rel=1e-4, abs=1e-4)


@pytest.mark.slow  # 30 s to 2 min on two shared cores
def test_a_large_batch_in_float32():
    # N = 20000: the N x N matrix of the pairwise terms would need 1.6 GB; the blocks need 4 MB.
    mu, logvar = _gaussians(20_000, 4, seed=12)
    assert 0 < float(mutual_information(mu.float(), logvar.float(), method="pairwise-kl")) < math.log(20_000)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "kde"}, "unknown method 'kde'"),
        ({"method": "jensen", "chunk_size": 0}, "chunk_size"),
        ({"method": "mc", "generator": torch.Generator(), "n_samples": 0}, "n_samples"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    mu, logvar = _gaussians(4, 2)
    with pytest.raises(ValueError, match=message):
        mutual_information(mu, logvar, **kwargs)


@pytest.mark.parametrize("n_samples", [0, -1])
def test_draw_mc_noise_refuses_no_samples(n_samples):
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1"):
        draw_mc_noise(torch.zeros(4, 2), n_samples, torch.Generator())


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="shape"):
        mutual_information(torch.zeros(4), torch.zeros(4), method="jensen")
    with pytest.raises(ValueError, match="floating-point, got torch.int64"):
        mutual_information(torch.zeros(4, 2, dtype=torch.int64), torch.zeros(4, 2), method="mc")
    with pytest.raises(TypeError, match="must both be tensors or both NumPy arrays, got ndarray and Tensor"):
        mutual_information(np.zeros((4, 2)), torch.zeros(4, 2), method="jensen")
    with pytest.raises(TypeError, match="got list and list"):
        mutual_information([[0.0]], [[0.0]], method="jensen")
    with pytest.raises(ValueError, match="shape of mu"):
        mutual_information(torch.zeros(4, 2), torch.zeros(4, 3), method="jensen")
    with pytest.raises(ValueError, match="finite"):
        mutual_information(torch.tensor([[0.0, math.nan]]), torch.zeros(1, 2), method="pairwise-kl")


def test_estimates_share_one_draw_between_mc_and_loo_and_match_the_loops():
    from ipae.mixture import estimates

    mu, logvar = _gaussians(6, 2, seed=21)
    generator = torch.Generator().manual_seed(22)
    eps = draw_mc_noise(mu, 4, torch.Generator().set_state(generator.get_state()))
    found = estimates(mu, logvar, generator=generator, n_samples=4, chunk_size=4)
    for method in ("mc", "loo", *DETERMINISTIC):
        assert found[method] == pytest.approx(_reference(method, mu, logvar, eps), rel=1e-10), method
    assert found["mc"] <= math.log(6) and found["loo"] > found["mc"]  # own component kept / left out


# The code without a graph (tiles in the cache, `ipae.mixture._log_sum_exp_rows`) against the block code that autograd
# runs (the code of 3366ffa, unchanged) and against loops. Inputs that require grad take the block code.
FAST = ("pairwise-kl", "bhattacharyya", "mc", "loo")


def _block_code(method, mu, logvar, eps, chunk_size):
    return METHODS[method](mu.detach().clone().requires_grad_(), logvar, eps, chunk_size).detach()


def _shapes():
    far = 1000.0 * torch.arange(30, dtype=F64)[:, None].repeat(1, 2)
    same = torch.full((30, 2), -7.5, dtype=F64)
    mu, logvar = _gaussians(101, 5, seed=31, scale=2.0)
    one, one_logvar = _gaussians(64, 1, seed=32)
    offset, offset_logvar = _gaussians(80, 3, seed=33, scale=0.5)
    return {
        "N = 101 in tiles that do not divide it": (mu, logvar),
        "D = 1": (one, one_logvar),
        "identical points": (same, torch.zeros_like(same)),
        "far-apart points": (far, torch.zeros_like(far)),
        "means that share a large offset": (offset + 1e4, offset_logvar),
    }


@pytest.mark.parametrize("chunk_size", [3, 40, 100, 1024])  # tiles of 1, 5, 12, 128 rows in float64
@pytest.mark.parametrize("case", list(_shapes()))
@pytest.mark.parametrize("method", FAST)
def test_the_tiles_give_the_values_of_the_block_code(method, case, chunk_size):
    mu, logvar = _shapes()[case]
    eps = draw_mc_noise(mu, 3, torch.Generator().manual_seed(34)) if method in ("mc", "loo") else None
    fast = METHODS[method](mu, logvar, eps, chunk_size)
    assert not fast.requires_grad
    expected = float(_block_code(method, mu, logvar, eps, chunk_size))
    assert float(fast) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    if len(mu) <= 30 or chunk_size == 40:  # and against the loops, where they are quick
        loops = _stable_reference(method, mu, logvar, eps) if eps is not None else _reference(method, mu, logvar)
        assert float(fast) == pytest.approx(loops, rel=1e-9, abs=1e-12)


def _log_sum_exp(values) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values)) if top > -math.inf else -math.inf


def _log_others_loops(mu, logvar, eps) -> list[float]:
    """log sum_{j != i} p_j(z_ik) in the order of `_log_ratios`, by loops with a stable log-sum-exp."""
    m, lv, n = mu.tolist(), logvar.tolist(), len(mu)
    found = []
    for k in range(eps.shape[0]):
        for i in range(n):
            z = [m[i][d] + math.exp(0.5 * lv[i][d]) * float(eps[k, i, d]) for d in range(len(m[i]))]
            found.append(_log_sum_exp([_log_normal(z, m[j], lv[j]) for j in range(n) if j != i]))
    return found


def _stable_reference(method, mu, logvar, eps) -> float:
    """ "mc" or "loo" by loops, with the log-sum-exp of `_log_others_loops` (far-apart points underflow `_reference`)."""
    m, lv, n = mu.tolist(), logvar.tolist(), len(mu)
    total = 0.0
    for row, others in enumerate(_log_others_loops(mu, logvar, eps)):
        k, i = divmod(row, n)
        own = _log_normal([m[i][d] + math.exp(0.5 * lv[i][d]) * float(eps[k, i, d]) for d in range(len(m[i]))], m[i], lv[i])
        total += own - (_log_sum_exp([others, own]) - math.log(n) if method == "mc" else others - math.log(n - 1))
    return total / (n * eps.shape[0])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_rows_whose_sums_overflow_or_underflow_are_redone_exactly(dtype):
    from ipae.mixture import _log_ratios

    # a needle: component 1 sits on component 0's mean with a variance so small that p_1(mu_0) / p_0(mu_0) is
    # e^750 (beyond float64) or e^90 (beyond float32); component 2 lies 10^4 sigma away, so its partners'
    # densities at its draws are below every float; component 3 is ordinary. D = 3.
    needle = 500.0 if dtype == F64 else 60.0
    mu = torch.tensor([[0.0], [0.0], [1e4], [0.5]], dtype=F64).repeat(1, 3)
    logvar = torch.tensor([[0.0], [-needle], [0.0], [0.3]], dtype=F64).repeat(1, 3)
    eps = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(42), dtype=F64)
    eps[:, 0] = 0.0  # component 0's draws on its mean, where the needle is
    log_own, log_others = _log_ratios(mu.to(dtype), logvar.to(dtype), eps.to(dtype), 2)
    expected = torch.tensor(_log_others_loops(mu, logvar, eps), dtype=F64)
    assert log_others.dtype == dtype and torch.isfinite(log_others).all()
    torch.testing.assert_close(log_others.double(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-9, atol=0)
    # the same with one component: no partner at all, log 0 = -inf, and "mc" of one point is 0
    _, alone = _log_ratios(mu[:1].to(dtype), logvar[:1].to(dtype), eps[:, :1].to(dtype), 2)
    assert torch.equal(alone, torch.full((2,), -math.inf, dtype=dtype))
    assert float(METHODS["mc"](mu[:1].to(dtype), logvar[:1].to(dtype), eps[:, :1].to(dtype), 2)) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_bhattacharyya_splits_the_log_of_the_product_where_it_would_leave_the_floats(dtype):
    from ipae.mixture import _product_groups

    # variances 30 (float32) or 250 (float64) nats apart in every dimension: the product of s_i + s_j over all
    # 8 dimensions would overflow, so the log is taken over runs of dimensions
    spread = 30.0 if dtype == torch.float32 else 250.0
    mu, logvar = _gaussians(12, 8, seed=35)
    logvar = logvar + spread * (torch.arange(12, dtype=F64)[:, None] % 3 - 1)
    assert len(_product_groups(logvar.to(dtype), dtype)) > 1
    value = METHODS["bhattacharyya"](mu.to(dtype), logvar.to(dtype), None, 5)
    assert float(value) == pytest.approx(_reference("bhattacharyya", mu, logvar), rel=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("method", FAST)
def test_float32_tiles_agree_with_float64(method):
    mu, logvar = _gaussians(300, 16, seed=36, scale=3.0)
    eps = draw_mc_noise(mu, 2, torch.Generator().manual_seed(37)) if method in ("mc", "loo") else None
    value32 = METHODS[method](mu.float(), logvar.float(), None if eps is None else eps.float(), 128)
    assert value32.dtype == torch.float32
    assert float(value32) == pytest.approx(float(_block_code(method, mu, logvar, eps, 1024)), rel=1e-4)


def test_no_grad_and_grad_mode_give_the_same_value():
    mu, logvar = _gaussians(40, 3, seed=38)
    eps = draw_mc_noise(mu, 2, torch.Generator().manual_seed(39))
    for method in FAST:
        draws = eps if method in ("mc", "loo") else None
        with torch.no_grad():
            fast = METHODS[method](mu.clone().requires_grad_(), logvar, draws, 16)
        graph = METHODS[method](mu.clone().requires_grad_(), logvar, draws, 16)
        assert not fast.requires_grad and graph.requires_grad
        assert float(fast) == pytest.approx(float(graph.detach()), rel=1e-12), method


def _peak_bytes(run) -> int:
    """The largest total of live tensor bytes that `run` allocated, from the profiler's allocation records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        run()
    events = sorted((e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("method", FAST)
def test_memory_is_a_tile_and_the_features_never_n_squared(method):
    n, d, chunk_size = 3000, 3, 256  # N^2 float64 = 72 MB; a tile of 32 x 256 = 64 KiB
    mu, logvar = _gaussians(n, d, seed=40)
    eps = draw_mc_noise(mu, 2, torch.Generator().manual_seed(41)) if method in ("mc", "loo") else None
    peak = _peak_bytes(lambda: METHODS[method](mu, logvar, eps, chunk_size))
    tile = 32 * chunk_size * 8
    features = 2 * n * (2 * d + 2) * 8  # the rows' and the partners' features
    # the bound: four tiles (buffer and Bhattacharyya's scratch), the features, and per-point vectors
    assert peak <= 4 * tile + 2 * features + 64 * n * 8, peak
    assert peak < n * n * 8 / 50


@pytest.mark.parametrize("method", ["mc", "loo"])
def test_without_a_generator_the_draws_come_from_a_fresh_seeded_one_and_leave_the_global_one_alone(method):
    mu, logvar = _gaussians(30, 3, seed=43)
    state = torch.get_rng_state()
    first = mutual_information(mu, logvar, method=method, n_samples=2)
    second = mutual_information(mu, logvar, method=method, n_samples=2)
    assert torch.equal(torch.get_rng_state(), state)  # torch's global generator neither read nor advanced
    assert torch.equal(first, second)
    # exactly the draws of torch.Generator().manual_seed(DEFAULT_SEED), checked against the loops
    seeded = mutual_information(mu, logvar, method=method, n_samples=2, generator=torch.Generator().manual_seed(DEFAULT_SEED))
    assert torch.equal(first, seeded)
    eps = torch.randn((2, 30, 3), generator=torch.Generator().manual_seed(DEFAULT_SEED), dtype=F64)
    assert float(first) == pytest.approx(_stable_reference(method, mu, logvar, eps), rel=1e-9)
    other = mutual_information(mu, logvar, method=method, n_samples=2, generator=torch.Generator().manual_seed(DEFAULT_SEED + 1))
    assert float(other) != pytest.approx(float(first), rel=1e-6)


@pytest.mark.parametrize("method", list(METHODS))
def test_numpy_arrays_give_a_float_equal_to_the_tensors_value(method):
    mu, logvar = _gaussians(25, 3, seed=44)

    def estimate(m, lv):
        return mutual_information(m, lv, method=method, generator=torch.Generator().manual_seed(45), n_samples=2)

    expected = estimate(mu, logvar)
    assert isinstance(expected, torch.Tensor)
    arrays = mu.numpy(), logvar.numpy()
    for array in arrays:
        array.flags.writeable = False  # read-only arrays (np.load with mmap_mode, views): no warning from torch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = estimate(*arrays)
    assert type(found) is float and found == float(expected)
    # float32 arrays are computed in float32; integer arrays in float64
    found32, expected32 = estimate(*(a.astype(np.float32) for a in arrays)), estimate(mu.float(), logvar.float())
    assert type(found32) is float and found32 == float(expected32)
    rounded = mutual_information(*(np.rint(4 * a).astype(np.int64) for a in arrays), method=method, n_samples=2)
    assert rounded == float(mutual_information(torch.round(4 * mu), torch.round(4 * logvar), method=method, n_samples=2))


def test_mixture_entropy_of_numpy_arrays_is_a_float():
    mu, logvar = _gaussians(6, 2, seed=46)
    expected = mixture_entropy(mu, logvar, method="pairwise-kl")
    found = mixture_entropy(mu.numpy(), logvar.numpy(), method="pairwise-kl")
    assert type(found) is float and found == float(expected)
    assert mixture_entropy(mu.numpy(), logvar.numpy(), method="mc") == float(mixture_entropy(mu, logvar, method="mc"))
