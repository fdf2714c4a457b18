"""CORS for the routes browsers may call (`POST /v1/actions` with a Clerk session token), for
ALLOWED_ORIGINS only. `app.web.gate` adds Access-Control-Allow-Origin and `Vary: Origin` to
every answer to an allowed origin (refusals too, so the page can read them, and Retry-After
exposed), and the preflight's Allow-Methods, Allow-Headers and Max-Age; another origin gets no
CORS header, so its browser keeps every answer from the page. No Allow-Credentials: the token
goes in the Authorization header, never in a cookie.
"""

from collections.abc import Collection

from starlette.types import Message, Send

PREFLIGHT_MAX_AGE_S = 600
Headers = list[tuple[bytes, bytes]]
PREFLIGHT_HEADERS: Headers = [
    (b"access-control-allow-methods", b"POST"),
    (b"access-control-allow-headers", b"authorization, content-type"),
    (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode()),
]
EXPOSED_HEADERS: Headers = [(b"access-control-expose-headers", b"Retry-After")]  # on a 429


def allowed(allowed_origins: Collection[str], origin: bytes) -> bool:
    """Whether a request's `Origin` header is one of ALLOWED_ORIGINS (exactly)."""
    return bool(origin) and origin.decode("latin-1") in allowed_origins


def headers_for(origin: bytes, *, preflight: bool) -> Headers:
    """The CORS headers of an answer to an allowed origin."""
    headers = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
    return headers + (PREFLIGHT_HEADERS if preflight else EXPOSED_HEADERS)


def with_headers(send: Send, headers: Headers) -> Send:
    """`send`, adding `headers` to the answer's start."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return sending
