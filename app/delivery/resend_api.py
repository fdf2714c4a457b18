"""Sending one email through Resend's SDK: a pooled HTTP client, a rate limit, errors translated.

This module is the only one that touches the `resend` SDK's module globals (API key, base URL,
async HTTP client). Resend's failures enter here and leave as these types (`app.errors`):

    5xx, 408, timeouts, refused or dropped     TransientSendError: retry later (`retry_after_s`);
    connections                                counts as one of the loop's retries
    429, 409 concurrent_idempotent_requests    NotSent: the request did not reach Resend's sending
    (an earlier attempt is in flight), our     at all, so it is tried again later without using
    own rate limit's next slot too far off     up a retry
    409 invalid_idempotent_request             KeyReused (a PermanentSendError): an email
                                               went under this Idempotency-Key with another
                                               payload (never ours as one email: see
                                               delivery.batch for what a batch reads from it)
    every other 4xx: 400/422 bad payload,      PermanentSendError: dead-letter
    401/403 bad key

`send_batch` sends up to 100 emails in one request (`POST /emails/batch`) with one
Idempotency-Key and `x-batch-validation: permissive`: the errors above are the whole request's;
an email Resend refuses alone comes back as a `Refused` in its place, the others as their ids.
"""

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Self, TypeVar

import httpx
import resend
from resend.exceptions import ResendError
from resend.http_client_async import AsyncHTTPClient

from app.delivery.outbox import MAX_BATCH, BatchEmail, Refused
from app.delivery.pacing import RateLimiter, parse_retry_after
from app.engine.email_jobs import RenderedEmail
from app.errors import (
    ActivationError,
    ConfigError,
    KeyReused,
    NotSent,
    PermanentSendError,
    TransientSendError,
)

logger = logging.getLogger(__name__)

ParamsT = TypeVar("ParamsT")
OptionsT = TypeVar("OptionsT")
ResponseT = TypeVar("ResponseT")

DEFAULT_RATE_PER_S = 5.0  # Resend's documented default, shared by every sender of the team
MAX_IDEMPOTENCY_KEY_LENGTH = 256
_SDK_DEFAULT_ASYNC_CLIENT = resend.default_async_http_client
_ADDRESS = re.compile(r"[^\s<>()\"',;:]+@")


class _TransportFailure(ResendError):
    """No HTTP answer (refused, dropped, timed out). A ResendError, so the SDK lets it through."""

    def __init__(self, cause: Exception) -> None:
        message = f"no answer from Resend: {type(cause).__name__}"
        super().__init__(code=0, error_type="transport", message=message, suggested_action="")
        # httpx refused to send what we built (e.g. a bad header): retrying cannot help.
        self.permanent = isinstance(cause, httpx.LocalProtocolError)


class _PooledClient(AsyncHTTPClient):
    """The SDK's async HTTP interface over one long-lived httpx client (the SDK's own client
    opens a new connection for every request)."""

    def __init__(
        self, timeout_s: float, observe: Callable[[Mapping[str, str]], None] | None = None
    ) -> None:
        self.timeout_s = timeout_s
        self.http = httpx.AsyncClient(timeout=timeout_s)
        self.observe = observe  # shown every answer's headers (the rate limiter's `observe`)

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        json: dict[str, object] | list[object] | None = None,
        files: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            # httpx's timeout bounds each phase; this bounds the whole exchange.
            async with asyncio.timeout(self.timeout_s):
                response = await self.http.request(
                    method, url, headers=headers, json=json, files=files, data=data
                )
        except (httpx.TransportError, TimeoutError) as exc:
            raise _TransportFailure(exc) from exc
        if self.observe is not None:
            self.observe(response.headers)
        return response.content, response.status_code, response.headers


