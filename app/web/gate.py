"""The front door, outside all of FastAPI's middleware: each HTTP request is matched to its route
once, here, as FastAPI's router matches it (Starlette's `get_route_path`, so the same under a
`--root-path`, a `Mount` or a proxy prefix), and that route's declared policy (`app.web.auth`) is
enforced before anything reads the body: 401 without the credentials it wants (or with an
Authorization longer than any, unparsed), 413 when the body is declared or streamed past its
limit. Before any of that, headers totalling more than MAX_HEADER_BYTES are answered 431. Then
a hot endpoint is called directly; the rest goes on to FastAPI, and so does a request no route
matches (FastAPI's 404, 405 or redirect, no body read).
A route browsers may call (`POST /v1/actions`) also takes a Clerk session token: the gate
verifies it and leaves the session in the scope for the route (`app.web.session_tokens`), and
adds the CORS headers for an allowed origin to whatever is answered (`app.web.cors`).

Hot endpoints (`POST /webhooks/clerk`, `POST /v1/actions`) skip FastAPI's middleware, router and
request handler, which cost a bare FastAPI endpoint more CPU per request than uvicorn itself
spends (the figures: bench/README.md, "Where the time goes"). A hot endpoint takes a `Request`,
answers its own errors (`app.web.errors`) and returns a `Response`; FastAPI still routes and
documents the same path, and tests send both ways the same requests.

Matching: a dict of (path, method) for routes without path parameters, filled by asking every
route in the router's order, so the first full match wins as in the router; other requests ask
the routes in order (`route.matches`), as the router does.
"""

import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from fastapi import FastAPI
from starlette._utils import get_route_path
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Host, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ActivationError, PayloadTooLarge
from app.web import auth, cors, session_tokens
from app.web.auth import Access, Policy, Verdict
from app.web.deps import Services
from app.web.errors import error_json, error_response, internal_error_response
from app.web.session_tokens import SessionTokens
from app.web.sessions import COOKIE

logger = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]

# Bounds on what the gate reads before it lets a request in. A Clerk session token is about
# 1 KiB (4 KiB at most: Clerk keeps it under a cookie's size), the API key far less; a longer
# Authorization is refused before anything parses it (a JWT's parse is CPU on the event loop).
MAX_AUTHORIZATION_BYTES = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024  # every header's name and value, together: more answers 431
HEADERS_TOO_LARGE = f"request headers over {MAX_HEADER_BYTES} bytes"


class Traffic:
    """How many HTTP requests the process is serving right now (counted by `app.web.gate.Gate`).

    The in-process worker asks `busy()` before it widens to more than one job at a time: while
    requests are in flight they come first (a webhook answered late is sent again), and the
    evaluations they cause wait a little; a quiet process runs them at full concurrency."""

    __slots__ = ("in_flight",)

    def __init__(self) -> None:
        self.in_flight = 0

    def busy(self) -> bool:
        return self.in_flight > 0


UNDECLARED = "no access policy is declared for this route"


@dataclass(frozen=True, slots=True)
class Entry:
    """What the gate needs of a matched route: its policy (None: undeclared, refused) and the
    endpoint to call directly when it is a hot route."""

    policy: Policy | None
    hot: Endpoint | None = None


UNMATCHED = Entry(Policy(Access.PUBLIC))  # FastAPI answers 404/405 and reads no body
BROWSER_ACCESS = frozenset({Access.API_KEY_OR_CLERK_SESSION, Access.CORS_PREFLIGHT})  # CORS


