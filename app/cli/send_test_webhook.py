"""`activation send-test-webhook`: a realistic Clerk `user.created`, signed with the configured
secret as Svix does, posted to a URL, and its answer printed."""

import argparse
import json
import secrets
from datetime import UTC, datetime

import httpx
from svix.webhooks import Webhook

from app.cli.samples import SAMPLE_EMAIL, clerk_user_created, new_user_id
from app.clock import system_clock_ms
from app.errors import ActivationError
from app.settings import load_settings
from app.storage.keys import valid_user_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `activation send-test-webhook`."""
    parser.add_argument("--url", required=True, help="the webhook endpoint")
    parser.add_argument("--email", default=SAMPLE_EMAIL, help="the new user's email address")
    parser.add_argument("--user-id", help="the new user's id (default: a new random one)")


def signed_request(secret: str, body: str) -> dict[str, str]:
    """Svix headers for `body`, as Clerk sends them."""
    msg_id = f"msg_{secrets.token_hex(14)}"
    now = datetime.now(tz=UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, now, body),
        "content-type": "application/json",
        "user-agent": "activation send-test-webhook (Svix-compatible)",
    }


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if settings.clerk_webhook_signing_secret is None:
        raise ActivationError("CLERK_WEBHOOK_SIGNING_SECRET is not set: nothing to sign with")
    user_id = args.user_id or new_user_id()
    if not valid_user_id(user_id):
        raise ActivationError(f"--user-id: {user_id!r} is not a user id (letters, digits, _ -)")
    event = clerk_user_created(user_id, args.email, system_clock_ms())
    body = json.dumps(event)
    headers = signed_request(settings.clerk_webhook_signing_secret.get_secret_value(), body)
    try:
        response = httpx.post(args.url, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise ActivationError(f"cannot post to {args.url}: {exc or type(exc).__name__}") from None
    print(f"sent user.created for {event['data']['id']} (svix-id {headers['svix-id']})")
    print(f"{response.status_code} {response.reason_phrase}\n{response.text}")
    return 0 if response.is_success else 1
