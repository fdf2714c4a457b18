"""`app.signing`: the one module that compares or signs secrets. Unsubscribe tokens are itsdangerous
ones, links of the first format still work, dashboard cookies keep their format, and no other
module of app/ compares a secret or computes a signature."""

import ast
import base64
import hashlib
import hmac
import json
import string
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from itsdangerous import BadSignature, URLSafeSerializer
from pydantic import SecretStr

from app import signing
from app.delivery.unsubscribe_links import UnsubscribeTokens
from app.errors import BadToken, InvalidToken
from app.settings import Settings
from app.web import sessions
from tests.conftest import API_KEY, AUTH, clerk_event, post_webhook
from tests.support.constants import OTHER, USER
from tests.support.marks import embedded_only

APP = Path(signing.__file__).parent
KEY = b"unsubscribe-secret-of-this-deployment"

# Pinned, not imported: changing any of these voids every link or cookie already out there.
UNSUBSCRIBE_SALT = "activation-loops unsubscribe v2"
SESSION_SALT = "activation-loops dashboard session v2"
DERIVATION = b"activation-loops unsubscribe v1"


def itsdangerous_serializer(key: str | bytes, salt: str) -> URLSafeSerializer:
    return URLSafeSerializer(key, salt=salt, signer_kwargs={"digest_method": hashlib.sha256})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def first_format_token(key: bytes, user_id: str) -> str:
    """A token as issued before itsdangerous: `<user id, base64url>.<HMAC-SHA256 of
    "unsubscribe:<user id>" under the key, base64url>`."""
    digest = hmac.new(key, f"unsubscribe:{user_id}".encode(), hashlib.sha256).digest()
    return f"{b64(user_id.encode())}.{b64(digest)}"


# --- unsubscribe tokens -------------------------------------------------------------------------


def test_a_new_token_is_an_itsdangerous_one() -> None:
    token = UnsubscribeTokens(KEY).issue(USER)

    assert itsdangerous_serializer(KEY, UNSUBSCRIBE_SALT).loads(token) == USER
    with pytest.raises(BadSignature):
        itsdangerous_serializer(KEY, SESSION_SALT).loads(token)  # salted: valid for this use only
    assert UnsubscribeTokens(KEY).verify(token) == USER


def test_a_token_of_the_first_format_is_still_accepted() -> None:
    token = first_format_token(KEY, USER)

    assert UnsubscribeTokens(KEY).verify(token) == USER
    assert token != UnsubscribeTokens(KEY).issue(USER)  # new links are itsdangerous ones


def forgeries(key: bytes, user_id: str, other_id: str) -> dict[str, str]:
    """Tokens for `user_id` under `key`, forged, altered or moved, in both formats."""
    tokens = UnsubscribeTokens(key)
    forged = {}
    for name, token, other in (
        ("new", tokens.issue(user_id), tokens.issue(other_id)),
        ("first format", first_format_token(key, user_id), first_format_token(key, other_id)),
    ):
        payload, _, signature = token.rpartition(".")
        other_payload, _, other_signature = other.rpartition(".")
        forged |= {
            f"{name}: another user's payload, this signature": f"{other_payload}.{signature}",
            f"{name}: this payload, another user's signature": f"{payload}.{other_signature}",
            f"{name}: signature flipped": f"{payload}.{flip(signature)}",
            f"{name}: payload flipped": f"{flip(payload)}.{signature}",
            f"{name}: signature cut": f"{payload}.{signature[:-1]}",
            f"{name}: signature extended": f"{payload}.{signature}A",
            f"{name}: no signature": f"{payload}.",
            f"{name}: no dot": f"{payload}{signature}",
            f"{name}: non-ASCII signature": f"{payload}.{signature[:-1]}é",
        }
    forged["new, another secret"] = UnsubscribeTokens(b"another deployment").issue(user_id)
    forged["first format, another secret"] = first_format_token(b"another deployment", user_id)
    forged["new, signed for sessions"] = itsdangerous_serializer(key, SESSION_SALT).dumps(user_id)
    forged["new, unsalted"] = URLSafeSerializer(key).dumps(user_id)
    return forged


def flip(text: str) -> str:
    middle = len(text) // 2
    return text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1 :]


@pytest.mark.parametrize("name", list(forgeries(KEY, USER, OTHER)))
def test_a_forged_altered_or_moved_token_is_refused(name: str) -> None:
    token = forgeries(KEY, USER, OTHER)[name]
    with pytest.raises(BadToken):
        UnsubscribeTokens(KEY).verify(token)


@pytest.mark.parametrize(
    "user_id", ["", " ", "user with spaces", "user_{x}", "u" * 129, "user_\x00", "user_é"]
)
def test_a_genuine_token_for_an_invalid_user_id_is_refused(user_id: str) -> None:
    for token in (UnsubscribeTokens(KEY).issue(user_id), first_format_token(KEY, user_id)):
        with pytest.raises(BadToken, match="invalid unsubscribe token"):
            UnsubscribeTokens(KEY).verify(token)


def test_the_longest_user_id_gives_a_token_shorter_than_the_query_allows() -> None:
    printable = string.printable[:94].translate(str.maketrans("", "", "{|}"))  # [!-z~]
    worst = '"\\' * 64  # both escaped by JSON: the longest payload before compression
    for user_id in (worst, (printable * 2)[:128], "~" * 128):
        token = UnsubscribeTokens(KEY).issue(user_id)
        assert len(token) < 512, (user_id, len(token))
        assert UnsubscribeTokens(KEY).verify(token) == user_id


