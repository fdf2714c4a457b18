"""Clerk session tokens: a browser's proof that a signed-in user of the Clerk instance sent the
request (`POST /v1/actions` from the browser). An RS256 JWT, its signature checked by
`app.signing` with the instance's PEM public key (CLERK_JWT_KEY: no network call) or with the key
its JWKS names by `kid` (CLERK_JWKS_URL, `JwksKeys`); `exp`, `nbf` and `iat` hold within
LEEWAY_S on the service's clock (`app.clock`, not this machine's), and `azp` is one of
ALLOWED_ORIGINS when those are set.

`app.web.gate` verifies the token before the body is read and leaves its `ClerkSession` in the
request's scope (`session_of`); the route checks what that session may report
(`app.web.v1.browser_limits`).
"""

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from starlette.requests import HTTPConnection
from starlette.types import Scope

from app.clock import HOUR_MS, Clock
from app.errors import ConfigError, InvalidToken, NotAToken, SessionRefused
from app.settings import Settings
from app.signing import jwk_signing_keys, rsa_public_key, token_claims, token_key_id
from app.storage.keys import valid_user_id

logger = logging.getLogger(__name__)

LEEWAY_S = 5  # Clerk's clock and ours differ a little; its tokens live for 60 s
JWKS_REFRESH_MIN_MS = 30_000  # a `kid` the keys lack fetches the JWKS at most this often
JWKS_MAX_AGE_MS = HOUR_MS  # a key Clerk dropped from its JWKS is dropped here within this
JWKS_TIMEOUT_S = 5.0  # for the whole answer: a server trickling bytes is cut off there
MAX_JWKS_BYTES = 64 * 1024  # Clerk's JWKS holds a key or two, under 1 KiB each
SCOPE_KEY = "activation.clerk_session"
CHALLENGE = {"WWW-Authenticate": "Bearer"}
PEM_HELP = (
    "CLERK_JWT_KEY must be the PEM public key of your Clerk instance (-----BEGIN PUBLIC KEY-----; "
    "Clerk dashboard: API keys > Show JWT public key > PEM Public Key)"
)


@dataclass(frozen=True, slots=True)
class ClerkSession:
    """A session token that held: the signed-in user (its `sub`)."""

    user_id: str


class SigningKeys(Protocol):
    async def key_for(self, kid: str | None) -> Any | None:
        """The public key to check a token whose header names `kid`; None when unknown."""

    async def close(self) -> None:
        """Stop what is under way (a fetch)."""


class PemKey:
    """CLERK_JWT_KEY: the one key, whatever the token's `kid`."""

    def __init__(self, key: Any) -> None:
        self.key = key

    @classmethod
    def load(cls, pem: str) -> "PemKey":
        """Refuses (ConfigError) anything but an RSA public key; a `.env` may hold it on one line,
        its newlines written `\\n`."""
        try:
            return cls(rsa_public_key(pem))
        except ValueError:
            raise ConfigError(PEM_HELP) from None

    async def key_for(self, kid: str | None) -> Any | None:
        return self.key

    async def close(self) -> None:
        return None