def leaves(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The routes FastAPI's router tries, in its order, with included routers flattened."""
    found: list[BaseRoute] = []
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:
            found.append(route)
            continue
        for context in contexts():
            found.append(context.starlette_route or context)
    return found


def endpoint_of(route: BaseRoute) -> object:
    return getattr(route, "endpoint", None) or getattr(route, "app", None)


def declare_framework_routes(app: FastAPI) -> None:
    """FastAPI's own pages (/docs, /redoc, /openapi.json, the OAuth2 redirect) are public."""
    framework = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    for route in app.router.routes:
        if isinstance(route, Route) and route.path in framework:
            auth.policy(Access.PUBLIC)(route.endpoint)


class RouteTable:
    """Finds the route FastAPI's router would pick for a request, and what the gate needs of it."""

    def __init__(self, routes: Sequence[BaseRoute], hot: Mapping[tuple[str, str], Endpoint]):
        self.routes = leaves(routes)
        self.entries = {
            id(route): Entry(auth.policy_of(endpoint_of(route))) for route in self.routes
        }
        self.static: dict[tuple[str, str], Entry] = {}
        if not any(isinstance(route, Host) for route in self.routes):  # Host matching reads headers
            self._fill_static()
        for (method, path), endpoint in hot.items():
            self._make_hot(path, method, endpoint)

    def _fill_static(self) -> None:
        for route in self.routes:
            path, methods = getattr(route, "path", ""), getattr(route, "methods", None)
            if "{" in path or not methods:
                continue
            for method in methods:
                found = self._scan({"type": "http", "path": path, "method": method, "headers": []})
                self.static.setdefault((path, method), found)

    def _make_hot(self, path: str, method: str, endpoint: Endpoint) -> None:
        entry = self.static.get((path, method))
        if entry is None or entry is UNMATCHED:
            raise RuntimeError(f"hot route {method} {path} is not a route of the app")
        self.static[(path, method)] = Entry(entry.policy, endpoint)

    def find(self, scope: Scope) -> Entry:
        entry = self.static.get((get_route_path(scope), scope["method"]))
        return entry if entry is not None else self._scan(scope)

    def _scan(self, scope: Scope) -> Entry:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return self.entries[id(route)]
        return UNMATCHED


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the gate reads of a request's headers, in one pass over them."""

    authorization: bytes = b""  # raw, b"" when none
    declared_bytes: int = 0  # Content-Length, 0 when none
    origin: bytes = b""  # b"" when none
    header_bytes: int = 0  # every header's name and value


def credentials(scope: Scope) -> Credentials:
    authorization = origin = b""
    declared_bytes = header_bytes = 0
    for name, value in scope["headers"]:
        header_bytes += len(name) + len(value)
        if name == b"authorization":
            authorization = value
        elif name == b"content-length" and value.isdigit():
            declared_bytes = int(value) if len(value) < 19 else sys.maxsize
        elif name == b"origin":
            origin = value
    return Credentials(authorization, declared_bytes, origin, header_bytes)


def headers_too_large() -> JSONResponse:
    """The 431 for headers over MAX_HEADER_BYTES; the connection is closed."""
    return error_json(431, HEADERS_TOO_LARGE, {"Connection": "close"})


def too_large(limit_bytes: int) -> JSONResponse:
    """The 413; the connection is closed, so an unread body is not read to find the next request."""
    return error_json(413, reason(limit_bytes), {"Connection": "close"})


def reason(limit_bytes: int) -> str:
    return f"body over {limit_bytes} bytes"


class BodyLimit:
    """A request's body as the app reads it: past `limit_bytes` the read raises `PayloadTooLarge`
    and nothing more is read; whatever a routed app answers after that is replaced by the 413."""

    __slots__ = ("_receive", "answered", "exceeded", "limit_bytes", "seen_bytes", "started")

    def __init__(self, receive: Receive, limit_bytes: int) -> None:
        self._receive = receive
        self.limit_bytes = limit_bytes
        self.seen_bytes = 0
        self.exceeded = self.started = self.answered = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen_bytes += len(message.get("body", b""))
            if self.seen_bytes > self.limit_bytes:
                self.exceeded = True
                raise PayloadTooLarge(reason(self.limit_bytes))
        return message

    async def call(self, app: ASGIApp, scope: Scope, send: Send) -> None:
        async def guarded(message: Message) -> None:
            if self.exceeded:
                await self.answer(scope, send)
                return
            self.started = self.started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, self.receive, guarded)
        except Exception:
            if not self.exceeded:
                raise
            await self.answer(scope, send)  # the app failed on the cut-off body: answered here

    async def answer(self, scope: Scope, send: Send) -> None:
        if not (self.started or self.answered):
            self.answered = True
            await too_large(self.limit_bytes)(scope, self._receive, send)


