"""`activation suppress`: list the users a bounce or complaint suppressed, or lift one's
suppression."""

import argparse
import asyncio
import sys

from app.cli.shared import shared_settings, started
from app.errors import ActivationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "remove"])
    parser.add_argument("user_id", nargs="?", help="the user to send loop email to again")


def run(args: argparse.Namespace) -> int:
    if args.action == "remove" and not args.user_id:
        raise ActivationError("which user? activation suppress remove USER_ID")
    return asyncio.run(_suppress(args.user_id if args.action == "remove" else None))


async def _suppress(user_id: str | None) -> int:
    """List the suppressed users (no user id), or lift one user's suppression."""
    runtime = await started(shared_settings("suppress"))
    try:
        if user_id is None:
            users = await runtime.store.users.suppressed(limit=10_000)
            for uid, at_ms in users:
                print(f"{uid}\tsuppressed_at={at_ms}")
            print(f"{len(users)} suppressed user(s)", file=sys.stderr)
            return 0
        if not await runtime.store.users.unsuppress(user_id, now_ms=runtime.clock()):
            raise ActivationError(f"user {user_id!r} is not suppressed")
        print(f"{user_id}: suppression lifted; loop email may resume")
        return 0
    finally:
        await runtime.close()
