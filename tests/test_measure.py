"""Rates, Wilson intervals and Newcombe's interval for an uplift, against the worked examples of
Newcombe (1998), "Interval estimation for the difference between independent proportions:
comparison of eleven methods", Statistics in Medicine 17, 873-890, Table II, method 10."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.engine.measure import Z_95, Rate, Uplift, uplift, wilson


def test_z_is_the_two_sided_95_percent_point() -> None:
    assert abs(Z_95 - 1.959963984540054) < 1e-15


def test_a_rate_of_nobody_has_no_value() -> None:
    assert Rate(0, 0).value is None
    assert Rate(8, 2).value == 0.25


@pytest.mark.parametrize(("entered", "activated"), [(3, 4), (-1, 0), (5, -1)])
def test_a_rate_is_a_part_of_its_whole(entered: int, activated: int) -> None:
    with pytest.raises(ValueError, match="activated <= entered"):
        Rate(entered, activated)


def test_wilson_by_hand() -> None:
    # 81/263, z = 1.959964: p = 0.3079848, z² = 3.8414588, z²/n = 0.0146063
    # centre = (p + z²/2n) / (1 + z²/n) = (0.3079848 + 0.0073032) / 1.0146063 = 0.3107490
    # half   = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)
    #        = 1.959964 / 1.0146063 * sqrt(0.00081038 + 0.00001388)
    #        = 1.9317483 * 0.0287100 = 0.0554605
    # interval = 0.3107490 ∓ 0.0554605 = 0.2552885 to 0.3662095
    low, high = wilson(Rate(263, 81))
    assert low == pytest.approx(0.2552885, abs=1e-7)
    assert high == pytest.approx(0.3662095, abs=1e-7)


def test_wilson_keeps_a_width_at_zero_and_one() -> None:
    # p = 0: the interval is 0 to (z²/n) / (1 + z²/n) = 0.3841459 / 1.3841459 = 0.2775328
    low, high = wilson(Rate(10, 0))
    assert low == 0.0
    assert high == pytest.approx(0.2775328, abs=1e-7)
    low, high = wilson(Rate(10, 10))
    assert low == pytest.approx(1 - 0.2775328, abs=1e-7)
    assert high == 1.0


def test_wilson_refuses_a_rate_of_nobody() -> None:
    with pytest.raises(ValueError, match="nobody"):
        wilson(Rate(0, 0))


@pytest.mark.parametrize(
    ("treatment", "holdout", "estimate", "low", "high"),
    [
        (Rate(70, 56), Rate(80, 48), 0.2000, 0.0524, 0.3339),  # (a)
        (Rate(10, 9), Rate(10, 3), 0.6000, 0.1705, 0.8090),  # (b)
        (Rate(56, 5), Rate(29, 0), 0.0893, -0.0381, 0.1926),  # (d)
        (Rate(10, 0), Rate(20, 0), 0.0000, -0.1611, 0.2775),  # (e)
        (Rate(10, 0), Rate(10, 0), 0.0000, -0.2775, 0.2775),  # (f)
        (Rate(10, 10), Rate(20, 0), 1.0000, 0.6791, 1.0000),  # (g)
    ],
)
def test_uplift_matches_newcombes_examples(
    treatment: Rate, holdout: Rate, estimate: float, low: float, high: float
) -> None:
    found = uplift(treatment, holdout)
    assert found is not None
    assert found.estimate == pytest.approx(estimate, abs=5e-5)
    assert found.low == pytest.approx(low, abs=5e-5)
    assert found.high == pytest.approx(high, abs=5e-5)


def test_no_difference_at_zero_still_has_a_width() -> None:
    """Where the Wald interval collapses to 0 ± 0, this one does not."""
    found = uplift(Rate(10, 0), Rate(10, 0))
    assert found is not None
    assert found.low < 0 < found.high
    assert found.high - found.low > 0.5


def test_distinguishable_when_the_interval_excludes_zero() -> None:
    raised = uplift(Rate(70, 56), Rate(80, 48))
    lowered = uplift(Rate(80, 48), Rate(70, 56))
    unclear = uplift(Rate(56, 5), Rate(29, 0))
    assert raised is not None
    assert raised.distinguishable
    assert lowered is not None
    assert lowered.distinguishable
    assert lowered.high < 0
    assert unclear is not None
    assert not unclear.distinguishable
    assert not Uplift(0.05, 0.0, 0.1).distinguishable  # touching 0 is not excluding it


def test_no_uplift_while_an_arm_is_empty() -> None:
    assert uplift(Rate(0, 0), Rate(10, 3)) is None
    assert uplift(Rate(10, 3), Rate(0, 0)) is None


@st.composite
def rates(draw: st.DrawFn) -> Rate:
    entered = draw(st.integers(1, 1_000_000))
    return Rate(entered, draw(st.integers(0, entered)))


@given(rates(), rates())
def test_the_interval_holds_the_estimate_within_minus_one_to_one(
    treatment: Rate, holdout: Rate
) -> None:
    found = uplift(treatment, holdout)
    assert found is not None
    assert -1 <= found.low <= found.estimate <= found.high <= 1


@given(rates())
def test_a_wilson_interval_holds_its_rate(rate: Rate) -> None:
    low, high = wilson(rate)
    assert rate.value is not None
    assert 0 <= low <= rate.value <= high <= 1


@given(rates(), rates())
def test_swapping_the_two_rates_mirrors_the_difference(first: Rate, second: Rate) -> None:
    """Order-sensitive: `vs_arms` reports `a` minus `b`, so which arm comes first only flips the
    sign, never the interval's width or where it lies: b - a runs from -high to -low."""
    forward, backward = uplift(first, second), uplift(second, first)
    assert forward is not None
    assert backward is not None
    assert backward.estimate == pytest.approx(-forward.estimate, abs=1e-12)
    assert backward.low == pytest.approx(-forward.high, abs=1e-12)
    assert backward.high == pytest.approx(-forward.low, abs=1e-12)
