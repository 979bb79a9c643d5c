import math

import pytest
import torch

from ipae.data.toy import gaussian_grid
from ipae.evaluation import centre_distance


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
