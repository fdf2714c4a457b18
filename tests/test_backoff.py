"""The one backoff policy (`app.engine.backoff`): how waits grow, their cap, the jitter a test
can choose, and the floor another side asks for."""

import pytest

from app.engine.backoff import Backoff, Growth


@pytest.mark.parametrize(
    ("growth", "waits_ms"),
    [
        (Growth.EXPONENTIAL, [100, 200, 400, 800, 1000, 1000]),
        (Growth.LINEAR, [100, 200, 300, 400, 500, 600]),
        (Growth.FIXED, [100, 100, 100, 100, 100, 100]),
    ],
)
def test_waits_grow_by_their_growth_up_to_the_cap(growth: Growth, waits_ms: list[int]) -> None:
    policy = Backoff(100, 1000, growth)
    assert [policy.base_ms(attempt) for attempt in range(1, 7)] == waits_ms


def test_jitter_draws_between_its_factors_and_the_floor_wins() -> None:
    policy = Backoff(1000, 60_000, jitter=(0.5, 1.0))
    assert policy.wait_ms(1, draw=lambda: 0.0) == 500
    assert policy.wait_ms(1, draw=lambda: 1.0) == 1000
    assert policy.wait_ms(2, draw=lambda: 0.5) == 1500
    assert policy.wait_ms(1, at_least_ms=9000, draw=lambda: 1.0) == 9000  # a retry-after


def test_a_long_run_of_failures_stays_at_the_cap() -> None:
    assert Backoff(500, 30_000).base_ms(10_000) == 30_000


def test_the_longest_span_counts_the_jitter_at_its_most() -> None:
    policy = Backoff(10_000, 3_600_000, jitter=(0.8, 1.2))
    assert policy.longest_span_ms(3) == int((10_000 + 20_000 + 40_000) * 1.2)
