"""Clerk's users, read from its Backend API with the `clerk-backend-api` SDK: newest first, a page
at a time, paced under Clerk's rate limit; a 429, a 5xx or a dropped connection is waited out (as
its `Retry-After` says, at most MAX_WAIT_S) and the request made again. A user the SDK's model
cannot read is left out of its page and named (its id and the fields at fault, never their
values). The SDK's errors are translated here, into one-line `ActivationError`s that never carry
the secret key or a user's data."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from clerk_backend_api import Clerk, models, utils
from clerk_backend_api.utils import BackoffStrategy, RetryConfig
from pydantic import ValidationError

from app.delivery.pacing import RateLimiter, parse_retry_after
from app.engine.backoff import Backoff
from app.errors import ActivationError, ConfigError
from app.settings import Settings
from app.storage.keys import valid_user_id

PAGE_SIZE = 100  # the largest page Clerk serves
# Clerk allows 1,000 requests per 10 s on a production instance, 100 on a development one, shared
# with everything else using the key: 8 pages a second stays under both.
PAGES_PER_S = 8.0
RETRIES = 10  # requests made again in one import (after a 429, a 5xx, a lost connection)
MAX_WAIT_S = 60.0  # the longest wait for one retry, whatever `Retry-After` asks
REQUEST_TIMEOUT_MS = 30_000
BACKOFF = Backoff(1000, int(MAX_WAIT_S * 1000))  # when Clerk gives no `Retry-After`: 1 s doubling
# The SDK's own retries are off: they wait as long as a 5xx's Retry-After says, without a word.
NO_SDK_RETRIES = RetryConfig("none", BackoffStrategy(0, 0, 1.0, 0), False)
KEY_HINT = "the instance's secret key, sk_live_... or sk_test_... (Clerk dashboard: API keys)"
MAX_FIELDS_NAMED = 3  # of an unreadable user

Note = Callable[[str], None]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page:
    """A page of Clerk's users: those the SDK's model reads, a line for each it cannot, and how
    many Clerk listed (fewer than PAGE_SIZE: the last page)."""

    users: list[models.User]
    unreadable: list[str]
    listed: int


class ClerkUsers:
    """`GET /users` a page at a time, newest first; `note` hears of each wait and each user left
    out."""

    def __init__(
        self,
        clerk: Clerk,
        api_url: str,
        note: Note,
        pacer: RateLimiter | None = None,
        *,
        max_wait_s: float = MAX_WAIT_S,
    ) -> None:
        self.clerk = clerk
        self.api_url = api_url
        self.note = note
        self.pacer = pacer or RateLimiter(PAGES_PER_S)  # the one Resend's sends use
        self.max_wait_s = max_wait_s
        self.retried = 0  # requests made again so far

    async def page(self, offset: int) -> Page:
        """Up to PAGE_SIZE users from `offset` on."""
        request: models.GetUserListRequestTypedDict = {
            "limit": PAGE_SIZE,
            "offset": offset,
            "order_by": "-created_at",
        }
        what = f"users {offset + 1}-{offset + PAGE_SIZE}"
        try:
            users = await self.asking(lambda: self.clerk.users.list_async(request=request), what)
        except models.ResponseValidationError as exc:
            if exc.status_code != 200:
                raise refused(exc) from None
            return read_each(exc.body)  # one user the model refuses fails the SDK's whole page
        except models.ClerkBaseError as exc:
            raise refused(exc) from None
        return Page(users, [], len(users))

    async def count(self, created_from_ms: int | None) -> int | None:
        """How many users there are (created from the time on, if given), for the progress; None
        when Clerk does not say. Asked first: a key Clerk refuses stops the import here."""
        request: models.GetUsersCountRequestTypedDict = {}
        if created_from_ms is not None:
            request["created_at_after"] = created_from_ms - 1  # "after" leaves out the time itself
        try:
            answer = await self.asking(
                lambda: self.clerk.users.count_async(request=request), "the count of users"
            )
        except models.ClerkBaseError as exc:
            if exc.status_code in (401, 403):
                raise refused(exc) from None
            return None  # the import goes on without a total
        return answer.total_count

    async def asking(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """`call`'s answer, made again after a 429, a 5xx or a lost connection (RETRIES times in
        an import at most); Clerk's other error answers are raised as the SDK raises them."""
        tries = 0
        while True:
            await self.pacer.acquire()
            try:
                return await call()
            except models.ClerkBaseError as exc:
                if exc.status_code != 429 and exc.status_code < 500:
                    raise
                problem, asked_s = answered(exc.status_code), parse_retry_after(exc.headers)
            except (httpx.HTTPError, models.NoResponseError) as exc:
                problem, asked_s = str(self.unreachable(exc)), None
            await self.wait_out(problem, asked_s, tries, what)
            tries += 1

    def wait_s(self, asked_s: float | None, tries: int) -> float:
        """As `Retry-After` asks, else `BACKOFF`'s wait; never over max_wait_s."""
        wanted = asked_s if asked_s is not None else BACKOFF.base_ms(tries + 1) / 1000
        return min(max(wanted, 0.1), self.max_wait_s)

    async def wait_out(self, problem: str, asked_s: float | None, tries: int, what: str) -> None:
        """Sleep before a request is made again, saying how long (and what `Retry-After` asked
        when that was longer), within the budget of RETRIES; past it, stop."""
        self.retried += 1
        if self.retried > RETRIES:
            raise ActivationError(
                f"{problem}, {self.retried} times in this run; stopped. Run it again later: "
                "users already imported are left as they are"
            ) from None
        wait_s = self.wait_s(asked_s, tries)
        capped = asked_s is not None and asked_s > wait_s
        asked = f" (Retry-After asked {asked_s:g} s)" if capped else ""
        self.note(f"{problem}: waiting {wait_s:g} s{asked}, then {what} again")
        await asyncio.sleep(wait_s)

    def unreachable(self, exc: Exception) -> ActivationError:
        reason = str(exc) or type(exc).__name__
        return ActivationError(f"Clerk's API at {self.api_url} was not reached: {reason}")


