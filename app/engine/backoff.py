"""Waits between tries: one policy for every retry the service makes, an email's (a loop's
`recovery`), the worker's after a failure, and `activation import-clerk`'s against Clerk.

A wait starts at `first_ms` and grows by `growth` (doubling, adding `first_ms`, or not at all)
up to `cap_ms`; each is drawn between the `jitter` factors of that (`draw` is injectable, so a
test chooses), and never shorter than what the other side asked for (`at_least_ms`: a
`retry-after`).
"""

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Growth(StrEnum):
    EXPONENTIAL = "exponential"  # first, 2x, 4x, ...
    LINEAR = "linear"  # first, 2x, 3x, ...
    FIXED = "fixed"  # first, first, ...


@dataclass(frozen=True, slots=True)
class Backoff:
    first_ms: int
    cap_ms: int
    growth: Growth = Growth.EXPONENTIAL
    jitter: tuple[float, float] = (1.0, 1.0)  # each wait between these factors of its base

    def base_ms(self, attempt: int) -> int:
        """The wait before try `attempt` + 1 (1: the first wait), without jitter."""
        factor = 1
        if self.growth is Growth.EXPONENTIAL:
            factor = 1 << min(max(attempt - 1, 0), 62)
        elif self.growth is Growth.LINEAR:
            factor = max(attempt, 1)
        return min(self.first_ms * factor, self.cap_ms)

    def wait_ms(
        self, attempt: int, *, at_least_ms: int = 0, draw: Callable[[], float] = random.random
    ) -> int:
        """The wait before try `attempt` + 1, jittered, never under `at_least_ms`."""
        low, high = self.jitter
        jittered_ms = int(self.base_ms(attempt) * (low + (high - low) * draw()))
        return max(jittered_ms, at_least_ms, 1)

    def longest_span_ms(self, waits: int) -> int:
        """The longest `waits` waits can last together, jitter at its most."""
        return int(sum(self.base_ms(attempt) for attempt in range(1, waits + 1)) * self.jitter[1])
