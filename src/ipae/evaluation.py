"""Metrics of trained models, as pure functions of arrays."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import Tensor

__all__ = ["centre_distance", "linear_svm_error"]


def centre_distance(points: Tensor, labels: Tensor, centres: Tensor) -> float:
    """The paper's metric E (section 4.1): mean Euclidean distance of each point to its true centre.

    points (N, 2), labels (N,) int, centres (C, 2) -> float. For the inputs themselves (no model),
    E = sqrt(variance) * sqrt(pi / 2), about 0.396 for the toy task's variance 0.1.
    """
    if points.ndim != 2 or labels.shape != points.shape[:1] or centres.ndim != 2 or centres.shape[1] != points.shape[1]:
        raise ValueError(
            f"need points (N, F), labels (N,), centres (C, F); got {tuple(points.shape)}, {tuple(labels.shape)}, {tuple(centres.shape)}"
        )
    return float(torch.linalg.vector_norm(points.double() - centres.double()[labels], dim=1).mean())


# The linear SVM of section 4.2, fixed once and never tuned on the test set: codes standardised with
# the training codes' mean and spread, C = 1 (scikit-learn's default), primal solver (fewer features
# than samples), iterations enough to converge on 18000 codes of dimension 8.
SVM_C = 1.0
SVM_MAX_ITER = 10_000


def linear_svm_error(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray, test_labels: np.ndarray) -> float:
    """Test error in percent of a linear SVM fitted on the training codes (section 4.2).

    train_codes (N, D), train_labels (N,), test_codes (M, D), test_labels (M,) -> float in [0, 100].
    """
    if train_codes.ndim != 2 or test_codes.ndim != 2 or train_codes.shape[1] != test_codes.shape[1]:
        raise ValueError(f"codes must be (N, D) and (M, D) with the same D, got {train_codes.shape} and {test_codes.shape}")
    if len(train_labels) != len(train_codes) or len(test_labels) != len(test_codes):
        raise ValueError("each code needs exactly one label")
    if not (np.isfinite(train_codes).all() and np.isfinite(test_codes).all()):
        raise ValueError("codes contain NaN or infinite values")
    classifier = make_pipeline(StandardScaler(), LinearSVC(C=SVM_C, dual=False, max_iter=SVM_MAX_ITER))
    classifier.fit(train_codes, train_labels)
    return float(100.0 * np.mean(classifier.predict(test_codes) != test_labels))


def principal_components(codes: np.ndarray, n_components: int = 2) -> np.ndarray:
    """Codes (N, D) projected on their first principal components, (N, n_components), for pictures."""
    return PCA(n_components=n_components).fit_transform(codes)


def within_class_fraction(points: np.ndarray, labels: np.ndarray) -> float:
    """How compact the classes are: the within-class sum of squared distances to the class means over
    the total sum of squared distances to the overall mean. points (N, F), labels (N,) -> float in [0, 1];
    0 when every class is a single point, 1 when all classes share one mean."""
    if points.ndim != 2 or labels.shape != points.shape[:1] or len(points) == 0:
        raise ValueError(f"need points (N, F) with N > 0 and labels (N,), got {points.shape} and {labels.shape}")
    points = points.astype(np.float64)
    total = np.square(points - points.mean(axis=0)).sum()
    within = sum(np.square(points[labels == label] - points[labels == label].mean(axis=0)).sum() for label in np.unique(labels))
    return float(within / total) if total > 0 else 0.0


def paired_comparison(values: np.ndarray, reference: np.ndarray, *, lower_is_better: bool = True) -> dict:
    """A method against a reference on paired repeats (same seed, subset, batches): values (n,) and
    reference (n,), repeat by repeat. Returns n, the mean `difference` values - reference, how many
    repeats are `better`, `worse` or `tied`, `p_sign` (two-sided sign test over the untied repeats;
    None if all tie) and `p_t` (two-sided paired t-test; None for n < 2 or identical differences)."""
    values, reference = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if values.ndim != 1 or values.shape != reference.shape:
        raise ValueError(f"need two arrays (n,) of paired values, got {values.shape} and {reference.shape}")
    differences = values - reference
    signed = differences if lower_is_better else -differences
    better, worse = int(np.sum(signed < 0)), int(np.sum(signed > 0))
    n = len(differences)
    return {
        "n": n,
        "difference": float(differences.mean()) if n else None,
        "better": better,
        "worse": worse,
        "tied": n - better - worse,
        "p_sign": float(stats.binomtest(better, better + worse).pvalue) if better + worse else None,
        "p_t": float(stats.ttest_rel(values, reference).pvalue) if n > 1 and np.ptp(differences) > 0 else None,
    }


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of m tests' p-values: the k-th smallest times (m - k + 1),
    made non-decreasing, capped at 1. A None (a test without a statistic) stays None and still counts in m."""
    order = sorted((p, index) for index, p in enumerate(p_values) if p is not None)
    m = len(p_values)
    adjusted: list[float | None] = [None] * m
    running = 0.0
    for rank, (p, index) in enumerate(order):
        running = max(running, min(1.0, p * (m - rank)))
        adjusted[index] = running
    return adjusted
