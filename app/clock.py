"""The one source of time: an injected callable returning epoch milliseconds."""

import time
from collections.abc import Callable

Clock = Callable[[], int]


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000
