"""A local Clerk Backend API for tests: the users endpoints `activation import-clerk` reads through
the `clerk-backend-api` SDK, served from a list of user objects.

This module owns `clerk_user(...)` (one user object, as `GET /v1/users` returns it: the fields of
`tests/fixtures/clerk_user_created.json`'s `data` plus those the API adds), `ClerkStandin` (the
Starlette app's state: users, key, request log, faults) and `run_standin()`, which serves it on a
real 127.0.0.1 port with `tests.conftest.uvicorn_thread`.

Behaviour, as Clerk's Backend API answers (https://clerk.com/docs/reference/backend-api):

* Auth: `Authorization: Bearer <secret key>`; none, or another key → 401 with Clerk's error body
  (`{"errors": [{"message", "long_message", "code"}]}`, code `authentication_invalid`).
* `GET /v1/users?limit=&offset=&order_by=`: `limit` 1-500 (default 10), `offset` ≥ 0 (default 0),
  `order_by` `created_at` or `updated_at` with an optional `+`/`-` (default `-created_at`, newest
  first); a JSON array of user objects. Anything else → 422 `form_param_value_invalid`.
* `GET /v1/users/count?created_at_after=`: `{"object": "total_count", "total_count": n}`.
* Faults: `rate_limit(times, retry_after_s)`: the next `times` requests to `/v1/users` answer 429
  (`too_many_requests`) with `Retry-After`, before auth, as Clerk's rate limiter does;
  `fail(times, status, retry_after_s)`: the next ones answer that status (a 5xx: Clerk's error
  body), with `Retry-After` when given.
* `requests`: every request's path and query string (`/v1/users?limit=100&...`), in order.
"""

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import load_fixture, uvicorn_thread

SECRET_KEY = "sk_test_standinSecretKey0123456789"
# What the Backend API's user object has beyond a webhook's `data` (and the SDK requires).
API_FIELDS: dict[str, Any] = {
    "has_image": True,
    "passkeys": [],
    "totp_enabled": False,
    "backup_code_enabled": False,
    "mfa_enabled_at": None,
    "mfa_disabled_at": None,
    "saml_accounts": [],
    "enterprise_accounts": [],
    "banned": False,
    "locked": False,
    "lockout_expires_in_seconds": None,
    "verification_attempts_remaining": 100,
    "delete_self_enabled": True,
    "create_organization_enabled": True,
    "last_active_at": None,
    "legal_accepted_at": None,
}


def clerk_user(
    user_id: str, *, created_at: int, updated_at: int | None = None, **fields: Any
) -> dict[str, Any]:
    """A user object of the Backend API: the fixture's user with this id, times and fields."""
    user: dict[str, Any] = copy.deepcopy(load_fixture("clerk_user_created.json")["data"])
    user.update(API_FIELDS, id=user_id, created_at=created_at)
    user["updated_at"] = updated_at if updated_at is not None else created_at
    for address in user["email_addresses"]:
        address.update(reserved=False, created_at=created_at, updated_at=created_at)
        address["verification"] = {
            "object": "verification_otp",
            "status": "verified",
            "strategy": "email_code",
            "attempts": 1,
            "expire_at": created_at + 600_000,
        }
    if "email" in fields:
        user["email_addresses"][0]["email_address"] = fields.pop("email")
    user.update(fields)
    return user


def clerk_error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    error = {"message": message, "long_message": message, "code": code}
    return JSONResponse({"errors": [error]}, status_code=status, headers=headers)


@dataclass
class ClerkStandin:
    """The stand-in's state; `url` is the API's base URL, as CLERK_API_URL takes it."""

    users: list[dict[str, Any]] = field(default_factory=list)
    secret_key: str = SECRET_KEY
    requests: list[str] = field(default_factory=list)
    faults: list[tuple[int, float | None]] = field(default_factory=list)  # status, Retry-After
    url: str = ""

    def reset(self, users: list[dict[str, Any]] | None = None) -> None:
        self.users = users or []
        self.requests.clear()
        self.faults.clear()

    def rate_limit(self, times: int = 1, retry_after_s: float = 1) -> None:
        self.fail(times, 429, retry_after_s)

    def fail(self, times: int = 1, status: int = 503, retry_after_s: float | None = None) -> None:
        self.faults.extend([(status, retry_after_s)] * times)

    def page_requests(self) -> list[str]:
        return [r for r in self.requests if r.startswith("/v1/users?") or r == "/v1/users"]

    def app(self) -> Starlette:
        routes = [Route("/v1/users", self.list_users), Route("/v1/users/count", self.count)]
        return Starlette(routes=routes)

    def refusal(self, request: Request) -> Response | None:
        query = f"?{request.url.query}" if request.url.query else ""
        self.requests.append(request.url.path + query)
        if self.faults and request.url.path == "/v1/users":
            status, retry_after = self.faults.pop(0)
            headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
            if status == 429:
                return clerk_error(429, "too_many_requests", "Too many requests", **headers)
            return clerk_error(status, "internal_clerk_error", "Something went wrong", **headers)
        if request.headers.get("authorization") != f"Bearer {self.secret_key}":
            return clerk_error(401, "authentication_invalid", "Invalid authentication")
        return None

    async def list_users(self, request: Request) -> Response:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        try:
            limit = int(request.query_params.get("limit", 10))
            offset = int(request.query_params.get("offset", 0))
            ordered = self.ordered(request.query_params.get("order_by", "-created_at"))
        except ValueError:
            return clerk_error(422, "form_param_value_invalid", "limit, offset or order_by")
        if not 1 <= limit <= 500 or offset < 0:
            return clerk_error(422, "form_param_value_invalid", "limit or offset out of range")
        return JSONResponse(ordered[offset : offset + limit])

    def ordered(self, order_by: str) -> list[dict[str, Any]]:
        name = order_by.lstrip("+-")
        if name not in ("created_at", "updated_at"):
            raise ValueError(order_by)
        newest_first = order_by.startswith("-")
        return sorted(self.users, key=lambda user: user[name], reverse=newest_first)

    async def count(self, request: Request) -> Response:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        after = int(request.query_params.get("created_at_after", 0))
        total = sum(1 for user in self.users if user["created_at"] > after)
        return JSONResponse({"object": "total_count", "total_count": total})


@contextmanager
def run_standin() -> Iterator[ClerkStandin]:
    """A stand-in served on a free 127.0.0.1 port for the duration of the block."""
    standin = ClerkStandin()
    with uvicorn_thread(standin.app(), lifespan="off") as base_url:
        standin.url = f"{base_url}/v1"
        yield standin
