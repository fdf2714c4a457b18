"""Every exception the service raises on purpose; the type, never the message, decides what
happens next.

    ActivationError
    ├── ConfigError              unsafe or invalid settings or loop files: refuse to start
    │   ├── LoopFolderError      every mistake found in the loop files and templates, at once
    │   ├── LoopFileError        a loop file that cannot be used: `<file>: <field>: <reason>`
    │   ├── QueryError           a condition's SQL that cannot be translated; also a ValueError,
    │   │                        so pydantic reports it as the field's error in a LoopFileError
    │   └── TemplateError        a template, or a loop's use of one, that cannot work
    ├── TemplateRenderError      a checked template failed on one user's data: permanent
    ├── RequestRefused           a request answered with its `status_code` and a short reason
    │   ├── NotConfigured        a feature whose settings are missing was asked for: 503
    │   ├── BadToken             a forged, altered or malformed unsubscribe token: 400
    │   ├── SessionRefused       a browser's request with a Clerk session token: 401 for the
    │   │                        token, 403 for what it reports, 429 past its rate, 503 when
    │   │                        the keys to check it cannot be fetched (`headers`)
    │   └── WebhookRejected      a webhook we must not accept (bad signature, stale, bad body): 400
    │       └── PayloadTooLarge  the body is over the limit: 413
    ├── SendError                Resend did not take the email (app.delivery.resend_api)
    │   ├── TransientSendError   worth retrying later; counts as one of the loop's retries
    │   │   └── NotSent          the request was not taken (rate limit, same key in flight):
    │   │                        tried again later without using up a retry
    │   └── PermanentSendError   the same request would fail again: dead-letter
    │       └── KeyReused        409 invalid_idempotent_request: Resend sent an email under
    │                            this Idempotency-Key with another payload within 24 h (a
    │                            batch reads what its earlier requests carried from it)
    ├── InvalidToken             a Clerk session token (JWT) that does not hold: why, in a word
    │   └── NotAToken            not a JWT at all (a wrong API key, say)
    └── StorageError             Redis answered with an error (script bug, wrong type): permanent
        ├── StorageUnavailable   Redis unreachable, timed out or refusing our credentials:
        │   │                    transient, so requests answer 503 and work is retried
        │   └── SchemaRefused    the data is in another schema: refused until migrated
        └── NoScript             EVALSHA named a script the server does not have yet: the
                                 caller sends EVAL (never leaves app.storage)

Third-party exceptions (redis, httpx, upstash-redis, svix, resend, jinja2, sqlglot, pyjwt,
clerk-backend-api) are translated where they enter.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path


class ActivationError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigError(ActivationError):
    """The configuration cannot be used; the process must not start."""


class LoopFileError(ConfigError):
    """A loop file that cannot be used; str() is `<file>: <field>: <reason>`, a line for each
    problem found (`more`: those after the first, as (field, reason) pairs)."""

    def __init__(
        self,
        path: Path,
        field: str | None,
        reason: str,
        more: Sequence[tuple[str | None, str]] = (),
    ) -> None:
        self.path = path
        self.field = field
        self.reason = reason
        self.more = list(more)
        lines = [f"{path}: {f}: {r}" if f else f"{path}: {r}" for f, r in [(field, reason), *more]]
        super().__init__("\n".join(lines))


class LoopFolderError(ConfigError):
    """Every mistake found in a folder of loop files and their templates; str() has a line for
    each (`problems`: each file's `LoopFileError`, each template's `TemplateError`)."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class QueryError(ConfigError, ValueError):
    """A condition query that cannot be translated; the message says why. A ValueError too, so a
    pydantic validator that raises it reports the field's error."""


class TemplateError(ConfigError):
    """A template, or a loop's use of one, that cannot work: the loops must not load."""


class TemplateRenderError(ActivationError):
    """A checked template failed on one user's data at send time: permanent, never retried."""


class RequestRefused(ActivationError):
    """A request refused with `status_code` and the message as its short JSON reason."""

    status_code = 400


class NotConfigured(RequestRefused):
    """A request for a feature the operator has not configured (e.g. no signing secret)."""

    status_code = 503


class BadToken(RequestRefused):
    """An unsubscribe token that is malformed, forged or altered."""


class SessionRefused(RequestRefused):
    """A browser's request with a Clerk session token, refused with `status_code` (401, 403,
    429, or 503 when its keys cannot be had) and `headers` (the challenge, Retry-After); nothing
    is stored."""

    def __init__(
        self, message: str, *, status_code: int = 401, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = dict(headers or {})


class WebhookRejected(RequestRefused):
    """A webhook request that must be refused with a 4xx and nothing stored; `hint`, for the
    service's log only, says what the operator may have to fix."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class PayloadTooLarge(WebhookRejected):
    """A webhook body over the size limit."""

    status_code = 413


class SendError(ActivationError):
    """Resend did not take the email."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientSendError(SendError):
    """Worth retrying later; `retry_after_s` is Resend's `retry-after`, when it sent one."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class NotSent(TransientSendError):
    """This request was not taken (rate limited, or the same key is in flight): try again after
    `retry_after_s` without counting an attempt."""


class PermanentSendError(SendError):
    """The same request will fail again: the payload or the API key is wrong."""


class KeyReused(PermanentSendError):
    """Resend refused the request: an email was sent under its Idempotency-Key with another
    payload within the last 24 h. Our payload under a key never changes, except that a batch
    sent again may leave members out: then it tells that an earlier, larger request of the batch
    was accepted."""

    def __init__(self, message: str, idempotency_key: str) -> None:
        super().__init__(message, status=409)
        self.idempotency_key = idempotency_key


class InvalidToken(ActivationError):
    """A Clerk session token (JWT) that does not hold; str() says why in a few words."""


class NotAToken(InvalidToken):
    """Not a JWT at all (a wrong API key, say)."""


class StorageError(ActivationError):
    """Redis answered, but with an error."""


class NoScript(StorageError):
    """EVALSHA named a script the server does not have yet (the caller sends EVAL)."""


class StorageUnavailable(StorageError):
    """Redis could not be reached in time; the caller should retry later."""


class SchemaRefused(StorageUnavailable):
    """The data is in a schema this version does not use: refused until `activation migrate`."""
