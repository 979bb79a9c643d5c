"""The per-run diagnostics (ipae.diagnostics) and the paired comparison (ipae.evaluation), against
closed forms and independent computations."""

import math

import numpy as np
import pytest
import torch

from ipae.diagnostics import AT_BOUND, INFORMATION_KEYS, SATURATION_GAP, clusters, diagnose, information, measure
from ipae.evaluation import paired_comparison
from ipae.models import AutoEncoder
from ipae.networks import MLP


def test_information_of_one_repeated_gaussian_is_zero_and_of_far_apart_ones_is_log_n():
    generator = torch.Generator().manual_seed(0)
    same = information(torch.zeros(50, 3, dtype=torch.float64), torch.zeros(50, 3, dtype=torch.float64), generator=generator)
    assert same["I_mc"] == pytest.approx(0.0, abs=1e-12) and same["I_lower"] == pytest.approx(0.0, abs=1e-12)
    assert same["I_upper"] == pytest.approx(0.0, abs=1e-12) and not same["I_saturated"]
    far = information(
        torch.arange(50.0, dtype=torch.float64)[:, None].repeat(1, 3) * 100, torch.zeros(50, 3, dtype=torch.float64), generator=generator
    )
    assert far["I_points"] == 50 and far["I_log_n"] == pytest.approx(math.log(50))
    assert far["I_mc"] == pytest.approx(math.log(50), abs=1e-9) and far["I_saturated"]


def _gaussian_codes(information: float, n: int, d: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """mu ~ N(0, v I) with unit encoder noise: z ~ N(0, (v + 1) I), so I = d/2 log(1 + v) exactly."""
    v = math.exp(2 * information / d) - 1
    return torch.randn(n, d, generator=generator, dtype=torch.float64) * v**0.5, information


def _clustered_codes(information: float, n: int, d: int, generator: torch.Generator, *, k: int = 3, spread: float = 10.0):
    """mu drawn from k tight clusters (centres ~ N(0, spread^2 I), within-cluster variance t) with unit
    encoder noise, t set so that I is about `information`. The truth, h(z) - h(z | x) with z ~ the k-component
    mixture of N(c, (t + 1) I), is computed independently in float64 by Monte Carlo of that exact density
    over 400 000 draws (standard error about 0.003 nats)."""
    centres = torch.randn(k, d, generator=generator, dtype=torch.float64) * spread
    t = math.exp(2 * (information - math.log(k)) / d) - 1
    variance = t + 1
    z = (
        centres[torch.randint(k, (400_000,), generator=generator)]
        + torch.randn(400_000, d, generator=generator, dtype=torch.float64) * variance**0.5
    )
    log_density = torch.logsumexp(-0.5 * (z[:, None] - centres[None]).square().sum(-1) / variance, dim=1)
    log_density = log_density - math.log(k) - 0.5 * d * math.log(2 * math.pi * variance)
    truth = float(-log_density.mean()) - 0.5 * d * math.log(2 * math.pi * math.e)
    mu = centres[torch.randint(k, (n,), generator=generator)] + torch.randn(n, d, generator=generator, dtype=torch.float64) * t**0.5
    return mu, truth


@pytest.mark.parametrize("shape", [_gaussian_codes, _clustered_codes], ids=["gaussian", "clustered"])
def test_saturation_against_known_truth(shape):
    """D = 8, N = 5000 as in the rate-matched study. I_mc reads low and I_loo high, by amounts that grow
    with I and depend on the codes' shape; the truth lies between them. Below SATURATION_GAP (true 3 and
    5 nats) their midpoint is within 0.1 nats of the truth and I_mc within the gap; at a true 7 and 9 nats
    the gap exceeds SATURATION_GAP and the run is marked saturated."""
    for target in (3.0, 5.0, 7.0, 9.0):
        generator = torch.Generator().manual_seed(int(target))
        mu, truth = shape(target, 5000, 8, generator)
        found = information(mu, torch.zeros_like(mu), generator=generator, n_samples=8)
        assert found["I_mc"] <= truth + 0.05 and found["I_loo"] >= truth - 0.05, (target, truth, found)
        assert found["I_saturated"] == (target >= 7.0), (target, truth, found)
        if not found["I_saturated"]:
            assert abs((found["I_mc"] + found["I_loo"]) / 2 - truth) <= 0.1, (target, truth, found)
            assert truth - found["I_mc"] <= SATURATION_GAP
        else:
            assert truth - found["I_mc"] > 0.2  # I_mc alone would have passed a saturated run as a value


def test_clusters_score_one_for_separated_classes_and_about_zero_for_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 100)
    separated = rng.normal(size=(300, 2)) * 0.01 + np.array([[0, 0], [10, 0], [0, 10]])[labels]
    assert clusters(separated, labels, seed=0) == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
    noise = clusters(rng.normal(size=(300, 2)), labels, seed=0)
    assert abs(noise["ari"]) < 0.05 and noise["nmi"] < 0.05


