"""Independent references for the tests: Python floats and explicit loops, no torch."""

import math


def kl(mi, li, mj, lj) -> float:
    """KL(N(mi, exp li) || N(mj, exp lj)) of diagonal Gaussians, one dimension at a time."""
    return sum(0.5 * (lj[d] - li[d] + (math.exp(li[d]) + (mi[d] - mj[d]) ** 2) / math.exp(lj[d]) - 1) for d in range(len(mi)))


def bhattacharyya(mi, li, mj, lj) -> float:
    """The Bhattacharyya distance of diagonal Gaussians, one dimension at a time."""
    total = 0.0
    for d in range(len(mi)):
        si, sj = math.exp(li[d]), math.exp(lj[d])
        total += (mi[d] - mj[d]) ** 2 / (4 * (si + sj)) + 0.5 * math.log((si + sj) / 2) - 0.25 * (li[d] + lj[d])
    return total
