import math

import numpy as np
import pytest
import torch

from ipae.data.toy import gaussian_grid
from ipae.evaluation import centre_distance, linear_svm_error, principal_components


def test_centre_distance_known_answers():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert centre_distance(centres[labels], labels, centres) == 0.0
    points = centres[labels] + torch.tensor([[3.0, 4.0], [0.0, 1.0], [-2.0, 0.0]])
    assert centre_distance(points, labels, centres) == pytest.approx((5 + 1 + 2) / 3, rel=1e-12)


def test_identity_reconstruction_scores_the_noise_level():
    # For 2-D isotropic noise of variance v, E|noise| = sqrt(v) * sqrt(pi / 2) = 0.3963 for v = 0.1;
    # 5000 samples estimate it to about +-0.003.
    data = gaussian_grid()
    assert centre_distance(data.x, data.labels, data.centres) == pytest.approx(math.sqrt(0.1 * math.pi / 2), abs=0.01)


def test_centre_distance_refuses_mismatched_shapes():
    with pytest.raises(ValueError):
        centre_distance(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64), torch.zeros(1, 2))
    with pytest.raises(ValueError):
        centre_distance(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), torch.zeros(1, 3))


def test_linear_svm_error_known_answers():
    generator = np.random.default_rng(0)
    labels = np.repeat([1, 3, 4], 50)
    separable = np.eye(3)[np.searchsorted([1, 3, 4], labels)] * 5 + 0.1 * generator.standard_normal((150, 3))
    assert linear_svm_error(separable, labels, separable, labels) == 0.0
    # Constant codes carry nothing: the SVM predicts one class and errs on the other two thirds.
    constant = np.zeros((150, 3))
    assert linear_svm_error(constant, labels, constant, labels) == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError):
        linear_svm_error(separable, labels[:-1], separable, labels)
    with pytest.raises(ValueError):
        linear_svm_error(separable, labels, separable[:, :2], labels)
    with pytest.raises(ValueError):
        linear_svm_error(np.full((150, 3), np.nan), labels, separable, labels)


def test_principal_components_match_an_svd():
    generator = np.random.default_rng(1)
    codes = generator.standard_normal((200, 5)) @ np.diag([5.0, 2.0, 0.5, 0.1, 0.01])
    projected = principal_components(codes)
    centred = codes - codes.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    np.testing.assert_allclose(np.abs(projected), np.abs(expected), rtol=1e-8, atol=1e-8)  # up to each axis' sign


def test_within_class_fraction_has_known_answers():
    from ipae.evaluation import within_class_fraction

    labels = np.array([0, 0, 1, 1])
    # class means (0, 0) and (4, 0); within: 4 points at distance 1; total: about the mean (2, 0)
    points = np.array([[0.0, 1.0], [0.0, -1.0], [4.0, 1.0], [4.0, -1.0]])
    assert within_class_fraction(points, labels) == pytest.approx(4 / (4 * 4 + 4))
    assert within_class_fraction(np.array([[1.0, 1.0], [1.0, 1.0], [3.0, 0.0], [3.0, 0.0]]), labels) == 0.0
    assert within_class_fraction(np.array([[0.0], [2.0], [0.0], [2.0]]), labels) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="need points"):
        within_class_fraction(np.zeros(4), labels)
