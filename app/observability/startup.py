"""What the process says when it starts: log setup and one paragraph on what is configured."""

import logging
from urllib.parse import urlsplit

from app import __version__
from app.observability.logs import RedactTokens, build_handler
from app.settings import Settings, StorageKind, listens_everywhere

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str = "text") -> None:
    """Give the `app` loggers a handler (text or JSON, addresses masked) unless the host
    (pytest, a root logging config) configured one."""
    root = logging.getLogger("app")
    root.setLevel(level.upper())
    if not root.handlers and not logging.getLogger().handlers:
        root.addHandler(build_handler(log_format, LOG_FORMAT))
    # httpx says each request's URL at INFO, and a webhook step's URL may carry a token (Slack's)
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(known, RedactTokens) for known in access.filters):
        access.addFilter(RedactTokens())


def describe_configuration(settings: Settings) -> tuple[int, str, str]:
    """A log level and one paragraph saying what is configured and what is not (no secrets)."""
    parts = [
        f"activation-loops {__version__} starting.",
        describe_storage(settings),
        describe_email(settings),
        describe_webhooks(settings),
        describe_resend_events(settings),
        describe_api(settings),
        describe_links(settings),
        *describe_holds(settings),
    ]
    # data lost at a restart, or real emails whose unsubscribe links name this machine
    unsafe = settings.storage_kind is StorageKind.EMBEDDED or (
        settings.resend_api_key is not None and settings.public_url is None
    )
    return (logging.WARNING if unsafe else logging.INFO, "%s", " ".join(parts))


def describe_holds(settings: Settings) -> list[str]:
    """The frequency cap and quiet hours, when either is set (nothing otherwise)."""
    if not settings.cap_rules and settings.quiet_hours is None:
        return []
    cap = "no frequency cap"
    if settings.cap_rules:  # "2/1d, 4/7d" -> "2 per 1d and 4 per 7d"
        parts = (part.strip().replace("/", " per ") for part in settings.frequency_cap.split(","))
        cap = f"at most {' and '.join(parts)} loop emails per user"
    quiet = f"quiet hours {settings.quiet_hours}" if settings.quiet_hours else "no quiet hours"
    return [f"Pacing: {cap}; {quiet} (users' time zone, else {settings.default_timezone})."]


def describe_storage(settings: Settings) -> str:
    kind = settings.storage_kind
    if kind is StorageKind.UPSTASH:
        return f"Storage: Upstash REST at {host_of(settings.upstash_redis_rest_url or '')}."
    if kind is StorageKind.REDIS:
        assert settings.redis_url is not None
        return f"Storage: Redis at {host_of(settings.redis_url.get_secret_value())}."
    return (
        "Storage: EMBEDDED in-memory store; data is NOT persisted and is lost when the process "
        "stops (set UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN, or REDIS_URL)."
    )


def describe_email(settings: Settings) -> str:
    if settings.resend_api_key is None:
        return "Email: no RESEND_API_KEY, so emails go to the local outbox and nothing is sent."
    return f"Email: Resend at {host_of(settings.resend_api_url)}, from {settings.email_from}."


def describe_webhooks(settings: Settings) -> str:
    if settings.clerk_webhook_signing_secret is None:
        return (
            "Clerk webhooks: no CLERK_WEBHOOK_SIGNING_SECRET, so POST /webhooks/clerk answers 503."
        )
    return "Clerk webhooks: signature checks on at POST /webhooks/clerk."


def describe_resend_events(settings: Settings) -> str:
    if settings.resend_webhook_secret is None:
        return "Resend events: no RESEND_WEBHOOK_SECRET, so POST /webhooks/resend answers 503."
    return "Resend events: signature checks on at POST /webhooks/resend."


def describe_api(settings: Settings) -> str:
    if settings.activation_api_key is None:
        return "Actions API: no ACTIVATION_API_KEY, so /v1/* refuses every request (401)."
    return "Actions API: bearer key set for /v1/*."


def describe_links(settings: Settings) -> str:
    url = settings.links_url
    if settings.public_url is not None:
        return f"Links: unsubscribe links start {url} (PUBLIC_URL)."
    if listens_everywhere(settings.host):
        served = (
            f": the web app serves on every interface (HOST {settings.host}), which a link "
            "cannot name, so they name localhost, which opens on this machine only"
        )
    else:
        served = ", the address the web app serves on (HOST, PORT)"
    return (
        f"Links: no PUBLIC_URL, so unsubscribe links start {url}{served}; set PUBLIC_URL to the "
        "address your users reach."
    )


def host_of(url: str) -> str:
    """Scheme, host and port only: never the credentials a URL may carry."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"
