"""The service's exceptions; the type, never the message, decides what happens next.

    ActivationError
    ├── ConfigError              unsafe or invalid settings, bad loop files: refuse to start
    ├── RequestRefused           a request answered with its `status_code` and a short reason
    │   ├── NotConfigured        a feature whose settings are missing was asked for: 503
    │   ├── BadToken             a forged, altered or malformed unsubscribe token: 400
    │   └── WebhookRejected      a webhook we must not accept (bad signature, stale, bad body): 400
    │       └── PayloadTooLarge  the body is over the limit: 413
    ├── SendError                Resend refused or failed (app.delivery.resend): a
    │                            TransientSendError is retried, a PermanentSendError goes to the
    │                            dead-letter set
    ├── AlreadySent              Resend already accepted this idempotency key: counts as sent
    └── StorageError             Redis answered with an error (script bug, wrong type): permanent
        └── StorageUnavailable   Redis unreachable, timed out or refusing our credentials:
                                 transient, so requests answer 503 and work is retried

Third-party exceptions (redis, httpx, upstash-redis, svix) are translated where they enter.
"""


class ActivationError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigError(ActivationError):
    """The configuration cannot be used; the process must not start."""


class RequestRefused(ActivationError):
    """A request refused with `status_code` and the message as its short JSON reason."""

    status_code = 400


class NotConfigured(RequestRefused):
    """A request for a feature the operator has not configured (e.g. no signing secret)."""

    status_code = 503


class BadToken(RequestRefused):
    """An unsubscribe token that is malformed, forged or altered."""


class WebhookRejected(RequestRefused):
    """A webhook request that must be refused with a 4xx and nothing stored."""


class PayloadTooLarge(WebhookRejected):
    """A webhook body over the size limit."""

    status_code = 413


class StorageError(ActivationError):
    """Redis answered, but with an error."""


class StorageUnavailable(StorageError):
    """Redis could not be reached in time; the caller should retry later."""