class ResendMailer:
    """Sends `RenderedEmail`s through Resend, each with an Idempotency-Key, over one HTTP pool."""

    def __init__(
        self,
        api_key: str,
        api_url: str,
        timeout_s: float,
        *,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        if not api_key or api_key != api_key.strip():
            raise ConfigError("RESEND_API_KEY must be a key, without spaces around it")
        if not api_url.startswith(("https://", "http://")):
            raise ConfigError("RESEND_API_URL must start with https:// (or http:// for tests)")
        self._api_key = api_key
        self.api_url = api_url.rstrip("/")
        self.rate_limiter = rate_limiter or RateLimiter(DEFAULT_RATE_PER_S)
        self.http_client = _PooledClient(timeout_s, self.rate_limiter.observe)

    def __repr__(self) -> str:
        return f"ResendMailer(api_url={self.api_url!r}, timeout_s={self.http_client.timeout_s})"

    async def send(
        self,
        email: RenderedEmail,
        idempotency_key: str,
        *,
        tags: Mapping[str, str] = {},
        max_wait_s: float = math.inf,
        paced: bool = False,
    ) -> str:
        """Send `email` with `tags`; return Resend's email id. Raises the types drawn in the
        docstring; `NotSent` when the rate limit's next slot is more than `max_wait_s` away.
        `paced`: the caller took the slot already (`pace`)."""
        _check_idempotency_key(idempotency_key)
        if not paced:
            await self.pace(max_wait_s)
        params = _send_params(email, tags)
        options: resend.Emails.SendOptions = {"idempotency_key": idempotency_key}
        response = await self._call(resend.Emails.send_async, params, options, idempotency_key)
        return _email_id(response, idempotency_key)

    async def send_batch(
        self,
        emails: Sequence[BatchEmail],
        idempotency_key: str,
        *,
        max_wait_s: float = math.inf,
        paced: bool = False,
    ) -> list[str | Refused]:
        """Send up to 100 emails in one request; return, in their order, each one's Resend id
        or, when Resend refused it alone, a `Refused`. Raises what `send` raises for the whole
        request."""
        if not 0 < len(emails) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} emails, not {len(emails)}")
        _check_idempotency_key(idempotency_key)
        if not paced:
            await self.pace(max_wait_s)
        params = [_send_params(item.email, item.tags) for item in emails]
        options: resend.Batch.SendOptions = {
            "idempotency_key": idempotency_key,
            "batch_validation": "permissive",
        }
        response = await self._call(resend.Batch.send_async, params, options, idempotency_key)
        return _batch_outcomes(response, len(emails), idempotency_key)

    async def pace(self, max_wait_s: float = math.inf) -> float:
        """Wait for the rate limit's next start slot; return how long that took (s). `NotSent`
        when it is more than `max_wait_s` away."""
        started_s = time.monotonic()
        wait_s = await self.rate_limiter.acquire(max_wait_s)
        if wait_s > 0:
            raise NotSent(
                f"rate limit: the next send slot is {wait_s:.1f} s away", retry_after_s=wait_s
            )
        return time.monotonic() - started_s

    async def _call(
        self,
        method: Callable[[ParamsT, OptionsT], Awaitable[ResponseT]],
        params: ParamsT,
        options: OptionsT,
        idempotency_key: str,
    ) -> ResponseT:
        # The SDK reads these globals when the request starts, before its first await; set just
        # before each call, several mailers can send concurrently on one event loop.
        resend.api_key = self._api_key
        resend.api_url = self.api_url
        resend.default_async_http_client = self.http_client
        try:
            return await method(params, options)
        except _TransportFailure as exc:
            failure = PermanentSendError if exc.permanent else TransientSendError
            raise failure(exc.message) from exc
        except ResendError as exc:
            raise self._translate(exc, idempotency_key) from exc

    async def close(self) -> None:
        await self.http_client.http.aclose()
        if resend.default_async_http_client is self.http_client:
            resend.default_async_http_client = _SDK_DEFAULT_ASYNC_CLIENT
            resend.api_key = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _translate(self, exc: ResendError, idempotency_key: str) -> ActivationError:
        error = translate(exc, idempotency_key)
        if isinstance(error, TransientSendError) and error.retry_after_s is not None:
            # The limit is per team: hold every send back, not only this one's retry.
            self.rate_limiter.hold_off(error.retry_after_s)
        logger.debug("resend refused key=%s: %s", idempotency_key, error)
        return error


def translate(exc: ResendError, idempotency_key: str) -> ActivationError:
    """Our type for an error answer from Resend, decided by HTTP status and Resend's `name`."""
    status = _status(exc.code)
    message = f"Resend answered {status} {exc.error_type}: {redact(exc.message)}"
    if status == 409 and exc.error_type == "invalid_idempotent_request":
        return KeyReused(message, idempotency_key)
    retry_after_s = parse_retry_after(exc.headers)
    if status == 429 or (status == 409 and exc.error_type == "concurrent_idempotent_requests"):
        return NotSent(message, status=status, retry_after_s=retry_after_s)
    if status in (408, 409) or status >= 500:
        return TransientSendError(message, status=status, retry_after_s=retry_after_s)
    return PermanentSendError(message, status=status)


def redact(text: str) -> str:
    """Resend's error messages may quote addresses: keep only their domains."""
    return _ADDRESS.sub("***@", text)


def _status(code: int | str) -> int:
    try:
        return int(code)
    except ValueError:
        return 500


def _check_idempotency_key(key: str) -> None:
    # Resend takes 1-256 characters; anything but printable ASCII cannot go in a header.
    if not (0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH and key.isascii() and key.isprintable()):
        raise PermanentSendError("the idempotency key must be 1-256 printable ASCII characters")


def _send_params(email: RenderedEmail, tags: Mapping[str, str]) -> resend.Emails.SendParams:
    params: resend.Emails.SendParams = {
        "from": email.sender,
        "to": [email.to],
        "subject": email.subject,
        "html": email.html,
        "text": email.text,
    }
    if email.headers:
        params["headers"] = dict(email.headers)
    if tags:
        params["tags"] = [{"name": name, "value": value} for name, value in tags.items()]
    return params


def _batch_outcomes(
    response: resend.Batch.SendResponse, count: int, idempotency_key: str
) -> list[str | Refused]:
    """Each email's id or refusal, in the request's order: Resend lists the refused ones by
    index in `errors` and the ids of the others, in order, in `data`."""
    refused: dict[int, Refused] = {}
    for error in response.get("errors") or []:
        index = error.get("index") if isinstance(error, dict) else None
        if isinstance(index, int) and 0 <= index < count:
            refused[index] = Refused(redact(str(error.get("message") or "refused")))
    ids = [
        item.get("id") if isinstance(item, dict) else None for item in response.get("data") or []
    ]
    if len(ids) != count - len(refused) or not all(isinstance(i, str) and i for i in ids):
        # Retrying with the same key is safe: Resend answers with the first attempt's answer.
        raise TransientSendError(
            f"Resend answered a batch of {count} with {len(ids)} ids and {len(refused)} errors"
        )
    accepted = iter(ids)
    outcomes: list[str | Refused] = []
    for index in range(count):
        outcomes.append(refused[index] if index in refused else str(next(accepted)))
    logger.debug("resend accepted batch key=%s: %d of %d", idempotency_key, len(ids), count)
    return outcomes


def _email_id(response: resend.Emails.SendResponse, idempotency_key: str) -> str:
    email_id = response.get("id")
    if not isinstance(email_id, str) or not email_id:
        # Retrying with the same key is safe: Resend answers with the first attempt's id.
        raise TransientSendError("Resend answered 200 without an email id")
    logger.debug("resend accepted key=%s id=%s", idempotency_key, email_id)
    return email_id
