"""Sample data for the operator tools: a user to preview and simulate with, and a realistic Clerk
`user.created` event (the shape of Clerk's documented example) for `send-test-webhook`.
"""

import json
import secrets
from typing import Any

from pydantic import ValidationError

from app.errors import ActivationError
from app.storage.records import UserProfile

SAMPLE_USER_ID = "user_2sampleAdaLovelace00000000"
SAMPLE_EMAIL = "ada@example.com"


def sample_profile(
    user_id: str = SAMPLE_USER_ID, *, created_at_ms: int | None = None
) -> UserProfile:
    return UserProfile(
        id=user_id,
        email=SAMPLE_EMAIL,
        first_name="Ada",
        last_name="Lovelace",
        username="ada",
        image_url="https://img.clerk.com/sample",
        created_at=created_at_ms,
        public_metadata={"plan": "free"},
    )


def json_object(option: str, text: str | None) -> dict[str, Any]:
    """A command-line JSON object (`--props`, `--profile`), or ActivationError saying why not."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ActivationError(f"{option}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ActivationError(f'{option}: give a JSON object, like \'{{"plan": "pro"}}\'')
    return value


def with_profile(profile: UserProfile, text: str | None) -> UserProfile:
    """The profile with `--profile`'s fields laid over it (`email`, names, `public_metadata`...)."""
    fields = json_object("--profile", text)
    try:
        return UserProfile.model_validate(profile.model_dump() | fields)
    except ValidationError as exc:
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ActivationError(f"--profile: {reason}") from None


def new_user_id() -> str:
    return f"user_{secrets.token_urlsafe(20).replace('-', 'a').replace('_', 'b')}"


def clerk_user_created(user_id: str, email: str, now_ms: int) -> dict[str, Any]:
    """A `user.created` event as Clerk sends it (private metadata included, as Clerk does)."""
    return {
        "data": _clerk_user(user_id, email, now_ms),
        "event_attributes": {
            "http_request": {"client_ip": "127.0.0.1", "user_agent": "activation"}
        },
        "instance_id": "ins_activation_test",
        "object": "event",
        "timestamp": now_ms,
        "type": "user.created",
    }


def _clerk_user(user_id: str, email: str, now_ms: int) -> dict[str, Any]:
    """Clerk's user object: who the user is, then the account fields, in Clerk's (sorted) order."""
    email_id = f"idn_{secrets.token_hex(12)}"
    identity = {
        "created_at": now_ms,
        "email_addresses": [
            {
                "email_address": email,
                "id": email_id,
                "linked_to": [],
                "object": "email_address",
                "verification": {"status": "verified", "strategy": "email_code"},
            }
        ],
        "first_name": email.partition("@")[0].capitalize(),
        "id": user_id,
        "last_sign_in_at": now_ms,
        "primary_email_address_id": email_id,
        "updated_at": now_ms,
    }
    return dict(sorted({**identity, **_account_fields()}.items()))


def _account_fields() -> dict[str, Any]:
    """What a new password account without extras carries (the service reads none of it)."""
    return {
        "backup_code_enabled": False,
        "banned": False,
        "birthday": "",
        "external_accounts": [],
        "external_id": None,
        "gender": "",
        "image_url": "https://img.clerk.com/preview",
        "last_name": "Tester",
        "locked": False,
        "object": "user",
        "password_enabled": True,
        "phone_numbers": [],
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "private_metadata": {},
        "public_metadata": {},
        "two_factor_enabled": False,
        "unsafe_metadata": {},
        "username": None,
        "web3_wallets": [],
    }
