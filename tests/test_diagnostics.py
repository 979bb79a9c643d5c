"""The per-run diagnostics (ipae.diagnostics) and the paired comparison (ipae.evaluation), against
closed forms and independent computations."""

import math

import numpy as np
import pytest
import torch

from ipae.diagnostics import AT_BOUND, SATURATION_MARGIN, clusters, diagnose, information
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


def test_saturation_is_marked_within_the_margin_of_log_n():
    """Two unit Gaussians at distance 2 * a: I_mc of the 2-component mixture is below log 2 by an amount
    that shrinks with a; saturated exactly when I_mc >= log 2 - SATURATION_MARGIN."""
    for a in (0.1, 0.5, 1.0, 3.0):
        mu = torch.tensor([[-a], [a]], dtype=torch.float64)
        found = information(mu, torch.zeros(2, 1, dtype=torch.float64), generator=torch.Generator().manual_seed(1), n_samples=4000)
        assert found["I_saturated"] == (found["I_mc"] >= math.log(2) - SATURATION_MARGIN)
        assert found["I_lower"] <= found["I_mc"] + 0.02 and found["I_mc"] <= found["I_upper"] + 0.02


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
