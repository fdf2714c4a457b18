"""Activation figures for loops with a holdout or an experiment: an arm's rate, and the uplift of
one arm over another with a 95 % interval (Newcombe's hybrid score interval, built from the
Wilson score intervals of the two rates).
"""

import math
from dataclasses import dataclass
from statistics import NormalDist

Z_95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054


@dataclass(frozen=True, slots=True)
class Rate:
    """Of `entered` users in an arm, `activated` met the loop's condition."""

    entered: int
    activated: int

    def __post_init__(self) -> None:
        if not 0 <= self.activated <= self.entered:
            raise ValueError(f"need 0 <= activated <= entered, got {self}")

    @property
    def value(self) -> float | None:
        return self.activated / self.entered if self.entered else None


@dataclass(frozen=True, slots=True)
class Uplift:
    """A difference of two rates (fractions, -1 to 1) and its interval."""

    estimate: float
    low: float
    high: float

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0: the difference is told apart from no effect."""
        return self.low > 0 or self.high < 0


def wilson(rate: Rate, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for one rate (no continuity correction)."""
    if rate.value is None:
        raise ValueError("no interval for a rate of nobody")
    p, n = rate.value, rate.entered
    shrink = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the bounds hold p and stay in [0, 1]; rounding alone could break that at p = 0 or 1
    return max(min(centre - half, p), 0.0), min(max(centre + half, p), 1.0)


def uplift(treatment: Rate, holdout: Rate, z: float = Z_95) -> Uplift | None:
    """Treatment's rate minus holdout's, with Newcombe's hybrid score interval (method 10 of
    Newcombe 1998). Unlike the Wald interval it keeps a width at small counts and at rates of
    0 or 1. None while either arm is empty."""
    p1, p2 = treatment.value, holdout.value
    if p1 is None or p2 is None:
        return None
    l1, u1 = wilson(treatment, z)
    l2, u2 = wilson(holdout, z)
    estimate = p1 - p2
    low = estimate - math.hypot(p1 - l1, u2 - p2)
    high = estimate + math.hypot(u1 - p1, p2 - l2)
    return Uplift(estimate, max(low, -1.0), min(high, 1.0))
