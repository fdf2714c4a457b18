"""Pacing requests to an API that limits its callers: a client-side spacing of request starts
(`RateLimiter`, which also follows the server's `ratelimit-*` answer headers and holds off for
its `retry-after`), and reading those headers. Resend's sends and `activation import-clerk`'s
pages to Clerk are paced by it."""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

# The IETF RateLimit fields Resend answers with: its limit per 1 s window, the requests left in
# the window, and the seconds until it resets.
RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET = (
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
)


class RateLimiter:
    """Starts requests at least `1 / rate_per_s` apart; `rate_per_s <= 0` means no spacing.

    `hold_off(delay_s)` pushes the next start back (a 429's `retry-after`) even when spacing is
    off. A slot is reserved before sleeping, so concurrent callers queue up without a lock; a
    caller whose slot falls inside a hold-off that came while it waited takes a later one.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.interval_s = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next_start_s = -math.inf
        self._held_until_s = -math.inf

    async def acquire(self, max_wait_s: float = math.inf) -> float:
        """Wait for a start slot and return 0.0; or, when the slot is more than `max_wait_s`
        away, take none and return how far away it is (the caller comes back later)."""
        while True:
            now_s = self._clock()
            wait_s = max(now_s, self._next_start_s) - now_s
            if wait_s > max_wait_s:
                return wait_s
            start_s = self._take_slot(now_s)
            if start_s > now_s:
                await self._sleep(start_s - now_s)
            if start_s >= self._held_until_s:
                return 0.0
            # a 429 came while this caller waited (the worker's other lanes send too): its slot
            # falls inside the hold-off, so it takes the next one after it

    def reserve(self) -> float:
        """Take the next free slot; return how long to wait for it, in seconds."""
        now_s = self._clock()
        return self._take_slot(now_s) - now_s

    def _take_slot(self, now_s: float) -> float:
        start_s = max(now_s, self._next_start_s)
        self._next_start_s = start_s + self.interval_s
        return start_s

    def hold_off(self, delay_s: float) -> None:
        self._held_until_s = max(self._held_until_s, self._clock() + delay_s)
        self._next_start_s = max(self._next_start_s, self._held_until_s)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Follow what Resend says of its limit on every answer, instead of a fixed guess: its
        `ratelimit-limit` (requests a second) becomes the spacing, unless spacing is off; no
        `ratelimit-remaining` holds every start off until `ratelimit-reset`. The limit is the
        team's: other senders (other processes) use it too, and the hold-off covers them."""
        limit = header_number(headers, RATELIMIT_LIMIT)
        if limit is not None and limit >= 1 and self.interval_s > 0:
            self.interval_s = 1.0 / limit
        remaining = header_number(headers, RATELIMIT_REMAINING)
        reset_s = header_number(headers, RATELIMIT_RESET)
        if remaining is not None and remaining < 1 and reset_s is not None and reset_s > 0:
            self.hold_off(reset_s)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """`retry-after` in seconds (Resend sends seconds); None if absent or not a number."""
    return header_number(headers, "retry-after")


def header_number(headers: Mapping[str, str], name: str) -> float | None:
    """A header's value as a number of at least 0 (any case of its name); None if absent or not
    such a number."""
    value = next((v for k, v in headers.items() if k.lower() == name), None)
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None