class JwksKeys:
    """CLERK_JWKS_URL's signing keys by `kid`: fetched at the first token, again for a `kid` they
    lack or once they are JWKS_MAX_AGE_MS old, but never more often than every
    JWKS_REFRESH_MIN_MS (a flood of made-up kids costs Clerk one request per period).

    One fetch at a time, bounded as a whole: its answer, connection to last byte, within
    JWKS_TIMEOUT_S and MAX_JWKS_BYTES. A token whose key is held never waits for a fetch (old
    keys are refreshed in the background); one whose key is not held waits for the fetch in
    flight, at most JWKS_TIMEOUT_S. A failed fetch keeps the keys held."""

    def __init__(self, url: str, clock: Clock) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"CLERK_JWKS_URL: not an http(s) URL: {url!r}")
        self.url = url
        self.clock = clock
        self.keys: dict[str, Any] = {}
        self.fetched_at_ms: int | None = None
        self.tried_at_ms: int | None = None
        self.failed = False  # the last fetch failed: a `kid` not held may be a new key
        self._fetching: asyncio.Task[None] | None = None

    async def key_for(self, kid: str | None) -> Any | None:
        if kid is None:
            return None
        held = self.keys.get(kid)
        if held is not None:
            if self._stale():
                self._fetch_in_flight()  # in the background: the key held serves meanwhile
            return held
        fetching = self._fetch_in_flight()
        if fetching is not None:
            await asyncio.shield(fetching)  # one caller giving up does not stop it for the rest
        if kid not in self.keys and self.failed:
            raise keys_unavailable(self._next_fetch_s())
        return self.keys.get(kid)

    async def close(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetching

    def _stale(self) -> bool:
        return self.fetched_at_ms is None or self.clock() - self.fetched_at_ms >= JWKS_MAX_AGE_MS

    def _may_fetch(self) -> bool:
        return self.tried_at_ms is None or self.clock() - self.tried_at_ms >= JWKS_REFRESH_MIN_MS

    def _next_fetch_s(self) -> int:
        waited_ms = self.clock() - (self.tried_at_ms or 0)
        return max(1, math.ceil((JWKS_REFRESH_MIN_MS - waited_ms) / 1000))

    def _fetch_in_flight(self) -> "asyncio.Task[None] | None":
        """The fetch under way, else a new one if one may start now, else None."""
        if self._fetching is None or self._fetching.done():
            if not self._may_fetch():
                return None
            self.tried_at_ms = self.clock()
            self._fetching = asyncio.create_task(self._fetch())
        return self._fetching

    async def _fetch(self) -> None:
        try:
            async with asyncio.timeout(JWKS_TIMEOUT_S):
                keys = jwk_signing_keys(await self._download())
        except (httpx.HTTPError, OSError, TimeoutError, ValueError) as exc:
            self.failed = True
            why = f"no whole answer within {JWKS_TIMEOUT_S:g} s"
            if not isinstance(exc, TimeoutError):
                why = str(exc) or type(exc).__name__
            logger.warning(
                "Clerk JWKS not fetched from %s: %s; %d key(s) held", self.url, why, len(self.keys)
            )
            return
        self.keys, self.fetched_at_ms, self.failed = keys, self.tried_at_ms, False
        logger.info("Clerk JWKS fetched from %s: %d signing key(s)", self.url, len(self.keys))

    async def _download(self) -> bytes:
        """The JWKS document; ValueError past MAX_JWKS_BYTES (no JWKS is anywhere near)."""
        async with (
            httpx.AsyncClient(timeout=JWKS_TIMEOUT_S) as client,
            client.stream("GET", self.url, headers={"Accept": "application/json"}) as response,
        ):
            response.raise_for_status()
            document = bytearray()
            async for chunk in response.aiter_bytes():
                document += chunk
                if len(document) > MAX_JWKS_BYTES:
                    raise ValueError(f"the JWKS is over {MAX_JWKS_BYTES} bytes")
            return bytes(document)


class SessionTokens:
    """Verifies Clerk session tokens with the instance's keys, their times on the service's
    clock."""

    def __init__(self, keys: SigningKeys, allowed_origins: tuple[str, ...], clock: Clock) -> None:
        self.keys = keys
        self.allowed_origins = frozenset(allowed_origins)
        self.clock = clock

    async def verify(self, token: bytes) -> ClerkSession | None:
        """The session a bearer token stands for; None when it is no JWT at all (a wrong API
        key). A JWT that does not hold raises `SessionRefused` (401, saying why; 503 when the
        keys to check it could not be fetched)."""
        try:
            kid = token_key_id(token)
        except NotAToken:
            return None
        except InvalidToken as exc:
            raise refused(str(exc)) from None
        key = await self.keys.key_for(kid)
        if key is None:
            raise refused("signed with an unknown key")
        claims = self._claims(token, key)
        azp = claims.get("azp")
        if self.allowed_origins and not (isinstance(azp, str) and azp in self.allowed_origins):
            raise refused("azp is not one of ALLOWED_ORIGINS")
        sub = claims["sub"]
        if not isinstance(sub, str) or not valid_user_id(sub):
            raise refused("sub is not a user id")
        return ClerkSession(sub)

    async def close(self) -> None:
        await self.keys.close()

    def _claims(self, token: bytes, key: Any) -> dict[str, Any]:
        now_s = self.clock() / 1000
        try:
            # no `aud` in Clerk's session tokens: `azp` says which origin asked for one
            return token_claims(token, key, now_s=now_s, leeway_s=LEEWAY_S)
        except InvalidToken as exc:
            raise refused(str(exc)) from None


def refused(why: str) -> SessionRefused:
    return SessionRefused(f"session token refused: {why}", status_code=401, headers=CHALLENGE)


def keys_unavailable(retry_after_s: int) -> SessionRefused:
    """A token that cannot be checked yet: its key is not held and CLERK_JWKS_URL could not be
    fetched. Our trouble, not the token's: 503, like storage being unavailable."""
    return SessionRefused(
        "session token not checked: Clerk's signing keys (CLERK_JWKS_URL) could not be fetched",
        status_code=503,
        headers={"Retry-After": str(retry_after_s)},
    )


def session_tokens(settings: Settings, clock: Clock) -> SessionTokens | None:
    """The verifier of browsers' session tokens, or None (every token then gets the 401 of a
    wrong API key) without BROWSER_ACTIONS or a key to check tokens with. A CLERK_JWT_KEY that
    is no RSA public key, or a CLERK_JWKS_URL that is no http(s) URL, refuses startup."""
    keys: SigningKeys | None = None
    if settings.clerk_jwt_key:
        keys = PemKey.load(settings.clerk_jwt_key)
    elif settings.clerk_jwks_url:
        keys = JwksKeys(settings.clerk_jwks_url, clock)
    if keys is None and settings.browser_actions:
        logger.warning(
            "BROWSER_ACTIONS is set but neither CLERK_JWT_KEY nor CLERK_JWKS_URL: browsers "
            "cannot report actions"
        )
    if keys is None or not settings.browser_actions:
        return None
    return SessionTokens(keys, settings.allowed_origins, clock)


def remember(scope: Scope, session: ClerkSession) -> None:
    """Keeps a verified session in the request's scope, for the route (`session_of`)."""
    scope[SCOPE_KEY] = session


def session_of(connection: HTTPConnection) -> ClerkSession | None:
    """The session the gate verified; None when the caller gave the API key (the server)."""
    found = connection.scope.get(SCOPE_KEY)
    return found if isinstance(found, ClerkSession) else None