def test_diagnose_measures_the_models_codes():
    torch.manual_seed(0)
    model = AutoEncoder.from_architecture(MLP((2,), (16,), 3, "relu"), logvar_limit=2.0)
    with torch.no_grad():
        model.encoder.heads.bias[3:].fill_(100.0)  # raw log-variance far above the limit: all at the bound
    x = torch.randn(40, 2)
    y = np.repeat(np.arange(4), 10)
    found = diagnose(model, x, y_test=y, x_train=x, y_train=y, x_information=x[:30], seed=3)
    assert found["I_points"] == 30 and found["logvar_limit"] == 2.0
    assert found["logvar_at_bound"] == 1.0 and found["logvar_max"] <= 2.0 and found["logvar_min"] >= AT_BOUND * 2.0
    # the distortion of one sampled code per point, recomputed here with the same draws
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        information(*[t.double() for t in model.encode(x[:30])], generator=generator)  # diagnose draws the MC noise first
        mu, logvar = (t.double() for t in model.encode(x))
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator, dtype=torch.float64)
        expected = ((model.decoder(z.float()) - x) ** 2).sum(dim=1).double().mean()
    assert found["distortion"] == pytest.approx(float(expected), rel=1e-5)
    assert set(found) >= {"I_mc", "I_lower", "I_upper", "I_saturated", "nmi", "ari", "svm_error", "svm_error_sampled"}
    assert 0 <= found["svm_error"] <= 100 and 0 <= found["svm_error_sampled"] <= 100


def test_diagnose_without_a_bound_reports_none_at_the_bound():
    model = AutoEncoder.from_architecture(MLP((2,), (8,), 2, "relu"), logvar_limit=None)
    found = diagnose(model, torch.randn(20, 2), x_information=torch.randn(20, 2), seed=0)
    assert found["logvar_limit"] is None and found["logvar_at_bound"] is None and "svm_error" not in found


def test_paired_comparison_counts_and_tests_against_closed_forms():
    reference = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    differences = np.array([0.5, 0.3, 0.2, 0.0, 0.4, 0.1, -0.2, 0.6, 0.3, 0.2])
    found = paired_comparison(reference + differences, reference)
    assert (found["n"], found["better"], found["worse"], found["tied"]) == (10, 1, 8, 1)
    assert found["difference"] == pytest.approx(differences.mean())
    assert found["p_sign"] == pytest.approx(2 * (1 + 9) / 2**9)  # two-sided binomial, 1 of 9 untied
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(10))
    from scipy.stats import t as student

    assert found["p_t"] == pytest.approx(2 * student.sf(abs(t), 9))
    higher_is_better = paired_comparison(reference + differences, reference, lower_is_better=False)
    assert (higher_is_better["better"], higher_is_better["worse"]) == (8, 1)
    ties = paired_comparison(reference, reference)
    assert ties["p_sign"] is None and ties["p_t"] is None and ties["tied"] == 10
    with pytest.raises(ValueError, match="paired"):
        paired_comparison(np.zeros(3), np.zeros(4))


def test_measure_gives_the_information_keys_and_the_distortion_of_one_sampled_code_each():
    torch.manual_seed(0)
    model = AutoEncoder.from_architecture(MLP((2,), (16,), 3, "relu")).eval()
    x = torch.randn(30, 2)
    found = measure(model, x, generator=torch.Generator().manual_seed(4), n_samples=2)
    assert tuple(found) == (*INFORMATION_KEYS, "distortion")
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        mu, logvar = (t.double() for t in model.encode(x))
        assert {key: found[key] for key in INFORMATION_KEYS} == information(mu, logvar, generator=generator, n_samples=2)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator, dtype=torch.float64)
        expected = ((model.decoder(z.float()) - x) ** 2).sum(dim=1).double().mean()
    assert found["distortion"] == pytest.approx(float(expected), rel=1e-5)
    with torch.no_grad():
        model.encoder.heads.weight.fill_(1e38)  # codes overflow to inf: nothing to measure
    assert measure(model, x * 1e3, generator=torch.Generator()) == dict.fromkeys((*INFORMATION_KEYS, "distortion"))