@embedded_only
def test_the_unsubscribe_key_is_chosen_and_derived_as_before(
    make_settings: Callable[..., Settings],
) -> None:
    assert signing.unsubscribe_key(make_settings(unsubscribe_secret="configured")) == b"configured"
    derived = hmac.new(API_KEY.encode(), DERIVATION, hashlib.sha256).digest()
    assert signing.unsubscribe_key(make_settings()) == derived


@embedded_only
async def test_a_link_of_the_first_format_still_unsubscribes_over_http(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    for user_id in (USER, OTHER):
        body = json.dumps(clerk_event("created", user_id)).encode()
        assert (await post_webhook(client, body)).status_code == 200
    key = hmac.new(API_KEY.encode(), DERIVATION, hashlib.sha256).digest()  # no UNSUBSCRIBE_SECRET
    token = first_format_token(key, USER)

    assert (await client.get("/unsubscribe", params={"token": token})).status_code == 200
    assert (await client.post("/unsubscribe", params={"token": token})).status_code == 200
    moved = f"{b64(OTHER.encode())}.{token.split('.')[1]}"
    assert (await client.post("/unsubscribe", params={"token": moved})).status_code == 400

    mine = (await client.get(f"/v1/users/{USER}", headers=AUTH)).json()
    theirs = (await client.get(f"/v1/users/{OTHER}", headers=AUTH)).json()
    assert any(entry["event"] == "unsubscribed" for entry in mine["timeline"])
    assert not any(entry["event"] == "unsubscribed" for entry in theirs["timeline"])


@embedded_only
async def test_the_service_issues_itsdangerous_tokens_under_its_key(app: FastAPI) -> None:
    token = app.state.runtime.tokens.issue(USER)
    key = hmac.new(API_KEY.encode(), DERIVATION, hashlib.sha256).digest()
    assert itsdangerous_serializer(key, UNSUBSCRIBE_SALT).loads(token) == USER


@embedded_only
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_forged_tokens_of_both_formats_answer_400(
    client: httpx.AsyncClient, app: FastAPI, method: str
) -> None:
    key = hmac.new(API_KEY.encode(), DERIVATION, hashlib.sha256).digest()  # the app's
    for name, token in forgeries(key, USER, OTHER).items():
        response = await client.request(method, "/unsubscribe", params={"token": token})
        assert response.status_code == 400, (name, response.text)
        assert response.json()["error"].endswith("unsubscribe token"), name


# --- dashboard sessions -------------------------------------------------------------------------


def test_a_session_cookie_keeps_its_format() -> None:
    """Cookies set before `app.signing` existed must stay valid, and the other way round."""
    earlier = itsdangerous_serializer(API_KEY, SESSION_SALT).dumps({"id": "abc", "exp": 5_000})
    assert sessions.read(API_KEY, earlier, now_ms=4_000) == sessions.Session("abc", 5_000)

    issued = sessions.issue(API_KEY, now_ms=1_000)
    payload = itsdangerous_serializer(API_KEY, SESSION_SALT).loads(issued)
    assert payload["exp"] == 1_000 + sessions.SESSION_S * 1000
    assert sessions.read("another key", issued, now_ms=2_000) is None


def test_secret_matches_compares_bytes_and_nothing_matches_no_secret() -> None:
    assert signing.secret_matches(SecretStr("k3y"), b"k3y")
    assert not signing.secret_matches(SecretStr("k3y"), b"k3y ")
    assert not signing.secret_matches(SecretStr("k3y"), b"")
    assert not signing.secret_matches(None, b"")
    assert signing.secret_matches(SecretStr("clé"), "clé".encode())


# --- session tokens' times, on the clock given ---------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": 1000}, "expired"),  # at now 1005 with 5 s of leeway, as PyJWT: exp <= now - 5
        ({"exp": 1001, "nbf": 1010, "iat": 1010}, None),
        ({"nbf": 1011}, "not valid yet"),
        ({"iat": 1011}, "not valid yet"),
        ({"exp": 10**400}, None),
        ({"exp": "2000"}, "malformed"),
        ({"exp": True}, "malformed"),
        ({"nbf": float("nan")}, "malformed"),
    ],
)
def test_token_times_are_judged_as_pyjwt_does_at_the_now_given(
    claims: dict[str, object], why: str | None
) -> None:
    if why is None:
        signing.check_times(claims, now_s=1005, leeway_s=5)
        return
    with pytest.raises(InvalidToken, match=f"^{why}$"):
        signing.check_times(claims, now_s=1005, leeway_s=5)


# --- one module compares and signs --------------------------------------------------------------

SIGNING_MODULES = frozenset({"hmac", "itsdangerous", "jwt", "jose", "cryptography", "nacl"})
SIGNING_NAMES = frozenset({"compare_digest", "pbkdf2_hmac", "scrypt"})


def secret_handling(path: Path) -> list[str]:
    """Where a module imports a signing library or calls a secret comparison, by line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""] + [alias.name for alias in node.names]
        elif isinstance(node, ast.Attribute | ast.Name):
            modules = [node.attr if isinstance(node, ast.Attribute) else node.id]
        else:
            continue
        for name in modules:
            if name.split(".")[0] in SIGNING_MODULES or name in SIGNING_NAMES:
                found.append(f"{path.relative_to(APP.parent)}:{node.lineno}: {name}")
    return found


def test_only_app_signing_compares_or_signs_secrets() -> None:
    elsewhere = [
        hit
        for path in sorted(APP.rglob("*.py"))
        if path != APP / "signing.py"
        for hit in secret_handling(path)
    ]
    assert elsewhere == []


def test_the_scan_sees_what_app_signing_does() -> None:
    """The scan above must find what it looks for, or it would pass on anything."""
    names = {hit.rsplit(": ", 1)[1] for hit in secret_handling(APP / "signing.py")}
    assert {"hmac", "itsdangerous", "compare_digest"} <= names