class Gate:
    """Matches, refuses or lets in, and counts every HTTP request in flight (`Traffic`)."""

    def __init__(self, app: ASGIApp, table: RouteTable, state: State, traffic: Traffic) -> None:
        self.app = app
        self.table = table
        self.state = state
        self.traffic = traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # the app serves none: refuse before the handshake
                await send({"type": "websocket.close", "code": 1008})
                return
            if scope["type"] == "lifespan":
                send = self._one_line_startup_failure(send)
            await self.app(scope, receive, send)
            return
        self.traffic.in_flight += 1
        try:
            await self.serve(scope, receive, send)
        finally:
            self.traffic.in_flight -= 1

    def _one_line_startup_failure(self, send: Send) -> Send:
        """A startup refused for its configuration (the lifespan keeps the `ConfigError` in
        `state.startup_refused`) reaches the server as one line saying what to fix, not as a
        traceback through the framework's lifespan."""

        async def wrapped(message: Message) -> None:
            refused = getattr(self.state, "startup_refused", None)
            if message["type"] == "lifespan.startup.failed" and refused is not None:
                message = {**message, "message": f"activation-loops cannot start: {refused}"}
            await send(message)

        return wrapped

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = credentials(scope)
        if given.header_bytes > MAX_HEADER_BYTES:
            await headers_too_large()(scope, receive, send)
            return
        entry = self.table.find(scope)
        policy = entry.policy
        if given.origin and policy is not None and policy.access in BROWSER_ACCESS:
            send = self.cors(send, policy.access, given.origin)
        refusal = await self.refusal(scope, policy, given.authorization, given.origin)
        if refusal is None and policy is not None and given.declared_bytes > policy.max_body_bytes:
            refusal = too_large(policy.max_body_bytes)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        assert policy is not None
        body = BodyLimit(receive, policy.max_body_bytes)
        if entry.hot is None:
            await body.call(self.app, scope, send)
            return
        try:
            response = await entry.hot(Request(scope, body.receive))
        except Exception:  # a bug: answered in the one error shape, then the server logs it
            await internal_error_response()(scope, receive, send)
            raise
        await response(scope, receive, send)

    def cors(self, send: Send, access: Access, origin: bytes) -> Send:
        """`send` adding the CORS headers when `origin` is allowed; as it was otherwise."""
        services: Services = self.state.runtime
        if not cors.allowed(services.settings.allowed_origins, origin):
            return send
        preflight = access is Access.CORS_PREFLIGHT
        return cors.with_headers(send, cors.headers_for(origin, preflight=preflight))

    async def refusal(
        self, scope: Scope, policy: Policy | None, authorization: bytes, origin: bytes
    ) -> Response | None:
        """The answer to a caller the route's policy refuses, or None to let it in."""
        if policy is None:
            logger.error("%s %s refused: %s", scope["method"], get_route_path(scope), UNDECLARED)
            return error_json(403, UNDECLARED)
        if policy.access is Access.PUBLIC:
            return None
        if len(authorization) > MAX_AUTHORIZATION_BYTES:  # no key or token is: refused unread
            return policy.refusal(Request(scope), Verdict.REFUSED)
        token = auth.bearer_token(authorization)
        try:
            verdict = await self.verdict(scope, policy.access, token, origin)
        except ActivationError as exc:  # storage (a revoked dashboard session?), a session token
            return error_response(Request(scope), exc)
        return None if verdict is Verdict.GRANTED else policy.refusal(Request(scope), verdict)

    async def verdict(self, scope: Scope, access: Access, token: bytes, origin: bytes) -> Verdict:
        services: Services = self.state.runtime
        settings = services.settings
        if access is Access.OPERATOR:
            cookie = Request(scope).cookies.get(COOKIE)
            store, now_ms = services.store, services.clock()
            return await auth.operator_verdict(settings, store, token, cookie, now_ms)
        if access is Access.CORS_PREFLIGHT and cors.allowed(settings.allowed_origins, origin):
            return Verdict.GRANTED
        verdict = auth.bearer_verdict(access, settings, token)
        if verdict is Verdict.GRANTED or access is not Access.API_KEY_OR_CLERK_SESSION:
            return verdict
        return await session_verdict(scope, services.session_tokens, token, verdict)


async def session_verdict(
    scope: Scope, tokens: SessionTokens | None, token: bytes, otherwise: Verdict
) -> Verdict:
    """A Clerk session token instead of the API key: granted, its session kept in the scope for
    the route; `otherwise` (the API key's verdict) when the token is no JWT or none is verified
    here. A JWT that does not hold raises `SessionRefused`."""
    session = await tokens.verify(token) if tokens is not None and token else None
    if session is None:
        return otherwise
    session_tokens.remember(scope, session)
    return Verdict.GRANTED
