"""Who may call which route: each route's declared access policy and body limit, the verdict on a
request's credentials (bearer keys and tokens, session cookies); `app.signing` compares them.

A route declares its policy beside its endpoint with `@policy(Access..., max_body_bytes=...)`;
`app.web.gate.Gate` matches each request to its route and enforces that policy before anything reads
the body. A route without a declared policy is refused to everyone (and a test fails).

    PUBLIC    anyone (webhooks check their own signatures, unsubscribe its tokens)
    API_KEY   `Authorization: Bearer $ACTIVATION_API_KEY`; refused with 401 and a challenge
    API_KEY_OR_CLERK_SESSION
              the API key (the app's server), or a Clerk session token (a signed-in user's
              browser, `app.web.session_tokens`: refused with 401 and the reason); answers carry
              CORS headers for ALLOWED_ORIGINS (`app.web.cors`)
    CORS_PREFLIGHT
              a CORS preflight from one of ALLOWED_ORIGINS (it carries no credentials); any
              other request wants the API key
    METRICS   bearer METRICS_TOKEN, else ACTIVATION_API_KEY (what Prometheus is given)
    OPERATOR  the API key as a bearer token, or a dashboard session cookie that was not revoked;
              refused with the route's own page (the login form)

With no secret configured for a policy, nobody gets in. `OPENAPI_BEARER` only documents the bearer
scheme in OpenAPI: the gate has already decided.
"""

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from fastapi import Depends
from fastapi.security import HTTPBearer
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response

from app.settings import Settings
from app.signing import secret_matches
from app.storage.store import Store
from app.web import sessions
from app.web.errors import error_json

DEFAULT_MAX_BODY_BYTES = 64 * 1024
API_KEY_REFUSAL = "missing or wrong API key"
METRICS_REFUSAL = "missing or wrong metrics token"
CHALLENGE = {"WWW-Authenticate": "Bearer"}
POLICY_ATTRIBUTE = "__activation_policy__"

# Documentation only (OpenAPI's security scheme): `app.web.gate` checks the key before any route
# runs.
OPENAPI_BEARER = Depends(
    HTTPBearer(auto_error=False, description="Authorization: Bearer $ACTIVATION_API_KEY")
)


class Access(StrEnum):
    PUBLIC = "public"
    API_KEY = "api_key"
    API_KEY_OR_CLERK_SESSION = "api_key_or_clerk_session"
    CORS_PREFLIGHT = "cors_preflight"
    METRICS = "metrics"
    OPERATOR = "operator"


class Verdict(StrEnum):
    GRANTED = "granted"
    REFUSED = "refused"  # wrong or missing credentials (operator pages: show the login form)
    UNCONFIGURED = "unconfigured"  # no secret configured for this policy: refuse everyone


Refuse = Callable[[Request, Verdict], Response]
EndpointT = TypeVar("EndpointT", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Policy:
    """Who may call a route, and the largest body it accepts."""

    access: Access
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    refuse: Refuse | None = None  # the answer to a refused caller; None: 401 JSON

    def refusal(self, request: Request, verdict: Verdict) -> Response:
        if self.refuse is not None:
            return self.refuse(request, verdict)
        reason = METRICS_REFUSAL if self.access is Access.METRICS else API_KEY_REFUSAL
        return error_json(401, reason, CHALLENGE)


def policy(
    access: Access, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, refuse: Refuse | None = None
) -> Callable[[EndpointT], EndpointT]:
    """Declares an endpoint's policy; put it below the route decorator (`@router.get(...)`)."""
    declared = Policy(access, max_body_bytes, refuse)

    def declare(endpoint: EndpointT) -> EndpointT:
        setattr(endpoint, POLICY_ATTRIBUTE, declared)
        return endpoint

    return declare


def policy_of(endpoint: object) -> Policy | None:
    found = getattr(endpoint, POLICY_ATTRIBUTE, None)
    return found if isinstance(found, Policy) else None


def bearer_token(authorization: bytes | None) -> bytes:
    """The token of an `Authorization: Bearer <token>` header value (raw bytes), else b""."""
    scheme, _, token = (authorization or b"").partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


def metrics_secret(settings: Settings) -> SecretStr | None:
    """METRICS_TOKEN if set, else ACTIVATION_API_KEY; None (refuse everyone) when neither is."""
    return settings.metrics_token or settings.activation_api_key


def bearer_verdict(access: Access, settings: Settings, token: bytes) -> Verdict:
    """The verdict on a bearer token for the API key or metrics policy."""
    expected = metrics_secret(settings) if access is Access.METRICS else settings.activation_api_key
    if expected is None:
        return Verdict.UNCONFIGURED
    return Verdict.GRANTED if secret_matches(expected, token) else Verdict.REFUSED


def holds_api_key_or_metrics_token(settings: Settings, token: bytes) -> bool:
    """Whether a bearer token may read operational details (readiness reasons)."""
    return any(
        bearer_verdict(access, settings, token) is Verdict.GRANTED
        for access in (Access.API_KEY, Access.METRICS)
    )


async def operator_verdict(
    settings: Settings, store: Store, token: bytes, cookie: str | None, now_ms: int
) -> Verdict:
    """The API key as a bearer token, or a valid session cookie that was not revoked."""
    if settings.activation_api_key is None:
        return Verdict.UNCONFIGURED
    if secret_matches(settings.activation_api_key, token):
        return Verdict.GRANTED
    api_key = settings.activation_api_key.get_secret_value()
    session = sessions.read(api_key, cookie, now_ms) if cookie is not None else None
    if session is None or await store.logins.session_revoked(session.id):
        return Verdict.REFUSED
    return Verdict.GRANTED