def answered(status: int) -> str:
    return f"Clerk answered {status}" + (" (rate limited)" if status == 429 else "")


def read_each(body: str) -> Page:
    """A page the SDK refused whole, read a user at a time with the SDK's own model."""
    try:
        listed = json.loads(body)
    except ValueError:
        raise ActivationError("Clerk's answer was not JSON") from None
    if not isinstance(listed, list):
        raise ActivationError("Clerk's answer was not a list of users")
    users, unreadable = [], []
    for entry in listed:
        try:
            users.append(utils.unmarshal(entry, models.User, coerce_iterables=False))
        except ValueError as exc:  # pydantic's ValidationError, or the SDK's own ValueError
            unreadable.append(unreadable_user(entry, exc))
    return Page(users, unreadable, len(listed))


def unreadable_user(entry: Any, exc: ValueError) -> str:
    """What is wrong with a user, as a line: its id and the fields at fault, never a value (the
    errors' own messages quote values: they are not shown)."""
    user_id = entry.get("id") if isinstance(entry, dict) else None
    who = f"user {user_id}" if isinstance(user_id, str) and valid_user_id(user_id) else "a user"
    if not isinstance(exc, ValidationError):
        return f"{who} skipped: the SDK cannot read it"
    faults = [fault(error) for error in exc.errors(include_url=False, include_input=False)]
    named = ", ".join(dict.fromkeys(faults[:MAX_FIELDS_NAMED]))
    more = f" and {len(faults) - MAX_FIELDS_NAMED} more" if len(faults) > MAX_FIELDS_NAMED else ""
    return f"{who} skipped: the SDK cannot read it ({named}{more})"


def fault(error: Any) -> str:
    """`field.path: error_type`; a path part that is not a name (a key of the user's own data)
    is written `?`, so nothing the user wrote can show."""
    parts = error["loc"][1:]  # the SDK's reader wraps the user as `body`
    path = ".".join(str(p) if isinstance(p, int) or str(p).isidentifier() else "?" for p in parts)
    return f"{path or 'user'}: {error['type']}"


def refused(exc: models.ClerkBaseError) -> ActivationError:
    """A Clerk error answer as one line: what to fix for 401/403, Clerk's own message else
    (never the body of the answer, which may hold users' data)."""
    status = exc.status_code
    if status in (401, 403):
        return ActivationError(f"Clerk refused CLERK_SECRET_KEY ({status}): set {KEY_HINT}")
    if isinstance(exc, models.ResponseValidationError):
        return ActivationError(f"Clerk's answer ({status}) could not be read as the SDK expects")
    errors = exc.data.errors if isinstance(exc, models.ClerkErrors) else []
    said = f": {errors[0].message}" if errors else ""
    return ActivationError(f"Clerk answered {status}{said}")


@asynccontextmanager
async def clerk_users(
    settings: Settings, note: Note, *, max_wait_s: float = MAX_WAIT_S
) -> AsyncIterator[ClerkUsers]:
    """A reader of the instance's users with CLERK_SECRET_KEY at CLERK_API_URL."""
    if settings.clerk_secret_key is None:
        raise ConfigError(f"CLERK_SECRET_KEY is not set: set it to {KEY_HINT}")
    async with Clerk(
        bearer_auth=settings.clerk_secret_key.get_secret_value(),
        server_url=settings.clerk_api_url,
        retry_config=NO_SDK_RETRIES,
        timeout_ms=REQUEST_TIMEOUT_MS,
    ) as clerk:
        yield ClerkUsers(clerk, settings.clerk_api_url, note, max_wait_s=max_wait_s)
