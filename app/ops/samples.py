"""Sample data for the operator tools: a user to preview and simulate with, and a realistic Clerk
`user.created` event (the shape of Clerk's documented example) for `send-test-webhook`.
"""

import secrets
from typing import Any

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


def new_user_id() -> str:
    return f"user_{secrets.token_urlsafe(20).replace('-', 'a').replace('_', 'b')}"


def clerk_user_created(user_id: str, email: str, now_ms: int) -> dict[str, Any]:
    """A `user.created` event as Clerk sends it (private metadata included, as Clerk does)."""
    email_id = f"idn_{secrets.token_hex(12)}"
    local = email.partition("@")[0]
    user = {
        "backup_code_enabled": False,
        "banned": False,
        "birthday": "",
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
        "external_accounts": [],
        "external_id": None,
        "first_name": local.capitalize(),
        "gender": "",
        "id": user_id,
        "image_url": "https://img.clerk.com/preview",
        "last_name": "Tester",
        "last_sign_in_at": now_ms,
        "locked": False,
        "object": "user",
        "password_enabled": True,
        "phone_numbers": [],
        "primary_email_address_id": email_id,
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "private_metadata": {},
        "public_metadata": {},
        "two_factor_enabled": False,
        "unsafe_metadata": {},
        "updated_at": now_ms,
        "username": None,
        "web3_wallets": [],
    }
    return {
        "data": user,
        "event_attributes": {
            "http_request": {"client_ip": "127.0.0.1", "user_agent": "activation"}
        },
        "instance_id": "ins_activation_test",
        "object": "event",
        "timestamp": now_ms,
        "type": "user.created",
    }
