"""Clerk's users, read from its Backend API with the `clerk-backend-api` SDK: newest first, a page
at a time, paced under Clerk's rate limit, a 429 waited out as its `Retry-After` says. The SDK's
errors are translated here, into one-line `ActivationError`s that never carry the secret key."""

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import httpx
from clerk_backend_api import Clerk, models
from clerk_backend_api.utils import BackoffStrategy, RetryConfig

from app.delivery.resend import RateLimiter, parse_retry_after
from app.errors import ActivationError, ConfigError
from app.settings import Settings

PAGE_SIZE = 100  # the largest page Clerk serves
# Clerk allows 1,000 requests per 10 s on a production instance, 100 on a development one, shared
# with everything else using the key: 8 pages a second stays under both.
PAGES_PER_S = 8.0
RATE_LIMITED_RETRIES = 10  # 429s taken in one import before giving up
REQUEST_TIMEOUT_MS = 30_000
# The SDK's own retries (5xx, connection errors) for at most 30 s a request; its default keeps
# trying for an hour, too long for a command someone is watching.
SDK_RETRIES = RetryConfig("backoff", BackoffStrategy(500, 5_000, 2.0, 30_000), True)
KEY_HINT = "the instance's secret key, sk_live_... or sk_test_... (Clerk dashboard: API keys)"

Note = Callable[[str], None]


class ClerkUsers:
    """`GET /users` a page at a time, newest first; `note` hears of each wait for a 429."""

    def __init__(
        self, clerk: Clerk, api_url: str, note: Note, pacer: RateLimiter | None = None
    ) -> None:
        self.clerk = clerk
        self.api_url = api_url
        self.note = note
        self.pacer = pacer or RateLimiter(PAGES_PER_S)  # the one Resend's sends use
        self.rate_limited = 0  # 429s so far

    async def page(self, offset: int) -> list[models.User]:
        """Up to PAGE_SIZE users from `offset` on; the same page again after a 429."""
        request: models.GetUserListRequestTypedDict = {
            "limit": PAGE_SIZE,
            "offset": offset,
            "order_by": "-created_at",
        }
        while True:
            await self.pacer.acquire()
            try:
                return await self.clerk.users.list_async(request=request)
            except models.ClerkBaseError as exc:
                await self.wait_out(exc, f"users {offset + 1}-{offset + PAGE_SIZE}")
            except (httpx.HTTPError, models.NoResponseError) as exc:
                raise self.unreachable(exc) from None

    async def count(self, created_from_ms: int | None) -> int | None:
        """How many users there are (created from the time on, if given), for the progress; None
        when Clerk does not say. Asked first: a key Clerk refuses stops the import here."""
        request: models.GetUsersCountRequestTypedDict = {}
        if created_from_ms is not None:
            request["created_at_after"] = created_from_ms - 1  # "after" leaves out the time itself
        await self.pacer.acquire()
        try:
            return (await self.clerk.users.count_async(request=request)).total_count
        except models.ClerkBaseError as exc:
            if exc.status_code in (401, 403):
                raise refused(exc) from None
            return None  # the import goes on without a total
        except (httpx.HTTPError, models.NoResponseError) as exc:
            raise self.unreachable(exc) from None

    async def wait_out(self, exc: models.ClerkBaseError, what: str) -> None:
        """Sleep as a 429's `Retry-After` says (within the budget of RATE_LIMITED_RETRIES);
        anything else is raised as one line."""
        if exc.status_code != 429:
            raise refused(exc) from None
        self.rate_limited += 1
        if self.rate_limited > RATE_LIMITED_RETRIES:
            raise ActivationError(
                f"Clerk answered 429 (rate limited) {self.rate_limited} times; stopped. Run it "
                "again later: users already imported are left as they are"
            ) from None
        wait_s = retry_after_s(exc.headers)
        self.note(f"Clerk rate limit (429): waiting {wait_s:g} s, then {what} again")
        await asyncio.sleep(wait_s)

    def unreachable(self, exc: Exception) -> ActivationError:
        reason = str(exc) or type(exc).__name__
        return ActivationError(f"Clerk's API at {self.api_url} was not reached: {reason}")


def retry_after_s(headers: Mapping[str, str]) -> float:
    """Seconds to wait: `Retry-After`'s (in seconds, as Clerk sends it), else 1; at least 0.1."""
    found = parse_retry_after(headers)
    return 1.0 if found is None else max(found, 0.1)


def refused(exc: models.ClerkBaseError) -> ActivationError:
    """A Clerk error answer as one line: what to fix for 401/403, Clerk's own message else."""
    status = exc.status_code
    if status in (401, 403):
        return ActivationError(f"Clerk refused CLERK_SECRET_KEY ({status}): set {KEY_HINT}")
    if isinstance(exc, models.ResponseValidationError):
        return ActivationError(f"Clerk's answer was not a list of users: {exc.cause}")
    errors = exc.data.errors if isinstance(exc, models.ClerkErrors) else []
    said = f": {errors[0].message}" if errors else ""
    return ActivationError(f"Clerk answered {status}{said}")


@asynccontextmanager
async def clerk_users(settings: Settings, note: Note) -> AsyncIterator[ClerkUsers]:
    """A reader of the instance's users with CLERK_SECRET_KEY at CLERK_API_URL."""
    if settings.clerk_secret_key is None:
        raise ConfigError(f"CLERK_SECRET_KEY is not set: set it to {KEY_HINT}")
    async with Clerk(
        bearer_auth=settings.clerk_secret_key.get_secret_value(),
        server_url=settings.clerk_api_url,
        retry_config=SDK_RETRIES,
        timeout_ms=REQUEST_TIMEOUT_MS,
    ) as clerk:
        yield ClerkUsers(clerk, settings.clerk_api_url, note)
