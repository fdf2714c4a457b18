"""Every secret the service compares or signs with: bearer keys and tokens compared in constant
time (as bytes), the dashboard session cookie's serializer and the unsubscribe links' tokens, both
signed by itsdangerous (HMAC-SHA256, a salt per use), the check of Svix webhook signatures
(svix computes the signature, compared here), the signature of a webhook step's POST (svix too),
and of Clerk session tokens' signatures (PyJWT, RS256), their times judged on the service's
clock. No other module compares a secret or checks a signature (tests/test_signing.py checks).
"""

import base64
import hashlib
import hmac
import json
import logging
import math
import secrets
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from itsdangerous import BadData, URLSafeSerializer
from pydantic import SecretStr
from svix.webhooks import Webhook

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


def _loads_exactly(serializer: URLSafeSerializer, token: str) -> object:
    """The payload of a token that is exactly what signing it gives: base64 has more than one
    spelling of the same bytes (the last character's spare bits), and an altered token must
    never pass for the genuine one. BadData otherwise."""
    payload: object = serializer.loads(token)
    if serializer.dumps(payload) != token:
        raise BadData("not the token's own spelling")
    return payload


# --- dashboard sessions -------------------------------------------------------------------------


def sign_session(api_key: str, payload: dict[str, object]) -> str:
    """A session cookie's value: the payload as URL-safe JSON, signed under the API key."""
    token: str = _serializer(api_key, SESSION_SALT).dumps(payload)
    return token


def unsign_session(api_key: str, token: str) -> object | None:
    """The payload of a cookie signed under this API key; None when it is forged, altered or
    malformed. `token` must be ASCII (a lone surrogate cannot even be encoded to be checked)."""
    try:
        return _loads_exactly(_serializer(api_key, SESSION_SALT), token)
    except BadData:
        return None


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
            user_id = _loads_exactly(self._serializer, token)
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


# --- Svix webhook signatures (Clerk's and Resend's webhooks) -------------------------------------


def webhook_signature_holds(
    verifier: Webhook, msg_id: str, timestamp_s: int, body: str, signatures: str
) -> bool:
    """Whether one of `svix-signature`'s space-separated signatures is the one svix computes for
    this message under the endpoint's secret, compared in constant time. The timestamp is
    judged by the caller, on the service's clock (svix's own `verify` judges it on this
    machine's)."""
    signed_at = datetime.fromtimestamp(timestamp_s, tz=UTC)
    expected = verifier.sign(msg_id, signed_at, body).encode()
    given = signatures.split(" ")
    return any(hmac.compare_digest(expected, signature.encode()) for signature in given)


def sign_webhook(secret: str, msg_id: str, timestamp_s: int, body: str) -> str:
    """The `webhook-signature` of a webhook step's POST (Standard Webhooks: `v1,<base64
    HMAC-SHA256 of "id.timestamp.body">` under the `whsec_` key), computed by svix."""
    signed_at = datetime.fromtimestamp(timestamp_s, tz=UTC)
    return Webhook(secret).sign(msg_id, signed_at, body)


def webhook_message_id(job_id: str) -> str:
    """A webhook step's `webhook-id`: from its job's id, so every retry, by any worker, carries
    the same (the receiver's idempotency key), and the user id is not spelled in it."""
    return "msg_" + hashlib.sha256(job_id.encode()).hexdigest()[:32]


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


def token_claims(token: bytes, key: Any, *, now_s: float, leeway_s: float) -> dict[str, Any]:
    """The claims of an RS256 token signed by `key`, with `exp` and `sub`, within its `nbf`/`exp`
    give or take `leeway_s` at `now_s` (the service's clock, not this machine's: PyJWT takes no
    "now", so it checks the signature and the claims' presence and `check_times` the rest); else
    `InvalidToken` saying why. (`aud` is not checked: Clerk's session tokens carry none.)"""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=JWT_ALGORITHMS,
            options={
                "require": ["exp", "sub"],
                "verify_aud": False,
                # PyJWT would judge these on this machine's clock; `check_times` does, on ours
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidTokenError as exc:
        why = next((why for kind, why in _JWT_REASONS if isinstance(exc, kind)), "invalid")
        raise InvalidToken(why) from None
    check_times(claims, now_s, leeway_s)
    return claims


def check_times(claims: dict[str, Any], now_s: float, leeway_s: float) -> None:
    """PyJWT's rules for `iat`, `nbf` and `exp`, at `now_s`: `InvalidToken` when one is not a
    number ("malformed"), in the future ("not valid yet") or past ("expired")."""
    iat, nbf, exp = (_numeric_date(claims, name) for name in ("iat", "nbf", "exp"))
    if any(at is not None and at > now_s + leeway_s for at in (iat, nbf)):
        raise InvalidToken("not valid yet")
    if exp is not None and exp <= now_s - leeway_s:
        raise InvalidToken("expired")


def _numeric_date(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken("malformed")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidToken("malformed")
    return int(value)


def jwk_signing_keys(document: bytes) -> dict[str, Any]:
    """Each signing key of a JWKS document (as fetched) by its `kid`, parsed by PyJWT; ValueError
    when it is no JWK set with a usable key."""
    try:
        found = json.loads(document)
        if not isinstance(found, dict):
            raise ValueError("the JWKS is not a JSON object")
        jwk_set = jwt.PyJWKSet.from_dict(found)
    except jwt.PyJWTError as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError("the JWKS is JSON nested too deep") from None
    usable = (key for key in jwk_set.keys if key.public_key_use in ("sig", None))
    return {key.key_id: key.key for key in usable if key.key_id}
