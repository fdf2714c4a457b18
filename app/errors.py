"""The service's exceptions; the type, never the message, decides what happens next.

    ActivationError
    ├── ConfigError              unsafe or invalid settings, bad loop files: refuse to start
    ├── NotConfigured            a feature whose settings are missing was asked for: 503
    ├── WebhookRejected          a webhook we must not accept (bad signature, stale, bad body): 4xx
    │   └── PayloadTooLarge      the body is over the limit: 413
    └── StorageError             Redis answered with an error (script bug, wrong type): permanent
        └── StorageUnavailable   Redis unreachable, timed out or refusing our credentials:
                                 transient, so requests answer 503 and work is retried

Third-party exceptions (redis, httpx, upstash-redis, svix) are translated where they enter.
"""


class ActivationError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigError(ActivationError):
    """The configuration cannot be used; the process must not start."""


class NotConfigured(ActivationError):
    """A request for a feature the operator has not configured (e.g. no signing secret)."""

    status_code = 503


class WebhookRejected(ActivationError):
    """A webhook request that must be refused with a 4xx and nothing stored."""

    status_code = 400


class PayloadTooLarge(WebhookRejected):
    """A webhook body over the size limit."""

    status_code = 413


class StorageError(ActivationError):
    """Redis answered, but with an error."""


class StorageUnavailable(StorageError):
    """Redis could not be reached in time; the caller should retry later."""
