"""Bounded waits for what another thread or process does, and Resend's pacing run on the fake
clock so that no test sleeps for real."""

import asyncio
import time
from collections.abc import Callable

from app.delivery.attempts import Delivery
from app.delivery.pacing import RateLimiter
from app.delivery.resend_api import ResendMailer
from app.delivery.worker import Worker
from tests.conftest import FakeClock


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def eventually(check: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Wait (bounded) for something the stand-in's thread does."""
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true within {timeout_s}s")


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def fake_time_rate_limiter(worker: Worker, clock: FakeClock) -> None:
    """The mailer's 429 hold-off runs on the fake clock, so no test sleeps for real."""
    delivery = worker.evaluator.delivery
    assert isinstance(delivery, Delivery)
    assert isinstance(delivery.mailer, ResendMailer)
    delivery.mailer.rate_limiter = RateLimiter(0, clock=lambda: clock.now_ms / 1000, sleep=no_sleep)
