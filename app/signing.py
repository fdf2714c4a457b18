"""Every secret the service compares or signs with: bearer keys and tokens compared in constant
time (as bytes), the dashboard session cookie's serializer and the unsubscribe links' tokens, both
signed by itsdangerous (HMAC-SHA256, a salt per use), and the check of Clerk session tokens'
signatures (PyJWT, RS256). No other module compares a secret or checks a signature
(tests/test_signing.py checks).
"""

import base64
import hashlib
import hmac
import logging
import secrets
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from itsdangerous import BadData, URLSafeSerializer
from pydantic import SecretStr

from app.errors import BadToken, InvalidToken, NotAToken
from app.settings import Settings

logger = logging.getLogger(__name__)

# A salt per use: a value signed for one purpose is never valid for another under the same key.
SESSION_SALT = "activation-loops dashboard session v2"
UNSUBSCRIBE_SALT = "activation-loops unsubscribe v2"
# Derives the unsubscribe key from another configured secret; changing it would void every link.
_UNSUBSCRIBE_KEY_PURPOSE = b"activation-loops unsubscribe v1"


def secret_matches(expected: SecretStr | None, given: bytes) -> bool:
    """Constant-time comparison; no configured secret matches nothing."""
    if expected is None:
        return False
    return hmac.compare_digest(given, expected.get_secret_value().encode())


def _serializer(secret: str | bytes, salt: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt=salt, signer_kwargs={"digest_method": hashlib.sha256})


# --- dashboard sessions -------------------------------------------------------------------------


def sign_session(api_key: str, payload: dict[str, object]) -> str:
    """A session cookie's value: the payload as URL-safe JSON, signed under the API key."""
    token: str = _serializer(api_key, SESSION_SALT).dumps(payload)
    return token


def unsign_session(api_key: str, token: str) -> object | None:
    """The payload of a cookie signed under this API key; None when it is forged, altered or
    malformed. `token` must be ASCII (a lone surrogate cannot even be encoded to be checked)."""
    try:
        payload: object = _serializer(api_key, SESSION_SALT).loads(token)
    except BadData:
        return None
    return payload


# --- unsubscribe tokens -------------------------------------------------------------------------


def unsubscribe_key(settings: Settings) -> bytes:
    """UNSUBSCRIBE_SECRET, else one derived from another configured secret, else a random one."""
    if settings.unsubscribe_secret is not None:
        return settings.unsubscribe_secret.get_secret_value().encode()
    for secret in (settings.activation_api_key, settings.clerk_webhook_signing_secret):
        if secret is not None:
            key = secret.get_secret_value().encode()
            return hmac.new(key, _UNSUBSCRIBE_KEY_PURPOSE, hashlib.sha256).digest()
    logger.warning("no UNSUBSCRIBE_SECRET: unsubscribe links work until this process restarts")
    return secrets.token_bytes(32)


class UnsubscribeSigner:
    """Signs a user id into the token of an unsubscribe link, and reads it back."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._serializer = _serializer(key, UNSUBSCRIBE_SALT)

    def sign(self, user_id: str) -> str:
        token: str = self._serializer.dumps(user_id)
        return token

    def unsign(self, token: str) -> str:
        """The user id a token names, or BadToken when it is forged, altered or malformed."""
        try:
            user_id = self._serializer.loads(token)
        except (BadData, UnicodeEncodeError):  # a lone surrogate cannot be encoded to be checked
            return self._unsign_v1(token)
        if not isinstance(user_id, str):
            raise BadToken("invalid unsubscribe token")
        return user_id

    # Tokens of the first format, `<user id, base64url>.<HMAC-SHA256 of "unsubscribe:<user id>"
    # under the key, base64url>`, are in the inboxes of everyone emailed before itsdangerous
    # signed them (issue 12); they are still accepted so that those links keep working. Remove
    # this method once no email older than that change is likely to be clicked (say six months
    # after it was deployed).
    def _unsign_v1(self, token: str) -> str:
        encoded, _, signature = token.partition(".")
        try:
            user_id = _unb64(encoded).decode()
        except (ValueError, UnicodeDecodeError):
            raise BadToken("malformed unsubscribe token") from None
        message = f"unsubscribe:{user_id}".encode()
        expected = _b64(hmac.new(self._key, message, hashlib.sha256).digest())
        given = signature.encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected.encode()):
            raise BadToken("invalid unsubscribe token")
        return user_id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- Clerk session tokens (RS256 JWTs, checked with the instance's public keys) ----------------

JWT_ALGORITHMS = ["RS256"]
_JWT_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not valid yet"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.MissingRequiredClaimError, "no exp or no sub"),
    (jwt.InvalidAlgorithmError, "not RS256"),
    (jwt.DecodeError, "malformed"),
)


def rsa_public_key(pem: str) -> RSAPublicKey:
    """A PEM RSA public key (its newlines may be written `\\n`); ValueError for anything else."""
    try:
        key = load_pem_public_key(pem.strip().replace("\\n", "\n").encode())
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def token_key_id(token: bytes) -> str | None:
    """The `kid` a token's header names (None: none); `NotAToken`, or `InvalidToken` for a
    `kid` that is not a string."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.DecodeError:
        raise NotAToken("not a JWT") from None
    except jwt.InvalidTokenError:
        raise InvalidToken("malformed") from None
    return kid if isinstance(kid, str) else None


def token_claims(token: bytes, key: Any, *, leeway_s: float) -> dict[str, Any]:
    """The claims of an RS256 token signed by `key`, with `exp` and `sub`, within its `nbf`/`exp`
    give or take `leeway_s`; else `InvalidToken` saying why. (`aud` is not checked: Clerk's
    session tokens carry none.)"""
    try:
        return jwt.decode(
            token,
            key,
            algorithms=JWT_ALGORITHMS,
            options={"require": ["exp", "sub"], "verify_aud": False},
            leeway=leeway_s,
        )
    except jwt.InvalidTokenError as exc:
        why = next((why for kind, why in _JWT_REASONS if isinstance(exc, kind)), "invalid")
        raise InvalidToken(why) from None


class JwkSet:
    """A JWKS URL's signing keys, fetched by PyJWT (blocking: call `fetch` in a thread)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        try:
            self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout_s)
        except jwt.PyJWKClientError as exc:
            raise ValueError(str(exc)) from None

    def fetch(self) -> dict[str, Any]:
        """Each signing key by its `kid`; ValueError or OSError when the set cannot be had."""
        try:
            jwk_set = self._client.get_jwk_set(refresh=True)
        except jwt.PyJWTError as exc:
            raise ValueError(str(exc)) from None
        usable = (key for key in jwk_set.keys if key.public_key_use in ("sig", None))
        return {key.key_id: key.key for key in usable if key.key_id}
